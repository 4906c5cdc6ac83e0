"""The host's allocator of per-connection buffers inside the arena's pool.

The allocator's state lives in host memory only (nothing of it is in the arena, so there is nothing for the
NIC to corrupt and no lock to hold). The pool is cut into chunks; a buffer is a run of contiguous chunks,
chosen first-fit, and freed runs merge with their free neighbours, so the free list stays a sorted list of
disjoint runs. Sizes come from the connection's send buffer and its largest advertised window, so a few
sizes dominate and first-fit keeps fragmentation low.
"""

from __future__ import annotations

import bisect


class PoolAllocator:
    """Runs of chunks in ``[base, base + size)``; offsets returned are absolute (from the arena's start)."""

    def __init__(self, base: int, size: int, chunk: int) -> None:
        if chunk <= 0 or size < 0 or size % chunk:
            raise ValueError(f"pool of {size} bytes in {chunk}-byte chunks")
        self.base = base
        self.chunk = chunk
        self.chunks = size // chunk
        self._free: list[tuple[int, int]] = [(0, self.chunks)] if self.chunks else []  # (first, count)
        self._used: dict[int, int] = {}  # first chunk -> count
        self.failures = 0  # allocations refused for lack of a large enough run

    def alloc(self, nbytes: int) -> int | None:
        """A buffer of at least ``nbytes`` (rounded up to chunks), or None when no run is large enough."""
        if nbytes <= 0:
            raise ValueError(f"a buffer of {nbytes} bytes")
        need = -(-nbytes // self.chunk)
        for i, (first, count) in enumerate(self._free):
            if count >= need:
                if count == need:
                    del self._free[i]
                else:
                    self._free[i] = (first + need, count - need)
                self._used[first] = need
                return self.base + first * self.chunk
        self.failures += 1
        return None

    def size_of(self, offset: int) -> int:
        """Bytes of the buffer at ``offset`` (as returned by ``alloc``)."""
        return self._used[self._chunk_of(offset)] * self.chunk

    def free(self, offset: int) -> None:
        first = self._chunk_of(offset)
        count = self._used.pop(first)
        i = bisect.bisect_left(self._free, (first, 0))
        if i < len(self._free) and self._free[i][0] == first + count:  # merge with the run after
            count += self._free.pop(i)[1]
        if i > 0 and sum(self._free[i - 1]) == first:  # merge with the run before
            first, before = self._free.pop(i - 1)
            count += before
            i -= 1
        self._free.insert(i, (first, count))

    def free_bytes(self) -> int:
        return sum(count for _, count in self._free) * self.chunk

    def _chunk_of(self, offset: int) -> int:
        first, rem = divmod(offset - self.base, self.chunk)
        if rem or first not in self._used:
            raise ValueError(f"offset {offset} is not an allocated buffer")
        return first
