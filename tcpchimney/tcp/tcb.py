"""The transmission control block (RFC 9293 3.3.1): every variable of one connection, and the small helpers
all parts of the engine share (state changes, events, segment construction, the receive window, timers).

The engine is a stack of classes, one per part of RFC 9293's event processing, each building on the one
before: ``Tcb`` (this module) -> ``Output`` (sending, 3.8) -> ``Timers`` (3.10.8) -> ``Input``
(SEGMENT ARRIVES, 3.10.7) -> ``TcpConnection`` (user calls, 3.10.1-6, and snapshots). Nothing here does I/O or
reads a clock: ``now`` is always passed in.
"""

from __future__ import annotations

from tcpchimney.tcp.buffers import ReceiveBuffer, SendBuffer
from tcpchimney.tcp.config import TcpConfig
from tcpchimney.tcp.congestion import NewReno
from tcpchimney.tcp.events import Closed, StateChanged, TcpEvent
from tcpchimney.tcp.isn import tsval
from tcpchimney.tcp.mib import EngineMib
from tcpchimney.tcp.rtt import RttEstimator
from tcpchimney.tcp.sack import SackScoreboard
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire.seq import SeqNum
from tcpchimney.wire.tcp import ACK, TcpOptions, TcpSegment

Payload = bytes | bytearray | memoryview

TS_OPTION_LEN = 12  # NOP NOP TS(10): what the timestamp option costs every segment (RFC 7323 appendix A)
DEFAULT_PEER_MSS = 536  # RFC 9293 3.7.1: the MSS to assume when the peer sent none
MAX_WINDOW_FIELD = 0xFFFF
MAX_WSCALE = 14  # RFC 7323 2.3
TS_RECENT_MAX_AGE = 24 * 24 * 3600.0  # RFC 7323 5.5: TS.Recent older than 24 days is invalid
_SACK_BLOCKS_WITH_TS = 3  # RFC 2018 section 3: 40 bytes of options hold 3 blocks next to a timestamp
_SACK_BLOCKS_WITHOUT_TS = 4


def wscale_for(rcv_buf: int) -> int:
    """The smallest shift that lets the whole receive buffer be advertised (as Linux picks it)."""
    shift = 0
    while shift < MAX_WSCALE and (MAX_WINDOW_FIELD << shift) < rcv_buf:
        shift += 1
    return shift


