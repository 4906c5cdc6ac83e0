"""Send and receive buffers of one connection, in byte offsets (the engine maps them to sequence numbers).

Both buffers keep data as chunks and never do per-byte Python work: segments leave as memoryviews into the
chunks they were written into, and out-of-order data is reassembled by interval merging.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import deque
from typing import TypeAlias

Bytes: TypeAlias = bytes | bytearray | memoryview
Piece: TypeAlias = bytes | memoryview

# Writes up to this size are gathered into one growing chunk, so that many small send() calls do not
# produce many tiny chunks (and tiny segments would still find their bytes in one chunk).
_MERGE_LIMIT = 16 * 1024
_CHUNK_TARGET = 64 * 1024


def _byte_view(data: Bytes) -> memoryview:
    mv = memoryview(data)
    if mv.ndim != 1 or mv.format not in ("B", "b", "c"):
        mv = mv.cast("B")
    return mv


class SendBuffer:
    """Bytes from SND.UNA onward (offset 0 == SND.UNA), unacknowledged then unsent.

    Chunks are immutable ``bytes``, so a view handed out for a segment stays valid whatever the buffer does
    next. Chunk positions are absolute stream offsets (``_starts``) found by bisection: a retransmission
    from deep in the buffer costs O(log chunks).
    """

    __slots__ = ("_chunks", "_end", "_first", "_open", "_open_start", "_starts", "_una", "capacity")

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity  # SO_SNDBUF; may be changed at any time (held data is kept)
        self._chunks: list[bytes] = []  # frozen chunks, _chunks[_first:] are live
        self._starts: list[int] = []  # absolute stream offset of each chunk's first byte
        self._first = 0
        self._open = bytearray()  # small writes gather here until a view needs them or it is full
        self._open_start = 0  # absolute offset of _open[0]
        self._una = 0  # absolute offset of SND.UNA
        self._end = 0  # absolute offset just past the last byte written

    def __len__(self) -> int:
        return self._end - self._una

    @property
    def space(self) -> int:
        return max(0, self.capacity - (self._end - self._una))

    def write(self, data: Bytes) -> int:
        """Copy up to ``space`` bytes of ``data`` (the caller may reuse its buffer); return how many. A
        whole ``bytes`` object is kept as it is: it cannot change (the target's Send data, most sends)."""
        mv = _byte_view(data)
        n = min(len(mv), self.space)
        if n == 0:
            return 0
        if n <= _MERGE_LIMIT:
            if len(self._open) + n > _CHUNK_TARGET:
                self._freeze()
            self._open += mv[:n]
        else:
            self._freeze()
            self._append_chunk(data if type(data) is bytes and n == len(data) else bytes(mv[:n]))
        self._end += n
        return n

    def view(self, offset: int, length: int) -> memoryview | bytes:
        """Bytes ``[offset, offset + length)`` after SND.UNA; a zero-copy view when they lie in one chunk."""
        if offset < 0 or length < 0 or offset + length > self._end - self._una:
            raise ValueError(f"range [{offset}, {offset + length}) outside the {len(self)} bytes held")
        if length == 0:
            return b""
        start = self._una + offset
        end = start + length
        if end > self._open_start and self._open:
            self._freeze()
        i = bisect_right(self._starts, start, self._first) - 1
        chunk = self._chunks[i]
        lo = start - self._starts[i]
        if lo + length <= len(chunk):
            return memoryview(chunk)[lo : lo + length]
        parts: list[Piece] = []
        while start < end:
            chunk = self._chunks[i]
            lo = start - self._starts[i]
            hi = min(len(chunk), end - self._starts[i])
            parts.append(memoryview(chunk)[lo:hi])
            start += hi - lo
            i += 1
        return b"".join(parts)

    def consume(self, n: int) -> None:
        """The first ``n`` bytes were acknowledged (SND.UNA advanced by ``n``)."""
        if n < 0 or n > self._end - self._una:
            raise ValueError(f"cannot consume {n} of {len(self)} bytes")
        self._una += n
        chunks, starts = self._chunks, self._starts
        first = self._first
        while first < len(chunks) and starts[first] + len(chunks[first]) <= self._una:
            chunks[first] = b""  # release acknowledged data now (views handed out keep their own reference)
            first += 1
        if first > 64 and first * 2 > len(chunks):  # compact now and then: amortised O(1) per chunk
            del chunks[:first], starts[:first]
            first = 0
        self._first = first
        if self._una > self._open_start:
            del self._open[: self._una - self._open_start]
            self._open_start = self._una

    def tobytes(self) -> bytes:
        """Everything held, unacknowledged and unsent (for snapshots)."""
        return bytes(self.view(0, len(self))) if len(self) else b""

    def _append_chunk(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._starts.append(self._end)
        self._open_start = self._end + len(chunk)

    def _freeze(self) -> None:
        """Turn the gathering chunk into an immutable one (views may then point into it)."""
        if self._open:
            chunk = bytes(self._open)
            self._chunks.append(chunk)
            self._starts.append(self._open_start)
            self._open_start += len(chunk)
            self._open = bytearray()


class _Block:
    """One contiguous out-of-order run: absolute ``[start, end)`` held as consecutive pieces."""

    __slots__ = ("end", "pieces", "stamp", "start")

    def __init__(self, start: int, end: int, pieces: list[Piece], stamp: int) -> None:
        self.start = start
        self.end = end
        self.pieces = pieces
        self.stamp = stamp  # larger = changed more recently (RFC 2018 section 4 block order)


def _keep(mv: memoryview) -> Piece:
    """Hold a slice of received data: a view when the source is immutable ``bytes``, else a copy."""
    return mv if isinstance(mv.obj, bytes) else mv.tobytes()


def _trim_front(pieces: list[Piece], n: int) -> list[Piece]:
    """Drop the first ``n`` bytes of a run of pieces (touching only the pieces that go)."""
    i = 0
    while n > 0 and n >= len(pieces[i]):
        n -= len(pieces[i])
        i += 1
    rest = pieces[i:]
    if n:
        rest[0] = memoryview(rest[0])[n:]
    return rest


class ReceiveBuffer:
    """In-order readable bytes plus out-of-order reassembly, both bounded by ``capacity``.

    Offsets in the API are relative to RCV.NXT; internally every position is an absolute stream offset
    (``_nxt`` is RCV.NXT), so blocks never need renumbering. The right edge of the window,
    ``_nxt + capacity - readable``, does not move when data becomes in order, only when it is read: that is
    why out-of-order data stays inside the window without being subtracted from it (RFC 9293 3.8.6.2.2).
    """

    __slots__ = ("_blocks", "_nxt", "_read_off", "_readable", "_ready", "_stamp", "capacity")

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity  # SO_RCVBUF; shrinking it keeps what was accepted (window reads 0 instead)
        self._ready: deque[Piece] = deque()  # in-order bytes, _ready[0][_read_off:] first
        self._read_off = 0
        self._readable = 0
        self._nxt = 0  # absolute offset of RCV.NXT
        self._blocks: list[_Block] = []  # out-of-order runs: sorted, disjoint, never touching
        self._stamp = 0

    @property
    def readable(self) -> int:
        return self._readable

    @property
    def window(self) -> int:
        """What RCV.WND may advertise: free space for in-order data (out-of-order bytes lie inside it)."""
        return max(0, self.capacity - self._readable)

    @property
    def has_holes(self) -> bool:
        """Whether any byte is held out of order (asked per emitted segment: no sum)."""
        return bool(self._blocks)

    @property
    def ooo_bytes(self) -> int:
        """Bytes held out of order."""
        return sum(b.end - b.start for b in self._blocks)

    def insert(self, offset: int, data: Bytes) -> int:
        """Accept ``data`` starting ``offset`` bytes after RCV.NXT; return how far RCV.NXT advances.

        The part before RCV.NXT (negative offset) and the part beyond the window are trimmed; overlaps with
        data already held keep the bytes already held (duplicates are idempotent).
        """
        mv = _byte_view(data)
        start = self._nxt + offset
        end = min(start + len(mv), self._nxt + self.window)
        if start < self._nxt:
            mv = mv[self._nxt - start :]
            start = self._nxt
        if end <= start:
            return 0
        mv = mv[: end - start]
        if start == self._nxt:
            return self._append_in_order(_keep(mv))
        self._insert_out_of_order(start, end, mv)
        return 0

    def read(self, max_bytes: int = -1) -> bytes:
        """Up to ``max_bytes`` in-order bytes (all when negative); reading reopens the window."""
        n = self._readable if max_bytes < 0 else min(max_bytes, self._readable)
        if n == 0:
            return b""
        ready = self._ready
        first = ready[0]
        if self._read_off == 0 and len(first) == n:
            ready.popleft()
            out = first if isinstance(first, bytes) else first.tobytes()
        else:
            out = b"".join(self._take(n))
        self._readable -= n
        return out

    def ooo_ranges(self) -> list[tuple[int, int]]:
        """Out-of-order ``[start, end)`` offsets relative to RCV.NXT, most recently changed first.

        RFC 2018 section 4: the first SACK block reports the block holding the most recent segment, then the
        other blocks in the order they were last reported.
        """
        nxt = self._nxt
        ordered = sorted(self._blocks, key=lambda b: b.stamp, reverse=True)
        return [(b.start - nxt, b.end - nxt) for b in ordered]

    def drop_out_of_order(self) -> None:
        """Forget the out-of-order queue (RFC 2018 section 8 allows reneging; upload drops un-ACKed data)."""
        self._blocks.clear()

    def tobytes(self) -> bytes:
        """The readable bytes, without consuming them (for snapshots)."""
        if not self._readable:
            return b""
        parts = list(self._ready)
        parts[0] = memoryview(parts[0])[self._read_off :]
        return b"".join(parts)

    def _append_in_order(self, piece: Piece) -> int:
        before = self._nxt
        self._ready.append(piece)
        self._nxt += len(piece)
        blocks = self._blocks
        # Runs that the new data reached or overlapped are now in order too.
        while blocks and blocks[0].start <= self._nxt:
            block = blocks.pop(0)
            if block.end > self._nxt:
                self._ready.extend(_trim_front(block.pieces, self._nxt - block.start))
                self._nxt = block.end
        advanced = self._nxt - before
        self._readable += advanced
        return advanced

    def _insert_out_of_order(self, start: int, end: int, mv: memoryview) -> None:
        blocks = self._blocks
        i = bisect_left(blocks, start, key=lambda b: b.end)  # first run ending at or after start
        j = bisect_right(blocks, end, lo=i, key=lambda b: b.start)  # runs i..j-1 touch [start, end)
        self._stamp += 1
        if i == j:
            blocks.insert(i, _Block(start, end, [_keep(mv)], self._stamp))
            return
        first = blocks[i]
        if j == i + 1 and first.start <= start and end <= first.end:  # a duplicate: only its recency changes
            first.stamp = self._stamp
            return
        pieces: list[Piece] = first.pieces if first.start <= start else [_keep(mv[: first.start - start])]
        if first.start > start:
            pieces.extend(first.pieces)
        cursor = first.end
        for block in blocks[i + 1 : j]:
            pieces.append(_keep(mv[cursor - start : block.start - start]))  # the gap before this run
            pieces.extend(block.pieces)
            cursor = block.end
        if cursor < end:
            pieces.append(_keep(mv[cursor - start :]))
        blocks[i:j] = [_Block(min(start, first.start), max(end, cursor), pieces, self._stamp)]

    def _take(self, n: int) -> list[Piece]:
        """Remove ``n`` readable bytes from the front of the in-order queue, as pieces."""
        ready = self._ready
        parts: list[Piece] = []
        while n:
            piece = ready[0]
            avail = len(piece) - self._read_off
            if avail <= n:
                parts.append(memoryview(piece)[self._read_off :] if self._read_off else piece)
                ready.popleft()
                self._read_off = 0
                n -= avail
            else:
                parts.append(memoryview(piece)[self._read_off : self._read_off + n])
                self._read_off += n
                n = 0
        return parts
