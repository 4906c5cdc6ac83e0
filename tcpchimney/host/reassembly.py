"""IPv4 fragment reassembly (RFC 791 section 3.2, hole bookkeeping in the spirit of RFC 815).

Bounded: a datagram may not exceed 65535 bytes, at most ``max_datagrams`` are in progress and their
fragments together hold at most ``max_bytes``; a new fragment that would exceed a bound is dropped (Linux
ipfrag_high_thresh behaviour). A datagram not completed within ``timeout`` (30 s, Linux ipfrag_time) is
discarded. Overlaps: an exact duplicate fragment is ignored; any other overlap drops the whole datagram, as
Linux does since 4.19 (the IPv4 counterpart of RFC 5722), which defeats overlap-based evasion.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import OrderedDict
from dataclasses import dataclass, field

from tcpchimney.host.counters import bump

MAX_DATAGRAM = 65535

FragKey = tuple[bytes, bytes, int, int]  # (src, dst, protocol, identification)


@dataclass(slots=True)
class _Datagram:
    deadline: float
    starts: list[int] = field(default_factory=list)  # sorted fragment offsets
    pieces: dict[int, bytes] = field(default_factory=dict)  # offset -> bytes
    received: int = 0  # payload bytes held (no overlaps, so coverage == received)
    total: int | None = None  # known once the last fragment (MF=0) arrived
    header_len: int = 20


@dataclass(frozen=True, slots=True)
class Reassembled:
    src: bytes
    dst: bytes
    proto: int
    payload: bytes


class Reassembler:
    def __init__(
        self,
        counters: dict[str, int],
        timeout: float = 30.0,
        max_bytes: int = 1 << 20,
        max_datagrams: int = 64,
    ) -> None:
        self._counters = counters
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.max_datagrams = max_datagrams
        self.bytes_held = 0
        self._queues: OrderedDict[FragKey, _Datagram] = OrderedDict()  # oldest first: deadlines are ordered

    def __len__(self) -> int:
        return len(self._queues)

    def add(
        self,
        key: FragKey,
        offset: int,
        more: bool,
        data: bytes | bytearray | memoryview,
        header_len: int,
        now: float,
    ) -> Reassembled | None:
        """Add one fragment; returns the whole datagram's payload once every byte is present."""
        bump(self._counters, "frag_rx")
        end = offset + len(data)
        if end + header_len > MAX_DATAGRAM or (more and len(data) % 8):
            # RFC 791: every fragment but the last carries a multiple of 8 bytes.
            bump(self._counters, "drop_frag_bad_length")
            return None
        dgram = self._queues.get(key)
        if dgram is None:
            if len(self._queues) >= self.max_datagrams:
                bump(self._counters, "drop_frag_too_many")
                return None
            dgram = _Datagram(now + self.timeout)
            self._queues[key] = dgram
        if self.bytes_held + len(data) > self.max_bytes:
            bump(self._counters, "drop_frag_memory")
            if not dgram.starts:
                self._discard(key)
            return None
        verdict = self._insert(dgram, offset, end, bytes(data), more)
        if verdict == "duplicate":
            bump(self._counters, "frag_duplicate")
            return None
        if verdict != "ok":
            bump(self._counters, f"drop_frag_{verdict}")
            self._discard(key)
            return None
        if offset == 0:
            dgram.header_len = header_len
        if dgram.total is None or dgram.received != dgram.total:
            return None
        self._discard(key)
        bump(self._counters, "reassembled")
        payload = b"".join(dgram.pieces[s] for s in dgram.starts)
        return Reassembled(key[0], key[1], key[2], payload)

    def _insert(self, dgram: _Datagram, offset: int, end: int, data: bytes, more: bool) -> str:
        if not more:
            if (dgram.total is not None and dgram.total != end) or (dgram.starts and self._end(dgram) > end):
                return "inconsistent_end"
            dgram.total = end
        elif dgram.total is not None and end > dgram.total:
            return "inconsistent_end"
        starts = dgram.starts
        i = bisect_left(starts, offset)
        if i < len(starts) and starts[i] == offset and len(dgram.pieces[offset]) == len(data):
            return "duplicate"  # Linux IPFRAG_DUP: same offset and length, ignored
        if i > 0 and starts[i - 1] + len(dgram.pieces[starts[i - 1]]) > offset:
            return "overlap"
        if i < len(starts) and starts[i] < end:
            return "overlap"
        if not data and more:
            return "bad_length"
        starts.insert(i, offset)
        dgram.pieces[offset] = data
        dgram.received += len(data)
        self.bytes_held += len(data)
        return "ok"

    @staticmethod
    def _end(dgram: _Datagram) -> int:
        last = dgram.starts[-1]
        return last + len(dgram.pieces[last])

    def _discard(self, key: FragKey) -> None:
        dgram = self._queues.pop(key)
        self.bytes_held -= dgram.received

    def next_deadline(self) -> float | None:
        for dgram in self._queues.values():
            return dgram.deadline
        return None

    def handle_timer(self, now: float) -> int:
        """Discard datagrams whose 30 s ran out (RFC 791: the reassembly timer); returns how many."""
        expired = 0
        while self._queues:
            key, dgram = next(iter(self._queues.items()))
            if dgram.deadline > now:
                break
            self._discard(key)
            expired += 1
        if expired:
            bump(self._counters, "drop_frag_timeout", expired)
        return expired
