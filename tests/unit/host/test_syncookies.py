"""SYN cookies: encoding, validation, age limit, timestamp-carried options."""

from __future__ import annotations

import random

from tcpchimney.host.syncookies import PERIOD, SynCookies, decode_ts, encode_ts
from tcpchimney.wire.seq import SeqNum

T = b"\xc6\x12\x00\x02\xc6\x12\x00\x01\x9c\x40\x00\x50"


def test_cookie_round_trip_gives_the_table_mss() -> None:
    c = SynCookies(b"s")
    for peer_mss, expected in [
        (1460, 1460),
        (1448, 1440),
        (1350, 1300),
        (600, 536),
        (None, 536),
        (9000, 1460),
    ]:
        cookie = c.make(T, SeqNum(12345), peer_mss, 100.0)
        assert c.check(T, SeqNum(12345), cookie, 100.0) == expected


def test_cookie_expires_after_the_age_limit() -> None:
    c = SynCookies(b"s")
    cookie = c.make(T, SeqNum(1), 1460, 10.0)
    assert c.check(T, SeqNum(1), cookie, 10.0 + PERIOD) == 1460
    assert c.check(T, SeqNum(1), cookie, 10.0 + 2 * PERIOD) is None


def test_forged_or_mismatched_cookies_fail() -> None:
    c = SynCookies(b"s")
    cookie = c.make(T, SeqNum(1), 1460, 0.0)
    assert c.check(T, SeqNum(1 + (1 << 20)), cookie, 0.0) is None  # another peer ISN
    assert c.check(T[:-1] + b"\x51", SeqNum(1), cookie, 0.0) is None  # another port
    assert SynCookies(b"other").check(T, SeqNum(1), cookie, 0.0) is None
    rng = random.Random(3)
    # A blind guess passes with probability ~ MAX_AGE * len(MSS_TABLE) / 2**24.
    valid = sum(c.check(T, SeqNum(1), SeqNum(rng.getrandbits(32)), 0.0) is not None for _ in range(5000))
    assert valid <= 1


def test_options_travel_in_the_timestamp_low_bits() -> None:
    for wscale, sack in [(7, True), (None, False), (14, False), (0, True)]:
        ts = encode_ts(1_000_000, wscale, sack)
        assert ts <= 1_000_000 and 1_000_000 - ts < 64
        assert decode_ts(ts) == (wscale, sack)
    assert decode_ts(0x0E | 0x40) == (14, False)  # bits above the six option bits are clock bits
