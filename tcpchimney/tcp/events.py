"""Typed events a connection engine reports; the host maps them to application wake-ups and counters."""

from __future__ import annotations

from dataclasses import dataclass

from tcpchimney.tcp.state import TcpState


@dataclass(frozen=True, slots=True)
class StateChanged:
    old: TcpState
    new: TcpState


@dataclass(frozen=True, slots=True)
class Connected:
    """The handshake completed (ESTABLISHED reached)."""


@dataclass(frozen=True, slots=True)
class DataReceived:
    """In-order data became readable; ``readable`` is the total now buffered."""

    readable: int


@dataclass(frozen=True, slots=True)
class SendSpace:
    """Send-buffer space was freed by an ACK; ``space`` is what send() would accept now."""

    space: int


@dataclass(frozen=True, slots=True)
class PeerClosed:
    """The peer's FIN arrived and every byte before it is readable (read returns EOF after them)."""


@dataclass(frozen=True, slots=True)
class ConnectionReset:
    """An acceptable RST arrived (ECONNRESET, or ECONNREFUSED in SYN-SENT)."""

    refused: bool = False


@dataclass(frozen=True, slots=True)
class ConnectionTimedOut:
    """Retransmissions, SYN retries or keepalive probes were exhausted (ETIMEDOUT)."""


@dataclass(frozen=True, slots=True)
class ConnectionUnreachable:
    """The handshake failed because the destination cannot be reached (EHOSTUNREACH): the next hop did not
    answer neighbor resolution while SYN-SENT."""


@dataclass(frozen=True, slots=True)
class Closed:
    """The connection reached CLOSED; the owner may forget it."""


@dataclass(frozen=True, slots=True)
class SegmentDropped:
    """A received segment was discarded, or part of it: ``reason`` is a stable counter key (e.g. 'paws',
    'out_of_window'; 'sack_scoreboard_full' when the ACK was processed but SACK ranges past the
    scoreboard's bound were not)."""

    reason: str


TcpEvent = (
    StateChanged
    | Connected
    | DataReceived
    | SendSpace
    | PeerClosed
    | ConnectionReset
    | ConnectionTimedOut
    | ConnectionUnreachable
    | Closed
    | SegmentDropped
)
