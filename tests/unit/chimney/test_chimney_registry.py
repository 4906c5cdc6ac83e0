"""Host-side bookkeeping: the preconditions of chimney-spec 3.1-3.6, and answers from a faulty target."""

from __future__ import annotations

from dataclasses import replace

import pytest
from chimney_factories import delegated, neighbor_state, new_neighbor, new_path, new_tcp, path_state

from tcpchimney.chimney import (
    PLACEHOLDER,
    AlreadyOffloadedError,
    BlockList,
    Completion,
    DependentsRemainError,
    Disconnect,
    InitiateOffload,
    InvalidatedError,
    InvalidateOffload,
    Layer,
    LinkedObject,
    NullTarget,
    OffloadRegistry,
    OperationInFlightError,
    Phase,
    PostReceive,
    PreconditionError,
    ProtocolViolationError,
    QueryOffload,
    ReachabilityReply,
    ReceiveCompletion,
    Request,
    Role,
    Send,
    SendCompletion,
    StateCompletion,
    Status,
    TerminateOffload,
    UnknownObjectError,
    UpdateOffload,
    build_tree,
    complete_initiate,
    walk,
)
from tcpchimney.chimney.tcp_state import TcpCached
from tcpchimney.chimney.tree import Tree, mark_all

N, P, T1, T2 = 1, 11, 101, 102  # host handles
TN, TP, TT1, TT2 = 1001, 1011, 1101, 1102  # the target handles the fake target hands out


def answer_initiate(request: InitiateOffload, failures: dict[int, Status] | None = None) -> StateCompletion:
    failures = failures or {}

    def attempt(block: BlockList) -> tuple[Status, int | None]:
        assert block.host_handle is not None
        status = failures.get(block.host_handle, Status.SUCCESS)
        handle = 1000 + block.host_handle if status is Status.SUCCESS and block.role is Role.NEW else None
        return status, handle

    done = complete_initiate(request.tree, attempt)
    return StateCompletion(request.request_id, Status.SUCCESS, done)


def answer_all(
    request: TerminateOffload | UpdateOffload | QueryOffload | InvalidateOffload,
    status: Status = Status.SUCCESS,
) -> StateCompletion:
    tree: Tree = mark_all(request.tree, status)
    if isinstance(request, TerminateOffload) and status is Status.SUCCESS:
        tree = tuple(_with_delegated(b) for b in tree)
    return StateCompletion(request.request_id, status, tree)


def _with_delegated(block: BlockList) -> BlockList:
    deps = tuple(_with_delegated(d) for d in block.dependents)
    state = delegated() if block.layer is Layer.TCP and block.role is Role.LINKER else block.state
    return replace(block, state=state, dependents=deps)


def offloaded_registry() -> OffloadRegistry:
    """Neighbor 1 -> path 11 -> connections 101 and 102, all offloaded."""
    reg = OffloadRegistry()
    request = InitiateOffload(
        1,
        build_tree(
            [(new_neighbor(N), new_path(P), new_tcp(T1)), (new_neighbor(N), new_path(P), new_tcp(T2))]
        ),
    )
    reg.submit(request)
    reg.complete(answer_initiate(request))
    return reg


def tcp_only(target_handle: int) -> Tree:
    return build_tree([(PLACEHOLDER, PLACEHOLDER, LinkedObject(target_handle))])


# -- initiate ------------------------------------------------------------------------------------------------


def test_initiate_records_objects_handles_and_dependents() -> None:
    reg = offloaded_registry()
    assert len(reg) == 4 and reg.in_flight == 0
    assert reg.record(N).dependents == 1 and reg.record(P).dependents == 2
    assert reg.record(T1).phase is Phase.OFFLOADED and reg.record(T1).target_handle == TT1
    assert reg.by_target(TT2).host_handle == T2


def test_objects_are_offloading_until_the_completion() -> None:
    reg = OffloadRegistry()
    request = InitiateOffload(1, build_tree([(new_neighbor(N), new_path(P), new_tcp(T1))]))
    reg.submit(request)
    assert reg.record(T1).phase is Phase.OFFLOADING and reg.in_flight == 1


def test_no_second_offload_of_an_object_in_flight_or_offloaded() -> None:
    reg = OffloadRegistry()
    tree = build_tree([(new_neighbor(N), None, None)])
    reg.submit(InitiateOffload(1, tree))
    with pytest.raises(AlreadyOffloadedError, match="offloading"):
        reg.submit(InitiateOffload(2, tree))
    reg.complete(answer_initiate(InitiateOffload(1, tree)))
    with pytest.raises(AlreadyOffloadedError, match="offloaded"):
        reg.submit(InitiateOffload(3, tree))


