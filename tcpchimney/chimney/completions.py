"""Target -> host completions: exactly one per request, matched by ``request_id`` (spec 3.0, 4.1, 4.2).

``completion_for`` builds the completion a request gets when the target cannot do it at all; the NullTarget
answers everything with it.
"""

from __future__ import annotations

from dataclasses import dataclass

from tcpchimney.chimney._check import U32, U64, is_bytes
from tcpchimney.chimney._check import int_range as _int
from tcpchimney.chimney.errors import FieldRangeError
from tcpchimney.chimney.requests import (
    Disconnect,
    InitiateOffload,
    PostReceive,
    Request,
    Send,
)
from tcpchimney.chimney.status import Status
from tcpchimney.chimney.tree import BlockList, Tree, complete_initiate, mark_all


def _check(owner: Completion) -> None:
    _int(owner, "request_id", owner.request_id, 0, U64)
    if not isinstance(owner.status, Status) or owner.status is Status.PENDING:
        raise FieldRangeError(f"{type(owner).__name__}.status must be a final Status, got {owner.status!r}")


@dataclass(frozen=True, slots=True)
class Completion:
    """Completion of a call with no payload (Forward, ReturnReceive, ReachabilityReply)."""

    request_id: int
    status: Status

    def __post_init__(self) -> None:
        _check(self)


@dataclass(frozen=True, slots=True)
class StateCompletion(Completion):
    """Completion of a state call: the request's tree with a status in every block; query and terminate
    blocks carry the state read back. ``status`` sums the blocks up (``tree.overall_status``)."""

    tree: Tree

    def __post_init__(self) -> None:
        _check(self)
        if not isinstance(self.tree, tuple) or not all(isinstance(b, BlockList) for b in self.tree):
            raise FieldRangeError("StateCompletion.tree must be a tuple of blocks")


@dataclass(frozen=True, slots=True)
class SendCompletion(Completion):
    """SUCCESS: every byte was sent and ACKed by the peer. Otherwise ``bytes_acked`` were (spec 4.2)."""

    bytes_acked: int

    def __post_init__(self) -> None:
        _check(self)
        _int(self, "bytes_acked", self.bytes_acked, 0, U32)

    @property
    def partial(self) -> bool:
        return self.status is not Status.SUCCESS and self.bytes_acked > 0


@dataclass(frozen=True, slots=True)
class ReceiveCompletion(Completion):
    """A posted buffer completed with ``data`` (filled, or partly on PSH / push timer / failure), spec 4.1."""

    data: bytes

    def __post_init__(self) -> None:
        _check(self)
        is_bytes(self, "data", self.data)


@dataclass(frozen=True, slots=True)
class DisconnectCompletion(Completion):
    """Graceful: SUCCESS once the FIN and data were ACKed; abortive: SUCCESS once the RST was sent (3.6)."""

    bytes_acked: int = 0

    def __post_init__(self) -> None:
        _check(self)
        _int(self, "bytes_acked", self.bytes_acked, 0, U32)


AnyCompletion = Completion | StateCompletion | SendCompletion | ReceiveCompletion | DisconnectCompletion


def completion_type(request: Request) -> type[Completion]:
    """The completion class that answers ``request``."""
    if isinstance(request, Send):
        return SendCompletion
    if isinstance(request, PostReceive):
        return ReceiveCompletion
    if isinstance(request, Disconnect):
        return DisconnectCompletion
    if hasattr(request, "tree"):
        return StateCompletion
    return Completion


def completion_for(request: Request, status: Status) -> Completion:
    """The completion of ``request`` when the target does nothing but fail it with ``status``.

    Initiate trees follow spec 3.1: the first root fails with ``status``, which stops the traversal, so every
    other block is FAILURE (placeholders SUCCESS). Other state calls get ``status`` in every block.
    """
    kind = completion_type(request)
    if kind is StateCompletion:
        tree: Tree = request.tree  # type: ignore[union-attr]
        if isinstance(request, InitiateOffload):
            done = complete_initiate(tree, lambda _block: (status, None))
        else:
            done = mark_all(tree, status)
        return StateCompletion(request.request_id, status, done)
    if kind is SendCompletion:
        return SendCompletion(request.request_id, status, 0)
    if kind is ReceiveCompletion:
        return ReceiveCompletion(request.request_id, status, b"")
    if kind is DisconnectCompletion:
        return DisconnectCompletion(request.request_id, status)
    return Completion(request.request_id, status)
