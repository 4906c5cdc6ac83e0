"""Adapter between the host stack and the wire codecs.

The host reaches Ethernet, ARP, IPv4 and ICMP bytes only through this module, so that the codecs in
``tcpchimney.wire`` can be swapped in without touching the stack. Until they provide these entry points the
small readers and writers below stand in; they follow the same error contract (``wire.errors`` with a stable
``reason``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from tcpchimney.wire.errors import ChecksumError, Illegal, Malformed, Truncated
from tcpchimney.wire.seq import SeqNum
from tcpchimney.wire.tcp import (
    OPT_EOL,
    OPT_MSS,
    OPT_NOP,
    OPT_SACK,
    OPT_SACK_PERM,
    OPT_TIMESTAMP,
    OPT_WSCALE,
    TcpOptions,
    TcpSegment,
)

ETH_HEADER_LEN = 14
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
PROTO_ICMP = 1
PROTO_TCP = 6

_ETH = struct.Struct("!6s6sH")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_ARP = struct.Struct("!HHBBH6s4s6s4s")
_ICMP = struct.Struct("!BBHHH")

IP_FLAG_DF = 0x4000
IP_FLAG_MF = 0x2000
IP_OFFSET_MASK = 0x1FFF


def internet_checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """RFC 1071 checksum of ``data`` plus a 16-bit-folded ``initial`` sum, as the value for the field.

    Uses the big-integer remainder trick (2**16 = 1 mod 0xFFFF): one C-speed pass, no per-word Python loop.
    """
    return (~ones_sum(data, initial)) & 0xFFFF


def ones_sum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The folded one's-complement sum (not inverted) of ``data`` plus ``initial``."""
    total = int.from_bytes(data, "big")
    if len(data) & 1:
        total <<= 8
    total += initial
    if total == 0:
        return 0
    folded = total % 0xFFFF
    return folded or 0xFFFF


def pseudo_header_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """The folded sum of the IPv4 pseudo-header (RFC 9293 3.1)."""
    return ones_sum(src + dst, proto + length)


# --- Ethernet -------------------------------------------------------------------------------------------


def parse_ethernet(buf: bytes | bytearray | memoryview) -> tuple[bytes, bytes, int]:
    """(dst MAC, src MAC, ethertype); the payload starts at ETH_HEADER_LEN."""
    if len(buf) < ETH_HEADER_LEN:
        raise Truncated("truncated", f"{len(buf)} bytes, Ethernet header needs {ETH_HEADER_LEN}")
    dst, src, ethertype = _ETH.unpack_from(buf)
    return dst, src, ethertype


def emit_ethernet(dst: bytes, src: bytes, ethertype: int) -> bytes:
    return _ETH.pack(dst, src, ethertype)


# --- ARP (RFC 826) ---------------------------------------------------------------------------------------

ARP_REQUEST = 1
ARP_REPLY = 2
ARP_LEN = 28


@dataclass(slots=True)
class ArpPacket:
    op: int
    sha: bytes  # sender hardware address
    spa: bytes  # sender protocol address
    tha: bytes
    tpa: bytes


def parse_arp(buf: bytes | bytearray | memoryview, offset: int = 0) -> ArpPacket:
    if len(buf) - offset < ARP_LEN:
        raise Truncated("truncated", "ARP packet shorter than 28 bytes")
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(buf, offset)
    if htype != 1 or ptype != ETHERTYPE_IPV4 or hlen != 6 or plen != 4:
        raise Illegal("unsupported_format", f"htype={htype} ptype={ptype:#x} hlen={hlen} plen={plen}")
    if op not in (ARP_REQUEST, ARP_REPLY):
        raise Illegal("bad_opcode", f"op={op}")
    return ArpPacket(op, sha, spa, tha, tpa)


def emit_arp(pkt: ArpPacket) -> bytes:
    return _ARP.pack(1, ETHERTYPE_IPV4, 6, 4, pkt.op, pkt.sha, pkt.spa, pkt.tha, pkt.tpa)


# --- IPv4 (RFC 791) --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Ipv4Header:
    header_len: int
    total_len: int
    ident: int
    flags_frag: int  # raw flags + fragment offset field
    ttl: int
    proto: int
    src: bytes
    dst: bytes
    options: bytes

    @property
    def more_fragments(self) -> bool:
        return bool(self.flags_frag & IP_FLAG_MF)

    @property
    def frag_offset(self) -> int:
        """Fragment offset in bytes."""
        return (self.flags_frag & IP_OFFSET_MASK) << 3

    @property
    def is_fragment(self) -> bool:
        return bool(self.flags_frag & (IP_FLAG_MF | IP_OFFSET_MASK))