def test_request_ids_are_unique_while_in_flight() -> None:
    reg = OffloadRegistry()
    reg.submit(InitiateOffload(1, build_tree([(new_neighbor(N), None, None)])))
    with pytest.raises(PreconditionError, match="request id"):
        reg.submit(InitiateOffload(1, build_tree([(new_neighbor(2, 2), None, None)])))


def test_new_connections_link_to_an_offloaded_path() -> None:
    reg = offloaded_registry()
    request = InitiateOffload(2, build_tree([(PLACEHOLDER, LinkedObject(TP, P), new_tcp(103))]))
    reg.submit(request)
    assert reg.record(P).dependents == 3
    reg.complete(answer_initiate(request))
    assert reg.record(103).phase is Phase.OFFLOADED


def test_linking_to_an_unknown_object_is_refused() -> None:
    reg = OffloadRegistry()
    with pytest.raises(UnknownObjectError):
        reg.submit(InitiateOffload(1, build_tree([(PLACEHOLDER, LinkedObject(555), new_tcp(103))])))
    assert len(reg) == 0 and reg.in_flight == 0


def test_failed_objects_are_forgotten_and_uncounted() -> None:
    reg = OffloadRegistry()
    request = InitiateOffload(
        1,
        build_tree(
            [(new_neighbor(N), new_path(P), new_tcp(T1)), (new_neighbor(N), new_path(P), new_tcp(T2))]
        ),
    )
    reg.submit(request)
    reg.complete(answer_initiate(request, {T2: Status.TCP_ENTRIES}))
    assert T2 not in reg and T1 in reg
    assert reg.record(P).dependents == 1


def test_null_target_answers_leave_nothing_offloaded() -> None:
    reg, target = OffloadRegistry(), NullTarget()
    request = InitiateOffload(1, build_tree([(new_neighbor(N), new_path(P), new_tcp(T1))]))
    reg.submit(request)
    target.submit(request, 0.0)
    out = target.poll()
    assert isinstance(out, StateCompletion)
    reg.complete(out)
    assert len(reg) == 0


# -- data calls ----------------------------------------------------------------------------------------------


def test_no_data_call_while_the_offload_is_in_flight() -> None:
    reg = OffloadRegistry()
    request = InitiateOffload(1, build_tree([(new_neighbor(N), new_path(P), new_tcp(T1))]))
    reg.submit(request)
    with pytest.raises(UnknownObjectError):  # the host has no target handle yet: it must queue the I/O
        reg.submit(Send(2, TT1, b"x"))
    reg.complete(answer_initiate(request))
    reg.submit(Send(2, TT1, b"x"))


def test_data_calls_name_a_connection() -> None:
    reg = offloaded_registry()
    with pytest.raises(PreconditionError, match="TCP"):
        reg.submit(Send(5, TP, b"x"))
    with pytest.raises(PreconditionError, match="NEIGHBOR"):
        reg.submit(ReachabilityReply(6, TT1, 1, 0.0))
    reg.submit(ReachabilityReply(7, TN, 1, 0.0))


def test_no_data_call_after_a_terminate_was_submitted() -> None:
    reg = offloaded_registry()
    reg.submit(TerminateOffload(5, tcp_only(TT1)))
    for request in (Send(6, TT1, b"x"), PostReceive(7, TT1, 10), Disconnect(8, TT1)):
        with pytest.raises(OperationInFlightError, match="terminating"):
            reg.submit(request)


# -- update, invalidate, query -------------------------------------------------------------------------------


def test_one_update_at_a_time_per_object() -> None:
    reg = offloaded_registry()
    update = UpdateOffload(5, build_tree([(LinkedObject(TN, N, neighbor_state(4).cached), None, None)]))
    reg.submit(update)
    with pytest.raises(OperationInFlightError, match="update in flight"):
        reg.submit(UpdateOffload(6, update.tree))
    reg.complete(answer_all(update))
    reg.submit(UpdateOffload(7, update.tree))


def test_updates_of_different_objects_may_overlap() -> None:
    reg = offloaded_registry()
    reg.submit(UpdateOffload(5, build_tree([(LinkedObject(TN, N, neighbor_state(4).cached), None, None)])))
    reg.submit(
        UpdateOffload(6, build_tree([(PLACEHOLDER, LinkedObject(TP, P, path_state(1, 1400).cached), None)]))
    )
    assert reg.in_flight == 2


def test_invalidated_objects_are_never_updated() -> None:
    reg = offloaded_registry()
    reg.submit(InvalidateOffload(5, build_tree([(LinkedObject(TN, N), None, None)])))
    with pytest.raises(InvalidatedError):
        reg.submit(
            UpdateOffload(6, build_tree([(LinkedObject(TN, N, neighbor_state(4).cached), None, None)]))
        )


