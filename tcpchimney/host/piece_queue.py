"""``PieceQueue``: bytes in FIFO order without shifting any (the offload manager's socket-side queues)."""

from __future__ import annotations

from collections import deque


class PieceQueue:
    """Bytes in FIFO order as a deque of immutable pieces (``bytes``, or a ``memoryview`` of one), as
    tcp/buffers.py keeps them: appending stores the piece itself, taking a whole piece hands it back as it
    is, and only a piece split or pieces joined for one answer are copied (once). No byte is ever shifted."""

    __slots__ = ("_len", "_pieces")

    def __init__(self) -> None:
        self._pieces: deque[bytes | memoryview] = deque()
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def clear(self) -> None:
        self._pieces.clear()
        self._len = 0

    def append(self, piece: bytes | memoryview) -> None:
        """``piece`` must not change afterwards (bytes, or a view of bytes)."""
        if len(piece):
            self._pieces.append(piece)
            self._len += len(piece)

    def push_front(self, piece: bytes) -> None:
        """Give back what ``take`` returned (its consumer could not take it)."""
        if piece:
            self._pieces.appendleft(piece)
            self._len += len(piece)

    def take(self, n: int) -> bytes:
        """The first ``min(n, len)`` bytes (all when ``n`` < 0) as one bytes object."""
        want = self._len if n < 0 else min(n, self._len)
        pieces = self._pieces
        if want == 0:
            return b""
        if len(pieces[0]) == want:
            head = pieces.popleft()
            self._len -= want
            return head if type(head) is bytes else bytes(head)
        parts: list[bytes | memoryview] = []
        left = want
        while left:
            head = pieces[0]
            if len(head) <= left:
                parts.append(pieces.popleft())
                left -= len(head)
            else:
                view = memoryview(head)
                parts.append(view[:left])
                pieces[0] = view[left:]
                left = 0
        self._len -= want
        return b"".join(parts)

    def take_chunk(self, limit: int) -> bytes:
        """Whole pieces from the front, as many as fit ``limit`` together (at least one; a piece longer than
        ``limit`` is split): a large piece leaves as it is, small ones are joined."""
        pieces = self._pieces
        if not pieces:
            return b""
        if len(pieces) == 1 or len(pieces[0]) + len(pieces[1]) > limit:
            return self.take(min(limit, len(pieces[0])))
        size = 0
        for piece in pieces:
            if size + len(piece) > limit:
                break
            size += len(piece)
        return self.take(size)

    def drain(self) -> list[bytes | memoryview]:
        """Every piece, in order; the queue is empty afterwards."""
        out = list(self._pieces)
        self.clear()
        return out
