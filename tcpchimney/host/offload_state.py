"""The host's offload records: a connection's offload state and record, the shared neighbor and path
objects, a call in flight; the limits and state tables the phases share."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from tcpchimney.chimney.reason import Reason
from tcpchimney.chimney.status import Status
from tcpchimney.chimney.tcp_state import TcpCached, TcpConst, TcpDelegated
from tcpchimney.chimney.tree import Layer
from tcpchimney.host.piece_queue import PieceQueue
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire.seq import SeqNum

if TYPE_CHECKING:
    from tcpchimney.host.sockets import TcpSocket


_SEQ0 = SeqNum(0)
MAX_SEND_CHUNK = 256 * 1024  # bytes per Send request: one NBL each (contract), bounded for the codec
# The most an offloaded socket accepts beyond SO_SNDBUF on the target's SendBacklogChanged (Linux's default
# tcp_wmem maximum, the bound of its own send-buffer autotuning).
MAX_SEND_BACKLOG = 4 << 20
# The target's silence (docs/offload-contract.md "What the host checks"): a state call it has not answered
# in STATE_CALL_TIMEOUT was lost; a connection it said nothing about for SILENCE is queried, and a state that
# shows something owed (data never indicated, a completion never sent) twice in a row is a fault.
STATE_CALL_TIMEOUT = 5.0
SILENCE = 5.0
WATCH_INTERVAL = 1.0
OFFLOADABLE_NOW = frozenset({TcpState.ESTABLISHED, TcpState.CLOSE_WAIT})
OPEN_FOR_SEND = frozenset({TcpState.ESTABLISHED, TcpState.CLOSE_WAIT})
REFUSAL_FOR_STATUS = {
    Status.NOT_SUPPORTED: Reason.TARGET_NOT_SUPPORTED,
    Status.TCP_ENTRIES: Reason.TARGET_FULL,
    Status.PATH_ENTRIES: Reason.TARGET_FULL,
    Status.NEIGHBOR_ENTRIES: Reason.TARGET_FULL,
    Status.TCP_RCV_WINDOW: Reason.RCV_WINDOW_UNSUPPORTED,
    Status.PATH_MTU: Reason.PATH_MTU_UNSUPPORTED,
    Status.VLAN_ENTRIES: Reason.VLAN_UNSUPPORTED,
    Status.VLAN_MISMATCH: Reason.VLAN_UNSUPPORTED,
}


class OffloadState(Enum):
    IN_HOST = "in_host"
    OFFLOADING = "offloading"
    OFFLOADED = "offloaded"
    UPLOADING = "uploading"


@dataclass(eq=False, slots=True)
class SharedObject:
    """A neighbor (keyed by next-hop IP) or path (keyed by destination IP) the host offloaded or offers."""

    layer: Layer
    handle: int
    key: bytes
    sent: bytes | int  # the cached value the target has: neighbor MAC or path MTU
    parent: SharedObject | None = None
    target_handle: int | None = None
    pending: bool = False  # a change waits for the update in flight
    # Paths: connections reset for a fault while the target may still hold a copy of them here (an answer
    # the host could not trust); their peers are probed again once the path is terminated (_reprobe).
    lost: list[TcpSocket] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Inspected:
    """What a query of an offloaded connection showed (its figures, not its data) and when (``at``)."""

    at: float
    cwnd: int
    ssthresh: int
    srtt: float | None
    rttvar: float
    rto: float
    snd_wnd: int
    rcv_wnd: int
    unacked: int  # SND.NXT - SND.UNA
    retransmit_count: int
    send_q: int  # bytes of send data the target holds (unacknowledged and unsent)
    recv_q: int  # received bytes the target holds, not yet delivered to the host

    @classmethod
    def of(cls, d: TcpDelegated, at: float) -> Inspected:
        unacked = max(0, d.snd_nxt.dist(d.snd_una))
        return cls(
            at, d.cwnd, d.ssthresh, d.srtt, d.rttvar, d.rto, d.snd_wnd, d.rcv_wnd, unacked,
            d.retransmit_count, len(d.send_data), len(d.buffered_data),
        )  # fmt: skip


@dataclass(eq=False, slots=True)
class ConnOffload:
    """One connection's offload record (the host's half of spec 9.1's per-connection state machine)."""

    state: OffloadState = OffloadState.IN_HOST
    reason: Reason | None = None  # the last decision's reason (refusal or upload)
    handle: int = 0  # host handle of the TCP object in the current offload
    ctx: int | None = None  # the target's handle while offloaded
    path: SharedObject | None = None
    started: float = 0.0  # when the current initiate or terminate was submitted
    tcp_state: TcpState = TcpState.ESTABLISHED  # last known state while not on the host engine
    const: TcpConst | None = None
    cached: TcpCached | None = None
    rcvq: PieceQueue = field(default_factory=PieceQueue)  # received bytes the application has not read
    held: list[bytes] = field(default_factory=list)  # segments (TCP header on) received while moving
    queued: PieceQueue = field(default_factory=PieceQueue)  # application bytes not yet given to anyone
    inflight: deque[tuple[int, bytes]] = field(default_factory=deque)  # Sends not completed SUCCESS
    returned: bytearray = field(default_factory=bytearray)  # unACKed rest of Sends completed otherwise
    outstanding: int = 0  # bytes given to the target and not yet ACKed (counts against snd_buf)
    base_una: SeqNum = _SEQ0  # SND.UNA at offload
    base_end: SeqNum = _SEQ0  # end of the send data at offload
    rcv_end: SeqNum = _SEQ0  # sequence number of the next byte the host expects from the target
    last_indication: int | None = None  # the ReceiveIndication the host answered last
    # Bytes the host took from indications, by ReturnReceive request id, until the target confirms it
    # consumed them: an upload may hand them back (an overlap), and must hand back exactly these.
    unconfirmed: deque[tuple[int, bytes]] = field(default_factory=deque)
    submitted: int = 0  # bytes given in Sends since the offload
    acked: int = 0  # bytes the target reported ACKed (completions)
    send_blocked: bool = False
    fin_pending: bool = False  # shutdown/close asked: FIN after the queued data
    fin_sent: bool = False  # Disconnect submitted
    closed: bool = False  # the application closed: nobody reads any more
    aborted: bool = False
    finished: bool = False  # Closed was reported: only clean-up remains
    peer_fin: bool = False  # PeerClosed was reported
    reset: bool = False  # the peer reset the connection
    rst_sent: bool = False  # an abortive Disconnect went to the target
    taken: int = 0  # bytes the host took from the target since the offload
    trim: int = 0  # returned buffered bytes the host already had (a faulty target's overlap)
    target_holds: bool = False  # the target kept data we could not take; post to get it again
    upload_after: Reason | None = None  # an upload asked while a call was in flight
    update_pending: bool = False  # socket options changed while an update was in flight
    updating: bool = False
    refused_by_target: bool = False
    backlog: int = 0  # the target's preferred send backlog (SendBacklogChanged); 0: none indicated
    forced: bool = False  # offload_now waits for a neighbor / path: the mode must not judge it again
    moved_before: int = 0  # automatic mode: bytes moved by earlier engines of this connection
    una0: SeqNum = _SEQ0
    rcv0: SeqNum = _SEQ0
    heard: float = 0.0  # when the target last said something about the connection
    querying: bool = False  # a QueryOffload of it is in flight
    suspect: str | None = None  # what its last query showed owed (a fault if the next one shows it too)
    after_query: tuple[Reason] | None = None  # a terminate (with its reason) waits for the query
    inspected: Inspected | None = None  # the target's answer to the last query (chimney netstat -i)

    @property
    def in_host(self) -> bool:
        return self.state is OffloadState.IN_HOST

    @property
    def away(self) -> bool:
        """Socket calls go to the manager: the connection is not on the host engine, or it is finished
        (its engine may be a frozen copy that must not take calls any more)."""
        return self.state is not OffloadState.IN_HOST or self.finished


@dataclass(slots=True)
class Pending:
    kind: str  # "initiate", "terminate", "update", "send", "data", "neighbor", "relink"
    sock: TcpSocket | None
    objects: tuple[SharedObject, ...] = ()
    batch: tuple[TcpSocket, ...] = ()  # an initiate or terminate of many connections: one tree for all

    @property
    def socks(self) -> tuple[TcpSocket, ...]:
        """The connections the call is about (none for a neighbor or path alone)."""
        return self.batch or ((self.sock,) if self.sock is not None else ())
