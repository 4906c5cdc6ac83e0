"""Requests, completions and indications: validation, reason codes, and the null target."""

from __future__ import annotations

import pytest
from chimney_factories import delegated, neighbor_state, new_neighbor, new_path, new_tcp, tcp_snapshot

from tcpchimney.chimney import (
    PLACEHOLDER,
    Completion,
    ContractError,
    Disconnect,
    DisconnectCompletion,
    FieldRangeError,
    Forward,
    InitiateOffload,
    InvalidateOffload,
    InvariantError,
    LinkedObject,
    NewObject,
    NotOffloadableError,
    NullTarget,
    OffloadTarget,
    PostReceive,
    QueryOffload,
    ReachabilityReply,
    Reason,
    ReasonGroup,
    ReceiveCompletion,
    ReceiveIndication,
    ReturnReceive,
    Send,
    SendBacklogChanged,
    SendCompletion,
    StateCompletion,
    Status,
    TargetMethods,
    TerminateOffload,
    TreeError,
    UpdateOffload,
    UploadRequest,
    build_tree,
    verify_initiate_completion,
    walk,
)
from tcpchimney.chimney.requests import Request
from tcpchimney.chimney.tree import verify_state_call_completion
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire.seq import SeqNum

LINKED_TCP = build_tree([(PLACEHOLDER, PLACEHOLDER, LinkedObject(90, 101))])


def sample_requests() -> list[Request]:
    tree = build_tree(
        [(new_neighbor(1), new_path(11), new_tcp(101)), (new_neighbor(1), new_path(11), new_tcp(102))]
    )
    cached = build_tree([(LinkedObject(70, 1, neighbor_state(3).cached), None, None)])
    return [
        InitiateOffload(1, tree),
        UpdateOffload(2, cached),
        InvalidateOffload(3, build_tree([(LinkedObject(70, 1), None, None)])),
        QueryOffload(4, LINKED_TCP),
        TerminateOffload(5, LINKED_TCP),
        Send(6, 90, b"hello"),
        PostReceive(7, 90, 4096),
        Disconnect(8, 90),
        Forward(9, 90, (b"\x00" * 20,)),
        ReturnReceive(10, 90, 1, 5),
        ReachabilityReply(11, 70, 2, 0.0),
    ]


# -- requests ------------------------------------------------------------------------------------------------


def test_initiate_refuses_a_connection_in_time_wait() -> None:
    tree = build_tree(
        [(new_neighbor(1), new_path(11), NewObject(101, tcp_snapshot(state=TcpState.TIME_WAIT)))]
    )
    with pytest.raises(NotOffloadableError):
        InitiateOffload(1, tree)


def test_state_calls_other_than_initiate_name_offloaded_objects_only() -> None:
    tree = build_tree([(new_neighbor(1), None, None)])
    for cls in (UpdateOffload, InvalidateOffload, QueryOffload, TerminateOffload):
        with pytest.raises(TreeError, match="no new-offload blocks"):
            cls(1, tree)


def test_invalidate_query_terminate_carry_no_state() -> None:
    with_state = build_tree([(LinkedObject(70, 1, neighbor_state().cached), None, None)])
    for cls in (InvalidateOffload, QueryOffload, TerminateOffload):
        with pytest.raises(TreeError, match="no state"):
            cls(1, with_state)


def test_update_carries_cached_state_only() -> None:
    full = build_tree([(LinkedObject(70, 1, neighbor_state()), None, None)])
    with pytest.raises(TreeError, match="cached"):
        UpdateOffload(1, full)
    bare = build_tree([(PLACEHOLDER, PLACEHOLDER, LinkedObject(90, 101))])
    with pytest.raises(TreeError, match="relinks"):
        UpdateOffload(1, bare)


def test_update_may_relink_paths_to_a_new_neighbor() -> None:
    relink = build_tree([(LinkedObject(71, 2), LinkedObject(80, 11), None)])
    assert UpdateOffload(1, relink).tree == relink


def test_empty_or_non_neighbor_tree_is_refused() -> None:
    with pytest.raises(TreeError):
        QueryOffload(1, ())
    with pytest.raises(TreeError):
        QueryOffload(1, LINKED_TCP[0].dependents)


def test_data_call_validation() -> None:
    with pytest.raises(FieldRangeError):
        Send(1, 90, b"")
    with pytest.raises(InvariantError):
        PostReceive(1, 90, size=10, filled=11)
    assert PostReceive(1, 90, size=0).size == 0  # a zero-byte post re-enables indications
    with pytest.raises(InvariantError):
        Disconnect(1, 90, abortive=True, data=b"x")
    with pytest.raises(FieldRangeError):
        Forward(1, 90, (b"\x00" * 19,))
    with pytest.raises(FieldRangeError):
        Forward(1, 90, ())
    with pytest.raises(FieldRangeError, match="request_id"):
        Send(-1, 90, b"x")


# -- completions and indications -----------------------------------------------------------------------------


def test_completion_status_must_be_final() -> None:
    with pytest.raises(FieldRangeError):
        Completion(1, Status.PENDING)


def test_send_completion_partial() -> None:
    assert SendCompletion(1, Status.UPLOAD_IN_PROGRESS, 10).partial
    assert not SendCompletion(1, Status.UPLOAD_IN_PROGRESS, 0).partial
    assert not SendCompletion(1, Status.SUCCESS, 10).partial


