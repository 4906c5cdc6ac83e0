"""TCP sequence numbers with RFC 9293 section 3.4 modular ("serial number") arithmetic.

A ``SeqNum`` is an ``int`` in [0, 2**32). Comparisons are modular: ``a < b`` means ``b`` lies less than
2**31 ahead of ``a``. Adding an ``int`` wraps. Subtracting two ``SeqNum`` gives the signed distance
(an ``int``), which is what byte counting needs. Never compare raw sequence integers elsewhere.
"""

from __future__ import annotations

_MOD = 1 << 32
_MASK = _MOD - 1
_HALF = 1 << 31
_new_int = int.__new__  # skips SeqNum.__new__ where the value is already masked
_int_add = int.__add__
_int_sub = int.__sub__


class SeqNum(int):
    """A 32-bit TCP sequence number with modular comparison."""

    __slots__ = ()

    def __new__(cls, value: int) -> SeqNum:
        return _new_int(cls, value & _MASK)

    def __add__(self, other: int) -> SeqNum:
        return _new_int(SeqNum, _int_add(self, other) & _MASK)

    __radd__ = __add__

    def __sub__(self, other: int) -> SeqNum | int:
        """``seq - seq`` -> signed distance (int); ``seq - int`` -> SeqNum."""
        if isinstance(other, SeqNum):
            d = _int_sub(self, other) & _MASK
            return d - _MOD if d >= _HALF else d
        return _new_int(SeqNum, _int_sub(self, other) & _MASK)

    def dist(self, other: SeqNum) -> int:
        """Signed distance ``self - other`` as an int (typed helper for mypy)."""
        d = _int_sub(self, other) & _MASK
        return d - _MOD if d >= _HALF else d

    def __lt__(self, other: int) -> bool:
        d = _int_sub(self, other) & _MASK
        return d >= _HALF

    def __le__(self, other: int) -> bool:
        d = _int_sub(self, other) & _MASK
        return d == 0 or d >= _HALF

    def __gt__(self, other: int) -> bool:
        d = _int_sub(other, self) & _MASK
        return d >= _HALF

    def __ge__(self, other: int) -> bool:
        d = _int_sub(other, self) & _MASK
        return d == 0 or d >= _HALF

    def __repr__(self) -> str:
        return f"SeqNum({int(self)})"


def seq_in_window(seq: SeqNum, start: SeqNum, size: int) -> bool:
    """True when ``start <= seq < start + size`` in sequence space (RFC 9293 3.10.7.4 acceptability)."""
    return (_int_sub(seq, start) & _MASK) < size


def seq_max(a: SeqNum, b: SeqNum) -> SeqNum:
    return b if a < b else a


def seq_min(a: SeqNum, b: SeqNum) -> SeqNum:
    return a if a < b else b
