"""The path state object (chimney-spec 2.3): a route-cache entry, shared by many TCP connections.

The next-hop IP is not a field: it is which neighbor object the path is linked to (relinking = a next-hop
change).
"""

from __future__ import annotations

from dataclasses import dataclass

from tcpchimney.chimney._check import byte_string
from tcpchimney.chimney._check import int_range as _int
from tcpchimney.chimney.errors import InvariantError

MIN_IPV4_MTU = 68  # RFC 791
MIN_IPV6_MTU = 1280  # RFC 8200 section 5
MAX_MTU = 0xFFFF


@dataclass(frozen=True, slots=True)
class PathConst:
    """Source and destination address, 4 bytes (IPv4) or 16 bytes (IPv6), network order."""

    source: bytes
    destination: bytes

    def __post_init__(self) -> None:
        byte_string(self, "source", self.source, (4, 16))
        byte_string(self, "destination", self.destination, (4, 16))
        if len(self.source) != len(self.destination):
            raise InvariantError("PathConst: source and destination must be the same IP version")

    @property
    def ipv6(self) -> bool:
        return len(self.source) == 16


@dataclass(frozen=True, slots=True)
class PathCached:
    """Host-owned: the path MTU, updated when ICMP says it changed (RFC 1191 / RFC 8201)."""

    path_mtu: int = 1500

    def __post_init__(self) -> None:
        _int(self, "path_mtu", self.path_mtu, MIN_IPV4_MTU, MAX_MTU)


@dataclass(frozen=True, slots=True)
class PathDelegated:
    """'Currently there is no delegated path state' (spec 2.3): kept so that every layer has three parts."""


@dataclass(frozen=True, slots=True)
class PathState:
    const: PathConst
    cached: PathCached = PathCached()
    delegated: PathDelegated = PathDelegated()

    def __post_init__(self) -> None:
        if self.const.ipv6 and self.cached.path_mtu < MIN_IPV6_MTU:
            raise InvariantError(f"PathState: an IPv6 path MTU is at least {MIN_IPV6_MTU}")
