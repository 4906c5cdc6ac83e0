"""The SACK sender scoreboard: RFC 2018 blocks kept for RFC 6675 loss recovery.

SACKed data is a sorted list of disjoint, non-touching ``[start, end)`` ranges found by bisection.
Positions are kept as unwrapped integers (``_base_abs`` + distance from ``_base``), so plain integer
comparison works and the 32-bit wrap is handled once, at the boundary. No per-byte work.

The list is bounded (``max_ranges``, as FreeBSD bounds its scoreboard at 128 holes): a peer that SACKs every
other byte would otherwise make every ACK pay for a scoreboard as long as its window (CVE-2019-11478). When a
new range would pass the bound, the highest range goes (or the new one, when it is the highest): SACK
information is advisory (RFC 2018 section 8 lets the receiver renege), and the ranges nearest SND.UNA are the
ones retransmission needs. Forgetting a range only makes the sender more cautious: its bytes count as in
flight or lost again, and may be sent again. Every query costs O(log n) plus at most DupThresh ranges walked
from the top (``pipe`` reads SACKed byte counts from a prefix sum rebuilt from the first range that changed).

Conventions: ``high_rxt`` and ``rescue_rxt`` are *exclusive* ends (the sequence number just after the highest
retransmitted byte); set ``high_rxt = snd_una`` when recovery starts. RFC 6675 names the inclusive octet.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from itertools import accumulate
from operator import sub
from typing import overload

from tcpchimney.wire.seq import SeqNum

Block = tuple[SeqNum, SeqNum]


DEFAULT_MAX_RANGES = 128  # FreeBSD net.inet.tcp.sack.maxholes


class SackScoreboard:
    __slots__ = (
        "_base",
        "_base_abs",
        "_ends",
        "_prefix",
        "_prefix_valid",
        "_starts",
        "discarded",
        "dupthresh",
        "last_discarded",
        "max_ranges",
        "mss",
    )

    def __init__(self, mss: int, dupthresh: int = 3, max_ranges: int = DEFAULT_MAX_RANGES) -> None:
        if mss <= 0 or dupthresh <= 0 or max_ranges <= 0:
            raise ValueError(f"bad mss={mss}, dupthresh={dupthresh} or max_ranges={max_ranges}")
        self.mss = mss  # SMSS
        self.dupthresh = dupthresh  # DupThresh (RFC 6675 section 2)
        self.max_ranges = max_ranges  # most SACKed ranges held; beyond it the highest are forgotten
        self.discarded = 0  # ranges forgotten (or never taken) because of ``max_ranges``, in all
        self.last_discarded = 0  # ... by the last ``update``
        self._base: SeqNum | None = None  # SND.UNA at the last update; None before the first one
        self._base_abs = 0
        self._starts: list[int] = []  # SACKed ranges, unwrapped, sorted and disjoint
        self._ends: list[int] = []
        # _prefix[i]: SACKed bytes in ranges 0..i-1; entries from _prefix_valid on are stale
        self._prefix: list[int] = [0]
        self._prefix_valid = 1

    # -- updating ---------------------------------------------------------------------------------------

    @overload
    def update(self, snd_una: SeqNum, snd_max: SeqNum, blocks: Iterable[Block], /) -> int: ...

    @overload
    def update(self, snd_una: SeqNum, blocks: Iterable[Block], /) -> int: ...

    def update(
        self,
        snd_una: SeqNum,
        snd_max_or_blocks: SeqNum | Iterable[Block],
        blocks: Iterable[Block] | None = None,
        /,
    ) -> int:
        """Apply a cumulative ACK (``snd_una``) and the SACK blocks of one segment; return the newly
        SACKed bytes. Blocks below SND.UNA (D-SACK, RFC 2883) or beyond SND.MAX are ignored (as Linux's
        tcp_is_sackblock_valid does); a block straddling SND.UNA keeps its part above it."""
        if isinstance(snd_max_or_blocks, int):
            snd_max: SeqNum | None = SeqNum(snd_max_or_blocks)
            assert blocks is not None, "update(snd_una, snd_max, blocks)"
        else:
            snd_max, blocks = None, snd_max_or_blocks
        self._advance(snd_una)
        limit = None if snd_max is None else self._abs(snd_max)
        una = self._base_abs
        newly = 0
        self.last_discarded = 0
        for left, right in blocks:
            start, end = self._abs(left), self._abs(right)
            if end <= start or end <= una or (limit is not None and end > limit) or end - start >= 1 << 30:
                continue
            newly += self._insert(max(start, una), end)
        return newly

    def clear(self) -> None:
        """Forget every SACK (after an RTO: RFC 6675 5.1; RFC 2018 section 8 lets receivers renege)."""
        self._starts.clear()
        self._ends.clear()
        self._changed(0)

    # -- queries ----------------------------------------------------------------------------------------

    def is_sacked(self, seq: SeqNum) -> bool:
        if self._base is None:
            return False
        pos = self._abs(seq)
        i = bisect_right(self._starts, pos) - 1
        return i >= 0 and pos < self._ends[i]

    def is_lost(self, seq: SeqNum) -> bool:
        """RFC 6675 IsLost: DupThresh discontiguous SACKed segments above ``seq``, or more than
        (DupThresh - 1) * SMSS SACKed bytes above it. Without per-segment records, a range counts as
        ceil(length / SMSS) segments (at least one): exact for full-sized segments, low for small ones,
        where the byte rule then decides. A SACKed byte is never lost."""
        if self._base is None or self.is_sacked(seq):
            return False
        return self._lost_above(bisect_right(self._starts, self._abs(seq)))

    def sacked_bytes(self) -> int:
        return self._cumulative()[-1]

    def highest_sacked(self) -> SeqNum | None:
        """The sequence number just after the highest SACKed byte, or None when nothing is SACKed."""
        return self._seq(self._ends[-1]) if self._ends else None

    def blocks(self) -> list[Block]:
        """The SACKed ranges in sequence order."""
        return [(self._seq(s), self._seq(e)) for s, e in zip(self._starts, self._ends, strict=True)]

    # -- RFC 6675 section 4 ----------------------------------------------------------------------------

    def next_seg(
        self,
        snd_una: SeqNum,
        snd_nxt: SeqNum,
        high_rxt: SeqNum,
        rescue_rxt: SeqNum | None = None,
        *,
        can_send_new: bool = False,
        rescue: bool = False,
    ) -> tuple[SeqNum, int] | None:
        """RFC 6675 NextSeg: what to send next during loss recovery, as ``(seq, max_length)``.

        (1) the first un-SACKed byte at or after ``high_rxt`` and below the highest SACKed byte that
            IsLost: retransmit up to SMSS of it (never into SACKed data);
        (2) else, when ``can_send_new`` (unsent data and window): ``(snd_nxt, SMSS)``, new data;
        (3) else the same un-SACKed byte as (1) even though not yet lost;
        (4) else, when ``rescue`` and ``rescue_rxt`` is undefined (None) or below SND.UNA: the rescue
            retransmission of the last un-SACKed SMSS before ``snd_nxt``.
        The engine caps the length to the data it has.
        """
        self._advance(snd_una)
        candidate = self._first_hole(max(self._abs(snd_una), self._abs(high_rxt)))
        if candidate is not None:
            pos, limit, idx = candidate
            if self._lost_above(idx):
                return self._seq(pos), min(self.mss, limit - pos)  # rule (1)
        if can_send_new:
            return snd_nxt, self.mss  # rule (2)
        if candidate is not None:
            pos, limit, _ = candidate
            return self._seq(pos), min(self.mss, limit - pos)  # rule (3)
        if rescue and (rescue_rxt is None or snd_una > rescue_rxt):
            return self._rescue(self._abs(snd_una), self._abs(snd_nxt))  # rule (4)
        return None

    def pipe(self, snd_una: SeqNum, snd_max: SeqNum, high_rxt: SeqNum) -> int:
        """RFC 6675 SetPipe: un-SACKed bytes in [SND.UNA, SND.MAX) that are not lost, plus those below
        ``high_rxt`` (retransmitted, so in flight again). Lost-ness is constant across each hole and every
        hole below a lost one is lost, so (a) is the un-SACKed bytes above the highest lost hole's range;
        both parts are differences of SACKed-byte counts, not a walk over the holes."""
        self._advance(snd_una)
        una, top, rxt = self._abs(snd_una), self._abs(snd_max), self._abs(high_rxt)
        lost_index = self._lost_index()
        lo = self._ends[lost_index] if lost_index >= 0 else una
        return self._unsacked(lo, top) + self._unsacked(una, min(rxt, top))  # (a) + (b)

    # -- internals ------------------------------------------------------------------------------------

    def _abs(self, seq: SeqNum) -> int:
        assert self._base is not None
        return self._base_abs + seq.dist(self._base)

    def _seq(self, pos: int) -> SeqNum:
        assert self._base is not None
        return self._base + (pos - self._base_abs)

    def _advance(self, snd_una: SeqNum) -> None:
        """Move the base to SND.UNA and drop everything the cumulative ACK covers."""
        if self._base is None:
            self._base = snd_una
            return
        una = self._abs(snd_una)
        self._base, self._base_abs = snd_una, una
        starts, ends = self._starts, self._ends
        k = bisect_right(ends, una)  # ranges ending at or below SND.UNA are gone
        if k:
            del starts[:k], ends[:k]
            self._changed(0)
        if starts and starts[0] < una:
            starts[0] = una
            self._changed(0)

    def _insert(self, start: int, end: int) -> int:
        """Merge ``[start, end)`` into the ranges; return how many of its bytes were not SACKed before."""
        starts, ends = self._starts, self._ends
        i = bisect_left(ends, start)  # first range ending at or after start (touching ranges merge)
        j = bisect_right(starts, end, lo=i)  # ranges i..j-1 touch [start, end)
        covered = sum(max(0, min(end, ends[k]) - max(start, starts[k])) for k in range(i, j))
        newly = end - start - covered
        if i == j and len(starts) >= self.max_ranges:
            self.last_discarded += 1
            self.discarded += 1
            if i == len(starts):
                return 0  # the new range would be the highest: it is the one forgotten
            starts.pop()  # the highest range makes room for one nearer SND.UNA
            ends.pop()
        if i < j:
            start, end = min(start, starts[i]), max(end, ends[j - 1])
        starts[i:j] = [start]
        ends[i:j] = [end]
        self._changed(i)
        return newly

    def _changed(self, i: int) -> None:
        """Ranges from index ``i`` on changed (or moved): their prefix sums must be rebuilt."""
        if i < self._prefix_valid:
            self._prefix_valid = i + 1

    def _cumulative(self) -> list[int]:
        """The prefix sums of the range lengths, rebuilt from the first range that changed (at the top,
        where a peer SACKing new data adds ranges, that is one or two entries)."""
        prefix, valid = self._prefix, self._prefix_valid
        if valid <= len(self._starts) or len(prefix) != len(self._starts) + 1:
            first = valid - 1
            lengths = map(sub, self._ends[first:], self._starts[first:])
            prefix[first:] = accumulate(lengths, initial=prefix[first])
            self._prefix_valid = len(prefix)
        return prefix

    def _unsacked(self, lo: int, hi: int) -> int:
        """Bytes in ``[lo, hi)`` that no range covers."""
        if hi <= lo:
            return 0
        return hi - lo - (self._sacked_below(hi) - self._sacked_below(lo))

    def _sacked_below(self, pos: int) -> int:
        k = bisect_left(self._starts, pos)  # ranges 0..k-1 start below pos
        if not k:
            return 0
        return self._cumulative()[k] - max(0, self._ends[k - 1] - pos)

    def _first_hole(self, pos: int) -> tuple[int, int, int] | None:
        """The first un-SACKed position >= ``pos`` below the highest SACKed byte: (pos, next SACKed start,
        index of the range starting there)."""
        starts, ends = self._starts, self._ends
        i = bisect_right(starts, pos) - 1
        if i >= 0 and pos < ends[i]:
            pos = ends[i]  # inside a SACKed range: the hole starts at its end
        i = bisect_right(starts, pos)
        if i >= len(starts):
            return None  # at or above the highest SACKed byte (RFC 6675 NextSeg (1.b))
        return pos, starts[i], i

    def _lost_above(self, i: int) -> bool:
        """IsLost for any hole lying below range ``i``."""
        return i <= self._lost_index()

    def _lost_index(self) -> int:
        """The highest range index whose hole below is lost (-1: none). Holes lower down are lost too,
        since they have at least as much SACKed data above them: one walk from the top, which stops after
        about DupThresh ranges."""
        limit_bytes = (self.dupthresh - 1) * self.mss
        segments = 0
        sacked = 0
        for k in range(len(self._starts) - 1, -1, -1):
            length = self._ends[k] - self._starts[k]
            sacked += length
            segments += -(-length // self.mss)
            if sacked > limit_bytes or segments >= self.dupthresh:
                return k
        return -1

    def _rescue(self, una: int, nxt: int) -> tuple[SeqNum, int] | None:
        """Up to SMSS of un-SACKed data ending at the highest un-SACKed byte below SND.NXT (NextSeg (4))."""
        starts, ends = self._starts, self._ends
        end = nxt
        i = bisect_right(starts, end - 1) - 1  # the range that may hold byte end - 1
        if i >= 0 and ends[i] >= end:
            end = starts[i]
            i -= 1
        if end <= una:
            return None
        lo = max(una, end - self.mss)
        if i >= 0 and ends[i] > lo:
            lo = ends[i]
        return self._seq(lo), end - lo
