"""The TCP connection state object (chimney-spec 2.4), split const / cached / delegated.

Differences from the NDIS structures, all deliberate:

- Durations are float seconds, not ticks: the stack's clock is a float everywhere (architecture.md). A stopped
  timer is ``None`` (NDIS: -1); 0.0 means "was running, fires at once at the receiver" (spec 2.4).
- SRTT and RTTVAR are carried unscaled (NDIS scales them by 8 and 4 to fit fixed point), plus the current RTO,
  so that the side taking the connection over needs no RTO recomputation.
- SND.WL2 is carried: RFC 9293 3.10.7.4 needs it for the window-update check, the NDIS structure omits it.
- The send data and the buffered receive data are ``bytes`` (NDIS: NET_BUFFER_LIST chains). The send data
  starts at SND.UNA; the buffered data ends at RCV.NXT (just before the peer's FIN if it was received).
- Not carried, as in the original: delayed-ACK, push and SWS timers (the side giving the connection up flushes
  them), the SACK scoreboard and the out-of-order queue (dropped; the peer retransmits), DWnd (undocumented).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tcpchimney.chimney._check import U8, U16, U32, is_bytes, seconds
from tcpchimney.chimney._check import int_range as _int
from tcpchimney.chimney.errors import FieldRangeError, InvariantError, NotOffloadableError
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire.seq import SeqNum

MAX_WSCALE = 14  # RFC 7323 2.3
MAX_WINDOW = 0xFFFF << MAX_WSCALE
MIN_MSS = 88  # Linux TCP_MIN_MSS: smaller advertised MSS values are clamped up
MAX_FLOW_LABEL = (1 << 20) - 1

# RFC 9293 states the host keeps (spec 1.2): offloading a connection in one of them is refused.
NOT_OFFLOADABLE = frozenset(
    {TcpState.CLOSED, TcpState.LISTEN, TcpState.SYN_SENT, TcpState.SYN_RECEIVED, TcpState.TIME_WAIT}
)
# States in which our FIN is queued or sent and not yet acknowledged: it occupies one sequence number after
# the send data (RFC 9293 3.10.4 CLOSE; 3.10.7.4 FIN-WAIT-1 / CLOSING / LAST-ACK).
FIN_OUTSTANDING = frozenset({TcpState.FIN_WAIT_1, TcpState.CLOSING, TcpState.LAST_ACK})
# States in which the peer's FIN has been received: RCV.NXT is one past it.
PEER_FIN_RECEIVED = frozenset({TcpState.CLOSE_WAIT, TcpState.CLOSING, TcpState.LAST_ACK, TcpState.TIME_WAIT})
# What each FIN does to a connection's state (RFC 9293 3.10.4 CLOSE, 3.10.7.4): ours sent, ours acknowledged,
# the peer's received. The host tracks an offloaded connection's state with them, and the NIC's host end
# rebuilds a dead NIC's connections with them.
AFTER_SHUTDOWN = {TcpState.ESTABLISHED: TcpState.FIN_WAIT_1, TcpState.CLOSE_WAIT: TcpState.LAST_ACK}
AFTER_OUR_FIN_ACKED = {
    TcpState.FIN_WAIT_1: TcpState.FIN_WAIT_2,
    TcpState.CLOSING: TcpState.TIME_WAIT,
    TcpState.LAST_ACK: TcpState.CLOSED,
}
AFTER_PEER_FIN = {
    TcpState.ESTABLISHED: TcpState.CLOSE_WAIT,
    TcpState.FIN_WAIT_1: TcpState.CLOSING,
    TcpState.FIN_WAIT_2: TcpState.TIME_WAIT,
}


def _plain_seconds(value: object) -> bool:
    """The common case of ``_check.seconds``: a float (or int) that is finite and >= 0."""
    t = type(value)
    return (t is float or t is int) and 0 <= value < math.inf  # type: ignore[operator]


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpConst:
    """Fixed at the handshake (TCP_OFFLOAD_STATE_CONST)."""

    local_port: int
    remote_port: int
    remote_mss: int  # the MSS the peer advertised in its SYN
    timestamps: bool = False  # RFC 7323 section 3: every segment we send carries TSopt
    sack: bool = False  # RFC 2018
    window_scaling: bool = False  # RFC 7323 section 2
    snd_wscale: int = 0  # shift applied to windows the peer advertises
    rcv_wscale: int = 0  # shift applied to windows we advertise
    hash_value: int = 0  # the RSS hash the host computed once for the connection

    def __post_init__(self) -> None:
        _int(self, "local_port", self.local_port, 1, U16)
        _int(self, "remote_port", self.remote_port, 1, U16)
        _int(self, "remote_mss", self.remote_mss, MIN_MSS, U16)
        _int(self, "snd_wscale", self.snd_wscale, 0, MAX_WSCALE)
        _int(self, "rcv_wscale", self.rcv_wscale, 0, MAX_WSCALE)
        _int(self, "hash_value", self.hash_value, 0, U32)
        if not self.window_scaling and (self.snd_wscale or self.rcv_wscale):
            raise InvariantError("TcpConst: window scales must be 0 when window scaling was not negotiated")


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpCached:
    """Host-owned settings, changed only by an update (TCP_OFFLOAD_STATE_CACHED). Names follow TcpConfig."""

    initial_rcv_wnd: int = 1 << 20  # SO_RCVBUF; above the target's maximum -> Status.TCP_RCV_WINDOW
    rcv_indication_size: int = 0  # preferred bytes per receive indication; 0 = as much as possible
    nodelay: bool = False  # TCP_NODELAY (NDIS: TCP_FLAG_NAGLING_ENABLED, inverted)
    keepalive: bool = False  # SO_KEEPALIVE
    keepalive_idle: float = 7200.0  # KaTimeout: idle time before the first probe (RFC 1122 4.2.3.6)
    keepalive_interval: float = 75.0  # KaInterval
    keepalive_probes: int = 9  # KaProbeCount
    max_rt: float = (
        0.0  # seconds retransmitting one segment; 0 = use the retransmission count, inf = no limit
    )
    ttl: int = 64  # TtlOrHopLimit
    tos: int = 0  # TosOrTrafficClass
    flow_label: int = 0  # IPv6 only
    user_priority: int = 0  # 802.1p PCP for the VLAN tag (spec 5.6)
    # One-shot update flags (spec 2.4): meaningful in an update request only.
    keepalive_restart: bool = False  # restart the keepalive timer from 0
    max_rt_restart: bool = False  # reset TotalRT (and keepalive counters whose parameters changed)
    update_rcv_wnd: bool = False  # initial_rcv_wnd changed: advertise the new window

    def __post_init__(self) -> None:
        if not self._plain_fields_ok():
            self._check_fields()  # raises, naming the field

    def _plain_fields_ok(self) -> bool:
        """Every check of ``_check_fields`` as one expression: true in the common case, cheaply."""
        max_rt = self.max_rt
        return (
            type(self.initial_rcv_wnd) is int
            and 1 <= self.initial_rcv_wnd <= MAX_WINDOW
            and type(self.rcv_indication_size) is int
            and 0 <= self.rcv_indication_size <= U32
            and _plain_seconds(self.keepalive_idle)
            and _plain_seconds(self.keepalive_interval)
            and type(self.keepalive_probes) is int
            and 0 <= self.keepalive_probes <= U8
            and (type(max_rt) is float or type(max_rt) is int)
            and max_rt >= 0
            and type(self.ttl) is int
            and 1 <= self.ttl <= U8
            and type(self.tos) is int
            and 0 <= self.tos <= U8
            and type(self.flow_label) is int
            and 0 <= self.flow_label <= MAX_FLOW_LABEL
            and type(self.user_priority) is int
            and 0 <= self.user_priority <= 7
        )

    def _check_fields(self) -> None:
        _int(self, "initial_rcv_wnd", self.initial_rcv_wnd, 1, MAX_WINDOW)
        _int(self, "rcv_indication_size", self.rcv_indication_size, 0, U32)
        seconds(self, "keepalive_idle", self.keepalive_idle)
        seconds(self, "keepalive_interval", self.keepalive_interval)
        _int(self, "keepalive_probes", self.keepalive_probes, 0, U8)
        if isinstance(self.max_rt, bool) or not isinstance(self.max_rt, int | float) or not self.max_rt >= 0:
            raise FieldRangeError(
                f"TcpCached.max_rt must be >= 0 seconds (inf = no limit), got {self.max_rt!r}"
            )
        _int(self, "ttl", self.ttl, 1, U8)
        _int(self, "tos", self.tos, 0, U8)
        _int(self, "flow_label", self.flow_label, 0, MAX_FLOW_LABEL)
        _int(self, "user_priority", self.user_priority, 0, 7)

    @property
    def max_rt_unlimited(self) -> bool:
        return math.isinf(self.max_rt)


_SEQ_FIELDS = ("rcv_nxt", "snd_una", "snd_nxt", "snd_max", "snd_wl1", "snd_wl2")


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpDelegated:
    """Target-owned while offloaded, returned on upload (TCP_OFFLOAD_STATE_DELEGATED).

    Invariants (chimney-spec 9.5), checked on construction:
    SND.UNA <= SND.NXT <= SND.MAX <= SND.UNA + len(send_data) (+1 while our FIN is outstanding);
    [SND.UNA, SND.NXT) was sent and is unacknowledged, [SND.NXT, SND.MAX) must be retransmitted first,
    [SND.MAX, ...) was never sent (spec 2.4). ``buffered_data`` ends at RCV.NXT (see ``buffered_start``).
    """

    state: TcpState
    rcv_nxt: SeqNum
    rcv_wnd: int
    snd_una: SeqNum
    snd_nxt: SeqNum
    snd_max: SeqNum
    snd_wnd: int
    max_snd_wnd: int  # largest window the peer ever offered (RFC 9293 3.8.6.2.1 SWS)
    snd_wl1: SeqNum
    snd_wl2: SeqNum
    cwnd: int
    ssthresh: int
    srtt: float | None = None  # None: no RTT sample yet (RFC 6298 2.1)
    rttvar: float = 0.0
    rto: float = 1.0
    ts_recent: int = 0  # TS.Recent (RFC 7323 4.3)
    ts_recent_age: float = 0.0  # seconds since TS.Recent was recorded (PAWS 24-day rule, RFC 7323 5.5)
    ts_time: int = 0  # the timestamp value we would send now (clock + per-connection offset), spec 4.7
    total_rt: float = 0.0  # seconds spent retransmitting the current segment (compared with max_rt)
    dup_ack_count: int = 0  # NDIS: UCHAR; wider here, the engine need not saturate
    snd_wnd_probe_count: int = 0  # persist round (spec 4.7)
    keepalive_probe_count: int = 0
    keepalive_timeout: float | None = None  # seconds to the next keepalive expiry; None = not running
    retransmit_count: int = 0  # retransmissions (or persist probes when snd_wnd == 0) of the current segment
    retransmit_timeout: float | None = None  # the shared slot: RTO, persist, or FIN-WAIT-2 timer (spec 2.4)
    send_data: bytes = b""  # starts at SND.UNA: unacknowledged, then retransmit-pending, then unsent
    buffered_data: bytes = b""  # acknowledged, not yet delivered to the application; ends at RCV.NXT
    send_backlog_size: int | None = None  # query only: preferred bytes outstanding at the target
    receive_backlog_size: int | None = None  # query only: bytes buffered in the target

    def __post_init__(self) -> None:
        if not isinstance(self.state, TcpState):
            raise FieldRangeError(f"TcpDelegated.state must be a TcpState, got {self.state!r}")
        for name in _SEQ_FIELDS:
            value = getattr(self, name)
            if type(value) is not SeqNum:  # a SeqNum is in [0, 2**32) by construction
                _int(self, name, value, 0, U32)
                object.__setattr__(self, name, SeqNum(value))
        if not self._plain_fields_ok():
            self._check_fields()  # raises, naming the field
        self._check_invariants()

    def _plain_fields_ok(self) -> bool:
        """Every field ``_check_fields`` checks, as one expression: true in the common case, cheaply."""
        srtt, ka, rt = self.srtt, self.keepalive_timeout, self.retransmit_timeout
        return (
            type(self.rcv_wnd) is int
            and 0 <= self.rcv_wnd <= MAX_WINDOW
            and type(self.snd_wnd) is int
            and 0 <= self.snd_wnd <= MAX_WINDOW
            and type(self.max_snd_wnd) is int
            and 0 <= self.max_snd_wnd <= MAX_WINDOW
            and type(self.cwnd) is int
            and 1 <= self.cwnd <= U32
            and type(self.ssthresh) is int
            and 1 <= self.ssthresh <= U32
            and (srtt is None or _plain_seconds(srtt))
            and _plain_seconds(self.rttvar)
            and _plain_seconds(self.rto)
            and self.rto > 0
            and _plain_seconds(self.ts_recent_age)
            and _plain_seconds(self.total_rt)
            and (ka is None or _plain_seconds(ka))
            and (rt is None or _plain_seconds(rt))
            and type(self.ts_recent) is int
            and 0 <= self.ts_recent <= U32
            and type(self.ts_time) is int
            and 0 <= self.ts_time <= U32
            and type(self.dup_ack_count) is int
            and 0 <= self.dup_ack_count <= U16
            and type(self.snd_wnd_probe_count) is int
            and 0 <= self.snd_wnd_probe_count <= U8
            and type(self.keepalive_probe_count) is int
            and 0 <= self.keepalive_probe_count <= U8
            and type(self.retransmit_count) is int
            and 0 <= self.retransmit_count <= U8
            and type(self.send_data) is bytes
            and type(self.buffered_data) is bytes
            and self.send_backlog_size is None
            and self.receive_backlog_size is None
        )

    def _check_fields(self) -> None:
        _int(self, "rcv_wnd", self.rcv_wnd, 0, MAX_WINDOW)
        _int(self, "snd_wnd", self.snd_wnd, 0, MAX_WINDOW)
        _int(self, "max_snd_wnd", self.max_snd_wnd, 0, MAX_WINDOW)
        _int(self, "cwnd", self.cwnd, 1, U32)
        _int(self, "ssthresh", self.ssthresh, 1, U32)
        self._check_timing()
        self._check_counters()
        is_bytes(self, "send_data", self.send_data)
        is_bytes(self, "buffered_data", self.buffered_data)
        for name in ("send_backlog_size", "receive_backlog_size"):
            if getattr(self, name) is not None:
                _int(self, name, getattr(self, name), 0, U32)

    def _check_timing(self) -> None:
        seconds(self, "srtt", self.srtt, optional=True)
        seconds(self, "rttvar", self.rttvar)
        seconds(self, "rto", self.rto)
        if self.rto <= 0:
            raise FieldRangeError("TcpDelegated.rto must be > 0")
        seconds(self, "ts_recent_age", self.ts_recent_age)
        seconds(self, "total_rt", self.total_rt)
        seconds(self, "keepalive_timeout", self.keepalive_timeout, optional=True)
        seconds(self, "retransmit_timeout", self.retransmit_timeout, optional=True)
        _int(self, "ts_recent", self.ts_recent, 0, U32)
        _int(self, "ts_time", self.ts_time, 0, U32)

    def _check_counters(self) -> None:
        _int(self, "dup_ack_count", self.dup_ack_count, 0, U16)
        _int(self, "snd_wnd_probe_count", self.snd_wnd_probe_count, 0, U8)
        _int(self, "keepalive_probe_count", self.keepalive_probe_count, 0, U8)
        _int(self, "retransmit_count", self.retransmit_count, 0, U8)

    def _check_invariants(self) -> None:
        if not self.snd_una <= self.snd_nxt <= self.snd_max:
            raise InvariantError(
                f"TcpDelegated: need snd_una <= snd_nxt <= snd_max, got {self.snd_una}, {self.snd_nxt}, "
                f"{self.snd_max}"
            )
        limit = len(self.send_data) + (1 if self.state in FIN_OUTSTANDING else 0)
        if self.snd_max.dist(self.snd_una) > limit:
            raise InvariantError(
                f"TcpDelegated: snd_max - snd_una = {self.snd_max.dist(self.snd_una)} exceeds the send data "
                f"({len(self.send_data)} bytes{' + FIN' if limit > len(self.send_data) else ''})"
            )
        if self.state in (TcpState.FIN_WAIT_2, TcpState.TIME_WAIT) and self.send_data:
            raise InvariantError(
                f"TcpDelegated: no send data can remain in {self.state.value}: our FIN was ACKed"
            )
        if self.max_snd_wnd < self.snd_wnd:
            raise InvariantError("TcpDelegated: max_snd_wnd must be >= snd_wnd")
        if len(self.buffered_data) >= 1 << 31:
            raise InvariantError("TcpDelegated: buffered data must fit half the sequence space")

    @property
    def offloadable(self) -> bool:
        return self.state not in NOT_OFFLOADABLE

    @property
    def fin_outstanding(self) -> bool:
        return self.state in FIN_OUTSTANDING

    @property
    def buffered_start(self) -> SeqNum:
        """Sequence number of the first buffered byte: the data ends at RCV.NXT, before the peer's FIN if
        any."""
        fin = 1 if self.state in PEER_FIN_RECEIVED else 0
        return self.rcv_nxt + -(len(self.buffered_data) + fin)


@dataclass(frozen=True, slots=True)
class TcpSnapshot:
    """All three parts of one connection, in order (TcpOffloadState): what an offload hands over."""

    const: TcpConst
    cached: TcpCached
    delegated: TcpDelegated

    def __post_init__(self) -> None:
        if not isinstance(self.const, TcpConst) or not isinstance(self.cached, TcpCached):
            raise FieldRangeError("TcpSnapshot needs a TcpConst and a TcpCached")
        if not isinstance(self.delegated, TcpDelegated):
            raise FieldRangeError("TcpSnapshot needs a TcpDelegated")

    def check_offloadable(self) -> None:
        check_offloadable(self)


def check_offloadable(snapshot: TcpSnapshot) -> None:
    """Raise NotOffloadableError unless the connection may be offloaded in its state (spec 2.4)."""
    state = snapshot.delegated.state
    if state in NOT_OFFLOADABLE:
        raise NotOffloadableError(f"a connection in {state.value} cannot be offloaded")
