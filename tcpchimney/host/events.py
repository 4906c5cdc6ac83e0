"""Typed events the host stack reports to its owner (the runtime, the API layer, the offload manager)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tcpchimney.chimney.reason import Reason
from tcpchimney.tcp.events import TcpEvent

if TYPE_CHECKING:
    from tcpchimney.host.listener import Listener
    from tcpchimney.host.sockets import TcpSocket


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    """An event of one connection's engine (Connected, DataReceived, PeerClosed, Closed, ...)."""

    sock: TcpSocket
    tcp_event: TcpEvent


@dataclass(frozen=True, slots=True)
class IncomingConnection:
    """A connection completed its handshake and waits in the listener's accept queue."""

    listener: Listener


@dataclass(frozen=True, slots=True)
class EchoReply:
    """An ICMP echo reply arrived for ``ping``; ``rtt`` is None when the request was not ours to time."""

    src_ip: bytes
    ident: int
    seq: int
    payload: bytes
    rtt: float | None


@dataclass(frozen=True, slots=True)
class NeighborChanged:
    """A neighbor's MAC changed (e.g. gratuitous ARP): offloaded paths through it need an update."""

    ip: bytes
    old_mac: bytes
    new_mac: bytes


@dataclass(frozen=True, slots=True)
class NeighborUnreachable:
    """Resolution of a neighbor failed after every retry; packets queued for it were dropped."""

    ip: bytes
    dropped: int


@dataclass(frozen=True, slots=True)
class PathMtuChanged:
    """An ICMP 'fragmentation needed' lowered the path MTU to ``dst`` (RFC 1191)."""

    dst: bytes
    mtu: int


@dataclass(frozen=True, slots=True)
class Offloaded:
    """The target took the connection; ``duration`` from the initiate to its completion (seconds)."""

    sock: TcpSocket
    duration: float


@dataclass(frozen=True, slots=True)
class OffloadRefused:
    """The connection stays on the host: the policy, a rule, the target or its state said no (``reason``)."""

    sock: TcpSocket
    reason: Reason


@dataclass(frozen=True, slots=True)
class OffloadDeferred:
    """The connection is not eligible yet (``reason``: automatic mode's threshold) and stays on the host
    for now; it is examined again and offloaded once it qualifies. Not a refusal."""

    sock: TcpSocket
    reason: Reason


@dataclass(frozen=True, slots=True)
class Uploaded:
    """The connection is back on the host; ``duration`` from the terminate to its completion (seconds).
    Every terminate of a connection reports one, also the one that frees the target's entry of a connection
    that ended there (Reason.CLOSED, Reason.ABORTED)."""

    sock: TcpSocket
    reason: Reason
    duration: float


@dataclass(frozen=True, slots=True)
class OffloadFault:
    """The target broke the contract (``detail``); the host uploaded or aborted ``sock`` (None: no single
    connection was affected) and kept running. ``reason`` is what the host did it for."""

    sock: TcpSocket | None
    reason: Reason
    detail: str


@dataclass(frozen=True, slots=True)
class OffloadCallDone:
    """A state call about an offloaded connection completed: ``call`` is "update" (socket options the
    target caches), "query" (the host's check of a silent connection) or "inspect" (an administrator's
    look, ``chimney netstat -i``); ``ok`` whether the target carried it out; ``duration`` from submit to
    completion (seconds). Nothing changes hands: for ``chimney history``."""

    sock: TcpSocket
    call: str
    ok: bool
    duration: float


OffloadEvent = Offloaded | OffloadRefused | OffloadDeferred | Uploaded | OffloadFault | OffloadCallDone

HostEvent = (
    ConnectionEvent
    | IncomingConnection
    | EchoReply
    | NeighborChanged
    | NeighborUnreachable
    | PathMtuChanged
    | OffloadEvent
)
