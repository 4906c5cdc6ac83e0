"""Sending (RFC 9293 3.8.6, RFC 5681, RFC 6582, RFC 6675): what leaves, when, and how much.

``segments_to_send`` is the only way out: control segments queued by the other parts first, then
retransmissions chosen by the SACK scoreboard during recovery, then new (or go-back-N) data limited by the
congestion and send windows, Nagle and sender-side SWS avoidance, then a pure ACK if one is still owed.
Payloads are views into the send buffer; nothing here copies data.
"""

from __future__ import annotations

from tcpchimney.tcp.state import TcpState
from tcpchimney.tcp.tcb import Tcb
from tcpchimney.wire.seq import SeqNum
from tcpchimney.wire.tcp import ACK, FIN, PSH, TcpSegment

# States whose data (and FIN) the sender may still transmit or retransmit.
SENDING_STATES = frozenset(
    {TcpState.ESTABLISHED, TcpState.CLOSE_WAIT, TcpState.FIN_WAIT_1, TcpState.CLOSING, TcpState.LAST_ACK}
)
_NO_ACK_STATES = frozenset({TcpState.CLOSED, TcpState.LISTEN, TcpState.SYN_SENT})


class Output(Tcb):
    def segments_to_send(self, now: float) -> list[TcpSegment]:
        """Everything this connection wants on the wire at ``now``, in order."""
        out = self.pending
        self.pending = []
        if self.state in SENDING_STATES:
            if self.sack_recovery:
                self._sack_recovery_send(now, out)
            self._send_data(now, out)
        if self.ack_now and self.state not in _NO_ACK_STATES:
            # SND.MAX, not SND.NXT: after a go-back-N restart SND.NXT may lie below what the peer already
            # received, and a segment below RCV.NXT would be discarded with its ACK (as BSD does).
            out.append(self.segment(ACK, self.snd_max, now))
        self.ack_now = False
        return out

    # ------------------------------------------------------------------ data

    def _send_data(self, now: float, out: list[TcpSegment], force: bool = False) -> None:
        """New data from SND.NXT (or, after a timeout, data again from SND.UNA: go-back-N).

        ``force``: the persist timer expired with a small window open; send what fits regardless of SWS.
        """
        if self.our_fin_acked:
            return
        if self.snd_max == self.snd_una and self.last_snd_time is not None:
            # RFC 5681 4.1: after an idle period longer than the RTO, restart from the restart window
            self.cc.after_idle(self.rtt.current_rto(), now - self.last_snd_time)
        if not self.fin_queued and self.snd_nxt.dist(self.snd_una) >= len(self.sndbuf):
            self._arm_after_send(now)  # nothing new to send (the ACK-only and idle case, most calls)
            return
        una = self.snd_una
        buf_len = len(self.sndbuf)
        mss = self.wire_mss
        max_payload = self.max_payload
        cwnd = self.cc.cwnd
        if self.dup_ack_count and not self.cc.in_recovery and self.snd_nxt >= self.snd_max:
            # Limited Transmit (RFC 5681 3.2 step 1, RFC 3042): previously unsent data on dup ACKs 1 and 2
            cwnd += min(self.dup_ack_count, 2) * mss
        right_edge = una + self.snd_wnd
        nodelay = self.config.nodelay
        while True:
            nxt = self.snd_nxt
            off = nxt.dist(una)
            avail = buf_len - off  # bytes from SND.NXT to the end of the buffer
            if avail < 0:
                break  # our FIN is out already
            # bytes in the network: RFC 6675 pipe during SACK recovery, else everything before SND.NXT
            outstanding = self.sack.pipe(una, self.snd_max, self.high_rxt) if self.sack_recovery else off
            usable = min(right_edge.dist(nxt), cwnd - outstanding)
            n = min(avail, usable, max_payload)
            fin = self.fin_queued and n == avail and off + n == buf_len
            if n <= 0:
                if not (fin and avail == 0 and nxt == self.fin_seq):
                    break  # nothing to send, or no window: the persist timer takes over below
                n = 0
            elif n < avail and n > mss:
                n -= n % mss  # window-limited: whole segments now, the tail when the window allows
            elif n < avail and n < mss:
                # Sender SWS avoidance (RFC 9293 3.8.6.2.1): no runt while the window is the limit, unless it
                # is at least half the largest window the peer offered, or the persist timer forces it.
                # The rule is for new data: data already sent (go-back-N after a timeout) fitted the window
                # when it left, and holding it back could stall the connection for good (the peer may hold
                # it already and be waiting for nothing but our retransmission to resend its lost ACK).
                if nxt < self.snd_max:
                    n = min(n, self.snd_max.dist(nxt))  # resend what was sent; new data waits for the rule
                elif not force and n < self.max_snd_wnd // 2:
                    break
            elif n < mss and not nodelay and not fin and nxt >= self.snd_max and outstanding > 0:
                break  # Nagle (RFC 9293 3.7.4): one small segment in flight at a time
            self._emit(nxt, n, fin, now, out)
            if fin:
                break
        self._arm_after_send(now)

    def _emit(self, seq: SeqNum, n: int, fin: bool, now: float, out: list[TcpSegment]) -> None:
        """Build and account one segment of ``n`` data bytes at ``seq`` (plus FIN)."""
        payload = self.sndbuf.view(seq.dist(self.snd_una), n) if n else b""
        flags = ACK | (FIN if fin else 0)
        if n and seq.dist(self.snd_una) + n == len(self.sndbuf):
            flags |= PSH
        out.append(self.segment(flags, seq, now, payload))
        end = seq + n + (1 if fin else 0)
        if seq < self.snd_max:  # a retransmission: Karn (RFC 6298 section 3), no RTT sample from it
            self.mib.retrans_segs += 1
            if self.rtt_seq is not None and self.rtt_seq > seq:
                self.rtt_seq = None
            self.rexmit_tsval = self.ts_now(now)
        elif self.rtt_seq is None and not self.ts_enabled:
            self.rtt_seq, self.rtt_time = end, now
        if seq == self.snd_nxt:
            self.snd_nxt = end
        if end > self.snd_max:
            self.snd_max = end
        self.last_snd_time = now

    def _arm_after_send(self, now: float) -> None:
        """RFC 6298 (5.1): the timer runs while data is outstanding. With nothing outstanding and data held
        back by the window, the persist timer runs instead (RFC 9293 3.8.6.1)."""
        if self.snd_max != self.snd_una:
            if self.rto_deadline is None or self.persisting:
                self.persisting = False
                self.rto_deadline = now + self.rtt.current_rto()
            return
        waiting = len(self.sndbuf) > 0 or (self.fin_queued and not self.fin_sent)
        if waiting and self.rto_deadline is None:
            self.persisting = True
            self.rto_deadline = now + self._persist_interval()
        elif not waiting and self.persisting:
            self.persisting = False
            self.rto_deadline = None

    def _persist_interval(self) -> float:
        c = self.config
        base = max(self.rtt.current_rto(), c.persist_min) * (1 << min(self.retransmit_count, 16))
        return min(base, c.persist_max)

    # ------------------------------------------------------------------ loss recovery

    def _sack_recovery_send(self, now: float, out: list[TcpSegment]) -> None:
        """RFC 6675 section 5 step (C): while cwnd - pipe >= 1 SMSS, send what NextSeg chooses."""
        mss = self.eff_mss
        sack = self.sack
        while True:
            una, top = self.snd_una, self.snd_max
            if self.cc.cwnd - sack.pipe(una, top, self.high_rxt) < mss:
                return
            unsent = len(self.sndbuf) - top.dist(una)
            can_new = unsent > 0 and (una + self.snd_wnd).dist(top) > 0
            choice = sack.next_seg(una, top, self.high_rxt, self.rescue_rxt, can_send_new=can_new)
            rescue = False
            if choice is None:
                if self.rescue_rxt is not None and not una > self.rescue_rxt:
                    return
                choice = sack.next_seg(una, top, self.high_rxt, self.rescue_rxt, rescue=True)
                rescue = True
                if choice is None:
                    return
            seq, length = choice
            if seq == top:
                return  # rule (2): new data goes out through the normal path, which counts pipe
            if not self._retransmit(seq, length, now, out):
                return
            if rescue:
                self.rescue_rxt = seq + length

    def _retransmit(self, seq: SeqNum, length: int, now: float, out: list[TcpSegment]) -> bool:
        """Send ``[seq, seq + length)`` again (capped at the data held; the FIN if it is in range)."""
        off = seq.dist(self.snd_una)
        held = len(self.sndbuf)
        if off < 0 or off > held:
            return False
        n = min(length, held - off, self.max_payload)
        fin = self.fin_queued and off + n == held and seq + n < self.snd_max
        if n == 0 and not fin:
            return False
        self._emit(seq, n, fin, now, out)
        end = seq + n + (1 if fin else 0)
        if end > self.high_rxt:
            self.high_rxt = end
        if self.rto_deadline is None or self.persisting:
            self.persisting = False
            self.rto_deadline = now + self.rtt.current_rto()
        return True
