"""The offload state tree (chimney-spec 1.3, 3.1): neighbor -> path -> TCP blocks, shared, per-block status.

NDIS links blocks with ``NextBlock`` (same layer) and ``DependentBlockList`` (first block of the layer above).
Here a block holds its dependents as a tuple and a tree is a tuple of neighbor-layer blocks: tuple order is
the NextBlock chain. Tuples keep recursion three levels deep however many connections a call carries (a linked
``next`` chain of 10,000 blocks would recurse 10,000 deep in ``==``, ``repr`` and the codec).

Block roles in an initiate tree (spec 1.3 "Block roles"):

- PLACEHOLDER: no object at this layer; keeps the three levels. Status always SUCCESS.
- LINKER: an object the target already holds (``target_handle`` given), so that new dependents can attach. In
  query / update / invalidate / terminate trees every block that names an object is a linker.
- NEW: an object offloaded by this call; carries its full state; on success the target writes
  ``target_handle``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum

from tcpchimney.chimney._check import U64
from tcpchimney.chimney._check import int_range as _int
from tcpchimney.chimney.errors import ProtocolViolationError, TreeError
from tcpchimney.chimney.neighbor import NeighborCached, NeighborConst, NeighborDelegated, NeighborState
from tcpchimney.chimney.path import PathCached, PathConst, PathDelegated, PathState
from tcpchimney.chimney.status import INITIATE_BLOCK_STATUSES, Status
from tcpchimney.chimney.tcp_state import TcpCached, TcpConst, TcpDelegated, TcpSnapshot, check_offloadable


class Layer(IntEnum):
    NEIGHBOR = 0
    PATH = 1
    TCP = 2


class Role(IntEnum):
    PLACEHOLDER = 0
    LINKER = 1
    NEW = 2


FullState = NeighborState | PathState | TcpSnapshot
BlockState = (
    NeighborState
    | NeighborConst
    | NeighborCached
    | NeighborDelegated
    | PathState
    | PathConst
    | PathCached
    | PathDelegated
    | TcpSnapshot
    | TcpConst
    | TcpCached
    | TcpDelegated
)

_LAYER_OF_STATE: dict[type, Layer] = {
    NeighborState: Layer.NEIGHBOR,
    NeighborConst: Layer.NEIGHBOR,
    NeighborCached: Layer.NEIGHBOR,
    NeighborDelegated: Layer.NEIGHBOR,
    PathState: Layer.PATH,
    PathConst: Layer.PATH,
    PathCached: Layer.PATH,
    PathDelegated: Layer.PATH,
    TcpSnapshot: Layer.TCP,
    TcpConst: Layer.TCP,
    TcpCached: Layer.TCP,
    TcpDelegated: Layer.TCP,
}
_FULL_STATE: dict[Layer, type] = {
    Layer.NEIGHBOR: NeighborState,
    Layer.PATH: PathState,
    Layer.TCP: TcpSnapshot,
}


@dataclass(frozen=True, slots=True)
class BlockList:
    """One block (NDIS_MINIPORT_OFFLOAD_BLOCK_LIST).

    ``host_handle`` is the host's name for the object (NdisOffloadHandle): indications carry it back.
    ``target_handle`` is the target's (``*MiniportOffloadContext``): requests carry it.
    """

    layer: Layer
    role: Role
    host_handle: int | None = None
    target_handle: int | None = None
    state: BlockState | None = None
    status: Status = Status.PENDING
    dependents: tuple[BlockList, ...] = ()

    def __post_init__(self) -> None:
        host, target = self.host_handle, self.target_handle
        if host is not None and (type(host) is not int or not 0 <= host <= U64):
            _int(self, "host_handle", host, 0, U64)
        if target is not None and (type(target) is not int or not 0 <= target <= U64):
            _int(self, "target_handle", target, 0, U64)
        if self.state is not None and _LAYER_OF_STATE.get(type(self.state)) is not self.layer:
            raise TreeError(f"a {self.layer.name} block cannot carry {type(self.state).__name__}")
        self._check_role()
        for dep in self.dependents:
            if not isinstance(dep, BlockList) or dep.layer != self.layer + 1:
                raise TreeError(
                    f"a {self.layer.name} block's dependents must be {Layer(self.layer + 1).name}"
                    if self.layer < Layer.TCP
                    else "a TCP block has no dependents"
                )

    def _check_role(self) -> None:
        if self.role is Role.PLACEHOLDER:
            if self.host_handle is not None or self.target_handle is not None or self.state is not None:
                raise TreeError("a placeholder block names no object and carries no state")
        elif self.role is Role.LINKER:
            if self.target_handle is None:
                raise TreeError("a linker block needs the target's handle of the object")
        elif self.host_handle is None:
            raise TreeError("a new-offload block needs the host's handle of the object")

    def walk(self) -> Iterator[BlockList]:
        """This block, then its dependents depth-first (the order of spec 3.1 step 2)."""
        return walk((self,))

    def with_result(
        self, status: Status, target_handle: int | None = None, state: BlockState | None = None
    ) -> BlockList:
        """A copy with what the target writes: the status, and on success a handle and/or state.

        Only what changes is checked (as the constructor would): the rest of ``self`` was checked already."""
        if target_handle is None:
            target_handle = self.target_handle
        elif type(target_handle) is not int or not 0 <= target_handle <= U64:
            _int(self, "target_handle", target_handle, 0, U64)
        if state is None:
            state = self.state
        elif _LAYER_OF_STATE.get(type(state)) is not self.layer:
            raise TreeError(f"a {self.layer.name} block cannot carry {type(state).__name__}")
        if self.role is Role.PLACEHOLDER and (target_handle is not None or state is not None):
            raise TreeError("a placeholder block names no object and carries no state")
        return _trusted(self, status, target_handle, state, self.dependents)

    def with_dependents(self, dependents: tuple[BlockList, ...]) -> BlockList:
        """A copy with other dependents (a completed call's copies of them), checked for their layer only."""
        for dep in dependents:
            if not isinstance(dep, BlockList) or dep.layer != self.layer + 1:
                raise TreeError(f"a {self.layer.name} block's dependents must be of the layer above it")
        return _trusted(self, self.status, self.target_handle, self.state, dependents)


_new_block = object.__new__
_set = object.__setattr__


def _trusted(
    block: BlockList,
    status: Status,
    target_handle: int | None,
    state: BlockState | None,
    dependents: tuple[BlockList, ...],
) -> BlockList:
    """A copy of ``block`` with result fields, built without ``__post_init__``: for copies whose every
    field is already checked (the block's own, a handle checked by the caller, dependents built from the
    block's own dependents, so of the right layer)."""
    new = _new_block(BlockList)
    _set(new, "layer", block.layer)
    _set(new, "role", block.role)
    _set(new, "host_handle", block.host_handle)
    _set(new, "target_handle", target_handle)
    _set(new, "state", state)
    _set(new, "status", status)
    _set(new, "dependents", dependents)
    return new


Tree = tuple[BlockList, ...]


def walk(tree: Iterable[BlockList]) -> Iterator[BlockList]:
    """Depth-first / breadth-next: N1 -> P1 -> T1 -> T2 -> P2 -> T3 -> N2 -> ... (spec 3.1 step 2)."""
    out: list[BlockList] = []
    append = out.append
    for top in tree:  # nested loops, not nested generators: a tree is at most three levels deep
        append(top)
        for mid in top.dependents:
            append(mid)
            for low in mid.dependents:
                append(low)
                if low.dependents:  # never for a checked tree (TCP blocks have none); kept general
                    out.extend(walk(low.dependents))
    return iter(out)


def check_tree(tree: Tree) -> None:
    """Structural checks common to every call: a non-empty tuple of neighbor-layer blocks."""
    if not isinstance(tree, tuple) or not tree:
        raise TreeError("a tree is a non-empty tuple of blocks")
    for block in tree:
        if not isinstance(block, BlockList) or block.layer is not Layer.NEIGHBOR:
            raise TreeError(
                "a tree's top-level blocks are neighbor blocks (use placeholders for lower layers)"
            )


def check_initiate_tree(tree: Tree) -> None:
    """Initiate: new blocks carry their layer's full state, new objects hang below a known object (not a
    placeholder), and no object is offloaded twice in one call. Raises TreeError / NotOffloadableError."""
    check_tree(tree)
    seen: set[int] = set()
    for parent, block in walk_with_parents(tree):
        if block.role is not Role.NEW:
            if block.state is not None:
                raise TreeError("only new-offload blocks carry state in an initiate tree")
            continue
        if not isinstance(block.state, _FULL_STATE[block.layer]):
            raise TreeError(f"a new {block.layer.name} block carries {_FULL_STATE[block.layer].__name__}")
        if parent is not None and parent.role is Role.PLACEHOLDER:
            raise TreeError(
                f"a new {block.layer.name} object needs a new or linked parent, not a placeholder"
            )
        if block.host_handle in seen:  # host handles name objects across all three layers
            raise TreeError(f"object {block.host_handle} appears twice in one tree")
        seen.add(block.host_handle or 0)
        if isinstance(block.state, TcpSnapshot):
            check_offloadable(block.state)


def walk_with_parents(tree: Tree) -> Iterator[tuple[BlockList | None, BlockList]]:
    """``walk`` order, each block with its parent (None at the top)."""
    stack: list[tuple[BlockList | None, BlockList]] = [(None, b) for b in reversed(tree)]
    while stack:
        parent, block = stack.pop()
        yield parent, block
        stack.extend((block, d) for d in reversed(block.dependents))


# -- status aggregation (spec 3.1 step 4 and the block-role table) -------------------------------------------

Attempt = Callable[[BlockList], tuple[Status, int | None]]
"""The target's per-block work: offload a NEW block (or check a LINKER's handle); returns (status, handle)."""


def aggregate(role: Role, dependent_statuses: Iterable[Status]) -> Status:
    """The status of a block whose own offload succeeded, from its immediate dependents' statuses.

    Placeholder: always SUCCESS. New offload: SUCCESS if every immediate dependent was offloaded, else
    PARTIAL_SUCCESS (the block itself was). Linker: SUCCESS if all, PARTIAL_SUCCESS if some, FAILURE if none.
    A dependent counts as offloaded when its own status is SUCCESS or PARTIAL_SUCCESS.
    """
    if role is Role.PLACEHOLDER:
        return Status.SUCCESS
    offloaded = [s.ok for s in dependent_statuses]
    if all(offloaded):
        return Status.SUCCESS
    if role is Role.LINKER and not any(offloaded):
        return Status.FAILURE
    return Status.PARTIAL_SUCCESS


def complete_initiate(tree: Tree, attempt: Attempt) -> Tree:
    """Run an initiate over ``tree`` in depth-first / breadth-next order and write every block's status.

    - A block whose own offload fails gets that status; its dependents are not attempted and get FAILURE.
    - If a top-level (root) block fails, traversal stops: every later block gets FAILURE, unattempted
      (spec 3.1 step 4: "if the root fails, traversal stops").
    - Otherwise the status aggregates the immediate dependents' (``aggregate``).
    """
    done: list[BlockList] = []
    for index, root in enumerate(tree):
        block, own_ok = _complete_block(root, attempt)
        done.append(block)
        if not own_ok:
            done.extend(fail_unattempted(rest) for rest in tree[index + 1 :])
            break
    return tuple(done)


def _complete_block(block: BlockList, attempt: Attempt) -> tuple[BlockList, bool]:
    handle: int | None = None
    if block.role is not Role.PLACEHOLDER:
        own, handle = attempt(block)
        if own not in INITIATE_BLOCK_STATUSES or own is Status.PARTIAL_SUCCESS:
            raise ProtocolViolationError(f"a block's own offload result cannot be {own.name}")
        if own.ok and block.role is Role.NEW and handle is None:
            raise ProtocolViolationError("an offloaded object needs the target's handle")
        if not own.ok:
            deps = tuple(fail_unattempted(d) for d in block.dependents)
            target_handle = None if block.role is Role.NEW else block.target_handle
            return _trusted(block, own, target_handle, block.state, deps), False
        if handle is not None and (type(handle) is not int or not 0 <= handle <= U64):
            _int(block, "target_handle", handle, 0, U64)
    deps = tuple(_complete_block(d, attempt)[0] for d in block.dependents)
    status = aggregate(block.role, (d.status for d in deps))
    target_handle = handle if block.role is Role.NEW else block.target_handle
    return _trusted(block, status, target_handle, block.state, deps), True


def fail_unattempted(block: BlockList, status: Status = Status.FAILURE) -> BlockList:
    """``block`` and everything above it marked ``status`` (default FAILURE: not attempted). Placeholders stay
    SUCCESS: the role table says they always are."""
    deps = tuple(fail_unattempted(d, status) for d in block.dependents)
    if block.role is Role.PLACEHOLDER:
        return _trusted(block, Status.SUCCESS, None, None, deps)
    target_handle = None if block.role is Role.NEW else block.target_handle
    return _trusted(block, status, target_handle, block.state, deps)


def mark_all(tree: Tree, status: Status) -> Tree:
    """Every block of ``tree`` with ``status`` (a target that cannot do the call at all)."""
    return tuple(fail_unattempted(b, status) for b in tree)


def overall_status(tree: Tree) -> Status:
    """One status for a whole completed call: SUCCESS if every block succeeded, PARTIAL_SUCCESS if some object
    was offloaded, else the first failure's status."""
    statuses = [b.status for b in walk(tree) if b.role is not Role.PLACEHOLDER]
    if all(s is Status.SUCCESS for s in statuses):
        return Status.SUCCESS
    if any(s.ok for s in statuses):
        return Status.PARTIAL_SUCCESS
    return next(s for s in statuses if not s.ok)


def verify_initiate_completion(request: Tree, completed: Tree) -> None:
    """Raise ProtocolViolationError unless ``completed`` answers ``request`` by the rules of spec 3.1.

    The host calls this on every initiate completion: a target that reports an impossible status, drops a
    block or hands back a handle for a failed object is faulty, and the host must not trust its answer.
    """
    _same_shape(request, completed)
    attempted = True
    for block in completed:
        own_ok = _verify_block(block, attempted)
        attempted = attempted and own_ok  # a failed root stops the traversal


def _verify_block(block: BlockList, attempted: bool) -> bool:
    """Checks one completed block and its dependents; returns whether its own offload succeeded."""
    status = block.status
    if status not in INITIATE_BLOCK_STATUSES:
        raise ProtocolViolationError(f"{block.layer.name} block completed with {status.name}")
    if block.role is Role.PLACEHOLDER:
        if status is not Status.SUCCESS:
            raise ProtocolViolationError("a placeholder block always completes with SUCCESS")
        own_ok = True
    elif not attempted:
        if status is not Status.FAILURE:
            raise ProtocolViolationError("a block that was not attempted completes with FAILURE")
        own_ok = False
    elif block.role is Role.NEW:
        own_ok = status.ok
    else:  # a linker's FAILURE also means "none of my dependents was offloaded" (spec 1.3 role table)
        own_ok = status.ok or (
            status is Status.FAILURE
            and bool(block.dependents)
            and not any(d.status.ok for d in block.dependents)
        )
    if block.role is Role.NEW and own_ok != (block.target_handle is not None):
        raise ProtocolViolationError("a new block carries a target handle exactly when it was offloaded")
    for dep in block.dependents:
        _verify_block(dep, attempted and own_ok)
    if own_ok and attempted:
        expected = aggregate(block.role, (d.status for d in block.dependents))
        if status is not expected:
            raise ProtocolViolationError(
                f"{block.layer.name} block {block.host_handle}: status {status.name}, the rules give "
                f"{expected.name}"
            )
    return own_ok


def _same_shape(request: Tree, completed: Tree) -> None:
    if not isinstance(completed, tuple) or len(completed) != len(request):
        raise ProtocolViolationError("the completed tree does not have the request's shape")
    for a, b in zip(request, completed, strict=True):
        if (
            not isinstance(b, BlockList)
            or a.layer != b.layer
            or a.role != b.role
            or a.host_handle != b.host_handle
            or len(a.dependents) != len(b.dependents)
        ):
            raise ProtocolViolationError("the completed tree does not have the request's shape")
        if a.role is Role.LINKER and a.target_handle != b.target_handle:
            raise ProtocolViolationError("a target changed a linker's handle")
        if a.dependents:
            _same_shape(a.dependents, b.dependents)


def verify_state_call_completion(request: Tree, completed: Tree) -> None:
    """Query / update / invalidate / terminate: same shape, and each block SUCCESS, FAILURE or NOT_SUPPORTED
    (spec 3.0: partial success and resource codes are for initiate only)."""
    _same_shape(request, completed)
    for block in walk(completed):
        if block.status not in (Status.SUCCESS, Status.FAILURE, Status.NOT_SUPPORTED):
            raise ProtocolViolationError(f"{block.layer.name} block completed with {block.status.name}")


# -- building trees from (neighbor, path, tcp) triples -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewObject:
    """An object to offload: the host's handle and the layer's full state."""

    host_handle: int
    state: FullState


@dataclass(frozen=True, slots=True)
class LinkedObject:
    """An object the target already holds; ``state`` is what an update sends (cached state) or None."""

    target_handle: int
    host_handle: int | None = None
    state: BlockState | None = None


@dataclass(frozen=True, slots=True)
class Placeholder:
    """No object at this layer."""


PLACEHOLDER = Placeholder()
TreeNode = NewObject | LinkedObject | Placeholder


def build_tree(
    triples: Iterable[tuple[TreeNode, TreeNode | None, TreeNode | None]],
) -> Tree:
    """A tree from (neighbor, path, tcp) triples, sharing equal neighbors and paths, keeping first-seen order.

    A neighbor or path is the same object when it has the same host handle (new) or target handle (linked);
    ``None`` for the path or TCP node ends a triple early (e.g. terminating a path and its neighbor only).
    Raises TreeError when one object appears with two different states, a path under two neighbors, or a TCP
    connection twice.
    """
    if isinstance(triples, list | tuple) and len(triples) == 1 and None not in triples[0]:
        return (_chain(*triples[0]),)
    roots: dict[object, _Draft] = {}
    parent_of: dict[object, object] = {}
    for neighbor, path, tcp in triples:
        nkey = _key(neighbor)
        ndraft = roots.setdefault(nkey, _Draft(Layer.NEIGHBOR, neighbor))
        ndraft.check_same(neighbor)
        if path is None:
            if tcp is not None:
                raise TreeError("a TCP node needs a path node (use PLACEHOLDER)")
            continue
        pkey = _key(path)
        if parent_of.setdefault((Layer.PATH, pkey), nkey) != nkey and not isinstance(path, Placeholder):
            raise TreeError(f"path {pkey} appears under two neighbors")
        pdraft = ndraft.children.setdefault(pkey, _Draft(Layer.PATH, path))
        pdraft.check_same(path)
        if tcp is None:
            continue
        tkey = _key(tcp)
        if isinstance(tcp, Placeholder) or (Layer.TCP, tkey) in parent_of:
            raise TreeError(f"TCP node {tkey} is a placeholder or appears twice")
        parent_of[(Layer.TCP, tkey)] = pkey
        pdraft.children[tkey] = _Draft(Layer.TCP, tcp)
    return tuple(d.block() for d in roots.values())


def _chain(neighbor: TreeNode, path: TreeNode, tcp: TreeNode) -> BlockList:
    """The tree of one whole triple (one connection's hand-off, the common call): its three blocks,
    without the sharing bookkeeping."""
    if isinstance(tcp, Placeholder):
        raise TreeError(f"TCP node {_key(tcp)} is a placeholder or appears twice")
    low = _block(Layer.TCP, tcp, ())
    return _block(Layer.NEIGHBOR, neighbor, (_block(Layer.PATH, path, (low,)),))


def _block(layer: Layer, node: TreeNode, deps: tuple[BlockList, ...]) -> BlockList:
    if isinstance(node, NewObject):
        return BlockList(layer, Role.NEW, host_handle=node.host_handle, state=node.state, dependents=deps)
    if isinstance(node, LinkedObject):
        return BlockList(
            layer, Role.LINKER, node.host_handle, node.target_handle, node.state, dependents=deps
        )
    if isinstance(node, Placeholder):
        return BlockList(layer, Role.PLACEHOLDER, dependents=deps)
    raise TreeError(f"not a tree node: {node!r}")


def _key(node: TreeNode) -> object:
    if isinstance(node, NewObject):
        return ("new", node.host_handle)
    if isinstance(node, LinkedObject):
        return ("linked", node.target_handle)
    if isinstance(node, Placeholder):
        return ("placeholder",)
    raise TreeError(f"not a tree node: {node!r}")


class _Draft:
    __slots__ = ("children", "layer", "node")

    def __init__(self, layer: Layer, node: TreeNode) -> None:
        self.layer = layer
        self.node = node
        self.children: dict[object, _Draft] = {}

    def check_same(self, node: TreeNode) -> None:
        if node is not self.node and node != self.node:
            raise TreeError(f"{self.layer.name} object {_key(node)} given with two different states")

    def block(self) -> BlockList:
        return _block(self.layer, self.node, tuple(c.block() for c in self.children.values()))
