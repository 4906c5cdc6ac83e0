"""Named crash points of the NIC process: where a test kills it to prove the host loses nothing.

Each point is a moment the crash rules must hold at (docs/nic-process.md): a NIC that dies there leaves the
host everything it needs. ``arm(point, after=n)`` makes the n-th pass through ``point`` kill the process
with SIGKILL on the spot (no clean-up, no last turn: the death a host must survive). The host arms them
over the control socket (``{"op": "crash", "point": ..., "after": n}``, ``NicProcess.arm_crash``).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

CRASH_POINTS = {
    "after_place": "received bytes are in the RX buffer, their record is not committed",
    "after_commit": "records are committed, the turn's completions are not published",
    "after_publish": "completions and indications are published, the turn's frames (ACKs) are not written",
    "after_tap_write": "the turn's frames are written to the TAP",
    "mid_initiate": "an initiate was accepted by the target, its completion is not published",
    "mid_terminate": "a terminate was handled by the target, its completion is not published",
}


def _sigkill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class CrashPoints:
    def __init__(self, kill: Callable[[], None] = _sigkill) -> None:
        self._kill = kill
        self.armed: dict[str, int] = {}

    def arm(self, point: str, after: int = 1) -> None:
        """Raises ValueError (one sentence) for an unknown point or a count below 1."""
        if point not in CRASH_POINTS:
            raise ValueError(f"unknown crash point {point!r}; known: {', '.join(CRASH_POINTS)}")
        if after < 1:
            raise ValueError(f"crash point {point}: after must be at least 1, got {after}")
        self.armed[point] = after

    def hit(self, point: str) -> None:
        left = self.armed.get(point)
        if left is None:
            return
        if left > 1:
            self.armed[point] = left - 1
            return
        del self.armed[point]
        self._kill()
