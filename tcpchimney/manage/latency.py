"""Hand-off latency distributions (offload: initiate to completion; upload: terminate to completion), from
the ``duration`` of the Offloaded and Uploaded events, in fixed buckets so that ``chimney stats`` and the
Prometheus histogram show the same figures. Feeding one is a bisection and two additions per hand-off."""

from __future__ import annotations

from bisect import bisect_left
from typing import Final

# Upper bounds in seconds (Prometheus' ``le``): a hand-off takes tens of microseconds to a few milliseconds.
BUCKETS: Final = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)


class Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # per bucket (not cumulative); the last one is +Inf
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """``[(le, count of observations <= le), ...]`` ending with ``("+Inf", count)``."""
        out, total = [], 0
        for bound, n in zip((*(repr(b) for b in BUCKETS), "+Inf"), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket holding the ``q`` quantile (None without observations; +Inf is
        given as the largest finite bound)."""
        total = self.count
        if total == 0:
            return None
        rank, seen = q * total, 0
        for bound, n in zip(BUCKETS, self.counts, strict=False):
            seen += n
            if seen >= rank:
                return bound
        return BUCKETS[-1]


def nstat_names(direction: str, h: Histogram) -> dict[str, int]:
    """The histogram as nstat-style counters: ``HandoffOffloadCount``, ``...SumUs`` and one ``...LeNus``
    per bucket (cumulative, so each only grows)."""
    name = "Handoff" + direction.capitalize()
    out = {f"{name}Count": h.count, f"{name}SumUs": round(h.sum * 1e6)}
    for bound, total in h.cumulative()[:-1]:
        out[f"{name}Le{round(float(bound) * 1e6)}us"] = total
    return out
