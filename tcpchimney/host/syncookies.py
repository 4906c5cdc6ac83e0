"""SYN cookies, as Linux builds them (net/ipv4/syncookies.c), with a keyed BLAKE2s instead of SipHash.

When a listener's SYN queue is full we answer a SYN without keeping state: our ISN is

    cookie = H0(4-tuple) + peer ISN + (count << 24) + ((H1(4-tuple, count) + mss_index) mod 2**24)

where ``count`` advances every 64 s. The final ACK (ack = cookie + 1) proves the peer saw our SYN-ACK: the
count must be at most ``MAX_AGE - 1`` periods old and the MSS index must decode. The peer's window scale
and SACK permission cannot fit in the ISN, so, like Linux (cookie_init_timestamp), we put them in the low 6
bits of our SYN-ACK's TSval when the peer uses timestamps; the peer echoes them in TSecr. Without timestamps
the connection runs without window scaling or SACK (RFC 7323 / RFC 2018 options are lost, as on Linux).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from tcpchimney.wire.seq import SeqNum

MSS_TABLE = (536, 1300, 1440, 1460)  # Linux msstab: the values most peers announce
COOKIE_BITS = 24
COOKIE_MASK = (1 << COOKIE_BITS) - 1
MAX_AGE = 2  # Linux MAX_SYNCOOKIE_AGE: count periods a cookie stays valid
PERIOD = 64.0  # seconds per count (Linux: 60 s of jiffies; a power of two is cheaper to reason about)
TS_BITS = 6
TS_MASK = (1 << TS_BITS) - 1
TS_WSCALE_NONE = 0x0F
TS_SACK = 1 << 4


@dataclass(frozen=True, slots=True)
class CookieOptions:
    mss: int
    wscale: int | None
    sack_permitted: bool


class SynCookies:
    def __init__(self, secret: bytes) -> None:
        if not secret:
            raise ValueError("the SYN-cookie secret must not be empty")
        self._key = hashlib.blake2s(secret, person=b"syncook").digest()

    def _hash(self, tuple_bytes: bytes, count: int, c: int) -> int:
        data = tuple_bytes + count.to_bytes(4, "big") + bytes((c,))
        return int.from_bytes(hashlib.blake2s(data, digest_size=4, key=self._key).digest(), "big")

    @staticmethod
    def count(now: float) -> int:
        return int(now // PERIOD) & 0xFFFFFFFF

    @staticmethod
    def mss_index(peer_mss: int | None) -> int:
        """The largest table entry not above the peer's MSS (536 when it sent none, RFC 9293 3.7.1)."""
        mss = 536 if peer_mss is None else peer_mss
        index = 0
        for i, value in enumerate(MSS_TABLE):
            if value <= mss:
                index = i
        return index

    def make(self, tuple_bytes: bytes, peer_isn: SeqNum, peer_mss: int | None, now: float) -> SeqNum:
        """Our ISN for the SYN-ACK; ``tuple_bytes`` identifies the 4-tuple (peer ip, our ip, ports)."""
        count = self.count(now)
        data = self.mss_index(peer_mss)
        cookie = (
            self._hash(tuple_bytes, 0, 0)
            + int(peer_isn)
            + (count << COOKIE_BITS)
            + ((self._hash(tuple_bytes, count, 1) + data) & COOKIE_MASK)
        )
        return SeqNum(cookie)

    def check(self, tuple_bytes: bytes, peer_isn: SeqNum, cookie: SeqNum, now: float) -> int | None:
        """The MSS the peer announced (from the table) if ``cookie`` is ours and fresh, else None."""
        count = self.count(now)
        value = (int(cookie) - self._hash(tuple_bytes, 0, 0) - int(peer_isn)) & 0xFFFFFFFF
        diff = (count - (value >> COOKIE_BITS)) & (0xFFFFFFFF >> COOKIE_BITS)
        if diff >= MAX_AGE:
            return None
        index = (value - self._hash(tuple_bytes, (count - diff) & 0xFFFFFFFF, 1)) & COOKIE_MASK
        if index >= len(MSS_TABLE):
            return None
        return MSS_TABLE[index]


def encode_ts(tsval: int, wscale: int | None, sack_permitted: bool) -> int:
    """Our SYN-ACK TSval with the peer's options in its low bits, never above the real clock (Linux)."""
    options = (TS_WSCALE_NONE if wscale is None else wscale) | (TS_SACK if sack_permitted else 0)
    ts = ((tsval >> TS_BITS) << TS_BITS) | options
    if ts > tsval:
        ts -= 1 << TS_BITS
    return ts & 0xFFFFFFFF


def decode_ts(ts_ecr: int) -> tuple[int | None, bool]:
    """(wscale, sack_permitted) from the echoed TSval (wscale 15 stands for 'no window scaling'; 0..14 are the
    shifts RFC 7323 2.3 allows)."""
    wscale = ts_ecr & TS_WSCALE_NONE
    return (None if wscale == TS_WSCALE_NONE else wscale), bool(ts_ecr & TS_SACK)
