"""Internet checksum (RFC 1071) against a naive word-by-word reference."""

from __future__ import annotations

import random
import struct

from hypothesis import given
from hypothesis import strategies as st

from tcpchimney.wire import checksum as C


def naive_sum(data: bytes, initial: int = 0) -> int:
    """Textbook RFC 1071: add 16-bit words with end-around carry."""
    if len(data) & 1:
        data += b"\x00"
    total = initial
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        while total > 0xFFFF:
            total = (total & 0xFFFF) + (total >> 16)
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


@given(st.binary(max_size=9000), st.integers(0, 0xFFFF))
def test_ones_sum_matches_naive(data: bytes, initial: int) -> None:
    assert C.ones_sum(data, initial) == naive_sum(data, initial)
    assert C.ones_sum(memoryview(data), initial) == naive_sum(data, initial)


@given(st.integers(4097, 70000), st.integers(0, 2**32))
def test_ones_sum_chunked_path_matches_naive(n: int, seed: int) -> None:
    # Above 4 KB the sum is taken in pieces; odd lengths put the pad byte in the last piece.
    data = random.Random(seed).randbytes(n)
    assert C.ones_sum(data) == naive_sum(data)
    assert C.ones_sum(data[:-1]) == naive_sum(data[:-1])


def test_zero_versus_negative_zero() -> None:
    assert C.ones_sum(b"") == 0
    assert C.ones_sum(bytes(100)) == 0
    assert C.internet_checksum(bytes(100)) == 0xFFFF
    # Non-zero data congruent to 0 mod 0xFFFF sums to 0xFFFF ("negative zero"), never to 0.
    assert C.ones_sum(b"\xff\xff") == 0xFFFF
    assert C.ones_sum(b"\x80\x00\x7f\xff") == 0xFFFF
    assert C.internet_checksum(b"\xff\xff") == 0


@given(st.binary(min_size=1, max_size=3000))
def test_checksum_inserted_verifies(data: bytes) -> None:
    body = data if len(data) % 2 == 0 else data + b"\x00"
    csum = C.internet_checksum(body)
    assert C.verify(body + csum.to_bytes(2, "big"))
    assert C.verify(csum.to_bytes(2, "big") + body)


@given(st.binary(max_size=2000), st.binary(max_size=2000))
def test_combine_at_any_offset(a: bytes, b: bytes) -> None:
    assert C.csum_combine(C.ones_sum(a), C.ones_sum(b), len(a)) == naive_sum(a + b)


@given(st.binary(max_size=200), st.binary(max_size=3000), st.integers(0, 0xFFFF))
def test_l4_checksum_without_concatenation(header: bytes, payload: bytes, pseudo: int) -> None:
    assert C.l4_checksum(pseudo, header, memoryview(payload)) == (
        ~naive_sum(header + payload, pseudo) & 0xFFFF
    )


@given(st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4), st.integers(0, 65535))
def test_pseudo_header(src: bytes, dst: bytes, length: int) -> None:
    pseudo = src + dst + bytes((0, 6)) + length.to_bytes(2, "big")
    expected = naive_sum(pseudo)
    assert C.pseudo_header_sum(src, dst, 6, length) == expected
    assert C.pseudo_csum_partial(src, dst, 6, length) == expected
    assert C.csum_add(C.pseudo_base_sum(src, dst, 6), length) == expected


def test_rfc1071_example() -> None:
    # RFC 1071 1.2 worked example: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
    assert C.ones_sum(bytes.fromhex("0001f203f4f5f6f7")) == 0xDDF2
    assert C.internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
