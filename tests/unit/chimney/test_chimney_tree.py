"""The offload state tree: building with sharing, traversal order, the status rules of chimney-spec 3.1."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from chimney_factories import neighbor_state, new_neighbor, new_path, new_tcp, path_state, tcp_snapshot

from tcpchimney.chimney import (
    PLACEHOLDER,
    BlockList,
    Layer,
    LinkedObject,
    NewObject,
    NotOffloadableError,
    ProtocolViolationError,
    Role,
    Status,
    TreeError,
    build_tree,
    complete_initiate,
    overall_status,
    verify_initiate_completion,
    walk,
)
from tcpchimney.chimney.tree import Tree, aggregate, check_initiate_tree
from tcpchimney.tcp.state import TcpState


def spec_example_tree() -> Tree:
    """N1 -> {P1 -> {T1, T2}, P2 -> {T3}}, N2 -> {P3 -> {T4, T5}}: the traversal example of spec 3.1."""
    n1, n2 = new_neighbor(1, 1), new_neighbor(2, 2)
    p1, p2, p3 = new_path(11, 1), new_path(12, 2), new_path(13, 3)
    return build_tree(
        [
            (n1, p1, new_tcp(101)),
            (n1, p1, new_tcp(102)),
            (n1, p2, new_tcp(103)),
            (n2, p3, new_tcp(104)),
            (n2, p3, new_tcp(105)),
        ]
    )


def names(tree: Tree) -> list[int | None]:
    return [b.host_handle for b in walk(tree)]


def attempt_failing(failures: dict[int, Status]) -> Callable[[BlockList], tuple[Status, int | None]]:
    """An attempt callback that fails the named host handles and records the order it was called in."""
    calls: list[int | None] = []

    def attempt(block: BlockList) -> tuple[Status, int | None]:
        calls.append(block.host_handle)
        status = failures.get(block.host_handle or -1, Status.SUCCESS)
        return status, (1000 + (block.host_handle or 0)) if status is Status.SUCCESS else None

    attempt.calls = calls  # type: ignore[attr-defined]
    return attempt


# -- building ------------------------------------------------------------------------------------------------


def test_builder_shares_neighbors_and_paths() -> None:
    tree = spec_example_tree()
    assert [b.host_handle for b in tree] == [1, 2]
    assert [p.host_handle for p in tree[0].dependents] == [11, 12]
    assert [t.host_handle for t in tree[0].dependents[0].dependents] == [101, 102]
    assert [t.host_handle for t in tree[1].dependents[0].dependents] == [104, 105]
    assert all(b.role is Role.NEW and b.status is Status.PENDING for b in walk(tree))


def test_builder_keeps_first_seen_order_when_triples_interleave() -> None:
    n1, n2, p1, p2 = new_neighbor(1), new_neighbor(2, 2), new_path(11), new_path(12, 2)
    tree = build_tree([(n1, p1, new_tcp(101)), (n2, p2, new_tcp(102)), (n1, p1, new_tcp(103))])
    assert names(tree) == [1, 11, 101, 103, 2, 12, 102]


def test_builder_links_to_offloaded_objects_and_fills_placeholders() -> None:
    linked_path = LinkedObject(target_handle=77, host_handle=11)
    tree = build_tree([(PLACEHOLDER, linked_path, new_tcp(101)), (PLACEHOLDER, linked_path, new_tcp(102))])
    (root,) = tree
    assert root.role is Role.PLACEHOLDER
    (path,) = root.dependents
    assert (path.role, path.target_handle) == (Role.LINKER, 77)
    assert [t.host_handle for t in path.dependents] == [101, 102]
    check_initiate_tree(tree)


def test_builder_refuses_a_path_under_two_neighbors() -> None:
    with pytest.raises(TreeError, match="two neighbors"):
        build_tree([(new_neighbor(1), new_path(11), None), (new_neighbor(2, 2), new_path(11), None)])


def test_builder_refuses_one_object_with_two_states() -> None:
    with pytest.raises(TreeError, match="two different states"):
        build_tree([(new_neighbor(1, 1), None, None), (NewObject(1, neighbor_state(9)), None, None)])


def test_initiate_tree_names_each_object_once_across_layers() -> None:
    tree = build_tree([(new_neighbor(5), new_path(5), None)])
    with pytest.raises(TreeError, match="twice"):
        check_initiate_tree(tree)


def test_builder_refuses_a_connection_twice() -> None:
    with pytest.raises(TreeError, match="twice"):
        build_tree(
            [(new_neighbor(1), new_path(11), new_tcp(101)), (new_neighbor(1), new_path(11), new_tcp(101))]
        )


def test_blocks_must_follow_the_layer_order() -> None:
    tcp = BlockList(Layer.TCP, Role.NEW, host_handle=1, state=tcp_snapshot())
    with pytest.raises(TreeError):
        BlockList(Layer.NEIGHBOR, Role.PLACEHOLDER, dependents=(tcp,))
    with pytest.raises(TreeError):
        BlockList(Layer.TCP, Role.NEW, host_handle=2, state=tcp_snapshot(), dependents=(tcp,))
    with pytest.raises(TreeError, match="cannot carry"):
        BlockList(Layer.PATH, Role.NEW, host_handle=3, state=neighbor_state())


def test_roles_need_their_handles() -> None:
    with pytest.raises(TreeError, match="placeholder"):
        BlockList(Layer.PATH, Role.PLACEHOLDER, host_handle=1)
    with pytest.raises(TreeError, match="linker"):
        BlockList(Layer.PATH, Role.LINKER, host_handle=1)
    with pytest.raises(TreeError, match="new-offload"):
        BlockList(Layer.PATH, Role.NEW, state=path_state())


def test_initiate_tree_needs_full_state_in_new_blocks() -> None:
    block = BlockList(Layer.NEIGHBOR, Role.NEW, host_handle=1, state=neighbor_state().cached)
    with pytest.raises(TreeError, match="NeighborState"):
        check_initiate_tree((block,))


def test_new_object_cannot_hang_on_a_placeholder() -> None:
    with pytest.raises(TreeError, match="placeholder"):
        check_initiate_tree(build_tree([(PLACEHOLDER, new_path(11), new_tcp(101))]))


@pytest.mark.parametrize(
    "state", [TcpState.CLOSED, TcpState.LISTEN, TcpState.SYN_SENT, TcpState.SYN_RECEIVED, TcpState.TIME_WAIT]
)
def test_initiate_tree_refuses_host_only_states(state: TcpState) -> None:
    tree = build_tree([(new_neighbor(1), new_path(11), NewObject(101, tcp_snapshot(state=state)))])
    with pytest.raises(NotOffloadableError):
        check_initiate_tree(tree)


# -- traversal -----------------------------------------------------------------------------------------------


def test_traversal_is_depth_first_breadth_next() -> None:
    assert names(spec_example_tree()) == [1, 11, 101, 102, 12, 103, 2, 13, 104, 105]


def test_initiate_attempts_blocks_in_traversal_order() -> None:
    attempt = attempt_failing({})
    complete_initiate(spec_example_tree(), attempt)
    assert attempt.calls == [1, 11, 101, 102, 12, 103, 2, 13, 104, 105]  # type: ignore[attr-defined]


# -- status rules, one test each -----------------------------------------------------------------------------


def test_all_offloaded_is_success_everywhere_with_handles() -> None:
    done = complete_initiate(spec_example_tree(), attempt_failing({}))
    assert all(b.status is Status.SUCCESS for b in walk(done))
    assert [b.target_handle for b in walk(done)] == [1000 + (h or 0) for h in names(done)]
    assert overall_status(done) is Status.SUCCESS


def test_documented_example_partial_offload() -> None:
    """spec 3.1 'Partial offloads and offload failures': TCP2 resources, Path2 failure, TCP3 not attempted."""
    tree = build_tree(
        [
            (new_neighbor(1), new_path(11), new_tcp(101)),
            (new_neighbor(1), new_path(11), new_tcp(102)),
            (new_neighbor(1), new_path(12, 2), new_tcp(103)),
        ]
    )
    attempt = attempt_failing({102: Status.RESOURCES, 12: Status.FAILURE})
    done = complete_initiate(tree, attempt)
    status = {b.host_handle: b.status for b in walk(done)}
    assert status == {
        1: Status.PARTIAL_SUCCESS,
        11: Status.PARTIAL_SUCCESS,
        101: Status.SUCCESS,
        102: Status.RESOURCES,
        12: Status.FAILURE,
        103: Status.FAILURE,
    }
    assert 103 not in attempt.calls  # type: ignore[attr-defined]
    verify_initiate_completion(tree, done)


def test_failed_block_leaves_its_dependents_unattempted_and_failed() -> None:
    attempt = attempt_failing({11: Status.PATH_ENTRIES})
    done = complete_initiate(spec_example_tree(), attempt)
    path = done[0].dependents[0]
    assert path.status is Status.PATH_ENTRIES and path.target_handle is None
    assert [t.status for t in path.dependents] == [Status.FAILURE, Status.FAILURE]
    assert all(t.target_handle is None for t in path.dependents)
    assert not {101, 102} & set(attempt.calls)  # type: ignore[attr-defined]


def test_failed_root_stops_the_traversal() -> None:
    attempt = attempt_failing({1: Status.NEIGHBOR_ENTRIES})
    done = complete_initiate(spec_example_tree(), attempt)
    assert attempt.calls == [1]  # type: ignore[attr-defined]
    assert done[0].status is Status.NEIGHBOR_ENTRIES
    assert all(b.status is Status.FAILURE for b in walk(done) if b.host_handle != 1)
    assert overall_status(done) is Status.NEIGHBOR_ENTRIES


def test_failure_below_the_root_does_not_stop_the_traversal() -> None:
    attempt = attempt_failing({12: Status.FAILURE})
    done = complete_initiate(spec_example_tree(), attempt)
    assert done[1].status is Status.SUCCESS
    assert 105 in attempt.calls  # type: ignore[attr-defined]


def test_new_block_with_no_dependent_offloaded_is_partial_success() -> None:
    tree = build_tree([(new_neighbor(1), new_path(11), new_tcp(101))])
    done = complete_initiate(tree, attempt_failing({101: Status.TCP_ENTRIES}))
    assert done[0].dependents[0].status is Status.PARTIAL_SUCCESS  # the path itself was offloaded
    assert done[0].status is Status.SUCCESS  # its only dependent (the path) was offloaded
    assert overall_status(done) is Status.PARTIAL_SUCCESS


def test_placeholder_is_always_success() -> None:
    tree = build_tree([(PLACEHOLDER, LinkedObject(70, 11), new_tcp(101))])
    done = complete_initiate(tree, attempt_failing({101: Status.TCP_ENTRIES}))
    assert done[0].status is Status.SUCCESS
    assert done[0].dependents[0].status is Status.FAILURE  # a linker whose only dependent failed


def test_linker_success_when_all_dependents_offloaded() -> None:
    tree = build_tree(
        [(PLACEHOLDER, LinkedObject(70, 11), new_tcp(101)), (PLACEHOLDER, LinkedObject(70, 11), new_tcp(102))]
    )
    done = complete_initiate(tree, attempt_failing({}))
    assert done[0].dependents[0].status is Status.SUCCESS


def test_linker_partial_success_when_some_dependents_offloaded() -> None:
    tree = build_tree(
        [(PLACEHOLDER, LinkedObject(70, 11), new_tcp(101)), (PLACEHOLDER, LinkedObject(70, 11), new_tcp(102))]
    )
    done = complete_initiate(tree, attempt_failing({102: Status.TCP_RCV_WINDOW}))
    linker = done[0].dependents[0]
    assert linker.status is Status.PARTIAL_SUCCESS
    assert linker.target_handle == 70  # a linker's handle is the host's, never rewritten


def test_linker_failure_when_no_dependent_offloaded() -> None:
    tree = build_tree(
        [(PLACEHOLDER, LinkedObject(70, 11), new_tcp(101)), (PLACEHOLDER, LinkedObject(70, 11), new_tcp(102))]
    )
    done = complete_initiate(
        tree, attempt_failing({101: Status.TCP_ENTRIES, 102: Status.CONNECTION_REJECTED})
    )
    assert done[0].dependents[0].status is Status.FAILURE
    verify_initiate_completion(tree, done)


def test_aggregate_counts_partial_success_dependents_as_offloaded() -> None:
    assert aggregate(Role.NEW, [Status.PARTIAL_SUCCESS, Status.SUCCESS]) is Status.SUCCESS
    assert aggregate(Role.LINKER, [Status.PARTIAL_SUCCESS]) is Status.SUCCESS
    assert aggregate(Role.LINKER, []) is Status.SUCCESS
    assert aggregate(Role.PLACEHOLDER, [Status.FAILURE]) is Status.SUCCESS


def test_an_attempt_cannot_claim_partial_success_for_itself() -> None:
    with pytest.raises(ProtocolViolationError):
        complete_initiate(spec_example_tree(), lambda block: (Status.PARTIAL_SUCCESS, 1))


def test_an_offloaded_object_needs_a_handle() -> None:
    with pytest.raises(ProtocolViolationError, match="handle"):
        complete_initiate(spec_example_tree(), lambda block: (Status.SUCCESS, None))


# -- verifying a target's answer -----------------------------------------------------------------------------


def test_verify_accepts_every_answer_complete_initiate_gives() -> None:
    tree = spec_example_tree()
    for failing in (
        {},
        {1: Status.FAILURE},
        {11: Status.RESOURCES},
        {104: Status.TCP_ENTRIES, 105: Status.FAILURE},
    ):
        verify_initiate_completion(tree, complete_initiate(tree, attempt_failing(failing)))


def test_verify_rejects_success_above_a_failed_dependent() -> None:
    tree = spec_example_tree()
    done = complete_initiate(tree, attempt_failing({101: Status.TCP_ENTRIES}))
    path = done[0].dependents[0]
    forged_path = BlockList(
        path.layer,
        path.role,
        path.host_handle,
        path.target_handle,
        path.state,
        Status.SUCCESS,
        path.dependents,
    )
    forged = (
        BlockList(
            done[0].layer,
            done[0].role,
            1,
            done[0].target_handle,
            done[0].state,
            done[0].status,
            (forged_path, *done[0].dependents[1:]),
        ),
        done[1],
    )
    with pytest.raises(ProtocolViolationError, match="rules give PARTIAL_SUCCESS"):
        verify_initiate_completion(tree, forged)


def test_verify_rejects_a_dependent_of_a_failed_block_that_was_offloaded() -> None:
    tree = build_tree([(new_neighbor(1), new_path(11), new_tcp(101))])
    done = complete_initiate(tree, attempt_failing({}))
    path = done[0].dependents[0].with_result(Status.FAILURE)
    forged = (done[0].with_result(Status.PARTIAL_SUCCESS),)
    forged = (
        BlockList(
            Layer.NEIGHBOR,
            Role.NEW,
            1,
            forged[0].target_handle,
            forged[0].state,
            Status.PARTIAL_SUCCESS,
            (path,),
        ),
    )
    with pytest.raises(ProtocolViolationError):
        verify_initiate_completion(tree, forged)


def test_verify_rejects_a_missing_block_and_pending_statuses() -> None:
    tree = spec_example_tree()
    with pytest.raises(ProtocolViolationError, match="shape"):
        verify_initiate_completion(tree, tree[:1])
    with pytest.raises(ProtocolViolationError, match="PENDING"):
        verify_initiate_completion(tree, tree)


def test_verify_rejects_a_handle_for_a_failed_object() -> None:
    tree = build_tree([(new_neighbor(1), None, None)])
    forged = (tree[0].with_result(Status.NEIGHBOR_ENTRIES, target_handle=5),)
    with pytest.raises(ProtocolViolationError, match="target handle"):
        verify_initiate_completion(tree, forged)
