"""NewReno congestion control arithmetic: RFC 5681 with the RFC 6582 recovery rules.

This module only does the window arithmetic; the engine decides when each event happened (new ACK,
duplicate ACK, partial or full ACK in recovery, timeout, idle restart) and calls the matching method.
All sizes are bytes.
"""

from __future__ import annotations

from tcpchimney.wire.seq import SeqNum

_SSTHRESH_INFINITE = 2**31 - 1  # RFC 5681 3.1: "arbitrarily high" initial ssthresh
_ABC_LIMIT_SEGMENTS = 2  # RFC 3465 2.2: L = 2*SMSS bytes counted per ACK in slow start
_ZERO = SeqNum(0)


class NewReno:
    """cwnd / ssthresh of one connection, and the RFC 6582 ``recover`` point.

    ``recover`` holds SND.MAX at the start of the last fast recovery or timeout: RFC 6582 stores "the highest
    sequence number transmitted", we store the sequence number just after it (as FreeBSD's snd_recover does),
    so a full ACK is ``ack >= recover``.
    """

    __slots__ = ("abc_limit", "cwnd", "in_recovery", "initial_window_segments", "mss", "recover", "ssthresh")

    def __init__(
        self,
        mss: int,
        initial_window_segments: int = 10,
        iss: SeqNum = _ZERO,
        abc_limit: int = _ABC_LIMIT_SEGMENTS,
    ) -> None:
        if mss <= 0 or initial_window_segments <= 0:
            raise ValueError(f"bad mss={mss} or initial window={initial_window_segments}")
        self.mss = mss  # SMSS; may be lowered later (PMTU discovery)
        self.initial_window_segments = initial_window_segments
        self.cwnd = self.initial_window()
        self.ssthresh = _SSTHRESH_INFINITE
        self.in_recovery = False
        self.recover = iss  # RFC 6582 3.2 step 1: initialised to the ISS
        # RFC 3465 L in segments (0: no limit). A receiver behind GRO acknowledges tens of segments at once;
        # with L = 2 slow start would crawl, so the engine follows Linux (no limit) unless configured.
        self.abc_limit = abc_limit

    def initial_window(self) -> int:
        """IW in bytes. Linux uses 10 segments whatever the MSS; RFC 6928 would cap it at 14600 bytes for
        large MSS (min(10*MSS, max(2*MSS, 14600))). We follow Linux, so the peer sees what Linux sends."""
        return self.initial_window_segments * self.mss

    def on_ack(self, acked: int, flight_size: int) -> None:
        """``acked`` new bytes were cumulatively acknowledged outside recovery.

        ``flight_size`` is the data outstanding when the ACK arrived. The window only grows while it is
        used: at least half of cwnd in flight (RFC 7661's idea, Linux tcp_is_cwnd_limited), so that an
        application-limited sender does not build a window it never tested.
        """
        if acked <= 0 or self.in_recovery or 2 * flight_size < self.cwnd:
            return
        if self.cwnd < self.ssthresh:
            # RFC 5681 3.1 eq. (2) with appropriate byte counting, L = 2*SMSS (RFC 3465 2.2)
            self.cwnd += min(acked, self.abc_limit * self.mss) if self.abc_limit else acked
        else:
            # RFC 5681 3.1 eq. (3), scaled by the bytes this ACK covers so that stretch ACKs still add
            # about one SMSS per RTT (never more, as 3.1 requires); at least one byte per ACK.
            self.cwnd += max(1, self.mss * min(acked, self.cwnd) // self.cwnd)

    def may_enter_fast_recovery(self, ack: SeqNum, snd_max: SeqNum) -> bool:
        """RFC 6582 3.2 step 2: duplicate ACKs start fast retransmit only if the ACK covers more than
        ``recover``; otherwise they may be echoes of a retransmission that was not needed (RFC 6582 6)."""
        if self.in_recovery:
            return False
        # recover is only meaningful while it lies between the ACK and SND.MAX; an old value (far behind,
        # possibly wrapped) must not block recovery forever.
        pending = 0 <= self.recover.dist(ack) <= snd_max.dist(ack)
        return not pending

    def enter_fast_recovery(self, flight_size: int, snd_max: SeqNum) -> None:
        """The third duplicate ACK (RFC 5681 3.2 steps 2-3, RFC 6582 3.2 steps 2-3)."""
        self.ssthresh = self._half_flight(flight_size)  # eq. (4)
        self.cwnd = self.ssthresh + 3 * self.mss  # inflate by the three segments that left the network
        self.in_recovery = True
        self.recover = snd_max

    def on_dup_ack_in_recovery(self) -> None:
        """Each further duplicate ACK: one more segment left the network (RFC 5681 3.2 step 4)."""
        if self.in_recovery:
            self.cwnd += self.mss

    def is_full_ack(self, ack: SeqNum) -> bool:
        """RFC 6582 3.2 step 5/6: the ACK covers everything outstanding when recovery began."""
        return ack >= self.recover

    def on_partial_ack(self, acked: int) -> None:
        """RFC 6582 3.2 step 5: deflate by the new data acknowledged, add back SMSS if it was >= SMSS."""
        cwnd = max(0, self.cwnd - acked)
        if acked >= self.mss:
            cwnd += self.mss
        self.cwnd = max(cwnd, self.mss)

    def exit_recovery(self, flight_size: int) -> None:
        """RFC 6582 3.2 step 6, option (1): a full ACK ends recovery without a burst."""
        self.cwnd = min(self.ssthresh, max(flight_size, self.mss) + self.mss)
        self.in_recovery = False

    def on_rto(self, flight_size: int, snd_max: SeqNum | None = None, *, repeated: bool = False) -> None:
        """The retransmission timer expired (RFC 5681 3.1, eq. (4) and cwnd = LW = 1 SMSS).

        ``repeated``: the segment had already been retransmitted by the timer, ssthresh is then held
        (RFC 5681 3.1, note after eq. (4)). ``snd_max``: RFC 6582 section 4 records it in ``recover`` so that
        duplicate ACKs caused by the go-back-N retransmission do not start a fast retransmit.
        """
        if not repeated:
            self.ssthresh = self._half_flight(flight_size)
        self.cwnd = self.mss
        self.in_recovery = False
        if snd_max is not None:
            self.recover = snd_max

    def after_idle(self, rto: float, idle: float) -> None:
        """RFC 5681 4.1: after an idle period longer than the RTO, restart from RW = min(IW, cwnd)."""
        if idle > rto:
            self.cwnd = min(self.initial_window(), self.cwnd)

    def restore(
        self, cwnd: int, ssthresh: int, in_recovery: bool = False, recover: SeqNum | None = None
    ) -> None:
        """Take over the state of a snapshot (offload hand-off)."""
        if cwnd <= 0 or ssthresh <= 0:
            raise ValueError(f"bad congestion state cwnd={cwnd} ssthresh={ssthresh}")
        self.cwnd = cwnd
        self.ssthresh = ssthresh
        self.in_recovery = in_recovery
        if recover is not None:
            self.recover = recover

    def _half_flight(self, flight_size: int) -> int:
        return max(flight_size // 2, 2 * self.mss)  # RFC 5681 eq. (4)
