"""Host-side bookkeeping of offloaded objects: the preconditions of chimney-spec 3.1-3.6 as pure checks.

The host calls ``submit`` before handing a request to the target (it raises a precise PreconditionError
when the request is not allowed now, and records it otherwise) and ``complete`` with every completion (it
matches the request, checks the answer keeps the contract, raising ProtocolViolationError for a faulty
target, and applies it). Nothing here runs a connection or talks to a target.

Objects are named by the host's handles, unique across layers. Rules enforced:

- no second offload of an object offloaded or being offloaded (3.1); linkers name objects the target holds;
- no call on an object whose offload is in flight: the host queues I/O until the completion (3.1);
- one update at a time per object, never on an invalidated object (3.3);
- a neighbor or path is terminated only with no dependents left, unless they go in the same call (3.5);
- a TCP connection is terminated only once its updates, queries and invalidates completed (3.5);
- no data call after a terminate was submitted (3.5).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import Enum

from tcpchimney.chimney.completions import (
    Completion,
    ReceiveCompletion,
    SendCompletion,
    StateCompletion,
    completion_type,
)
from tcpchimney.chimney.errors import (
    AlreadyOffloadedError,
    DependentsRemainError,
    InvalidatedError,
    OperationInFlightError,
    PreconditionError,
    ProtocolViolationError,
    UnknownObjectError,
)
from tcpchimney.chimney.requests import (
    InitiateOffload,
    InvalidateOffload,
    PostReceive,
    QueryOffload,
    ReachabilityReply,
    Request,
    Send,
    TerminateOffload,
    UpdateOffload,
)
from tcpchimney.chimney.status import Status
from tcpchimney.chimney.tcp_state import TcpDelegated, TcpSnapshot
from tcpchimney.chimney.tree import (
    BlockList,
    Layer,
    Role,
    verify_initiate_completion,
    verify_state_call_completion,
    walk,
    walk_with_parents,
)


class Phase(Enum):
    OFFLOADING = "offloading"
    OFFLOADED = "offloaded"
    TERMINATING = "terminating"


@dataclass(slots=True)
class ObjectRecord:
    layer: Layer
    host_handle: int
    parent: int | None  # host handle of the neighbor (for a path) or path (for a TCP connection)
    phase: Phase = Phase.OFFLOADING
    target_handle: int | None = None
    dependents: int = 0  # linked (or being linked) objects of the layer above
    invalidated: bool = False
    updating: bool = False
    pending_calls: int = 0  # queries and invalidates in flight
    requests: set[int] = field(default_factory=set)


class OffloadRegistry:
    def __init__(self) -> None:
        self._objects: dict[int, ObjectRecord] = {}
        self._by_target: dict[int, int] = {}
        self._in_flight: dict[int, Request] = {}

    # -- reading -------------------------------------------------------------------------------------------

    def __contains__(self, host_handle: object) -> bool:
        return host_handle in self._objects

    def __len__(self) -> int:
        return len(self._objects)

    def record(self, host_handle: int) -> ObjectRecord:
        try:
            return self._objects[host_handle]
        except KeyError:
            raise UnknownObjectError(f"object {host_handle} is not offloaded") from None

    def by_target(self, target_handle: int) -> ObjectRecord:
        host = self._by_target.get(target_handle)
        if host is None:
            raise UnknownObjectError(f"no offloaded object has target handle {target_handle}")
        return self._objects[host]

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    # -- submitting ----------------------------------------------------------------------------------------

    def submit(self, request: Request) -> None:
        """Check ``request``'s preconditions and record it; raises PreconditionError (nothing recorded)."""
        if request.request_id in self._in_flight:
            raise PreconditionError(f"request id {request.request_id} is already in flight")
        if isinstance(request, InitiateOffload):
            self._submit_initiate(request)
        elif isinstance(request, UpdateOffload):
            self._submit_update(request)
        elif isinstance(request, InvalidateOffload | QueryOffload):
            self._submit_read_or_invalidate(request)
        elif isinstance(request, TerminateOffload):
            self._submit_terminate(request)
        else:
            self._submit_data(request)
        self._in_flight[request.request_id] = request

    def _usable(self, target_handle: int | None, what: str) -> ObjectRecord:
        rec = self.by_target(target_handle if target_handle is not None else -1)
        if rec.phase is not Phase.OFFLOADED:
            raise OperationInFlightError(f"{what}: object {rec.host_handle} is {rec.phase.value}")
        return rec

    def _submit_initiate(self, request: InitiateOffload) -> None:
        parents: dict[int, int | None] = {}
        for parent, block in walk_with_parents(request.tree):
            if block.role is Role.LINKER:
                rec = self._usable(block.target_handle, "link")
                if rec.invalidated:
                    raise InvalidatedError(
                        f"cannot attach new objects to invalidated object {rec.host_handle}"
                    )
            elif block.role is Role.NEW:
                assert block.host_handle is not None  # BlockList checks it
                if block.host_handle in self._objects:
                    raise AlreadyOffloadedError(
                        f"object {block.host_handle} is {self._objects[block.host_handle].phase.value}"
                    )
                parents[block.host_handle] = self._host_of(parent)
        for block in walk(request.tree):
            if block.role is Role.NEW and block.host_handle is not None:
                self._add(block, parents[block.host_handle])

    def _host_of(self, block: BlockList | None) -> int | None:
        if block is None or block.role is Role.PLACEHOLDER:
            return None
        if block.role is Role.NEW:
            return block.host_handle
        return self.by_target(block.target_handle or 0).host_handle

    def _add(self, block: BlockList, parent: int | None) -> None:
        assert block.host_handle is not None
        self._objects[block.host_handle] = ObjectRecord(block.layer, block.host_handle, parent)
        if parent is not None:
            self._objects[parent].dependents += 1

    def _named(self, request: Request) -> list[ObjectRecord]:
        tree = request.tree  # type: ignore[union-attr]
        return [self.by_target(b.target_handle or 0) for b in walk(tree) if b.role is Role.LINKER]

    def _submit_update(self, request: UpdateOffload) -> None:
        named = self._named(request)
        for rec in named:
            self._usable(rec.target_handle, "update")
            if rec.invalidated:
                raise InvalidatedError(f"object {rec.host_handle} was invalidated: it is never updated")
            if rec.updating:
                raise OperationInFlightError(f"object {rec.host_handle} already has an update in flight")
        for rec in named:
            rec.updating = True

    def _submit_read_or_invalidate(self, request: InvalidateOffload | QueryOffload) -> None:
        named = self._named(request)
        for rec in named:
            self._usable(rec.target_handle, type(request).__name__)
        for rec in named:
            rec.pending_calls += 1
            if isinstance(request, InvalidateOffload):
                rec.invalidated = True

    def _submit_terminate(self, request: TerminateOffload) -> None:
        named = self._named(request)
        going = Counter(o.parent for o in named)  # dependents leaving in this same call, per parent
        for rec in named:
            self._usable(rec.target_handle, "terminate")
            if rec.updating or rec.pending_calls:
                raise OperationInFlightError(
                    f"object {rec.host_handle}: wait for its update/query/invalidate before terminating it"
                )
            staying = rec.dependents - going[rec.host_handle]
            if staying > 0:
                raise DependentsRemainError(
                    f"{rec.layer.name} object {rec.host_handle} still has {staying} dependent(s)"
                )
        for rec in named:
            rec.phase = Phase.TERMINATING

    def _submit_data(self, request: Request) -> None:
        ctx: int = request.ctx  # type: ignore[union-attr]
        rec = self._usable(ctx, type(request).__name__)
        wanted = Layer.NEIGHBOR if isinstance(request, ReachabilityReply) else Layer.TCP
        if rec.layer is not wanted:
            raise PreconditionError(f"{type(request).__name__} needs a {wanted.name} object")

    # -- completing ----------------------------------------------------------------------------------------

    def complete(self, completion: Completion) -> Request:
        """Match ``completion`` to its request, check it, apply it; returns the request it answers."""
        request = self._in_flight.get(completion.request_id)
        if request is None:
            raise ProtocolViolationError(f"completion for request {completion.request_id}, never requested")
        if type(completion) is not completion_type(request):
            raise ProtocolViolationError(
                f"{type(request).__name__} answered with {type(completion).__name__}"
            )
        if isinstance(completion, StateCompletion):
            try:
                self._check_tree_answer(request, completion)
            except ProtocolViolationError:
                if isinstance(request, InitiateOffload):
                    del self._in_flight[completion.request_id]
                    self._salvage_initiate(request, completion)
                raise
        else:
            _check_data_answer(request, completion)
        del self._in_flight[completion.request_id]
        if isinstance(request, InitiateOffload):
            self._apply_initiate(completion)  # type: ignore[arg-type]
        elif isinstance(request, UpdateOffload):
            self._apply_update(request, completion)  # type: ignore[arg-type]
        elif isinstance(request, InvalidateOffload | QueryOffload):
            for rec in self._named(request):
                rec.pending_calls -= 1
        elif isinstance(request, TerminateOffload):
            self._apply_terminate(completion)  # type: ignore[arg-type]
        return request

    def _check_tree_answer(self, request: Request, completion: StateCompletion) -> None:
        tree = request.tree  # type: ignore[union-attr]
        if isinstance(request, InitiateOffload):
            verify_initiate_completion(tree, completion.tree)
            given: set[int] = set()
            for block in walk(completion.tree):
                handle = block.target_handle
                if block.role is not Role.NEW or handle is None:
                    continue
                if handle in self._by_target:
                    raise ProtocolViolationError(f"target handle {handle} is already in use")
                if handle in given:
                    raise ProtocolViolationError(f"target handle {handle} is given to two objects")
                given.add(handle)
            return
        verify_state_call_completion(tree, completion.tree)
        if isinstance(request, TerminateOffload):
            for block in walk(completion.tree):
                uploaded = block.layer is Layer.TCP and block.role is Role.LINKER and block.status.ok
                if uploaded and not isinstance(block.state, TcpDelegated | TcpSnapshot):
                    raise ProtocolViolationError("a terminated TCP block must carry its delegated state")

    def _salvage_initiate(self, request: InitiateOffload, completion: StateCompletion) -> None:
        """A faulty initiate answer settles its request all the same (left in flight, its objects would stay
        OFFLOADING for ever): an object counts as held by the target when the answer has a successful block
        for it with a handle of its own (none in use, none given twice) under a parent that counts as held
        too, so that the host can terminate it; every other object of the request is forgotten."""
        answered: dict[int, BlockList] = {}
        handles: Counter[int] = Counter()
        for block in walk(completion.tree):
            if block.role is Role.NEW and block.host_handle is not None:
                answered.setdefault(block.host_handle, block)
                if block.target_handle is not None:
                    handles[block.target_handle] += 1
        for block in walk(request.tree):  # parents before their dependents
            if block.role is not Role.NEW or block.host_handle is None:
                continue
            rec = self._objects[block.host_handle]
            got = answered.get(block.host_handle)
            held = (
                got is not None
                and got.layer is block.layer
                and got.status.ok
                and got.target_handle is not None
                and got.target_handle not in self._by_target
                and handles[got.target_handle] == 1
                and self._parent_held(rec)
            )
            if held and got is not None and got.target_handle is not None:
                rec.phase = Phase.OFFLOADED
                rec.target_handle = got.target_handle
                self._by_target[got.target_handle] = rec.host_handle
            else:
                self._forget(rec)

    def _parent_held(self, rec: ObjectRecord) -> bool:
        parent = self._objects.get(rec.parent) if rec.parent is not None else None
        return rec.parent is None or (parent is not None and parent.phase is not Phase.OFFLOADING)

    def abandon(self, request_id: int) -> None:
        """The request never reached the target (its ``submit`` raised): undo what ``submit`` recorded.
        The objects a terminate named are forgotten: the host will not get them back from this target."""
        request = self._in_flight.pop(request_id, None)
        if isinstance(request, InitiateOffload):
            for block in walk(request.tree):
                if block.role is Role.NEW and block.host_handle in self._objects:
                    self._forget(self._objects[block.host_handle])
        elif isinstance(request, UpdateOffload | InvalidateOffload | QueryOffload | TerminateOffload):
            for rec in reversed(self._named(request)):  # dependents before the objects they hang on
                rec.updating = rec.updating and not isinstance(request, UpdateOffload)
                if isinstance(request, InvalidateOffload | QueryOffload):
                    rec.pending_calls -= 1
                elif isinstance(request, TerminateOffload):
                    self._forget(rec)

    def _apply_initiate(self, completion: StateCompletion) -> None:
        for block in walk(completion.tree):
            if block.role is not Role.NEW or block.host_handle is None:
                continue
            rec = self._objects[block.host_handle]
            if block.status.ok and block.target_handle is not None:
                rec.phase = Phase.OFFLOADED
                rec.target_handle = block.target_handle
                self._by_target[block.target_handle] = rec.host_handle
            else:
                self._forget(rec)

    def _apply_update(self, request: UpdateOffload, completion: StateCompletion) -> None:
        for parent, block in walk_with_parents(completion.tree):
            if block.role is not Role.LINKER:
                continue
            rec = self.by_target(block.target_handle or 0)
            rec.updating = False
            relinked = block.state is None and block.layer is Layer.PATH and parent is not None
            if relinked and block.status is Status.SUCCESS and parent is not None:
                self._relink(rec, self.by_target(parent.target_handle or 0))

    def _relink(self, path: ObjectRecord, neighbor: ObjectRecord) -> None:
        if path.parent == neighbor.host_handle:
            return
        if path.parent is not None:
            self._objects[path.parent].dependents -= 1
        path.parent = neighbor.host_handle
        neighbor.dependents += 1

    def _apply_terminate(self, completion: StateCompletion) -> None:
        for block in reversed(list(walk(completion.tree))):  # dependents before the objects they hang on
            if block.role is not Role.LINKER:
                continue
            rec = self.by_target(block.target_handle or 0)
            if block.status is Status.NOT_SUPPORTED:
                rec.phase = Phase.OFFLOADED
            else:  # SUCCESS: uploaded; FAILURE: the target lost the state (spec 3.5 step 9)
                self._forget(rec)

    def _forget(self, rec: ObjectRecord) -> None:
        del self._objects[rec.host_handle]
        if rec.target_handle is not None:
            self._by_target.pop(rec.target_handle, None)
        if rec.parent is not None and rec.parent in self._objects:
            self._objects[rec.parent].dependents -= 1


def _check_data_answer(request: Request, completion: Completion) -> None:
    """A data call's answer stays within what was asked: no more bytes than the posted buffer holds (spec
    4.1), no more acknowledged than the Send carried (4.2)."""
    if isinstance(request, PostReceive) and isinstance(completion, ReceiveCompletion):
        got, room = len(completion.data), request.size - request.filled
        if got > room:
            raise ProtocolViolationError(f"receive completion has {got} bytes, over the {room}-byte buffer")
    elif isinstance(request, Send) and isinstance(completion, SendCompletion):
        acked, sent = completion.bytes_acked, len(request.data)
        if acked > sent:
            raise ProtocolViolationError(f"send completion acknowledges {acked} bytes of a {sent}-byte Send")
