"""Initial sequence numbers (RFC 6528) and per-connection timestamp offsets (RFC 7323 section 5.4).

Both are keyed hashes of the connection's addresses, so they are unpredictable to an off-path attacker yet
need no stored state. The caller supplies the secret and the time: nothing here reads a clock or draws
randomness.
"""

from __future__ import annotations

import hashlib
import struct

from tcpchimney.wire.seq import SeqNum

_TICKS_PER_SECOND = 250_000  # RFC 6528 section 3 / RFC 9293 3.4.1: M is a timer ticking every 4 microseconds
_TS_HZ = 1000  # TSval clock: 1 ms per tick, as Linux (RFC 7323 5.4 allows 1 ms .. 1 s)
_MASK32 = 0xFFFFFFFF
_KEY_MAX = 32  # blake2s key length limit


def _key(secret: bytes) -> bytes:
    if not secret:
        raise ValueError("the ISN secret must not be empty (RFC 6528 section 3: F needs a secret key)")
    return secret if len(secret) <= _KEY_MAX else hashlib.blake2s(secret).digest()


def _check_ip(ip: bytes) -> None:
    if len(ip) not in (4, 16):
        raise ValueError(f"an IP address is 4 or 16 bytes, got {len(ip)}")


def _hash32(key: bytes, person: bytes, data: bytes) -> int:
    digest = hashlib.blake2s(data, digest_size=4, key=key, person=person).digest()
    return int.from_bytes(digest, "big")


def initial_sequence_number(
    secret: bytes, local_ip: bytes, local_port: int, remote_ip: bytes, remote_port: int, now: float
) -> SeqNum:
    """RFC 6528 section 3: ISN = M + F(localip, localport, remoteip, remoteport, secretkey).

    M counts 4-microsecond ticks of ``now`` (so successive incarnations of one 4-tuple get increasing ISNs,
    which TIME-WAIT reuse relies on); F is keyed BLAKE2s, a keyed PRF as the RFC asks.
    """
    _check_ip(local_ip)
    _check_ip(remote_ip)
    if not (0 <= local_port <= 0xFFFF and 0 <= remote_port <= 0xFFFF):
        raise ValueError(f"ports must be 0..65535, got {local_port} and {remote_port}")
    tuple_bytes = local_ip + remote_ip + struct.pack("!HH", local_port, remote_port)
    m = int(now * _TICKS_PER_SECOND)
    return SeqNum(m + _hash32(_key(secret), b"tcp-isn", tuple_bytes))


class TimestampOffset:
    """Per-connection TSval offsets from the same kind of keyed hash (RFC 7323 section 5.4 and 7.1).

    The offset depends on the address pair only, as Linux's secure_tcp_ts_off does: TSvals stay monotonic
    across connections between two hosts (PAWS and TIME-WAIT reuse work) while they reveal neither our
    uptime nor a global clock shared with other peers.
    """

    __slots__ = ("_key",)

    def __init__(self, secret: bytes) -> None:
        self._key = _key(secret)

    def offset(self, local_ip: bytes, remote_ip: bytes) -> int:
        """The 32-bit offset added to our timestamp clock for connections between these addresses."""
        _check_ip(local_ip)
        _check_ip(remote_ip)
        return _hash32(self._key, b"tcp-ts", local_ip + remote_ip)


def tsval(now: float, offset: int) -> int:
    """Our TSval at ``now``: a 1 ms clock plus the connection's offset, modulo 2**32 (RFC 7323 5.4)."""
    return (int(now * _TS_HZ) + offset) & _MASK32
