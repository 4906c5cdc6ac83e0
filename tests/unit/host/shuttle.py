"""A minimal in-test link between HostStacks: every frame reaches every other stack, time is virtual."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tcpchimney.host.stack import HostStack
from tcpchimney.wire.frame import Frame


class Shuttle:
    def __init__(self, stacks: Sequence[HostStack], now: float = 0.0) -> None:
        self.stacks = list(stacks)
        self.now = now
        self.frames: list[tuple[int, Frame]] = []  # (sender index, frame) of everything carried
        self.drop: Callable[[int, Frame], bool] = lambda sender, f: False

    def flush(self) -> bool:
        """Deliver until no stack has anything to send; True when something moved."""
        moved = False
        for _ in range(1000):
            progress = False
            for i, s in enumerate(self.stacks):
                for f in s.frames_to_send(self.now):
                    progress = True
                    self.frames.append((i, f))
                    if self.drop(i, f):
                        continue
                    # On the wire a frame is one buffer; offload flags travel as a virtio header would.
                    wire = Frame(f.tobytes(), csum_partial=f.csum_partial, gso_size=f.gso_size)
                    for j, other in enumerate(self.stacks):
                        if j != i:
                            other.handle_frame(wire, self.now)
            if not progress:
                return moved
            moved = True
        raise AssertionError("the link never went quiet")

    def run_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Flush, then jump the clock to the next deadline, until ``predicate`` holds."""
        end = self.now + timeout
        while True:
            self.flush()
            if predicate():
                return
            deadlines = [d for s in self.stacks if (d := s.next_deadline()) is not None]
            if not deadlines or min(deadlines) > end:
                raise AssertionError(f"condition not met by t={end}")
            self.now = max(self.now, min(deadlines))
            for s in self.stacks:
                s.handle_timer(self.now)
