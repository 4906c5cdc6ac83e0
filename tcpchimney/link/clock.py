"""The virtual clock of the simulated link: it only moves when the link jumps it to the next event."""

from __future__ import annotations

import math


class VirtualClock:
    """Seconds on a clock that nothing but ``advance_to`` moves; it never goes backwards."""

    __slots__ = ("_now",)

    def __init__(self, start: float = 0.0) -> None:
        if not math.isfinite(start):
            raise ValueError(f"clock start must be a finite number of seconds, not {start!r}")
        self._now = float(start)

    @property
    def now(self) -> float:
        return self._now

    def advance_to(self, t: float) -> None:
        """Move the clock to ``t``; staying at the same instant is allowed, going backwards is a bug."""
        if not t >= self._now:  # also refuses NaN
            raise ValueError(f"the virtual clock cannot go backwards: from {self._now!r} to {t!r}")
        if math.isinf(t):
            raise ValueError("the virtual clock cannot advance to infinity")
        self._now = float(t)

    def __repr__(self) -> str:
        return f"VirtualClock(now={self._now!r})"