def parse_ipv4(buf: bytes | bytearray | memoryview, offset: int, verify_checksum: bool = True) -> Ipv4Header:
    """Validate and read an IPv4 header at ``offset``; the datagram is buf[offset : offset + total_len]."""
    avail = len(buf) - offset
    if avail < 20:
        raise Truncated("truncated", f"{avail} bytes, IPv4 header needs 20")
    ver_ihl, _tos, total_len, ident, flags_frag, ttl, proto, _csum, src, dst = _IPV4.unpack_from(buf, offset)
    if ver_ihl >> 4 != 4:
        raise Illegal("bad_version", f"version {ver_ihl >> 4}")
    header_len = (ver_ihl & 0x0F) * 4
    if header_len < 20:
        raise Malformed("bad_header_length", f"IHL {header_len // 4}")
    if avail < header_len:
        raise Truncated("truncated", f"{avail} bytes, IHL says {header_len}")
    if total_len < header_len:
        raise Malformed("bad_total_length", f"total length {total_len} < header length {header_len}")
    if total_len > avail:
        raise Truncated("truncated", f"total length {total_len} > {avail} bytes received")
    if flags_frag & 0x8000:
        raise Illegal("reserved_flag", "the reserved IP flag is set (RFC 791)")
    if verify_checksum and ones_sum(buf[offset : offset + header_len]) != 0xFFFF:
        raise ChecksumError("bad_checksum", "IPv4 header checksum")
    options = b""
    if header_len > 20:
        options = bytes(buf[offset + 20 : offset + header_len])
        _check_options(options)
    return Ipv4Header(header_len, total_len, ident, flags_frag, ttl, proto, src, dst, options)


def parse_ipv4_quote(buf: bytes | bytearray | memoryview) -> Ipv4Header:
    """The IPv4 header quoted in an ICMP error (RFC 792: header + 64 bits of data): the quote is cut short by
    design, so lengths are checked against the header only and the checksum is not verified."""
    if len(buf) < 20:
        raise Truncated("truncated", "quoted IPv4 header shorter than 20 bytes")
    ver_ihl, _tos, total_len, ident, flags_frag, ttl, proto, _csum, src, dst = _IPV4.unpack_from(buf)
    header_len = (ver_ihl & 0x0F) * 4
    if ver_ihl >> 4 != 4 or header_len < 20 or len(buf) < header_len:
        raise Malformed("bad_quote", "quoted IPv4 header")
    return Ipv4Header(header_len, total_len, ident, flags_frag, ttl, proto, src, dst, b"")


def _check_options(options: bytes) -> None:
    """RFC 791 3.1 option framing: EOL, NOP, or kind/length/data with 2 <= length <= what is left."""
    i = 0
    n = len(options)
    while i < n:
        kind = options[i]
        if kind == 0:
            return
        if kind == 1:
            i += 1
            continue
        if i + 1 >= n or options[i + 1] < 2 or i + options[i + 1] > n:
            raise Malformed("bad_options", f"IP option kind {kind} at {i} runs past the header")
        i += options[i + 1]


def emit_ipv4(
    src: bytes, dst: bytes, proto: int, payload_len: int, ident: int, ttl: int = 64, flags_frag: int = 0
) -> bytes:
    """A 20-byte IPv4 header with its checksum."""
    hdr = bytearray(_IPV4.pack(0x45, 0, 20 + payload_len, ident, flags_frag, ttl, proto, 0, src, dst))
    struct.pack_into("!H", hdr, 10, internet_checksum(hdr))
    return bytes(hdr)


# --- ICMP (RFC 792) --------------------------------------------------------------------------------------

ICMP_ECHO_REPLY = 0
ICMP_DEST_UNREACHABLE = 3
ICMP_ECHO_REQUEST = 8
ICMP_TIME_EXCEEDED = 11
ICMP_PARAMETER_PROBLEM = 12
UNREACH_PROTOCOL = 2
UNREACH_PORT = 3
UNREACH_FRAG_NEEDED = 4


@dataclass(slots=True)
class IcmpMessage:
    type: int
    code: int
    rest: int  # the 32-bit "rest of header": ident/seq for echo, next-hop MTU in the low 16 bits for code 4
    data: bytes | bytearray | memoryview


def parse_icmp(buf: bytes | bytearray | memoryview, verify_checksum: bool = True) -> IcmpMessage:
    if len(buf) < 8:
        raise Truncated("truncated", f"ICMP message of {len(buf)} bytes")
    if verify_checksum and ones_sum(buf) != 0xFFFF:
        raise ChecksumError("bad_checksum", "ICMP checksum")
    icmp_type, code, _csum, hi, lo = _ICMP.unpack_from(buf)
    return IcmpMessage(icmp_type, code, (hi << 16) | lo, buf[8:])