def test_relink_moves_a_path_to_the_new_neighbor() -> None:
    reg = offloaded_registry()
    new = InitiateOffload(5, build_tree([(new_neighbor(2, 2), None, None)]))
    reg.submit(new)
    reg.complete(answer_initiate(new))
    relink = UpdateOffload(6, build_tree([(LinkedObject(1002, 2), LinkedObject(TP, P), None)]))
    reg.submit(relink)
    reg.complete(answer_all(relink))
    assert reg.record(P).parent == 2
    assert (reg.record(N).dependents, reg.record(2).dependents) == (0, 1)
    terminate_old = TerminateOffload(7, build_tree([(LinkedObject(TN, N), None, None)]))
    reg.submit(terminate_old)  # the old neighbor has no dependents left (spec 3.4 next-hop sequence)
    reg.complete(answer_all(terminate_old))
    assert N not in reg


def test_no_terminate_of_a_connection_with_a_query_in_flight() -> None:
    reg = offloaded_registry()
    query = QueryOffload(5, tcp_only(TT1))
    reg.submit(query)
    with pytest.raises(OperationInFlightError, match="wait"):
        reg.submit(TerminateOffload(6, tcp_only(TT1)))
    reg.complete(answer_all(query))
    reg.submit(TerminateOffload(6, tcp_only(TT1)))


# -- terminate -----------------------------------------------------------------------------------------------


def test_no_terminate_of_a_path_with_dependents() -> None:
    reg = offloaded_registry()
    with pytest.raises(DependentsRemainError, match="2 dependent"):
        reg.submit(TerminateOffload(5, build_tree([(PLACEHOLDER, LinkedObject(TP, P), None)])))
    with pytest.raises(DependentsRemainError, match="1 dependent"):
        reg.submit(
            TerminateOffload(5, build_tree([(PLACEHOLDER, LinkedObject(TP, P), LinkedObject(TT1, T1))]))
        )


def test_no_terminate_of_a_neighbor_with_dependents() -> None:
    reg = offloaded_registry()
    with pytest.raises(DependentsRemainError):
        reg.submit(TerminateOffload(5, build_tree([(LinkedObject(TN, N), None, None)])))


def test_terminating_a_whole_branch_at_once() -> None:
    reg = offloaded_registry()
    everything = build_tree(
        [
            (LinkedObject(TN, N), LinkedObject(TP, P), LinkedObject(TT1, T1)),
            (LinkedObject(TN, N), LinkedObject(TP, P), LinkedObject(TT2, T2)),
        ]
    )
    request = TerminateOffload(5, everything)
    reg.submit(request)
    assert all(reg.record(h).phase is Phase.TERMINATING for h in (N, P, T1, T2))
    reg.complete(answer_all(request))
    assert len(reg) == 0


def test_terminated_connection_releases_its_path() -> None:
    reg = offloaded_registry()
    request = TerminateOffload(5, tcp_only(TT1))
    reg.submit(request)
    reg.complete(answer_all(request))
    assert T1 not in reg and reg.record(P).dependents == 1
    with pytest.raises(UnknownObjectError):
        reg.submit(Send(6, TT1, b"x"))


def test_failed_terminate_still_forgets_the_lost_state() -> None:
    reg = offloaded_registry()
    request = TerminateOffload(5, tcp_only(TT1))
    reg.submit(request)
    reg.complete(answer_all(request, Status.FAILURE))
    assert T1 not in reg


# -- faulty targets ------------------------------------------------------------------------------------------


def test_completion_for_a_request_never_made() -> None:
    reg = offloaded_registry()
    with pytest.raises(ProtocolViolationError, match="never requested"):
        reg.complete(Completion(99, Status.SUCCESS))


def test_completion_of_the_wrong_kind() -> None:
    reg = offloaded_registry()
    reg.submit(Send(5, TT1, b"abc"))
    with pytest.raises(ProtocolViolationError, match="answered with"):
        reg.complete(Completion(5, Status.SUCCESS))
    reg.complete(SendCompletion(5, Status.SUCCESS, 3))
    assert reg.in_flight == 0


