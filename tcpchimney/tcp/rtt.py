"""Round-trip time estimation and the retransmission timeout, RFC 6298.

The engine feeds samples that obey Karn's algorithm (RFC 6298 section 3: never from a retransmitted
segment, unless timestamps disambiguate it, RFC 7323 section 4) and asks for the current timeout when it
arms the timer.
"""

from __future__ import annotations

_ALPHA = 0.125  # RFC 6298 (2.3)
_BETA = 0.25  # RFC 6298 (2.3)
_K = 4  # RFC 6298 (2.2)
_SYN_FALLBACK_RTO = 3.0  # RFC 6298 (5.7)


class RttEstimator:
    """SRTT / RTTVAR / RTO of one connection, with exponential backoff kept apart from the estimate.

    ``rto`` is the value computed from the samples (RFC 6298 2.2-2.5); ``current_rto()`` is what the timer
    uses: ``rto`` doubled once per ``backoff()`` (5.5), capped at ``rto_max``.
    """

    __slots__ = ("backoffs", "granularity", "rto", "rto_initial", "rto_max", "rto_min", "rttvar", "srtt")

    def __init__(
        self, rto_initial: float, rto_min: float, rto_max: float, granularity: float = 0.001
    ) -> None:
        if not 0 < rto_min <= rto_max or rto_initial <= 0 or granularity < 0:
            raise ValueError(
                f"bad RTO bounds: initial={rto_initial} min={rto_min} max={rto_max} G={granularity}"
            )
        self.rto_initial = rto_initial
        self.rto_min = rto_min
        self.rto_max = rto_max
        self.granularity = granularity  # G, the clock granularity
        self.srtt: float | None = None  # None until the first measurement (RFC 6298 2.1)
        self.rttvar = 0.0
        self.rto = min(rto_initial, rto_max)  # (2.1) until the first sample
        self.backoffs = 0  # how many times the timer expired since the last valid sample

    def sample(self, rtt: float) -> None:
        """One RTT measurement R in seconds; it collapses any backoff (RFC 6298 section 5, after 5.7)."""
        if rtt < 0:
            raise ValueError(f"negative RTT sample {rtt}")
        if self.srtt is None:  # (2.2) the first measurement
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:  # (2.3) RTTVAR first, with the SRTT from before this sample
            self.rttvar = (1 - _BETA) * self.rttvar + _BETA * abs(self.srtt - rtt)
            self.srtt = (1 - _ALPHA) * self.srtt + _ALPHA * rtt
        self.rto = self._bounded(self.srtt + max(self.granularity, _K * self.rttvar))
        self.backoffs = 0

    def backoff(self) -> None:
        """The retransmission timer expired: double the timeout (RFC 6298 5.5), up to ``rto_max``."""
        if self.current_rto() < self.rto_max:
            self.backoffs += 1

    def current_rto(self) -> float:
        """The timeout to arm now, backoff included."""
        return min(self.rto_max, self.rto * (1 << self.backoffs))

    def reinit_after_syn_timeout(self) -> None:
        """RFC 6298 (5.7): the SYN or SYN-ACK timed out and no RTT is known: data starts with RTO = 3 s."""
        if self.srtt is None and self.rto < _SYN_FALLBACK_RTO:
            self.rto = self._bounded(_SYN_FALLBACK_RTO)
        self.backoffs = 0

    def restore(self, srtt: float | None, rttvar: float, rto: float, backoffs: int = 0) -> None:
        """Take over the estimate of a snapshot (offload hand-off): the timer continues where it was."""
        if rttvar < 0 or rto <= 0 or backoffs < 0 or (srtt is not None and srtt < 0):
            raise ValueError(f"bad RTT state srtt={srtt} rttvar={rttvar} rto={rto} backoffs={backoffs}")
        self.srtt = srtt
        self.rttvar = rttvar
        self.rto = self._bounded(rto)
        self.backoffs = backoffs

    def _bounded(self, rto: float) -> float:
        # (2.4) rounded up to rto_min (RFC: 1 s; Linux and our default: 200 ms), (2.5) at most rto_max
        return min(self.rto_max, max(self.rto_min, rto))
