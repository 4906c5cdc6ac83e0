"""Timeouts (RFC 9293 3.10.8, RFC 6298 section 5, RFC 1122 4.2.3.6): retransmission, persist, delayed
ACK, keepalive, TIME-WAIT and the orphaned FIN-WAIT-2 limit.

Every timer is an absolute deadline on the TCB; ``next_deadline`` is the earliest and ``handle_timer`` runs
whatever is due. The retransmission and persist timers share one slot, as they do in the offload state.
"""

from __future__ import annotations

from tcpchimney.tcp.events import ConnectionTimedOut
from tcpchimney.tcp.output import SENDING_STATES, Output
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire.tcp import ACK, TcpSegment


class Timers(Output):
    def next_deadline(self) -> float | None:
        best: float | None = None
        for t in (self.rto_deadline, self.delack_deadline, self.keepalive_deadline, self.close_deadline):
            if t is not None and (best is None or t < best):
                best = t
        return best

    def handle_timer(self, now: float) -> None:
        if self.close_deadline is not None and now >= self.close_deadline:
            self.close_deadline = None
            self.set_state(TcpState.CLOSED)  # TIME-WAIT ended (2*MSL) or an orphan waited too long
            return
        if self.delack_deadline is not None and now >= self.delack_deadline:
            self.delack_deadline = None
            self.ack_now = True
        if self.rto_deadline is not None and now >= self.rto_deadline:
            self.rto_deadline = None
            if self.persisting:
                self._persist_expired(now)
            else:
                self._retransmission_expired(now)
        if self.keepalive_deadline is not None and now >= self.keepalive_deadline:
            self._keepalive_expired(now)

    # ------------------------------------------------------------------ retransmission (RFC 6298 5.4-5.7)

    def _retransmission_expired(self, now: float) -> None:
        if self.snd_max == self.snd_una or self.state is TcpState.CLOSED:
            return
        self.retransmit_count += 1
        self.mib.timeouts += 1
        handshake = self.state in (TcpState.SYN_SENT, TcpState.SYN_RECEIVED)
        limit = self.config.syn_retries if handshake else self.config.max_retransmits
        if self.retransmit_count > limit:
            self.time_out()
            return
        if self.first_rexmit_time is None:
            self.first_rexmit_time = now
        self.rtt.backoff()  # (5.5)
        self.rtt_seq = None  # Karn: nothing sent before the timeout may be timed
        if handshake:
            self.mib.retrans_segs += 1  # Linux counts SYN and SYN-ACK retransmissions in RetransSegs
            self.pending.append(self.syn_segment(now))
        else:
            self.cc.on_rto(self.flight_size, self.snd_max, repeated=self.retransmit_count > 1)
            self.sack.clear()  # RFC 6675 5.1: the receiver may have reneged; start over from SND.UNA
            self.sack_recovery = False
            self.dup_ack_count = 0
            self.snd_nxt = self.snd_una  # go-back-N: segments_to_send resends from SND.UNA (5.4)
        self.rto_deadline = now + self.rtt.current_rto()  # (5.6)

    def syn_segment(self, now: float) -> TcpSegment:
        raise NotImplementedError  # provided by TcpConnection, which knows the options it offered

    def time_out(self) -> None:
        """Retransmissions, SYN retries or keepalive probes ran out (ETIMEDOUT): nothing more is sent."""
        self.timed_out = True
        self.pending.clear()
        self.events.append(ConnectionTimedOut())
        self.set_state(TcpState.CLOSED)

    # ------------------------------------------------------------------ persist (RFC 9293 3.8.6.1)

    def _persist_expired(self, now: float) -> None:
        self.persisting = False
        if self.state not in SENDING_STATES:
            return
        if self.snd_wnd > 0:
            self._send_data(now, self.pending, force=True)  # a small window is open: use it despite SWS
            return
        # Probe with SND.UNA - 1 and no data, as Linux does: an out-of-window segment the receiver must
        # answer with an ACK carrying its current window. The probe consumes no sequence space.
        self.retransmit_count += 1
        if self.retransmit_count > self.config.max_retransmits:
            self.time_out()
            return
        self.pending.append(self.segment(ACK, self.snd_una + -1, now))
        self.persisting = True
        self.rto_deadline = now + self._persist_interval()

    # ------------------------------------------------------------------ keepalive (RFC 1122 4.2.3.6)

    def arm_keepalive(self, now: float) -> None:
        if self.config.keepalive and self.state is TcpState.ESTABLISHED:
            self.keepalive_probe_count = 0
            self.keepalive_deadline = now + self.config.keepalive_idle
        else:
            self.keepalive_deadline = None

    def _keepalive_expired(self, now: float) -> None:
        c = self.config
        if self.state is not TcpState.ESTABLISHED or not c.keepalive:
            self.keepalive_deadline = None
            return
        if self.snd_max != self.snd_una:  # data outstanding: the retransmission timer watches the peer
            self.keepalive_deadline = now + c.keepalive_interval
            return
        if self.keepalive_probe_count >= c.keepalive_probes:
            self.keepalive_deadline = None
            self.time_out()
            return
        self.keepalive_probe_count += 1
        # SEG.SEQ = SND.NXT - 1, no data (RFC 1122 4.2.3.6): the peer answers with an ACK.
        self.pending.append(self.segment(ACK, self.snd_nxt + -1, now))
        self.keepalive_deadline = now + c.keepalive_interval

    # ------------------------------------------------------------------ TIME-WAIT (RFC 9293 3.10.7.4)

    def enter_time_wait(self, now: float) -> None:
        self.set_state(TcpState.TIME_WAIT)
        self.rto_deadline = None
        self.persisting = False
        self.keepalive_deadline = None
        self.close_deadline = now + 2 * self.config.msl
