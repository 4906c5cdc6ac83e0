"""Send and receive buffers of one connection, in byte offsets (the engine maps them to sequence numbers).

Both buffers keep data as chunks and never do per-byte Python work: segments leave as memoryviews into the
chunks they were written into, and out-of-order data is reassembled by interval merging.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import deque
from itertools import islice
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


# Bounds of the out-of-order queue (TcpConfig.ooo_max_blocks / ooo_max_bytes document them).
DEFAULT_OOO_MAX_BLOCKS = 100  # FreeBSD net.inet.tcp.reass.maxqueuelen
# Pieces below this size are joined with a small neighbour (copying under 2 * _SMALL_PIECE bytes), so that
# a peer sending 1-byte segments cannot make each byte cost a Python object (about 200 bytes); and a piece
# viewing less than half of the buffer it came in is copied, so that it cannot keep a whole frame alive.
_SMALL_PIECE = 1024

REFUSED_QUEUE_FULL = "ooo_queue_full"  # would start a run beyond ``max_blocks``
REFUSED_BYTES_FULL = "ooo_bytes_full"  # would hold more than ``max_ooo_bytes`` out of order


class _Block:
    """One contiguous out-of-order run: absolute ``[start, end)`` held as consecutive pieces."""

    __slots__ = ("end", "pieces", "start")

    def __init__(self, start: int, end: int, pieces: list[Piece]) -> None:
        self.start = start
        self.end = end
        self.pieces = pieces


def _end_of(block: _Block) -> int:
    return block.end


def _start_of(block: _Block) -> int:
    return block.start


def _keep(mv: memoryview) -> Piece:
    """Hold a slice of received data: a view when the source is immutable ``bytes`` and the slice is most
    of it, else a copy (a small slice must not pin a large frame)."""
    obj = mv.obj
    if isinstance(obj, bytes) and 2 * len(mv) >= len(obj):
        return mv
    return mv.tobytes()


def _push(pieces: list[Piece] | deque[Piece], piece: Piece) -> None:
    """Append ``piece``, joined to the last piece when both are small (bounded copy, fewer objects)."""
    if pieces and len(piece) < _SMALL_PIECE and len(pieces[-1]) < _SMALL_PIECE:
        pieces[-1] = b"".join((pieces[-1], piece))
    else:
        pieces.append(piece)


def _push_run(pieces: list[Piece] | deque[Piece], run: list[Piece]) -> None:
    """Append a run of pieces, joining only at the seam."""
    if run:
        _push(pieces, run[0])
        pieces.extend(islice(run, 1, None))


def _trim_front(pieces: list[Piece], n: int) -> list[Piece]:
    """Drop the first ``n`` bytes of a run of pieces (touching only the pieces that go); the run given may
    be changed (its block is gone)."""
    i = 0
    while n > 0 and n >= len(pieces[i]):
        n -= len(pieces[i])
        i += 1
    rest = pieces[i:] if i else pieces
    if n:
        rest[0] = memoryview(rest[0])[n:]
    return rest


class ReceiveBuffer:
    """In-order readable bytes plus out-of-order reassembly, both bounded by ``capacity``.

    Offsets in the API are relative to RCV.NXT; internally every position is an absolute stream offset
    (``_nxt`` is RCV.NXT), so blocks never need renumbering. The right edge of the window,
    ``_nxt + capacity - readable``, does not move when data becomes in order, only when it is read: that is
    why out-of-order data stays inside the window without being subtracted from it (RFC 9293 3.8.6.2.2).

    The out-of-order queue is bounded (the SegmentSmack class, CVE-2018-5390): at most ``max_blocks`` runs
    and ``max_ooo_bytes`` bytes (0: ``capacity``). A segment that would pass a bound is dropped whole and
    ``refused`` names the bound; data at RCV.NXT is always taken, so the stream still completes. Every step
    is a bisection plus work on the runs the segment touches; the runs' recency (RFC 2018 section 4 order of
    SACK blocks) is kept in insertion order of a dict, so reading the newest few costs no sort.
    """

    __slots__ = (
        "_blocks",
        "_nxt",
        "_ooo_bytes",
        "_read_off",
        "_readable",
        "_ready",
        "_recent",
        "capacity",
        "max_blocks",
        "max_ooo_bytes",
        "refused",
    )

    def __init__(
        self, capacity: int, max_blocks: int = DEFAULT_OOO_MAX_BLOCKS, max_ooo_bytes: int = 0
    ) -> None:
        if capacity < 0 or max_blocks < 0 or max_ooo_bytes < 0:
            raise ValueError(
                f"bad capacity={capacity}, max_blocks={max_blocks} or max_ooo_bytes={max_ooo_bytes}"
            )
        self.capacity = capacity  # SO_RCVBUF; shrinking it keeps what was accepted (window reads 0 instead)
        self.max_blocks = max_blocks  # most out-of-order runs (holes after RCV.NXT) held
        self.max_ooo_bytes = max_ooo_bytes  # most bytes held out of order; 0: capacity (the window's bound)
        self.refused: str | None = None  # why the last insert dropped its segment (None: it did not)
        self._ready: deque[Piece] = deque()  # in-order bytes, _ready[0][_read_off:] first
        self._read_off = 0
        self._readable = 0
        self._nxt = 0  # absolute offset of RCV.NXT
        self._blocks: list[_Block] = []  # out-of-order runs: sorted, disjoint, never touching
        self._recent: dict[_Block, None] = {}  # the same runs, least recently changed first
        self._ooo_bytes = 0

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
    def ooo_blocks(self) -> int:
        """Out-of-order runs held (each has a hole before it)."""
        return len(self._blocks)

    @property
    def ooo_bytes(self) -> int:
        """Bytes held out of order."""
        return self._ooo_bytes

    def insert(self, offset: int, data: Bytes) -> int:
        """Accept ``data`` starting ``offset`` bytes after RCV.NXT; return how far RCV.NXT advances.

        The part before RCV.NXT (negative offset) and the part beyond the window are trimmed; overlaps with
        data already held keep the bytes already held (duplicates are idempotent). Out-of-order data beyond
        the queue's bounds is dropped (``refused`` says which bound).
        """
        self.refused = None
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

    def ooo_ranges(self, limit: int | None = None) -> list[tuple[int, int]]:
        """Out-of-order ``[start, end)`` offsets relative to RCV.NXT, most recently changed first (the
        first ``limit`` only, when given: the cost is that of the ranges returned).

        RFC 2018 section 4: the first SACK block reports the block holding the most recent segment, then the
        other blocks in the order they were last reported.
        """
        nxt = self._nxt
        return [(b.start - nxt, b.end - nxt) for b in islice(reversed(self._recent), limit)]

    def drop_out_of_order(self) -> None:
        """Forget the out-of-order queue (RFC 2018 section 8 allows reneging; upload drops un-ACKed data)."""
        self._blocks.clear()
        self._recent.clear()
        self._ooo_bytes = 0

    def tobytes(self) -> bytes:
        """The readable bytes, without consuming them (for snapshots)."""
        if not self._readable:
            return b""
        parts = list(self._ready)
        parts[0] = memoryview(parts[0])[self._read_off :]
        return b"".join(parts)

    def last_views(self, n: int) -> list[memoryview]:
        """The last ``n`` readable bytes (those that ended at RCV.NXT) as views of the buffer's own pieces,
        in order, without consuming or copying anything: what a NIC copies to host memory before it may
        acknowledge them. Raises ValueError beyond ``readable``."""
        if not 0 <= n <= self._readable:
            raise ValueError(f"last_views({n}) with {self._readable} readable bytes")
        parts: list[memoryview] = []
        need = n
        ready = self._ready
        i = len(ready) - 1
        while need > 0:
            piece = ready[i]
            avail = len(piece) - (self._read_off if i == 0 else 0)
            take = min(need, avail)
            parts.append(memoryview(piece)[len(piece) - take :])
            need -= take
            i -= 1
        parts.reverse()
        return parts

    def _append_in_order(self, piece: Piece) -> int:
        before = self._nxt
        _push(self._ready, piece)
        self._nxt += len(piece)
        blocks = self._blocks
        # Runs that the new data reached or overlapped are now in order too.
        while blocks and blocks[0].start <= self._nxt:
            block = blocks.pop(0)
            del self._recent[block]
            self._ooo_bytes -= block.end - block.start
            if block.end > self._nxt:
                _push_run(self._ready, _trim_front(block.pieces, self._nxt - block.start))
                self._nxt = block.end
        advanced = self._nxt - before
        self._readable += advanced
        return advanced

    def _insert_out_of_order(self, start: int, end: int, mv: memoryview) -> None:
        blocks = self._blocks
        i = bisect_left(blocks, start, key=_end_of)  # first run ending at or after start
        j = bisect_right(blocks, end, lo=i, key=_start_of)  # runs i..j-1 touch [start, end)
        if i == j:
            if not self._admits(end - start, new_run=True):
                return
            block = _Block(start, end, [_keep(mv)])
            blocks.insert(i, block)
            self._recent[block] = None
            self._ooo_bytes += end - start
            return
        first = blocks[i]
        if j == i + 1 and first.start <= start and end <= first.end:  # a duplicate: only its recency changes
            self._touch(first)
            return
        new_bytes = end - start - sum(min(end, b.end) - max(start, b.start) for b in blocks[i:j])
        if not self._admits(new_bytes, new_run=False):
            return
        self._merge(i, j, start, end, mv)
        self._ooo_bytes += new_bytes

    def _admits(self, new_bytes: int, new_run: bool) -> bool:
        """Whether the bounds leave room for a segment bringing ``new_bytes`` (and a new run)."""
        if new_run and len(self._blocks) >= self.max_blocks:
            self.refused = REFUSED_QUEUE_FULL
            return False
        if self._ooo_bytes + new_bytes > (self.max_ooo_bytes or self.capacity):
            self.refused = REFUSED_BYTES_FULL
            return False
        return True

    def _merge(self, i: int, j: int, start: int, end: int, mv: memoryview) -> None:
        """``[start, end)`` touches runs i..j-1: they become one run (the first one, grown), the gaps
        between them filled from ``mv``."""
        blocks = self._blocks
        first = blocks[i]
        pieces = first.pieces
        if first.start > start:
            head = _keep(mv[: first.start - start])
            if len(head) < _SMALL_PIECE and len(pieces[0]) < _SMALL_PIECE:
                pieces[0] = b"".join((head, pieces[0]))
            else:
                pieces.insert(0, head)
        cursor = first.end
        for block in blocks[i + 1 : j]:
            _push(pieces, _keep(mv[cursor - start : block.start - start]))  # the gap before this run
            _push_run(pieces, block.pieces)
            cursor = block.end
            del self._recent[block]
        if cursor < end:
            _push(pieces, _keep(mv[cursor - start :]))
        first.start, first.end = min(start, first.start), max(end, cursor)
        del blocks[i + 1 : j]
        self._touch(first)

    def _touch(self, block: _Block) -> None:
        """``block`` holds the most recent segment: its SACK block goes first (RFC 2018 section 4)."""
        del self._recent[block]
        self._recent[block] = None

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
