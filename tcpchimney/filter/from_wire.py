"""``FilterPacket``s from the headers the stack parses: received datagrams and what the stack sends.

Received datagrams are read at the input hook after reassembly (like netfilter, whose connection tracking
defragments first): ``fragmented`` then says the datagram arrived in pieces, and the transport header is
always present. The transport header is read with one ``struct`` call; options only for a SYN (where MSS and
window scale live). An unusable transport header (too short, a data offset past the segment) and a failed
checksum both give ``checksum_ok=False``, which connection tracking treats as INVALID, as Linux does.

ICMP errors carry the header they quote, read the same way with its source and destination as written, so
that connection tracking can find the connection it belongs to (RELATED).
"""

from __future__ import annotations

import struct
from typing import Final

from tcpchimney.filter.packet import FilterPacket, Hook
from tcpchimney.wire import icmp as icmp_wire
from tcpchimney.wire import ipv4 as ipv4_wire
from tcpchimney.wire import tcp as tcp_wire
from tcpchimney.wire.checksum import ones_sum, pseudo_base_sum
from tcpchimney.wire.errors import WireError

Buffer = bytes | bytearray | memoryview

_TCP_FIXED = struct.Struct("!HHIIBBH")  # ports, seq, ack, data offset, flags, window
_PORTS = struct.Struct("!HH")
_ICMP_TYPE = struct.Struct("!BB")
_TCP_MIN: Final = 20
_UDP_MIN: Final = 8


def received(
    iface: str,
    src: bytes,
    dst: bytes,
    proto: int,
    l4: Buffer,
    header_len: int,
    verify: bool,
    fragmented: bool = False,
) -> FilterPacket:
    """A datagram the stack received (``l4``: its whole transport payload, after reassembly); ``verify``:
    the transport checksum still needs checking (no device vouched for it)."""
    packet = FilterPacket(Hook.INPUT, iface, src, dst, proto, header_len + len(l4), fragment=fragmented)
    _read_transport(packet, l4, verify)
    return packet


def sent_segment(
    iface: str, src: bytes, dst: bytes, seg: tcp_wire.TcpSegment, header_len: int
) -> FilterPacket:
    """A TCP segment the stack is about to send (``header_len``: its TCP header length with options)."""
    payload_len = len(seg.payload)
    packet = FilterPacket(
        Hook.OUTPUT,
        iface,
        src,
        dst,
        ipv4_wire.PROTO_TCP,
        ipv4_wire.IPV4_HEADER_LEN + header_len + payload_len,
    )
    packet.sport, packet.dport = seg.src_port, seg.dst_port
    packet.tcp_flags, packet.seq, packet.ack, packet.window = (
        seg.flags,
        int(seg.seq),
        int(seg.ack),
        seg.window,
    )
    packet.payload_len = payload_len
    if seg.flags & tcp_wire.SYN:
        packet.mss, packet.wscale = seg.options.mss, seg.options.wscale
    return packet


def sent_datagram(iface: str, src: bytes, dst: bytes, proto: int, l4: Buffer) -> FilterPacket:
    """Any other datagram the stack sends (an ICMP message, a stateless RST), whole, before fragmentation."""
    packet = FilterPacket(Hook.OUTPUT, iface, src, dst, proto, ipv4_wire.IPV4_HEADER_LEN + len(l4))
    _read_transport(packet, l4, verify=False)
    return packet


def _read_transport(packet: FilterPacket, l4: Buffer, verify: bool) -> None:
    proto = packet.proto
    if proto == ipv4_wire.PROTO_TCP:
        _read_tcp(packet, l4, verify)
    elif proto == ipv4_wire.PROTO_UDP:
        if len(l4) < _UDP_MIN:
            packet.checksum_ok = False
            return
        packet.sport, packet.dport = _PORTS.unpack_from(l4)
        packet.payload_len = len(l4) - _UDP_MIN
    elif proto == ipv4_wire.PROTO_ICMP:
        _read_icmp(packet, l4, verify)


def _read_tcp(packet: FilterPacket, l4: Buffer, verify: bool) -> None:
    n = len(l4)
    if n < _TCP_MIN:
        packet.checksum_ok = False
        return
    sport, dport, seq, ack, off, flags, window = _TCP_FIXED.unpack_from(l4)
    data_offset = (off >> 4) << 2
    packet.sport, packet.dport, packet.seq, packet.ack = sport, dport, seq, ack
    packet.tcp_flags, packet.window = flags, window
    if data_offset < _TCP_MIN or data_offset > n:
        packet.checksum_ok = False
        return
    packet.payload_len = n - data_offset
    if flags & tcp_wire.SYN and data_offset > _TCP_MIN:
        try:
            opts = tcp_wire.parse_options(bytes(l4[_TCP_MIN:data_offset]))
        except WireError:
            packet.checksum_ok = False
            return
        packet.mss, packet.wscale = opts.mss, opts.wscale
    if verify:
        base = pseudo_base_sum(packet.src, packet.dst, ipv4_wire.PROTO_TCP)
        packet.checksum_ok = ones_sum(l4, base + n) == 0xFFFF


def _read_icmp(packet: FilterPacket, l4: Buffer, verify: bool) -> None:
    if len(l4) < icmp_wire.ICMP_HEADER_LEN:
        packet.checksum_ok = False
        return
    packet.icmp_type, packet.icmp_code = _ICMP_TYPE.unpack_from(l4)
    packet.payload_len = len(l4) - icmp_wire.ICMP_HEADER_LEN
    if verify and ones_sum(l4) != 0xFFFF:
        packet.checksum_ok = False
        return
    if packet.icmp_type in icmp_wire.ERROR_TYPES:
        packet.icmp_quoted = _quoted(packet, l4[icmp_wire.ICMP_HEADER_LEN :])


def _quoted(packet: FilterPacket, quote: Buffer) -> FilterPacket | None:
    """The quoted datagram's header as a packet (ports from its first 8 data bytes); None when the quote is
    too short or broken to name a connection."""
    try:
        ip = ipv4_wire.parse_ipv4_quote(quote)
    except WireError:
        return None
    inner = FilterPacket(packet.hook, packet.iface, ip.src, ip.dst, ip.proto, ip.total_len)
    data = ip.payload
    if ip.proto in (ipv4_wire.PROTO_TCP, ipv4_wire.PROTO_UDP) and len(data) >= 4:
        inner.sport, inner.dport = _PORTS.unpack_from(data)
        if ip.proto == ipv4_wire.PROTO_TCP and len(data) >= 8:
            inner.seq = int.from_bytes(data[4:8], "big")
    elif ip.proto == ipv4_wire.PROTO_ICMP and len(data) >= 2:
        inner.icmp_type, inner.icmp_code = _ICMP_TYPE.unpack_from(data)
    return inner
