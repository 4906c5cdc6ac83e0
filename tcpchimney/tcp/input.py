"""SEGMENT ARRIVES (RFC 9293 3.10.7.3-3.10.7.4), in the RFC's order, with RFC 7323 PAWS, RFC 5961 blind-attack
defences, RFC 5681/6582/6675 acknowledgement processing and delayed ACKs (RFC 9293 3.8.6.3, RFC 5681 4.2).

The host delivers only segments of an existing connection; LISTEN is the host's (listener.py). Every discarded
segment is reported as ``SegmentDropped(reason)`` so that the host can count it.
"""

from __future__ import annotations

from tcpchimney.tcp.events import (
    Connected,
    ConnectionReset,
    DataReceived,
    PeerClosed,
    SegmentDropped,
    SendSpace,
)
from tcpchimney.tcp.state import TcpState
from tcpchimney.tcp.tcb import DEFAULT_PEER_MSS, MAX_WSCALE, TS_RECENT_MAX_AGE
from tcpchimney.tcp.timers import Timers
from tcpchimney.wire.seq import SeqNum
from tcpchimney.wire.tcp import ACK, FIN, RST, SYN, TcpOptions, TcpSegment

_MASK32 = 0xFFFFFFFF
_HALF32 = 1 << 31
_MIN_MSS = 88  # Linux TCP_MIN_MSS: smaller advertised values are raised to it
# States in which received data is accepted (RFC 9293 3.10.7.4, seventh: process the segment text).
_DATA_STATES = frozenset({TcpState.ESTABLISHED, TcpState.FIN_WAIT_1, TcpState.FIN_WAIT_2})
# States in which an RST means the application must hear "connection reset".
_RESET_REPORTED = frozenset(
    {TcpState.ESTABLISHED, TcpState.FIN_WAIT_1, TcpState.FIN_WAIT_2, TcpState.CLOSE_WAIT}
)


def ts_before(a: int, b: int) -> bool:
    """RFC 7323 5.2: timestamp ``a`` is older than ``b`` (32-bit modular)."""
    return 0 < ((b - a) & _MASK32) < _HALF32