class Tcb:
    """Connection variables (names from RFC 9293, 5681, 6298, 6675, 7323) and shared helpers."""

    def __init__(
        self, config: TcpConfig, local_port: int, remote_port: int, iss: SeqNum, ts_offset: int
    ) -> None:
        self.config = config
        self.local_port = local_port
        self.remote_port = remote_port
        self.state = TcpState.CLOSED
        self.active_open = False  # we sent the first SYN (an RST in SYN-RECEIVED then means "refused")
        self.reset_seen = (
            False  # the peer reset the connection (send() then raises ConnectionResetByPeerError)
        )
        self.refused = False
        self.timed_out = False
        self.ts_offset = ts_offset & 0xFFFFFFFF
        # --- send sequence space (RFC 9293 3.3.1); snd_max: highest sequence number sent + 1 (RFC 6675)
        self.iss = iss
        self.snd_una = iss
        self.snd_nxt = iss
        self.snd_max = iss
        self.snd_wnd = 0  # bytes, already scaled
        self.snd_wl1 = SeqNum(0)
        self.snd_wl2 = iss
        self.max_snd_wnd = 0
        # --- receive sequence space
        self.irs = SeqNum(0)
        self.rcv_nxt = SeqNum(0)
        self.rcv_adv = SeqNum(0)  # right edge of the window last advertised (never moved left, 3.8.6.2.2)
        # --- negotiated options
        self.peer_mss = DEFAULT_PEER_MSS
        self.path_mss = config.mss  # MTU - 40 of the path (RFC 1191); lowered by ICMP frag-needed
        self.snd_wscale = 0  # applied to windows the peer advertises
        self.rcv_wscale = wscale_for(config.rcv_buf) if config.window_scaling else 0
        self.window_scaling = False
        self.ts_enabled = False
        self.sack_enabled = False
        self.ts_recent = 0  # TS.Recent
        self.ts_recent_time: float | None = None  # when TS.Recent was recorded (for its 24-day validity)
        self.last_ack_sent = SeqNum(0)  # Last.ACK.sent (RFC 7323 4.3)
        # --- data
        self.sndbuf = SendBuffer(config.snd_buf)  # offset 0 == SND.UNA
        self.rcvbuf = ReceiveBuffer(
            config.rcv_buf, config.ooo_max_blocks, config.ooo_max_bytes
        )  # 0 == RCV.NXT
        self.fin_queued = False  # the application closed its sending side: our FIN follows the data
        self.our_fin_acked = False
        self.peer_fin_seq: SeqNum | None = None  # sequence number of a FIN received ahead of data
        self.orphaned = False  # close() was called: nobody reads any more
        # --- congestion control, RTT, loss recovery
        self.cc = NewReno(config.mss, config.initial_cwnd_segments, iss, config.abc_limit)
        self.rtt = RttEstimator(config.rto_initial, config.rto_min, config.rto_max)
        self.sack = SackScoreboard(config.mss, config.dupack_threshold, config.sack_max_ranges)
        self.dup_ack_count = 0
        self.high_rxt = iss  # RFC 6675 HighRxt (exclusive end)
        self.rescue_rxt: SeqNum | None = None  # RFC 6675 RescueRxt (exclusive end)
        self.sack_recovery = False  # recovery driven by the SACK scoreboard (RFC 6675) vs. NewReno
        self.rtt_seq: SeqNum | None = None  # segment being timed without timestamps (Karn, RFC 6298 3)
        self.rtt_time = 0.0
        self.syn_time = 0.0  # when our SYN / SYN-ACK was first sent (RTT sample without timestamps)
        self.rcv_mss = DEFAULT_PEER_MSS  # largest payload received (capped at our MSS): the delayed-ACK unit
        # TSval of our latest retransmission: an ACK echoing an older TSval was caused by a segment sent
        # before it, and timing it would count the wait for the timeout as round-trip time.
        self.rexmit_tsval: int | None = None
        # --- timers: absolute deadlines, None = stopped (RFC 9293 3.8.1, 3.8.6.1, 3.8.6.3, 3.10.8)
        self.rto_deadline: float | None = None  # retransmission, or persist when ``persisting``
        self.persisting = False
        self.retransmit_count = 0  # expiries of the shared timer since data was last acknowledged
        self.mib = EngineMib()  # the stack's counters (tcp/mib.py): the host shares one among its engines
        self.first_rexmit_time: float | None = None
        self.delack_deadline: float | None = None
        self.keepalive_deadline: float | None = None
        self.keepalive_probe_count = 0
        self.close_deadline: float | None = None  # TIME-WAIT 2*MSL or orphaned FIN-WAIT-2
        self.last_rcv_time = 0.0
        self.last_snd_time: float | None = None  # when data last left (RFC 5681 4.1 idle restart)
        # --- pending output
        self.ack_now = False
        self.unacked_segments = 0  # full segments received since our last ACK (ACK every second one)
        self.pending: list[TcpSegment] = []  # control segments built ahead of the data (RST, challenge ACK)
        self.send_blocked = False  # send() took less than offered: report SendSpace when space frees
        self.challenge_window_start = 0.0
        self.challenge_count = 0
        self.last_invalid_ack_time: float | None = None  # the last ACK sent to an unacceptable segment
        # A list, not a deque: it holds a few events between drains, and an empty deque costs 760 bytes (a
        # whole block) per connection, which a server's thousands of TIME-WAIT connections would carry.
        self.events: list[TcpEvent] = []

    # ------------------------------------------------------------------ derived values

    @property
    def eff_mss(self) -> int:
        """Payload bytes per wire segment: the peer's MSS and the path, less the options we always send
        (RFC 9293 3.7.1, RFC 6691)."""
        mss = min(self.peer_mss, self.path_mss, self.config.mss)
        return max(1, mss - (TS_OPTION_LEN if self.ts_enabled else 0))

    @property
    def sack_option_len(self) -> int:
        """Bytes of SACK option our next segment carries (they come out of its payload, RFC 6691)."""
        if not self.sack_enabled or not self.rcvbuf.has_holes:
            return 0
        limit = _SACK_BLOCKS_WITH_TS if self.ts_enabled else _SACK_BLOCKS_WITHOUT_TS
        return 4 + 8 * min(limit, self.rcvbuf.ooo_blocks)

    @property
    def wire_mss(self) -> int:
        """Payload bytes of the next wire segment: ``eff_mss`` less any SACK blocks it will carry."""
        sack = self.sack_option_len
        return max(1, self.eff_mss - sack) if sack else self.eff_mss

    @property
    def max_payload(self) -> int:
        """Largest payload of one emitted segment: whole wire segments when the device does TSO."""
        mss = self.eff_mss
        tso = self.config.max_segment_payload
        if tso <= mss:
            return self.wire_mss
        return max(mss, (tso - TS_OPTION_LEN) // mss * mss)

    @property
    def closed(self) -> bool:
        return self.state is TcpState.CLOSED

    @property
    def cwnd(self) -> int:
        return self.cc.cwnd

    @property
    def ssthresh(self) -> int:
        return self.cc.ssthresh

    @property
    def srtt(self) -> float | None:
        return self.rtt.srtt

    @property
    def flight_size(self) -> int:
        """RFC 5681 FlightSize: sent and not yet acknowledged."""
        return self.snd_max.dist(self.snd_una)

    @property
    def fin_seq(self) -> SeqNum:
        """The sequence number our FIN takes (meaningful while ``fin_queued`` and not yet acknowledged)."""
        return self.snd_una + len(self.sndbuf)

    @property
    def fin_sent(self) -> bool:
        return self.fin_queued and (self.our_fin_acked or self.snd_max > self.fin_seq)

    @property
    def fin_acked(self) -> bool:
        return self.our_fin_acked

    # ------------------------------------------------------------------ state and events

    def set_state(self, new: TcpState) -> None:
        old = self.state
        if new is old:
            return
        self.state = new
        self.events.append(StateChanged(old, new))
        if new is TcpState.CLOSED:
            self.stop_timers()
            self.events.append(Closed())

    def stop_timers(self) -> None:
        self.rto_deadline = None
        self.persisting = False
        self.delack_deadline = None
        self.keepalive_deadline = None
        self.close_deadline = None

    def next_event(self) -> TcpEvent | None:
        events = self.events
        return events.pop(0) if events else None

    # ------------------------------------------------------------------ segment construction

    def rcv_window(self) -> int:
        """RCV.WND to advertise now: never shrinks the right edge already advertised (RFC 9293 3.8.6.2.2) and
        moves it only by a worthwhile amount (receiver SWS avoidance, 3.8.6.2.2)."""
        space = self.rcvbuf.window
        edge = self.rcv_nxt + space
        adv = self.rcv_adv
        if edge > adv:
            step = edge.dist(adv)
            if step >= min(self.rcvbuf.capacity // 2, self.eff_mss) or adv <= self.rcv_nxt or space == 0:
                adv = edge
        wnd = max(0, adv.dist(self.rcv_nxt))
        limit = MAX_WINDOW_FIELD << self.rcv_wscale
        if wnd > limit:
            wnd = limit
        return wnd

    def segment(
        self, flags: int, seq: SeqNum, now: float, payload: Payload = b"", options: TcpOptions | None = None
    ) -> TcpSegment:
        """A segment of this connection carrying the current ACK, window, timestamps and SACK blocks."""
        if options is None:
            options = TcpOptions()
        if flags & ACK:
            wnd = self.rcv_window()
            self.rcv_adv = self.rcv_nxt + wnd
            window = wnd >> self.rcv_wscale
            ack = self.rcv_nxt
            self.last_ack_sent = ack
            self.ack_now = False
            self.unacked_segments = 0
            self.delack_deadline = None
            if self.sack_enabled and self.rcvbuf.has_holes:
                options.sack_blocks = self._sack_blocks()
        else:
            window, ack = 0, SeqNum(0)
        if self.ts_enabled:
            options.ts_val = tsval(now, self.ts_offset)
            options.ts_ecr = self.ts_recent if flags & ACK else 0
        return TcpSegment(self.local_port, self.remote_port, seq, ack, flags, window, payload, options)

    def _sack_blocks(self) -> tuple[tuple[SeqNum, SeqNum], ...]:
        """RFC 2018 section 4: the newest block first, as many as fit next to the other options."""
        limit = _SACK_BLOCKS_WITH_TS if self.ts_enabled else _SACK_BLOCKS_WITHOUT_TS
        nxt = self.rcv_nxt
        return tuple((nxt + lo, nxt + hi) for lo, hi in self.rcvbuf.ooo_ranges(limit))

    def ts_now(self, now: float) -> int:
        return tsval(now, self.ts_offset)
