"""SeqNum: RFC 9293 3.4 modular arithmetic, properties near wraparound and 2**31."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tcpchimney.wire.seq import SeqNum, seq_in_window, seq_max, seq_min

u32 = st.integers(0, 2**32 - 1)
ahead = st.integers(1, 2**31 - 1)


def test_wraps() -> None:
    top = SeqNum(2**32 - 1)
    assert top + 1 == 0 and isinstance(top + 1, SeqNum)
    assert 1 + top == 0 and isinstance(1 + top, SeqNum)
    assert SeqNum(0) - 1 == 2**32 - 1 and isinstance(SeqNum(0) - 1, SeqNum)
    assert SeqNum(2**32 + 5) == 5
    assert SeqNum(-1) == 2**32 - 1
    assert top < SeqNum(0) and SeqNum(0) > top


@given(u32, ahead)
def test_ordering_is_modular(a: int, d: int) -> None:
    x, y = SeqNum(a), SeqNum(a) + d
    assert x < y and x <= y and y > x and y >= x
    assert not (y < x) and not (x > y) and not (x >= y) and not (y <= x)
    assert y - x == d and x - y == -d
    assert y.dist(x) == d and x.dist(y) == -d
    assert seq_max(x, y) == y and seq_min(x, y) == x


@given(u32)
def test_equal_and_half_space(a: int) -> None:
    x = SeqNum(a)
    assert x <= x and x >= x and not x < x and not x > x
    assert x - x == 0
    # Exactly 2**31 apart is the ambiguous point: the distance is reported as -2**31 both ways.
    far = x + 2**31
    assert far - x == -(2**31) and x - far == -(2**31)
    assert (x + (2**31 - 1)) - x == 2**31 - 1


@given(u32, u32, st.integers(0, 2**31))
def test_seq_in_window(start: int, seq: int, size: int) -> None:
    offset = (seq - start) % 2**32
    assert seq_in_window(SeqNum(seq), SeqNum(start), size) == (offset < size)


def test_window_across_wrap() -> None:
    start = SeqNum(2**32 - 10)
    assert seq_in_window(SeqNum(5), start, 20)
    assert not seq_in_window(SeqNum(10), start, 20)
    assert not seq_in_window(SeqNum(start - 1), start, 20)
    assert not seq_in_window(start, start, 0)
