"""Ephemeral port selection: RFC 6056 section 3.3.4, Algorithm 4 ("Double-Hash Port Selection").

offset = F(local IP, remote IP, remote port, secret) spreads destinations over the range; a small table of
counters indexed by G(...) (a second keyed hash) makes successive ports to one destination advance while the
sequence seen by one peer reveals nothing about the ports used towards others. Linux uses the same scheme
(``__inet_hash_connect`` with its perturbation table) and the same default range.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

EPHEMERAL_MIN = 32768  # Linux net.ipv4.ip_local_port_range
EPHEMERAL_MAX = 60999
_TABLE_SIZE = 256


class EphemeralPorts:
    def __init__(self, secret: bytes, low: int = EPHEMERAL_MIN, high: int = EPHEMERAL_MAX) -> None:
        if not 1 <= low <= high <= 65535:
            raise ValueError(f"bad ephemeral range {low}..{high}")
        if not secret:
            raise ValueError("the port-selection secret must not be empty (RFC 6056 3.3.4)")
        self.low = low
        self.high = high
        self._key = hashlib.blake2s(secret).digest()
        self._table = [0] * _TABLE_SIZE

    def _hash(self, person: bytes, data: bytes) -> int:
        return int.from_bytes(
            hashlib.blake2s(data, digest_size=4, key=self._key, person=person).digest(), "big"
        )

    def select(
        self, local_ip: bytes, remote_ip: bytes, remote_port: int, suitable: Callable[[int], bool]
    ) -> int | None:
        """The first suitable port in the Algorithm 4 order, or None when the range is exhausted."""
        tuple_bytes = local_ip + remote_ip + remote_port.to_bytes(2, "big")
        offset = self._hash(b"port-F", tuple_bytes)
        index = self._hash(b"port-G", tuple_bytes) % _TABLE_SIZE
        num_ephemeral = self.high - self.low + 1
        for _ in range(num_ephemeral):
            port = self.low + (offset + self._table[index]) % num_ephemeral
            self._table[index] += 1
            if suitable(port):
                return port
        return None
