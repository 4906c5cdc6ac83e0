"""IPv4 address checks, header templates for output and fragmentation (RFC 791, RFC 1122 3.2.1, RFC 6864)."""

from __future__ import annotations

from tcpchimney.host.interface import InterfaceConfig
from tcpchimney.wire import ethernet
from tcpchimney.wire import ipv4 as ipv4_wire

DEFAULT_TTL = 64  # Linux net.ipv4.ip_default_ttl (RFC 1700 recommended value)
HOST_IP_ID_SPACE = 0x8000  # the host draws IP IDs from [0, 0x7FFF]; the offload target may use the rest
LIMITED_BROADCAST = b"\xff\xff\xff\xff"
UNSPECIFIED = b"\x00\x00\x00\x00"


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


def reverse_path(iface: InterfaceConfig) -> tuple[int, int] | None:
    """RFC 3704 2.4 (loose reverse-path check, Linux rp_filter=2 on a host with one interface): a datagram is
    accepted only from a source we have a route back to. With a default route that is every source (None);
    without one, only on-link sources: the (mask, network) they must match. Anything else could only
    create state (a SYN-RECEIVED connection, a reassembly queue) or ask for an answer we cannot send."""
    if iface.gateway is not None:
        return None
    return iface.netmask, iface.ip_int & iface.netmask


def destination_kind(dst: bytes, iface: InterfaceConfig) -> str | None:
    """'unicast' for our address, 'broadcast' for the limited or our directed broadcast, None otherwise."""
    if dst == iface.ip:
        return "unicast"
    if dst == LIMITED_BROADCAST or (iface.prefix_len < 31 and dst == iface.broadcast):
        return "broadcast"
    return None


class HeaderTemplate:
    """Ethernet + IPv4 headers towards one next hop for one (destination, protocol): the Ethernet bytes are
    fixed and the IPv4 header comes from the wire codec's template, so a datagram costs two additions and a
    pack (RFC 1624 incremental checksum) instead of a header checksum pass."""

    __slots__ = ("_eth", "_ip", "dst_mac")

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
        self._eth = ethernet.emit_ethernet(dst_mac, src_mac, ethernet.ETHERTYPE_IPV4)
        self._ip = ipv4_wire.Ipv4HeaderTemplate(src, dst, proto, ttl=ttl, df=df)

    def build(self, payload_len: int, ident: int) -> bytes:
        """Headers for a datagram carrying ``payload_len`` bytes after the IPv4 header."""
        return self._eth + self._ip.header(ipv4_wire.IPV4_HEADER_LEN + payload_len, ident)

    def build_fragment(
        self, src: bytes, dst: bytes, proto: int, payload_len: int, ident: int, offset: int, more: bool
    ) -> bytes:
        """Headers of one fragment (RFC 791 3.2): the offset in 8-byte units, MF on all but the last."""
        flags = (ipv4_wire.FLAG_MF if more else 0) | (offset >> 3)
        return self._eth + ipv4_wire.emit_ipv4(src, dst, proto, payload_len, ident, flags_frag=flags)


def fragment_sizes(payload_len: int, mtu: int) -> list[tuple[int, int]]:
    """(offset, length) pieces of a payload so that each 20-byte-header fragment fits ``mtu`` (RFC 791 3.2:
    every piece but the last is a multiple of 8 bytes)."""
    per = ((mtu - 20) // 8) * 8
    return [(off, min(per, payload_len - off)) for off in range(0, payload_len, per)]
