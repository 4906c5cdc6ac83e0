"""ISN generation (RFC 6528) and timestamp offsets (RFC 7323 section 5.4)."""

from __future__ import annotations

import pytest

from tcpchimney.tcp.isn import TimestampOffset, initial_sequence_number, tsval
from tcpchimney.wire.seq import SeqNum

SECRET = b"0123456789abcdef0123456789abcdef"
A = bytes([198, 18, 0, 1])
B = bytes([198, 18, 0, 2])


def _isn(now: float, lport: int = 40000, rport: int = 80, secret: bytes = SECRET, local: bytes = A) -> SeqNum:
    return initial_sequence_number(secret, local, lport, B, rport, now)


def test_rfc6528_same_inputs_give_the_same_isn() -> None:
    assert _isn(12.5) == _isn(12.5)


def test_rfc6528_m_ticks_every_4_microseconds() -> None:
    base = _isn(100.0)
    assert _isn(100.0 + 4e-6 * 1.5).dist(base) == 1
    assert _isn(101.0).dist(base) == 250_000


def test_rfc6528_isn_wraps_modulo_2_32() -> None:
    late = _isn(2**32 / 250_000 + 3.0)  # M has wrapped once
    assert 0 <= int(late) < 2**32
    assert late.dist(_isn(3.0)) == 0


def test_rfc6528_f_depends_on_each_tuple_element() -> None:
    isns = {
        int(_isn(1.0)),
        int(_isn(1.0, lport=40001)),
        int(_isn(1.0, rport=81)),
        int(_isn(1.0, local=bytes([198, 18, 0, 3]))),
        int(initial_sequence_number(SECRET, A, 40000, bytes([198, 18, 0, 9]), 80, 1.0)),
    }
    assert len(isns) == 5


def test_rfc6528_f_depends_on_the_secret() -> None:
    assert _isn(1.0) != _isn(1.0, secret=b"another secret")


def test_rfc6528_long_secret_is_accepted() -> None:
    long_secret = bytes(range(64))
    assert _isn(1.0, secret=long_secret) != _isn(1.0, secret=long_secret[:32])


def test_ipv6_addresses_are_accepted() -> None:
    v6 = bytes(15) + b"\x01"
    assert isinstance(initial_sequence_number(SECRET, v6, 1, v6, 2, 0.0), SeqNum)


@pytest.mark.parametrize(
    ("secret", "local_ip", "lport"),
    [(b"", A, 1), (SECRET, b"\x01\x02\x03", 1), (SECRET, A, 70000), (SECRET, A, -1)],
)
def test_bad_isn_arguments_raise(secret: bytes, local_ip: bytes, lport: int) -> None:
    with pytest.raises(ValueError):
        initial_sequence_number(secret, local_ip, lport, B, 80, 0.0)


def test_rfc7323_5_4_timestamp_offset_is_per_address_pair() -> None:
    ts = TimestampOffset(SECRET)
    assert ts.offset(A, B) == TimestampOffset(SECRET).offset(A, B)
    assert ts.offset(A, B) != ts.offset(B, A)
    assert ts.offset(A, B) != TimestampOffset(b"other").offset(A, B)
    assert 0 <= ts.offset(A, B) < 2**32


def test_rfc7323_5_4_timestamp_offset_is_not_the_isn_hash() -> None:
    # Domain separation: learning one value must not reveal the other.
    isn_f = int(initial_sequence_number(SECRET, A, 0, B, 0, 0.0))
    assert TimestampOffset(SECRET).offset(A, B) != isn_f


def test_rfc7323_5_4_tsval_is_a_millisecond_clock_plus_offset() -> None:
    assert tsval(1.0, 5) == 1005
    assert tsval(2.5, 2**32 - 1000) == 1500
    assert tsval(2.5, 0) - tsval(1.0, 0) == 1500