def emit_icmp(icmp_type: int, code: int, rest: int, data: bytes | bytearray | memoryview) -> bytes:
    msg = bytearray(_ICMP.pack(icmp_type, code, 0, rest >> 16, rest & 0xFFFF))
    msg += data
    struct.pack_into("!H", msg, 2, internet_checksum(msg))
    return bytes(msg)


# --- TCP (RFC 9293 3.1) ----------------------------------------------------------------------------------

_TCP = struct.Struct("!HHIIBBHHH")
TCP_CSUM_OFFSET = 16


def parse_tcp(buf: bytes | bytearray | memoryview) -> TcpSegment:
    """A TcpSegment whose payload is a view into ``buf`` (no copy). The checksum is the caller's business."""
    n = len(buf)
    if n < 20:
        raise Truncated("truncated", f"TCP segment of {n} bytes")
    src_port, dst_port, seq, ack, off, flags, window, _csum, urgent = _TCP.unpack_from(buf)
    data_offset = (off >> 4) * 4
    if data_offset < 20:
        raise Illegal("bad_data_offset", f"data offset {data_offset // 4}")
    if data_offset > n:
        raise Truncated("truncated", f"data offset {data_offset} beyond {n} bytes")
    options = _parse_tcp_options(bytes(buf[20:data_offset])) if data_offset > 20 else TcpOptions()
    payload = memoryview(buf)[data_offset:] if n > data_offset else b""
    return TcpSegment(src_port, dst_port, SeqNum(seq), SeqNum(ack), flags, window, payload, options, urgent)


def _parse_tcp_options(raw: bytes) -> TcpOptions:
    opts = TcpOptions()
    i = 0
    n = len(raw)
    unknown: list[tuple[int, bytes]] = []
    while i < n:
        kind = raw[i]
        if kind == OPT_EOL:
            break
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= n or raw[i + 1] < 2 or i + raw[i + 1] > n:
            raise Malformed("bad_options", f"TCP option kind {kind} at {i} runs past the header")
        length = raw[i + 1]
        body = raw[i + 2 : i + length]
        if kind == OPT_MSS and length == 4:
            opts.mss = int.from_bytes(body, "big")
        elif kind == OPT_WSCALE and length == 3:
            opts.wscale = body[0]
        elif kind == OPT_SACK_PERM and length == 2:
            opts.sack_permitted = True
        elif kind == OPT_TIMESTAMP and length == 10:
            opts.ts_val = int.from_bytes(body[:4], "big")
            opts.ts_ecr = int.from_bytes(body[4:], "big")
        elif kind == OPT_SACK and length >= 10 and (length - 2) % 8 == 0:
            opts.sack_blocks = tuple(
                (
                    SeqNum(int.from_bytes(body[j : j + 4], "big")),
                    SeqNum(int.from_bytes(body[j + 4 : j + 8], "big")),
                )
                for j in range(0, length - 2, 8)
            )
        else:
            unknown.append((kind, body))
        i += length
    if unknown:
        opts.unknown = tuple(unknown)
    return opts


def emit_tcp_options(opts: TcpOptions) -> bytes:
    out = bytearray()
    if opts.mss is not None:
        out += struct.pack("!BBH", OPT_MSS, 4, opts.mss)
    if opts.sack_permitted:
        out += bytes((OPT_NOP, OPT_NOP, OPT_SACK_PERM, 2))
    if opts.ts_val is not None:
        out += struct.pack("!BBBBII", OPT_NOP, OPT_NOP, OPT_TIMESTAMP, 10, opts.ts_val, opts.ts_ecr)
    if opts.wscale is not None:
        out += bytes((OPT_NOP, OPT_WSCALE, 3, opts.wscale))
    if opts.sack_blocks:
        out += bytes((OPT_NOP, OPT_NOP, OPT_SACK, 2 + 8 * len(opts.sack_blocks)))
        for left, right in opts.sack_blocks:
            out += struct.pack("!II", int(left), int(right))
    while len(out) % 4:
        out.append(OPT_EOL)
    return bytes(out)


def emit_tcp_header(seg: TcpSegment, checksum: int = 0) -> bytes:
    """The TCP header (options padded to 32 bits) with ``checksum`` in its field; the payload is separate."""
    options = emit_tcp_options(seg.options)
    header_len = 20 + len(options)
    return (
        _TCP.pack(
            seg.src_port,
            seg.dst_port,
            int(seg.seq),
            int(seg.ack),
            (header_len // 4) << 4,
            seg.flags,
            seg.window,
            checksum,
            seg.urgent,
        )
        + options
    )
