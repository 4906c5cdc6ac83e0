"""IPv4 address checks, header templates for output and fragmentation (RFC 791, RFC 1122 3.2.1, RFC 6864)."""

from __future__ import annotations

import struct

from tcpchimney.host import _codec as codec
from tcpchimney.host.interface import InterfaceConfig

DEFAULT_TTL = 64  # Linux net.ipv4.ip_default_ttl (RFC 1700 recommended value)
HOST_IP_ID_SPACE = 0x8000  # the host draws IP IDs from [0, 0x7FFF]; the offload target may use the rest
LIMITED_BROADCAST = b"\xff\xff\xff\xff"
UNSPECIFIED = b"\x00\x00\x00\x00"

_LEN_ID = struct.Struct("!HH")
_CSUM = struct.Struct("!H")


class IpIdCounter:
    """RFC 6864: the ID only has to be unique per (src, dst, protocol) among datagrams that may be fragmented;
    atomic (DF) datagrams may carry any value. A wrapping counter restricted to the host's half of the space
    keeps the two halves (host / offload target) from colliding."""

    __slots__ = ("_next",)

    def __init__(self, start: int = 0) -> None:
        self._next = start % HOST_IP_ID_SPACE

    def next(self) -> int:
        ident = self._next
        self._next = (ident + 1) % HOST_IP_ID_SPACE
        return ident


def is_multicast(addr: bytes) -> bool:
    return 224 <= addr[0] <= 239


def bad_source(src: bytes, iface: InterfaceConfig) -> bool:
    """RFC 1122 3.2.1.3: a source address must not be broadcast, multicast, unspecified, loopback or ours."""
    return (
        src in (UNSPECIFIED, LIMITED_BROADCAST)
        or src[0] >= 224
        or src[0] == 127
        or src == iface.ip
        or (iface.prefix_len < 31 and src == iface.broadcast)
    )


def destination_kind(dst: bytes, iface: InterfaceConfig) -> str | None:
    """'unicast' for our address, 'broadcast' for the limited or our directed broadcast, None otherwise."""
    if dst == iface.ip:
        return "unicast"
    if dst == LIMITED_BROADCAST or (iface.prefix_len < 31 and dst == iface.broadcast):
        return "broadcast"
    return None


class HeaderTemplate:
    """Ethernet + IPv4 header bytes for one (next hop MAC, destination, protocol); per datagram only the
    total length, the ID and the header checksum change, and the checksum is updated from a cached sum
    (RFC 1624 style) instead of being recomputed over the header."""

    __slots__ = ("_base_sum", "_bytes", "dst_mac")

    def __init__(
        self,
        src_mac: bytes,
        dst_mac: bytes,
        src: bytes,
        dst: bytes,
        proto: int,
        df: bool,
        ttl: int = DEFAULT_TTL,
    ) -> None:
        self.dst_mac = dst_mac
        eth = codec.emit_ethernet(dst_mac, src_mac, codec.ETHERTYPE_IPV4)
        flags = codec.IP_FLAG_DF if df else 0
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 0, 0, flags, ttl, proto, 0, src, dst)
        self._bytes = eth + ip
        self._base_sum = codec.ones_sum(ip)

    def build(self, payload_len: int, ident: int) -> bytearray:
        """Headers for a datagram carrying ``payload_len`` bytes after the IPv4 header."""
        hdr = bytearray(self._bytes)
        total = 20 + payload_len
        _LEN_ID.pack_into(hdr, 16, total, ident)
        s = self._base_sum + total + ident
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        _CSUM.pack_into(hdr, 24, ~s & 0xFFFF)
        return hdr


def fragment_sizes(payload_len: int, mtu: int) -> list[tuple[int, int]]:
    """(offset, length) pieces of a payload so that each 20-byte-header fragment fits ``mtu`` (RFC 791 3.2:
    every piece but the last is a multiple of 8 bytes)."""
    per = ((mtu - 20) // 8) * 8
    return [(off, min(per, payload_len - off)) for off in range(0, payload_len, per)]