class Input(Timers):
    def handle_segment(self, seg: TcpSegment, now: float) -> None:
        """Process one received segment of this connection (addresses and checksum already checked)."""
        self.last_rcv_time = now
        state = self.state
        if state is TcpState.SYN_SENT:
            self._syn_sent(seg, now)
        elif state is TcpState.CLOSED or state is TcpState.LISTEN:
            self.drop("closed")
        else:
            self._synchronized(seg, now)
        if self.keepalive_deadline is not None:
            self.keepalive_probe_count = 0
            self.keepalive_deadline = now + self.config.keepalive_idle

    def drop(self, reason: str) -> None:
        self.events.append(SegmentDropped(reason))

    # ------------------------------------------------------------------ SYN-SENT (3.10.7.3)

    def _syn_sent(self, seg: TcpSegment, now: float) -> None:
        flags = seg.flags
        if flags & ACK and (seg.ack <= self.iss or seg.ack > self.snd_max):
            if not flags & RST:
                self.pending.append(self._reset_answer(seg))  # <SEQ=SEG.ACK><CTL=RST>
            self.drop("bad_ack_syn_sent")
            return
        if flags & RST:
            if flags & ACK:  # acceptable ACK: the peer refused (RFC 5961 3.2 keeps this rule)
                self.error_reset(refused=True)
            else:
                self.drop("rst_without_ack")
            return
        if not flags & SYN:
            self.drop("no_syn")
            return
        self.irs = seg.seq
        self.rcv_nxt = self.rcv_adv = seg.seq + 1
        self.negotiate(seg.options, now)
        self.snd_wnd = self.max_snd_wnd = seg.window  # never scaled in a SYN (RFC 7323 2.2)
        self.snd_wl1 = seg.seq
        self.snd_wl2 = seg.ack
        if flags & ACK:
            self.snd_una = seg.ack
            self._handshake_rtt(seg.options, now)
            self.established(now)
            self.ack_now = True
        else:  # simultaneous open (RFC 9293 figure 7)
            self.set_state(TcpState.SYN_RECEIVED)
            self.pending.append(self.syn_segment(now))

    # ------------------------------------------------------------------ synchronized states (3.10.7.4)

    def _synchronized(self, seg: TcpSegment, now: float) -> None:
        flags = seg.flags
        state = self.state
        if state is TcpState.SYN_RECEIVED and flags & (SYN | ACK | RST) == SYN and seg.seq == self.irs:
            self.pending.append(self.syn_segment(now))  # the peer's SYN again: our SYN-ACK was lost
            return
        if self._paws_rejects(seg, now):
            return
        if not self._acceptable(seg):
            if not flags & RST:
                self.answer_invalid(seg, now)  # RFC 9293 3.10.7.4 first: <SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK>
                if state is TcpState.TIME_WAIT and flags & FIN:
                    self.close_deadline = now + 2 * self.config.msl  # the peer's FIN again: restart 2*MSL
            self.drop("out_of_window")
            return
        if flags & RST:
            self._rst(seg, now)
            return
        if flags & SYN:
            self.challenge_ack(seg, now)  # RFC 5961 4.2: any SYN here, in window or not
            self.drop("syn_in_window")
            return
        if not flags & ACK:
            self.drop("no_ack")
            return
        self._record_timestamp(seg, now)
        if not self._ack(seg, now) or self.closed:
            return
        if seg.payload:
            self._text(seg, now)
            if self.closed:
                return
        if flags & FIN or self.peer_fin_seq is not None:
            self._fin(seg, now)

    def _paws_rejects(self, seg: TcpSegment, now: float) -> bool:
        """RFC 7323 5.3 R1: a segment whose TSval is older than TS.Recent is a duplicate from a previous
        wrap of the sequence space; acknowledge and drop it (unless it is an RST)."""
        ts_val = seg.options.ts_val
        if not self.ts_enabled or ts_val is None or seg.flags & RST or self.ts_recent_time is None:
            return False
        if not ts_before(ts_val, self.ts_recent):
            return False
        if now - self.ts_recent_time > TS_RECENT_MAX_AGE:
            self.ts_recent_time = None  # RFC 7323 5.5: TS.Recent is stale, no longer a reference
            return False
        self.answer_invalid(seg, now)
        self.drop("paws")
        return True

    def _acceptable(self, seg: TcpSegment) -> bool:
        """RFC 9293 3.10.7.4 first: the four cases of the acceptability test (RCV.WND as advertised)."""
        nxt = self.rcv_nxt
        wnd = max(0, self.rcv_adv.dist(nxt))
        seq = seg.seq
        seg_len = seg.seg_len
        if seg_len == 0:
            return seq == nxt if wnd == 0 else 0 <= seq.dist(nxt) < wnd
        if wnd == 0:
            # "special allowance should be made to accept valid ACKs, URGs, and RSTs": the ACK is processed,
            # the data is dropped by the receive buffer (it has no room).
            return seq == nxt
        first = seq.dist(nxt)
        last = first + seg_len - 1
        return 0 <= first < wnd or 0 <= last < wnd

    def _record_timestamp(self, seg: TcpSegment, now: float) -> None:
        """RFC 7323 4.3: TS.Recent follows segments that cover Last.ACK.sent."""
        ts_val = seg.options.ts_val
        if ts_val is None or not self.ts_enabled or seg.seq > self.last_ack_sent:
            return
        if self.ts_recent_time is None or not ts_before(ts_val, self.ts_recent):
            self.ts_recent = ts_val
            self.ts_recent_time = now

    # ------------------------------------------------------------------ RST (RFC 5961 section 3)

    def _rst(self, seg: TcpSegment, now: float) -> None:
        if seg.seq != self.rcv_nxt:
            self.challenge_ack(seg, now)  # in window but not exact: maybe blind, make the peer prove it
            self.drop("rst_challenge")
            return
        state = self.state
        if state is TcpState.SYN_RECEIVED:
            self.error_reset(refused=self.active_open, report=self.active_open)
        else:
            self.error_reset(refused=False, report=state in _RESET_REPORTED)

    def error_reset(self, refused: bool, report: bool = True) -> None:
        """The peer reset the connection: report it and close without sending anything."""
        self.pending.clear()
        if report:
            self.events.append(ConnectionReset(refused))
            self.reset_seen = True
            self.refused = refused
        self.set_state(TcpState.CLOSED)

    def answer_invalid(self, seg: TcpSegment, now: float) -> None:
        """Acknowledge an unacceptable segment (RFC 9293 3.10.7.4, RFC 7323 5.3, RFC 5961 5.2), unless
        ``invalid_ack_limited`` holds the ACK back."""
        if not self.invalid_ack_limited(seg, now):
            self.ack_now = True

    def invalid_ack_limited(self, seg: TcpSegment, now: float) -> bool:
        """At most one ACK per ``invalid_ack_interval`` in answer to unacceptable segments (RFC 5961
        section 7; as Linux's tcp_oow_rate_limited). One forged segment leaves two stacks disagreeing about
        the sequence space, and each would answer the other's ACK with another one for ever. As Linux, a
        segment with data or a FIN (and no SYN) is always answered: it is not part of such a loop, and its
        sender may be retransmitting and need the ACK."""
        if seg.seg_len and not seg.flags & SYN:
            return False
        last = self.last_invalid_ack_time
        if last is not None and now - last < self.config.invalid_ack_interval:
            self.drop("ack_rate_limited")
            return True
        self.last_invalid_ack_time = now
        return False

    def challenge_ack(self, seg: TcpSegment, now: float) -> None:
        """RFC 5961 section 7: at most ``challenge_ack_limit`` challenge ACKs per second, and no more than
        the per-connection limit of ACKs to unacceptable segments allows."""
        if self.invalid_ack_limited(seg, now):
            return
        if now - self.challenge_window_start >= 1.0:
            self.challenge_window_start = now
            self.challenge_count = 0
        if self.challenge_count >= self.config.challenge_ack_limit:
            self.drop("challenge_ack_limited")
            return
        self.challenge_count += 1
        self.pending.append(self.segment(ACK, self.snd_max, now))

    def _reset_answer(self, seg: TcpSegment) -> TcpSegment:
        return TcpSegment(self.local_port, self.remote_port, seg.ack, SeqNum(0), RST, 0)

    # ------------------------------------------------------------------ ACK (fifth)

    def _ack(self, seg: TcpSegment, now: float) -> bool:
        """Process SEG.ACK; False when the segment must be dropped."""
        ack = seg.ack
        # Our SYN is unacknowledged only in SYN-RECEIVED (SYN-SENT takes its ACK in _syn_sent): the ACK that
        # completes the handshake covers it, no later one does. SND.UNA == ISS says nothing once 2^32 bytes
        # have been sent (RFC 9293 3.4), nor after a rebuild from a snapshot, which takes ISS = SND.UNA - 1.
        covers_syn = self.state is TcpState.SYN_RECEIVED
        if covers_syn:
            if not (self.snd_una < ack <= self.snd_max):
                self.pending.append(self._reset_answer(seg))
                self.drop("bad_ack_syn_received")
                return False
            self.snd_wnd = self.max_snd_wnd = seg.window << self.snd_wscale
            self.snd_wl1, self.snd_wl2 = seg.seq, ack
            self._handshake_rtt(seg.options, now)
            self.established(now)
        if ack > self.snd_max:
            self.answer_invalid(seg, now)  # RFC 5961 5.2: acknowledges data never sent
            self.drop("ack_unsent")
            return False
        if ack < self.snd_una - self.max_snd_wnd:
            self.challenge_ack(seg, now)  # RFC 5961 5.2: too old to be a real duplicate
            self.drop("ack_too_old")
            return False
        acked = ack.dist(self.snd_una)
        window_changed = self._update_window(seg, ack)
        newly_sacked = 0
        blocks = seg.options.sack_blocks
        if self.sack_enabled and (blocks or acked > 0):
            newly_sacked = self.sack.update(ack if acked > 0 else self.snd_una, self.snd_max, blocks)
            if self.sack.last_discarded:
                self.drop("sack_scoreboard_full")  # the ACK is processed; SACK ranges past the bound are not
        if acked > 0:
            self._new_ack(seg, ack, acked, now, 1 if covers_syn else 0)
        elif acked == 0 and self.snd_max != self.snd_una:
            # RFC 5681 section 2 duplicate ACK; with SACK, any ACK that SACKs new data (RFC 6675 section 2)
            plain = not seg.payload and not seg.flags & (SYN | FIN) and not window_changed
            if plain or newly_sacked:
                self._duplicate_ack(now)
        outstanding = self.snd_max != self.snd_una
        if self.sack_enabled and outstanding and not self.cc.in_recovery and self.sack.is_lost(self.snd_una):
            self._enter_recovery(now)  # RFC 6675 section 5: IsLost(SND.UNA) starts recovery too
        self._closing_transitions(now)
        return True

    def _update_window(self, seg: TcpSegment, ack: SeqNum) -> bool:
        """RFC 9293 3.10.7.4: take the window from the newest segment (SND.WL1 / SND.WL2 rule)."""
        wl1 = self.snd_wl1
        if wl1 < seg.seq or (wl1 == seg.seq and self.snd_wl2 <= ack):
            wnd = seg.window << self.snd_wscale
            changed = wnd != self.snd_wnd
            self.snd_wnd = wnd
            self.snd_wl1 = seg.seq
            self.snd_wl2 = ack
            if wnd > self.max_snd_wnd:
                self.max_snd_wnd = wnd
            if wnd and self.persisting:
                self.persisting = False  # the window opened: the persist timer stops, data flows
                self.rto_deadline = None
            return changed
        return False

    def _new_ack(self, seg: TcpSegment, ack: SeqNum, acked: int, now: float, syn: int) -> None:
        """``acked`` sequence numbers newly acknowledged, ``syn`` (0 or 1) of them our SYN's."""
        flight = self.flight_size
        held = len(self.sndbuf)
        data = min(acked - syn, held)
        if acked - syn > held and self.fin_queued:
            self.our_fin_acked = True  # the ACK covers the sequence number of our FIN
        self.snd_una = ack
        if data:
            self.sndbuf.consume(data)
        if self.snd_nxt < ack:
            self.snd_nxt = ack  # after a go-back-N restart the ACK may cover what we were about to resend
        self._rtt_sample(seg.options, ack, now)
        self.retransmit_count = 0  # RFC 6298 5.3 (and the persist backoff)
        self.first_rexmit_time = None
        cc = self.cc
        if cc.in_recovery:
            if cc.is_full_ack(ack):
                cc.exit_recovery(self.flight_size)
                self.sack_recovery = False
                self.dup_ack_count = 0
            elif not self.sack_recovery:
                cc.on_partial_ack(acked)  # RFC 6582 3.2 step 5: resend the next hole at once
                self._retransmit(ack, self.eff_mss, now, self.pending)
        else:
            cc.on_ack(acked, flight)
            self.dup_ack_count = 0
        if self.snd_max == self.snd_una:
            if not self.persisting:
                self.rto_deadline = None  # RFC 6298 5.2
        else:
            self.persisting = False
            self.rto_deadline = now + self.rtt.current_rto()  # 5.3
        if self.send_blocked and self.sndbuf.space:
            self.send_blocked = False
            self.events.append(SendSpace(self.sndbuf.space))

    def _rtt_sample(self, opts: TcpOptions, ack: SeqNum, now: float) -> None:
        if self.ts_enabled:
            if opts.ts_val is not None and opts.ts_ecr:
                if self.rexmit_tsval is not None and ts_before(opts.ts_ecr, self.rexmit_tsval):
                    return
                delta = (self.ts_now(now) - opts.ts_ecr) & _MASK32
                if delta < _HALF32:
                    self.rtt.sample(delta / 1000.0)  # RFC 7323 4.1: valid even for retransmissions
            return
        if self.rtt_seq is not None and ack >= self.rtt_seq:
            self.rtt.sample(now - self.rtt_time)
            self.rtt_seq = None

    def _duplicate_ack(self, now: float) -> None:
        """Fast retransmit on DupThresh duplicate ACKs (RFC 5681 3.2); in NewReno recovery each one inflates
        cwnd by a segment (step 4)."""
        self.dup_ack_count += 1
        cc = self.cc
        if cc.in_recovery:
            if not self.sack_recovery:
                cc.on_dup_ack_in_recovery()
            return
        if self.dup_ack_count >= self._dupthresh():
            self._enter_recovery(now)

    def _dupthresh(self) -> int:
        """DupThresh, lowered by Early Retransmit (RFC 5827 3.1) when fewer than four segments are outstanding
        and nothing new can be sent: three duplicate ACKs would never come."""
        thresh = self.config.dupack_threshold
        outstanding = -(-self.flight_size // self.eff_mss)
        if outstanding < 4 and len(self.sndbuf) <= self.flight_size:
            return max(1, min(thresh, outstanding - 1))
        return thresh

    def _enter_recovery(self, now: float) -> None:
        """RFC 5681 3.2 steps 2-3 / RFC 6582 3.2 / RFC 6675 section 5 step (4)."""
        cc = self.cc
        una = self.snd_una
        if not cc.may_enter_fast_recovery(una, self.snd_max):
            return
        cc.enter_fast_recovery(self.flight_size, self.snd_max)
        self.rtt_seq = None
        if self.sack_enabled:
            cc.cwnd = cc.ssthresh  # RFC 6675 5 step (4.2): no inflation, pipe does the accounting
            self.sack_recovery = True
            self.high_rxt = una
            self.rescue_rxt = None
        self._retransmit(una, self.eff_mss, now, self.pending)  # step (4.3) / RFC 5681 3.2 step 3

    def _closing_transitions(self, now: float) -> None:
        """Our FIN was acknowledged (RFC 9293 3.10.7.4 fifth, per state)."""
        if not self.fin_acked:
            return
        state = self.state
        if state is TcpState.FIN_WAIT_1:
            self.set_state(TcpState.FIN_WAIT_2)
            self.rto_deadline = None
            if self.orphaned:
                self.close_deadline = now + self.config.fin_wait_2_timeout
        elif state is TcpState.CLOSING:
            self.enter_time_wait(now)
        elif state is TcpState.LAST_ACK:
            self.set_state(TcpState.CLOSED)

    # ------------------------------------------------------------------ text (seventh)

    def _text(self, seg: TcpSegment, now: float) -> None:
        if self.state not in _DATA_STATES:
            self.drop("data_after_fin")
            return
        if self.orphaned:
            # Nobody will read it: tell the peer at once (RFC 2525 2.17, as Linux does after close()).
            self.pending.append(self.segment(RST | ACK, self.snd_max, now))
            self.set_state(TcpState.CLOSED)
            return
        payload = seg.payload
        n = len(payload)
        if n > self.rcv_mss:
            self.rcv_mss = min(n, self.config.mss)
        off = seg.seq.dist(self.rcv_nxt)
        had_holes = self.rcvbuf.has_holes
        advanced = self.rcvbuf.insert(off, payload)
        if self.rcvbuf.refused is not None:
            self.drop(self.rcvbuf.refused)  # out-of-order data past the queue's bounds (still ACKed below)
        if advanced:
            self.rcv_nxt = self.rcv_nxt + advanced
            self.events.append(DataReceived(self.rcvbuf.readable))
        if off > 0 or had_holes or not advanced:
            self.ack_now = True  # RFC 5681 4.2: out of order, filling a hole, or a duplicate: ACK at once
            return
        self.unacked_segments += advanced
        if self.unacked_segments >= 2 * self.rcv_mss:
            self.ack_now = True  # every second full-sized segment (RFC 9293 3.8.6.3, RFC 5681 4.2)
        elif self.delack_deadline is None:
            self.delack_deadline = now + self.config.delayed_ack

    # ------------------------------------------------------------------ FIN (eighth)

    def _fin(self, seg: TcpSegment, now: float) -> None:
        if seg.flags & FIN:
            fin_seq = seg.seq + len(seg.payload)
            if fin_seq > self.rcv_nxt:
                self.peer_fin_seq = fin_seq  # ahead of missing data: honoured when the data arrives
                self.ack_now = True
                return
            if fin_seq < self.rcv_nxt:
                return  # a FIN already processed
        elif self.peer_fin_seq != self.rcv_nxt:
            return
        self.peer_fin_seq = None
        self.rcv_nxt = self.rcv_nxt + 1
        self.ack_now = True
        self.events.append(PeerClosed())
        state = self.state
        if state is TcpState.ESTABLISHED:
            self.set_state(TcpState.CLOSE_WAIT)
        elif state is TcpState.FIN_WAIT_1:
            if self.fin_acked:
                self.enter_time_wait(now)
            else:
                self.set_state(TcpState.CLOSING)
        elif state is TcpState.FIN_WAIT_2:
            self.enter_time_wait(now)

    # ------------------------------------------------------------------ handshake helpers

    def negotiate(self, opts: TcpOptions, now: float) -> None:
        """Options of the peer's SYN (RFC 9293 3.7.1, RFC 7323 2.2 and 3.2, RFC 2018 section 2)."""
        c = self.config
        self.peer_mss = max(_MIN_MSS, opts.mss) if opts.mss is not None else DEFAULT_PEER_MSS
        if c.window_scaling and opts.wscale is not None:
            self.window_scaling = True
            self.snd_wscale = min(opts.wscale, MAX_WSCALE)
        else:
            self.window_scaling = False
            self.snd_wscale = self.rcv_wscale = 0
        self.sack_enabled = c.sack and opts.sack_permitted
        self.ts_enabled = c.timestamps and opts.ts_val is not None
        if self.ts_enabled and opts.ts_val is not None:
            self.ts_recent = opts.ts_val
            self.ts_recent_time = now
        mss = self.eff_mss
        self.cc.mss = self.sack.mss = mss
        self.cc.cwnd = self.cc.initial_window()

    def _handshake_rtt(self, opts: TcpOptions, now: float) -> None:
        if self.ts_enabled and opts.ts_ecr:
            self._rtt_sample(opts, self.snd_una, now)
        elif self.retransmit_count == 0:
            self.rtt.sample(now - self.syn_time)  # Karn: only when the SYN was never retransmitted
        elif self.rtt.srtt is None:
            self.rtt.reinit_after_syn_timeout()  # RFC 6298 (5.7)

    def established(self, now: float) -> None:
        self.set_state(TcpState.ESTABLISHED)
        self.retransmit_count = 0
        self.first_rexmit_time = None
        self.rto_deadline = None if self.snd_max == self.snd_una else now + self.rtt.current_rto()
        self.arm_keepalive(now)
        self.events.append(Connected())
        if self.fin_queued:
            self.set_state(TcpState.FIN_WAIT_1)  # shutdown() came during the handshake
