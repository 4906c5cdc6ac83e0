"""Host -> target requests (chimney-spec 3). Each is a frozen value with a ``request_id`` that its completion
echoes; nothing in a request refers to a host object, so a request can cross a process boundary as bytes.

State calls carry a tree (``tree.Tree``). Data calls name the connection by ``ctx``: the target's handle,
written into the connection's block when it was offloaded (spec 1.3 "Handles").
"""

from __future__ import annotations

from dataclasses import dataclass

from tcpchimney.chimney._check import U32, U64, is_bytes, seconds
from tcpchimney.chimney._check import int_range as _int
from tcpchimney.chimney.errors import FieldRangeError, InvariantError, TreeError
from tcpchimney.chimney.neighbor import NeighborCached
from tcpchimney.chimney.path import PathCached
from tcpchimney.chimney.tcp_state import TcpCached
from tcpchimney.chimney.tree import (
    Layer,
    Role,
    Tree,
    check_initiate_tree,
    check_tree,
    walk,
    walk_with_parents,
)

TCP_HEADER_MIN = 20


def _ids(owner: object, *names: str) -> None:
    for name in names:
        _int(owner, name, getattr(owner, name), 0, U64)


def _existing_objects_only(tree: Tree, what: str, cached_state: bool) -> None:
    check_tree(tree)
    for block in walk(tree):
        if block.role is Role.NEW:
            raise TreeError(f"{what} names offloaded objects only: no new-offload blocks")
        if block.state is None:
            continue
        if not cached_state or not isinstance(block.state, NeighborCached | PathCached | TcpCached):
            raise TreeError(
                f"{what} blocks carry {'cached state or nothing' if cached_state else 'no state'}"
            )


@dataclass(frozen=True, slots=True)
class InitiateOffload:
    """Offload the NEW objects of ``tree`` (MiniportInitiateOffload, spec 3.1)."""

    request_id: int
    tree: Tree

    def __post_init__(self) -> None:
        _ids(self, "request_id")
        check_initiate_tree(self.tree)


@dataclass(frozen=True, slots=True)
class UpdateOffload:
    """Replace cached state of offloaded objects, or relink paths to a new neighbor (spec 3.3).

    A block with cached state updates that object; a path block (no state) under a neighbor block is
    relinked to that neighbor.
    """

    request_id: int
    tree: Tree

    def __post_init__(self) -> None:
        _ids(self, "request_id")
        _existing_objects_only(self.tree, "an update", cached_state=True)
        for parent, block in walk_with_parents(self.tree):
            if block.role is not Role.LINKER or block.state is not None:
                continue
            relink_root = block.layer is Layer.NEIGHBOR and bool(block.dependents)
            relinked_path = block.layer is Layer.PATH and parent is not None and parent.role is Role.LINKER
            if not (relink_root or relinked_path):
                raise TreeError("an update block carries cached state, or relinks paths to a neighbor")


@dataclass(frozen=True, slots=True)
class InvalidateOffload:
    """Stop sending on everything that depends on the named objects; the target asks for uploads (spec
    3.4)."""

    request_id: int
    tree: Tree

    def __post_init__(self) -> None:
        _ids(self, "request_id")
        _existing_objects_only(self.tree, "an invalidate", cached_state=False)


@dataclass(frozen=True, slots=True)
class QueryOffload:
    """Read the named objects' current state; the completion's blocks carry it (spec 3.2)."""

    request_id: int
    tree: Tree

    def __post_init__(self) -> None:
        _ids(self, "request_id")
        _existing_objects_only(self.tree, "a query", cached_state=False)


@dataclass(frozen=True, slots=True)
class TerminateOffload:
    """Upload the named objects; TCP blocks of the completion carry the delegated state and data (spec
    3.5)."""

    request_id: int
    tree: Tree

    def __post_init__(self) -> None:
        _ids(self, "request_id")
        _existing_objects_only(self.tree, "a terminate", cached_state=False)


@dataclass(frozen=True, slots=True)
class Send:
    """Queue ``data`` for transmission, FIFO (spec 3.6); completes once the peer ACKed it (4.2)."""

    request_id: int
    ctx: int
    data: bytes

    def __post_init__(self) -> None:
        _ids(self, "request_id", "ctx")
        is_bytes(self, "data", self.data)
        if not self.data:
            raise FieldRangeError("Send.data must not be empty")


@dataclass(frozen=True, slots=True)
class PostReceive:
    """Post an application buffer of ``size`` bytes (spec 3.6). ``size`` 0 only re-enables indications.

    ``push`` False = nonpush mode: complete only when full. ``filled``: bytes the host already placed.
    """

    request_id: int
    ctx: int
    size: int
    push: bool = True
    filled: int = 0

    def __post_init__(self) -> None:
        _ids(self, "request_id", "ctx")
        _int(self, "size", self.size, 0, U32)
        _int(self, "filled", self.filled, 0, U32)
        if self.filled > self.size:
            raise InvariantError("PostReceive.filled cannot exceed size")


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Graceful: send ``data`` then FIN (completes when ACKed). Abortive: RST now, no data (spec 3.6)."""

    request_id: int
    ctx: int
    abortive: bool = False
    data: bytes = b""

    def __post_init__(self) -> None:
        _ids(self, "request_id", "ctx")
        is_bytes(self, "data", self.data)
        if self.abortive and self.data:
            raise InvariantError("an abortive disconnect carries no data")


@dataclass(frozen=True, slots=True)
class Forward:
    """TCP segments (from the TCP header on) the host received for the connection and did not ACK (spec
    3.6)."""

    request_id: int
    ctx: int
    segments: tuple[bytes, ...]

    def __post_init__(self) -> None:
        _ids(self, "request_id", "ctx")
        if not isinstance(self.segments, tuple) or not self.segments:
            raise FieldRangeError("Forward.segments must be a non-empty tuple")
        for seg in self.segments:
            if not isinstance(seg, bytes) or len(seg) < TCP_HEADER_MIN:
                raise FieldRangeError("each forwarded segment is bytes starting at a TCP header")


@dataclass(frozen=True, slots=True)
class ReturnReceive:
    """The host's answer to a ReceiveIndication: it took ``consumed`` bytes (spec 4.1 SUCCESS /
    DATA_PARTIALLY_ACCEPTED / DATA_NOT_ACCEPTED); the target keeps and later re-offers the rest."""

    request_id: int
    ctx: int
    indication_id: int
    consumed: int

    def __post_init__(self) -> None:
        _ids(self, "request_id", "ctx", "indication_id")
        _int(self, "consumed", self.consumed, 0, U32)


@dataclass(frozen=True, slots=True)
class ReachabilityReply:
    """The host's answer to a NeighborReachabilityQuery: its HRD, 0.0 when its entry is stale (spec 4.6)."""

    request_id: int
    ctx: int
    indication_id: int
    host_reachability_delta: float

    def __post_init__(self) -> None:
        _ids(self, "request_id", "ctx", "indication_id")
        seconds(self, "host_reachability_delta", self.host_reachability_delta)


StateRequest = InitiateOffload | UpdateOffload | InvalidateOffload | QueryOffload | TerminateOffload
DataRequest = Send | PostReceive | Disconnect | Forward | ReturnReceive | ReachabilityReply
Request = StateRequest | DataRequest
STATE_REQUESTS: tuple[type, ...] = (
    InitiateOffload,
    UpdateOffload,
    InvalidateOffload,
    QueryOffload,
    TerminateOffload,
)