@pytest.mark.parametrize(
    ("request_", "answer", "match"),
    [
        (PostReceive(5, TT1, 100, filled=40), ReceiveCompletion(5, Status.SUCCESS, b"x" * 61), "over the 60"),
        (PostReceive(5, TT1, 0), ReceiveCompletion(5, Status.SUCCESS, b"x"), "over the 0"),
        (Send(5, TT1, b"abc"), SendCompletion(5, Status.UPLOAD_IN_PROGRESS, 4), "4 bytes of a 3-byte"),
        (Send(5, TT1, b"abc"), SendCompletion(5, Status.SUCCESS, 9), "9 bytes of a 3-byte"),
    ],
)
def test_data_answers_beyond_what_was_asked(request_: Request, answer: Completion, match: str) -> None:
    reg = offloaded_registry()
    reg.submit(request_)
    with pytest.raises(ProtocolViolationError, match=match):
        reg.complete(answer)
    assert reg.in_flight == 1  # the faulty answer is not taken: the request is still unanswered


def test_data_answers_within_what_was_asked() -> None:
    reg = offloaded_registry()
    reg.submit(PostReceive(5, TT1, 100, filled=40))
    reg.complete(ReceiveCompletion(5, Status.SUCCESS, b"x" * 60))
    reg.submit(Send(6, TT1, b"abc"))
    reg.complete(SendCompletion(6, Status.UPLOAD_IN_PROGRESS, 2))
    assert reg.in_flight == 0


def test_terminated_connection_must_come_back_with_its_state() -> None:
    reg = offloaded_registry()
    request = TerminateOffload(5, tcp_only(TT1))
    reg.submit(request)
    with pytest.raises(ProtocolViolationError, match="delegated state"):
        reg.complete(StateCompletion(5, Status.SUCCESS, mark_all(request.tree, Status.SUCCESS)))


def test_state_call_blocks_allow_success_or_failure_only() -> None:
    reg = offloaded_registry()
    request = QueryOffload(5, tcp_only(TT1))
    reg.submit(request)
    with pytest.raises(ProtocolViolationError, match="PARTIAL_SUCCESS"):
        reg.complete(StateCompletion(5, Status.SUCCESS, mark_all(request.tree, Status.PARTIAL_SUCCESS)))


def test_target_handles_must_be_unique() -> None:
    reg = offloaded_registry()
    request = InitiateOffload(5, build_tree([(PLACEHOLDER, LinkedObject(TP, P), new_tcp(103))]))
    reg.submit(request)
    done = complete_initiate(request.tree, lambda b: (Status.SUCCESS, TT1 if b.host_handle == 103 else None))
    with pytest.raises(ProtocolViolationError, match="already in use"):
        reg.complete(StateCompletion(5, Status.SUCCESS, done))
    assert [b.host_handle for b in walk(done)] == [None, P, 103]


def test_a_target_handle_given_to_two_new_objects_is_a_violation_and_neither_is_kept() -> None:
    """Recorded, the second object would take the first's entry in the handle table and a later terminate
    of both would not find the first (UnknownObjectError from inside ``complete``)."""
    reg = OffloadRegistry()
    request = InitiateOffload(5, build_tree([(new_neighbor(N), new_path(P), new_tcp(T1))]))
    reg.submit(request)
    done = complete_initiate(
        request.tree, lambda b: (Status.SUCCESS, TN if b.layer is not Layer.TCP else TT1)
    )
    with pytest.raises(ProtocolViolationError, match="given to two objects"):
        reg.complete(StateCompletion(5, Status.SUCCESS, done))
    assert N not in reg and P not in reg and T1 not in reg  # the TCP block's parent is not held either
    assert reg.in_flight == 0  # the request is settled, not left in flight


def test_a_faulty_initiate_answer_keeps_what_it_names_with_handles_of_its_own() -> None:
    reg = offloaded_registry()
    request = InitiateOffload(
        5,
        build_tree(
            [
                (PLACEHOLDER, LinkedObject(TP, P), new_tcp(103)),
                (PLACEHOLDER, LinkedObject(TP, P), new_tcp(104)),
            ]
        ),
    )
    reg.submit(request)
    done = complete_initiate(request.tree, lambda b: (Status.SUCCESS, TT1 if b.host_handle == 103 else 2104))
    with pytest.raises(ProtocolViolationError, match="already in use"):
        reg.complete(StateCompletion(5, Status.SUCCESS, done))
    assert 103 not in reg and reg.record(104).target_handle == 2104
    reg.submit(TerminateOffload(6, tcp_only(2104)))  # the host can name it: it terminates it


def test_abandon_undoes_what_submit_recorded() -> None:
    reg = offloaded_registry()
    reg.submit(UpdateOffload(5, build_tree([(PLACEHOLDER, PLACEHOLDER, LinkedObject(TT1, T1, TcpCached()))])))
    reg.abandon(5)
    assert not reg.record(T1).updating and reg.in_flight == 0
    reg.submit(TerminateOffload(6, tcp_only(TT1)))
    reg.abandon(6)
    assert T1 not in reg