def test_upload_request_needs_a_target_reason() -> None:
    assert UploadRequest(5, Reason.URGENT_DATA).reason is Reason.URGENT_DATA
    with pytest.raises(FieldRangeError):
        UploadRequest(5, Reason.CHURN)
    with pytest.raises(FieldRangeError):
        UploadRequest(5, Reason.TARGET_FULL)


def test_receive_indication_carries_data_and_its_sequence_number() -> None:
    with pytest.raises(FieldRangeError):
        ReceiveIndication(5, 1, b"", SeqNum(7))
    with pytest.raises(FieldRangeError):
        ReceiveIndication(5, 1, b"data", 7)  # type: ignore[arg-type]


# -- reasons -------------------------------------------------------------------------------------------------


def test_every_reason_has_a_group_and_a_description() -> None:
    for reason in Reason:
        assert isinstance(reason.group, ReasonGroup)
        assert reason.description and reason.description[0].islower()
    assert len({r.value for r in Reason}) == len(Reason)


def test_reason_groups_cover_the_three_kinds() -> None:
    assert Reason.TARGET_FULL in Reason.of_group(ReasonGroup.REFUSAL)
    assert Reason.OPTION_UNSUPPORTED in Reason.of_group(ReasonGroup.REFUSAL)
    assert Reason.KEEPALIVE_TIMEOUT in Reason.of_group(ReasonGroup.TARGET_UPLOAD)
    assert Reason.FIN_WAIT_2_TIMEOUT in Reason.of_group(ReasonGroup.TARGET_UPLOAD)
    assert Reason.CHURN in Reason.of_group(ReasonGroup.HOST_UPLOAD)
    assert sum(len(Reason.of_group(g)) for g in ReasonGroup) == len(Reason)


def test_only_the_optional_target_reasons_may_be_declined() -> None:
    optional = {r for r in Reason if not r.mandatory}
    assert optional == {
        Reason.HIGH_DROP_RATE,
        Reason.HIGH_FRAGMENTATION,
        Reason.HIGH_OUT_OF_ORDER,
        Reason.LOW_ACTIVITY,
        Reason.NO_BUFFER_POSTING,
        Reason.SMALL_IO,
    }
    assert all(r.group is ReasonGroup.TARGET_UPLOAD for r in optional)


# -- the null target -----------------------------------------------------------------------------------------


EXPECTED = {
    InitiateOffload: StateCompletion,
    UpdateOffload: StateCompletion,
    InvalidateOffload: StateCompletion,
    QueryOffload: StateCompletion,
    TerminateOffload: StateCompletion,
    Send: SendCompletion,
    PostReceive: ReceiveCompletion,
    Disconnect: DisconnectCompletion,
    Forward: Completion,
    ReturnReceive: Completion,
    ReachabilityReply: Completion,
}


def test_null_target_completes_everything_with_not_supported_in_order() -> None:
    target = NullTarget()
    requests = sample_requests()
    assert {type(r) for r in requests} == set(EXPECTED)
    for request in requests:
        target.submit(request, now=0.0)
    outputs = target.drain()
    assert [o.request_id for o in outputs] == [r.request_id for r in requests]  # type: ignore[union-attr]
    for request, out in zip(requests, outputs, strict=True):
        assert type(out) is EXPECTED[type(request)]
        assert out.status is Status.NOT_SUPPORTED  # type: ignore[union-attr]
    assert target.poll() is None


def test_null_target_initiate_answer_keeps_the_status_rules() -> None:
    target = NullTarget()
    request = sample_requests()[0]
    target.submit(request, now=0.0)
    out = target.poll()
    assert isinstance(out, StateCompletion)
    verify_initiate_completion(request.tree, out.tree)  # type: ignore[union-attr]
    assert all(b.target_handle is None for b in walk(out.tree))
    assert out.tree[0].status is Status.NOT_SUPPORTED


def test_null_target_state_call_answers_mark_every_block() -> None:
    target = NullTarget()
    request = TerminateOffload(5, LINKED_TCP)
    target.submit(request, now=0.0)
    out = target.poll()
    assert isinstance(out, StateCompletion)
    verify_state_call_completion(request.tree, out.tree)
    assert [b.status for b in walk(out.tree)] == [Status.SUCCESS, Status.SUCCESS, Status.NOT_SUPPORTED]


def test_null_target_offers_no_capacity_and_refuses_non_requests() -> None:
    target: OffloadTarget = NullTarget()
    assert target.capabilities.capacity == 0
    with pytest.raises(ContractError):
        target.submit(delegated(), now=0.0)  # type: ignore[arg-type]


class EchoSendTarget(TargetMethods):
    """Implements one slot of the table: sends complete at once, after a backlog indication."""

    def send(self, request: Send, now: float) -> None:
        self.indicate(SendBacklogChanged(7, len(request.data)))
        self.complete(SendCompletion(request.request_id, Status.SUCCESS, len(request.data)))


def test_overriding_one_slot_leaves_the_others_not_supported_and_keeps_output_order() -> None:
    target = EchoSendTarget()
    target.submit(Send(1, 90, b"abc"), now=0.0)
    target.submit(PostReceive(2, 90, 10), now=0.0)
    outputs = target.drain()
    assert outputs == [
        SendBacklogChanged(7, 3),
        SendCompletion(1, Status.SUCCESS, 3),
        ReceiveCompletion(2, Status.NOT_SUPPORTED, b""),
    ]
