"""Typed events the host stack reports to its owner (the runtime, the API layer, the offload manager)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

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


HostEvent = (
    ConnectionEvent | IncomingConnection | EchoReply | NeighborChanged | NeighborUnreachable | PathMtuChanged
)
