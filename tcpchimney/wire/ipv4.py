"""IPv4 headers (RFC 791).

Addresses are 4-byte ``bytes`` inside the stack (what ``struct`` hands out without arithmetic); the
``addr_*`` helpers convert to dotted strings and ints at the edges. ``Ipv4HeaderTemplate`` builds the
20-byte header of one flow for any length and ID with a precomputed checksum sum.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Final

from tcpchimney.wire.checksum import internet_checksum, ones_sum
from tcpchimney.wire.errors import ChecksumError, EmitError, Illegal, Malformed, Truncated

Buffer = bytes | bytearray | memoryview

IPV4_HEADER_LEN: Final = 20
IPV4_MAX_HEADER_LEN: Final = 60
IPV4_MAX_LEN: Final = 65535

PROTO_ICMP: Final = 1
PROTO_TCP: Final = 6
PROTO_UDP: Final = 17

FLAG_RESERVED: Final = 0x8000
FLAG_DF: Final = 0x4000
FLAG_MF: Final = 0x2000
OFFSET_MASK: Final = 0x1FFF

# Option types (RFC 791 3.1); the copied flag is the top bit of the type.
OPT_EOL: Final = 0
OPT_NOP: Final = 1
OPT_RR: Final = 7
OPT_TS: Final = 68
OPT_LSRR: Final = 131
OPT_SSRR: Final = 137
OPT_RA: Final = 148  # router alert (RFC 2113)

_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_TEMPLATE = struct.Struct("!HHHHHH8s")  # version/IHL+TOS, length, ID, flags, TTL+proto, checksum, addresses

IpOption = tuple[int, bytes]


@dataclass(slots=True)
class Ipv4Header:
    tos: int
    total_len: int
    ident: int
    flags_frag: int  # raw flags + fragment offset field
    ttl: int
    proto: int
    checksum: int
    src: bytes
    dst: bytes
    header_len: int = IPV4_HEADER_LEN
    options_raw: bytes = b""  # the option bytes exactly as received (padding included), for re-emit
    options: tuple[IpOption, ...] = ()  # (type, data) of each option but EOL/NOP
    payload: memoryview | bytes = b""  # buf[header_len : total_len], a view (no copy)

    @property
    def dont_fragment(self) -> bool:
        return bool(self.flags_frag & FLAG_DF)

    @property
    def more_fragments(self) -> bool:
        return bool(self.flags_frag & FLAG_MF)

    @property
    def reserved_flag(self) -> bool:
        return bool(self.flags_frag & FLAG_RESERVED)

    @property
    def frag_offset(self) -> int:
        """Fragment offset in bytes."""
        return (self.flags_frag & OFFSET_MASK) << 3

    @property
    def is_fragment(self) -> bool:
        """Part of a fragmented datagram: MF set or a non-zero offset (RFC 791 3.2 reassembly)."""
        return bool(self.flags_frag & (FLAG_MF | OFFSET_MASK))

    @property
    def dscp(self) -> int:
        return self.tos >> 2

    @property
    def ecn(self) -> int:
        return self.tos & 3


def parse_ipv4(buf: Buffer, offset: int = 0, verify_checksum: bool = True) -> Ipv4Header:
    """Validate and read the IPv4 datagram at ``offset``; bytes past its total length (link padding) are
    ignored. ``verify_checksum=False`` is for callers that have already checked the header.

    The reserved flag is accepted and exposed, not refused: Linux ignores it on input.
    """
    avail = len(buf) - offset
    if avail < IPV4_HEADER_LEN:
        raise Truncated("truncated", f"{avail} bytes, IPv4 header needs 20")
    ver_ihl, tos, total_len, ident, flags_frag, ttl, proto, csum, src, dst = _IPV4.unpack_from(buf, offset)
    if ver_ihl >> 4 != 4:
        raise Illegal("bad_version", f"version {ver_ihl >> 4}")
    header_len = (ver_ihl & 0x0F) << 2
    if header_len < IPV4_HEADER_LEN:
        raise Malformed("bad_header_length", f"IHL {header_len >> 2} < 5")
    if total_len < header_len:
        raise Malformed("bad_total_length", f"total length {total_len} < header length {header_len}")
    if total_len > avail:
        raise Truncated("truncated", f"total length {total_len} > {avail} bytes received")
    view = buf if isinstance(buf, memoryview) else memoryview(buf)
    if verify_checksum and ones_sum(view[offset : offset + header_len]) != 0xFFFF:
        raise ChecksumError("bad_checksum", "IPv4 header checksum")
    if header_len == IPV4_HEADER_LEN:
        return Ipv4Header(
            tos, total_len, ident, flags_frag, ttl, proto, csum, src, dst,
            IPV4_HEADER_LEN, b"", (), view[offset + IPV4_HEADER_LEN : offset + total_len],
        )  # fmt: skip
    raw = bytes(view[offset + IPV4_HEADER_LEN : offset + header_len])
    return Ipv4Header(
        tos, total_len, ident, flags_frag, ttl, proto, csum, src, dst,
        header_len, raw, parse_options(raw), view[offset + header_len : offset + total_len],
    )  # fmt: skip


def parse_ipv4_quote(buf: Buffer) -> Ipv4Header:
    """The IPv4 header quoted in an ICMP error (RFC 792: the header plus 64 bits of data). The quote is cut
    short by design, so lengths are checked against the header only and the checksum is not verified; the
    payload is whatever follows the header in the quote."""
    if len(buf) < IPV4_HEADER_LEN:
        raise Truncated("truncated", "quoted IPv4 header shorter than 20 bytes")
    ver_ihl, tos, total_len, ident, flags_frag, ttl, proto, csum, src, dst = _IPV4.unpack_from(buf)
    header_len = (ver_ihl & 0x0F) << 2
    if ver_ihl >> 4 != 4 or header_len < IPV4_HEADER_LEN or len(buf) < header_len:
        raise Malformed("bad_quote", "quoted IPv4 header")
    view = buf if isinstance(buf, memoryview) else memoryview(buf)
    raw = bytes(view[IPV4_HEADER_LEN:header_len])
    return Ipv4Header(
        tos, total_len, ident, flags_frag, ttl, proto, csum, src, dst,
        header_len, raw, parse_options(raw) if raw else (), view[header_len:],
    )  # fmt: skip


def parse_options(raw: bytes) -> tuple[IpOption, ...]:
    """RFC 791 3.1 option framing: EOL ends the list, NOP is one byte, every other option is
    type/length/data with 2 <= length <= what is left. Contents are not interpreted here."""
    out: list[IpOption] = []
    i = 0
    n = len(raw)
    while i < n:
        kind = raw[i]
        if kind == OPT_EOL:
            break
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= n or raw[i + 1] < 2 or i + raw[i + 1] > n:
            raise Malformed("bad_options", f"IP option type {kind} at {i} runs past the header")
        out.append((kind, raw[i + 2 : i + raw[i + 1]]))
        i += raw[i + 1]
    return tuple(out)


def encode_options(options: tuple[IpOption, ...]) -> bytes:
    """Options as bytes, padded with EOL (zeros) to a multiple of 4 (RFC 791 3.1 padding)."""
    out = bytearray()
    for kind, data in options:
        if kind in (OPT_EOL, OPT_NOP):
            out.append(kind)
        else:
            out += bytes((kind, len(data) + 2)) + data
    out += bytes(-len(out) % 4)
    if len(out) > IPV4_MAX_HEADER_LEN - IPV4_HEADER_LEN:
        raise EmitError(f"IPv4 options take {len(out)} bytes, at most 40 fit")
    return bytes(out)


def emit_ipv4(
    src: bytes,
    dst: bytes,
    proto: int,
    payload_len: int,
    ident: int,
    ttl: int = 64,
    tos: int = 0,
    flags_frag: int = 0,
    options_raw: bytes = b"",
) -> bytes:
    """An IPv4 header with its checksum for a payload of ``payload_len`` bytes. ``options_raw`` is re-emitted
    as given (a multiple of 4 bytes: use ``encode_options`` or a parsed ``options_raw``)."""
    if len(options_raw) % 4 or len(options_raw) > IPV4_MAX_HEADER_LEN - IPV4_HEADER_LEN:
        raise EmitError(f"IPv4 options must be a multiple of 4 bytes up to 40, not {len(options_raw)}")
    header_len = IPV4_HEADER_LEN + len(options_raw)
    total_len = header_len + payload_len
    if total_len > IPV4_MAX_LEN:
        raise EmitError(f"IPv4 datagram of {total_len} bytes exceeds {IPV4_MAX_LEN}")
    ver_ihl = 0x40 | (header_len >> 2)
    hdr = _IPV4.pack(ver_ihl, tos, total_len, ident, flags_frag, ttl, proto, 0, src, dst) + options_raw
    csum = internet_checksum(hdr)
    return hdr[:10] + csum.to_bytes(2, "big") + hdr[12:]


class Ipv4HeaderTemplate:
    """The option-less header of one flow (fixed src, dst, proto, ttl, tos, DF) for any length and ID.

    The sum of the constant words is computed once; each header then costs two additions, a fold and one
    ``struct.pack`` (RFC 1071 2(C): the sum of a changed header is the old sum plus the changed words).
    """

    __slots__ = ("_addrs", "_base", "_flags_frag", "_proto_word", "_ver_tos")

    def __init__(
        self, src: bytes, dst: bytes, proto: int, ttl: int = 64, tos: int = 0, df: bool = True
    ) -> None:
        if len(src) != 4 or len(dst) != 4:
            raise EmitError("IPv4 addresses are 4 bytes")
        self._ver_tos = 0x4500 | tos
        self._flags_frag = FLAG_DF if df else 0
        self._proto_word = (ttl << 8) | proto
        self._addrs = src + dst
        const = _TEMPLATE.pack(self._ver_tos, 0, 0, self._flags_frag, self._proto_word, 0, self._addrs)
        self._base = ones_sum(const)

    def header(self, total_len: int, ident: int) -> bytes:
        """The 20-byte header of a datagram of ``total_len`` bytes (header included) with ID ``ident``."""
        s = self._base + total_len + ident
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        return _TEMPLATE.pack(
            self._ver_tos, total_len, ident, self._flags_frag, self._proto_word, ~s & 0xFFFF, self._addrs
        )


def header_checksum_ok(buf: Buffer, offset: int = 0, header_len: int = IPV4_HEADER_LEN) -> bool:
    """True when the header at ``offset`` sums to 0xFFFF."""
    view = buf if isinstance(buf, memoryview) else memoryview(buf)
    return ones_sum(view[offset : offset + header_len]) == 0xFFFF


def addr_from_str(text: str) -> bytes:
    """``"198.18.0.1"`` -> 4 bytes (strict dotted quad; raises ValueError)."""
    return ipaddress.IPv4Address(text).packed


def addr_to_str(addr: bytes) -> str:
    return ".".join(str(b) for b in addr)


def addr_to_int(addr: bytes) -> int:
    return int.from_bytes(addr, "big")


def addr_from_int(value: int) -> bytes:
    return value.to_bytes(4, "big")
