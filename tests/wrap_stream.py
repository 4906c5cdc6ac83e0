"""What the tests that move more than 2^32 bytes on one connection share (tests/unit/tcp/test_seq_wrap.py,
tests/offload/test_seq_wrap_handoff.py): a deterministic stream checked piecewise, never stored, and a plan
of irregular message sizes with one message ending exactly where SND.UNA comes back to the ISS."""

from __future__ import annotations

import random

PERIOD = 1_000_003  # the stream repeats with a prime period: no message or segment boundary aligns with it
WRAP = (1 << 32) - 1  # data bytes after which SND.UNA == ISS again (the SYN, or ISS = SND.UNA - 1, took one)


class PeriodicStream:
    """Byte i of the stream is ``pattern[i % PERIOD]``; ``written`` and ``checked`` count both ends."""

    def __init__(self, seed: int) -> None:
        pattern = random.Random(seed).randbytes(PERIOD)
        self._doubled = pattern + pattern  # any slice up to PERIOD long is contiguous
        self.written = 0
        self.checked = 0

    def at(self, pos: int, n: int) -> bytes:
        assert n <= PERIOD
        start = pos % PERIOD
        return self._doubled[start : start + n]

    def next_message(self, n: int) -> bytes:
        data = self.at(self.written, n)
        self.written += n
        return data

    def check(self, data: bytes) -> None:
        """``data`` is what the receiver read next."""
        assert data == self.at(self.checked, len(data)), f"stream differs after byte {self.checked}"
        self.checked += len(data)


def message_sizes(rng: random.Random, total: int, boundary: int) -> list[int]:
    """Irregular sizes (1 byte .. about 1 MB) summing to ``total``, with a message ending at ``boundary``."""
    sizes: list[int] = []
    pos = 0
    while pos < total:
        n = rng.choice((rng.randint(1, 3000), rng.randint(100_000, PERIOD)))
        limit = boundary if pos < boundary else total
        n = min(n, limit - pos)
        sizes.append(n)
        pos += n
    return sizes
