"""Frames of offloaded connections: which received frames the target takes, and the headers of what it sends.

Receive: ``classify`` reads just enough of a frame (Ethernet, optional VLAN tags, IPv4) to name the TCP
4-tuple it carries. The target takes a frame only when that 4-tuple is offloaded and the datagram is plain:
no IP options and not a fragment (spec 1.2: options and fragments are the host's; it forwards the TCP segment
back). Everything else goes up to the host unchanged.

Transmit: ``TxTemplate`` holds one connection's Ethernet (+ 802.1Q tag) and IPv4 header, built from the
neighbor and path state and the connection's cached TTL / TOS / user priority (spec 2.2-2.4, 5.6), so a
segment costs a header pack and two additions. IP IDs come from the upper half of the 16-bit space (spec 3.6:
the host keeps 0x0000-0x7FFF). Segmentation and checksums follow the host's rules for the same device
features.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from tcpchimney.wire import checksum, ethernet
from tcpchimney.wire import ipv4 as ipv4_wire
from tcpchimney.wire import tcp as tcp_wire
from tcpchimney.wire.errors import WireError
from tcpchimney.wire.frame import DeviceFeatures, Frame
from tcpchimney.wire.tcp import TcpSegment

Buffer = bytes | bytearray | memoryview
ConnKey = tuple[bytes, bytes, int, int]
"""(local IP, remote IP, local port, remote port): how the target names a connection on the wire."""

TARGET_IP_ID_FIRST = 0x8000  # spec 3.6: the target's half of the IPv4 ID space
_ETHERTYPE = struct.Struct("!H")
_PORTS = struct.Struct("!HH")
_VLAN_TPIDS = (ethernet.ETHERTYPE_VLAN, ethernet.ETHERTYPE_QINQ)


@dataclass(slots=True)
class RxTcp:
    """A received IPv4 datagram carrying TCP, as far as the target needs to read it."""

    key: ConnKey
    dst_mac: bytes
    vlan_id: int  # 0 when untagged
    ip: ipv4_wire.Ipv4Header  # its payload is the TCP segment (a view into the frame)

    @property
    def plain(self) -> bool:
        """No IP options, not a fragment, a sane TTL: the target may process it itself."""
        ip = self.ip
        return not ip.options_raw and not ip.is_fragment and ip.ttl > 0


def classify(frame: Frame) -> RxTcp | None:
    """The TCP 4-tuple of ``frame``, or None when it is not an IPv4/TCP frame whose ports can be read
    (ARP, ICMP, a later fragment, a malformed header): such frames always belong to the host."""
    buf: Buffer = frame.headers if not frame.payload else frame.tobytes()
    if len(buf) < ethernet.ETH_HEADER_LEN + ipv4_wire.IPV4_HEADER_LEN:
        return None
    ethertype = _ETHERTYPE.unpack_from(buf, 12)[0]
    offset = ethernet.ETH_HEADER_LEN
    vlan_id = 0
    try:
        if ethertype in _VLAN_TPIDS:
            eth = ethernet.parse_ethernet(buf)
            ethertype, offset, vlan_id = eth.ethertype, eth.header_len, eth.vlan_id or 0
        if ethertype != ethernet.ETHERTYPE_IPV4:
            return None
        ip = ipv4_wire.parse_ipv4(buf, offset)
    except WireError:
        return None  # the host counts it
    if ip.proto != ipv4_wire.PROTO_TCP or ip.frag_offset or len(ip.payload) < 4:
        return None
    sport, dport = _PORTS.unpack_from(ip.payload, 0)
    return RxTcp((ip.dst, ip.src, dport, sport), bytes(buf[0:6]), vlan_id, ip)


def parse_segment(rx: RxTcp, frame: Frame) -> TcpSegment | None:
    """The TCP segment of a plain datagram, its checksum verified unless the device vouched for it; None when
    it does not parse or verify (the host then sees the frame and counts it, spec 4.8)."""
    verify = not (frame.csum_partial or frame.csum_valid)
    base = checksum.pseudo_base_sum(rx.ip.src, rx.ip.dst, ipv4_wire.PROTO_TCP) if verify else None
    try:
        return tcp_wire.parse_tcp(rx.ip.payload, base)
    except WireError:
        return None


class IpIds:
    """IPv4 identification values from 0x8000-0xFFFF, in order, wrapping inside that half."""

    __slots__ = ("_next",)

    def __init__(self, start: int = 0) -> None:
        self._next = start & 0x7FFF

    def next(self) -> int:
        value = TARGET_IP_ID_FIRST | self._next
        self._next = (self._next + 1) & 0x7FFF
        return value


class TxTemplate:
    """Ethernet (+ VLAN tag) and IPv4 headers of one offloaded connection, and its segment size."""

    __slots__ = ("_eth", "_ip", "gso_mss", "pseudo_base")

    def __init__(
        self,
        *,
        src_mac: bytes,
        dst_mac: bytes,
        src_ip: bytes,
        dst_ip: bytes,
        vlan_id: int,
        user_priority: int,
        ttl: int,
        tos: int,
        gso_mss: int,
    ) -> None:
        # Spec 5.6: no tag for VLAN 0 and priority 0; a priority alone rides in a tag with VID 0.
        tags = (ethernet.VlanTag(vlan_id, user_priority),) if vlan_id or user_priority else ()
        self._eth = ethernet.emit_ethernet(dst_mac, src_mac, ethernet.ETHERTYPE_IPV4, tags)
        self._ip = ipv4_wire.Ipv4HeaderTemplate(
            src_ip, dst_ip, ipv4_wire.PROTO_TCP, ttl=ttl, tos=tos, df=True
        )  # DF always: a target never fragments (spec 3.6)
        self.pseudo_base = checksum.pseudo_base_sum(src_ip, dst_ip, ipv4_wire.PROTO_TCP)
        self.gso_mss = gso_mss  # payload + options per wire segment: min(peer MSS, PMTU - 40)

    def frame(self, seg: TcpSegment, ident: int, features: DeviceFeatures) -> Frame:
        """The frame of ``seg``: a TSO super-segment when the device segments and the payload exceeds one
        wire segment, the checksum left to the device when it completes checksums (as the host does)."""
        payload = seg.payload
        header, partial, gso = tcp_wire.emit_tcp_for_device(seg, self.pseudo_base, self.gso_mss, features)
        ip_len = ipv4_wire.IPV4_HEADER_LEN + len(header) + len(payload)
        return Frame(self._eth + self._ip.header(ip_len, ident) + header, payload, partial, False, gso)
