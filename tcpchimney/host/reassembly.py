"""IPv4 fragment reassembly (RFC 791 section 3.2, hole bookkeeping in the spirit of RFC 815).

Bounded by memory, as Linux, not by a count of datagrams (a count is what a few junk first fragments fill):

- each fragment held is charged its payload plus ``FRAGMENT_OVERHEAD`` and each datagram in progress
  ``QUEUE_OVERHEAD`` (what they cost in this process, measured with tracemalloc; Linux charges an sk_buff's
  truesize the same way), so ``memory`` bounds what the reassembler really holds, however small the pieces;
- once ``memory`` passes ``high_thresh`` (4 MiB, Linux net.ipv4.ipfrag_high_thresh), the oldest datagrams
  in progress are evicted until it is at most ``low_thresh`` (3 MiB, net.ipv4.ipfrag_low_thresh, the
  eviction Linux did up to 4.16): a flood evicts its own oldest junk, and a legitimate datagram, whose
  fragments arrive close together, is lost only if more than ``high_thresh - low_thresh`` of fragments
  arrive between its first and its last;
- a datagram may not exceed 65535 bytes, and one not completed within ``timeout`` (30 s, Linux ipfrag_time)
  is discarded.

Overlaps: an exact duplicate fragment (same offset and length) is ignored; any other overlap discards the
whole datagram, as Linux does since 4.19 for IPv4 and RFC 5722 requires for IPv6, which defeats
overlap-based evasion. As RFC 5722 says, the fragments of that datagram still to come are discarded too: the
datagram stays behind as a tombstone (charged ``QUEUE_OVERHEAD``, evictable) until its timeout.

Counters (ipv4 layer): ``frag_rx``, ``reassembled``, ``frag_duplicate`` and one per drop reason:
``drop_frag_bad_length``, ``drop_frag_overlap``, ``drop_frag_inconsistent_end`` (a datagram discarded),
``drop_frag_discarded`` (a later fragment of one), ``drop_frag_evicted`` and ``drop_frag_timeout``
(datagrams in progress, whatever they held).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import OrderedDict
from dataclasses import dataclass, field

from tcpchimney.host.counters import bump

MAX_DATAGRAM = 65535
HIGH_THRESH = 4 * 1024 * 1024  # Linux net.ipv4.ipfrag_high_thresh
LOW_THRESH = 3 * 1024 * 1024  # Linux net.ipv4.ipfrag_low_thresh
# Charged on top of the payload: a datagram in progress (its key, entry and bookkeeping objects) and each
# fragment (its bytes object, list slot and dict entry). Measured with tracemalloc on CPython 3.11: about
# 710 and 120 bytes; rounded up so that ``memory`` never under-counts.
QUEUE_OVERHEAD = 768
FRAGMENT_OVERHEAD = 128

FragKey = tuple[bytes, bytes, int, int]  # (src, dst, protocol, identification)


@dataclass(slots=True)
class _Datagram:
    deadline: float
    starts: list[int] = field(default_factory=list)  # sorted fragment offsets
    pieces: dict[int, bytes] = field(default_factory=dict)  # offset -> bytes
    received: int = 0  # payload bytes held (no overlaps, so coverage == received)
    total: int | None = None  # known once the last fragment (MF=0) arrived
    header_len: int = 20
    charged: int = QUEUE_OVERHEAD  # what this datagram adds to Reassembler.memory
    discarded: bool = False  # a tombstone: overlapped or inconsistent, its later fragments are dropped


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
        high_thresh: int = HIGH_THRESH,
        low_thresh: int = LOW_THRESH,
    ) -> None:
        if not 0 <= low_thresh <= high_thresh:
            raise ValueError(f"need 0 <= low_thresh <= high_thresh, not {low_thresh} and {high_thresh}")
        self._counters = counters
        self.timeout = timeout
        self.high_thresh = high_thresh
        self.low_thresh = low_thresh
        self.memory = 0  # bytes charged for everything held (payload and overheads)
        self._queues: OrderedDict[FragKey, _Datagram] = OrderedDict()  # oldest first: deadlines are ordered

    def __len__(self) -> int:
        """Datagrams in progress (tombstones included)."""
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
        if end + header_len > MAX_DATAGRAM or (more and len(data) % 8) or (more and not data):
            # RFC 791: every fragment but the last carries a multiple of 8 bytes (and some bytes).
            bump(self._counters, "drop_frag_bad_length")
            return None
        dgram = self._queues.get(key)
        if dgram is None:
            dgram = self._queues[key] = _Datagram(now + self.timeout)
            self.memory += QUEUE_OVERHEAD
        elif dgram.discarded:
            bump(self._counters, "drop_frag_discarded")
            return None
        verdict = self._insert(dgram, offset, end, bytes(data), more)
        if verdict == "duplicate":
            bump(self._counters, "frag_duplicate")
            return None
        if verdict != "ok":
            bump(self._counters, f"drop_frag_{verdict}")
            self._tombstone(dgram)
            return None
        if offset == 0:
            dgram.header_len = header_len
        if dgram.total is None or dgram.received != dgram.total:
            if self.memory > self.high_thresh:
                self._evict()  # this datagram too, if it is among the oldest
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
        starts.insert(i, offset)
        dgram.pieces[offset] = data
        dgram.received += len(data)
        cost = len(data) + FRAGMENT_OVERHEAD
        dgram.charged += cost
        self.memory += cost
        return "ok"

    @staticmethod
    def _end(dgram: _Datagram) -> int:
        last = dgram.starts[-1]
        return last + len(dgram.pieces[last])

    def _tombstone(self, dgram: _Datagram) -> None:
        """Free what ``dgram`` holds and keep its entry until its timeout, to drop its later fragments."""
        self.memory -= dgram.charged - QUEUE_OVERHEAD
        dgram.charged = QUEUE_OVERHEAD
        dgram.starts.clear()
        dgram.pieces.clear()
        dgram.received = 0
        dgram.discarded = True

    def _discard(self, key: FragKey) -> None:
        self.memory -= self._queues.pop(key).charged

    def _evict(self) -> None:
        """Above the high threshold: the oldest datagrams go until the low threshold holds again."""
        evicted = 0
        queues = self._queues
        while queues and self.memory > self.low_thresh:
            _, dgram = queues.popitem(last=False)
            self.memory -= dgram.charged
            evicted += 1
        bump(self._counters, "drop_frag_evicted", evicted)

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
            expired += not dgram.discarded  # a tombstone was counted when it was discarded
        if expired:
            bump(self._counters, "drop_frag_timeout", expired)
        return expired
