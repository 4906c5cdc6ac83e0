"""ICMP for IPv4 (RFC 792), with the next-hop MTU of RFC 1191 and the codes of RFC 1122 and RFC 1812.

Every message is type, code, checksum and a 32-bit "rest of header" whose meaning depends on the type (echo:
identifier and sequence number; fragmentation needed: the next-hop MTU in its low 16 bits; parameter problem:
a pointer in its top byte), followed by data. Error messages carry the offending datagram's IP header plus
(at least) its first 8 data bytes, the "quote".
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from tcpchimney.wire.checksum import ones_sum
from tcpchimney.wire.errors import ChecksumError, EmitError, Truncated
from tcpchimney.wire.ipv4 import Ipv4Header, parse_ipv4_quote

Buffer = bytes | bytearray | memoryview

ICMP_HEADER_LEN: Final = 8

ICMP_ECHO_REPLY: Final = 0
ICMP_DEST_UNREACHABLE: Final = 3
ICMP_SOURCE_QUENCH: Final = 4  # deprecated (RFC 6633): parsed, never acted on
ICMP_REDIRECT: Final = 5
ICMP_ECHO_REQUEST: Final = 8
ICMP_TIME_EXCEEDED: Final = 11
ICMP_PARAMETER_PROBLEM: Final = 12

# Destination unreachable codes: 0-5 RFC 792, 6-12 RFC 1122 3.2.2.1, 13-15 RFC 1812 5.2.7.1.
UNREACH_NET: Final = 0
UNREACH_HOST: Final = 1
UNREACH_PROTOCOL: Final = 2
UNREACH_PORT: Final = 3
UNREACH_FRAG_NEEDED: Final = 4  # with the next-hop MTU (RFC 1191 4)
UNREACH_SOURCE_ROUTE_FAILED: Final = 5
UNREACH_NET_UNKNOWN: Final = 6
UNREACH_HOST_UNKNOWN: Final = 7
UNREACH_SOURCE_HOST_ISOLATED: Final = 8
UNREACH_NET_PROHIBITED: Final = 9
UNREACH_HOST_PROHIBITED: Final = 10
UNREACH_NET_TOS: Final = 11
UNREACH_HOST_TOS: Final = 12
UNREACH_ADMIN_PROHIBITED: Final = 13
UNREACH_HOST_PRECEDENCE: Final = 14
UNREACH_PRECEDENCE_CUTOFF: Final = 15

TIME_EXCEEDED_TTL: Final = 0
TIME_EXCEEDED_REASSEMBLY: Final = 1

ERROR_TYPES: Final = frozenset(
    (ICMP_DEST_UNREACHABLE, ICMP_SOURCE_QUENCH, ICMP_REDIRECT, ICMP_TIME_EXCEEDED, ICMP_PARAMETER_PROBLEM)
)
QUOTE_DATA_LEN: Final = 8  # RFC 792: the original header plus its first 64 bits of data

_ICMP = struct.Struct("!BBHI")


@dataclass(slots=True)
class IcmpMessage:
    type: int
    code: int
    rest: int  # the 32-bit "rest of header"
    data: bytes | bytearray | memoryview  # echo data, or the quote of an error; a view when parsed
    checksum: int = 0  # as received (emit computes its own)

    @property
    def ident(self) -> int:
        """Echo identifier (RFC 792 echo/echo reply)."""
        return self.rest >> 16

    @property
    def seq(self) -> int:
        """Echo sequence number."""
        return self.rest & 0xFFFF

    @property
    def next_hop_mtu(self) -> int:
        """Next-hop MTU of a "fragmentation needed" message (RFC 1191 4); 0 from an old router."""
        return self.rest & 0xFFFF

    @property
    def pointer(self) -> int:
        """Octet offset of the problem in a parameter-problem message (RFC 792)."""
        return self.rest >> 24

    @property
    def is_error(self) -> bool:
        return self.type in ERROR_TYPES

    def quoted_header(self) -> Ipv4Header:
        """The IP header quoted by an error message; its ``payload`` holds the quoted data bytes.

        Raises ``Truncated``/``Malformed`` for a quote too short or broken to read."""
        return parse_ipv4_quote(self.data)


def parse_icmp(buf: Buffer, verify_checksum: bool = True) -> IcmpMessage:
    """Read an ICMP message (the whole IP payload); ``data`` is a view into ``buf``."""
    n = len(buf)
    if n < ICMP_HEADER_LEN:
        raise Truncated("truncated", f"ICMP message of {n} bytes")
    if verify_checksum and ones_sum(buf) != 0xFFFF:
        raise ChecksumError("bad_checksum", "ICMP checksum")
    icmp_type, code, csum, rest = _ICMP.unpack_from(buf)
    view = buf if isinstance(buf, memoryview) else memoryview(buf)
    return IcmpMessage(icmp_type, code, rest, view[ICMP_HEADER_LEN:], csum)


def emit_icmp(icmp_type: int, code: int, rest: int, data: Buffer = b"") -> bytes:
    """A whole ICMP message with its checksum."""
    head = _ICMP.pack(icmp_type, code, 0, rest)
    csum = ~ones_sum(data, int.from_bytes(head, "big")) & 0xFFFF
    return _ICMP.pack(icmp_type, code, csum, rest) + bytes(data)


def emit_echo_request(ident: int, seq: int, data: Buffer = b"") -> bytes:
    return emit_icmp(ICMP_ECHO_REQUEST, 0, (ident << 16) | seq, data)


def emit_echo_reply(ident: int, seq: int, data: Buffer = b"") -> bytes:
    """The answer to an echo request: same identifier, sequence number and data (RFC 792)."""
    return emit_icmp(ICMP_ECHO_REPLY, 0, (ident << 16) | seq, data)


def emit_dest_unreachable(code: int, quote: Buffer, next_hop_mtu: int = 0) -> bytes:
    """Destination unreachable with ``quote`` (see ``quote_of``); ``next_hop_mtu`` only for code 4."""
    if not 0 <= code <= UNREACH_PRECEDENCE_CUTOFF:
        raise EmitError(f"destination unreachable code {code} is not defined")
    if next_hop_mtu and code != UNREACH_FRAG_NEEDED:
        raise EmitError("a next-hop MTU belongs to code 4 (fragmentation needed) only")
    return emit_icmp(ICMP_DEST_UNREACHABLE, code, next_hop_mtu & 0xFFFF, quote)


def emit_time_exceeded(code: int, quote: Buffer) -> bytes:
    if code not in (TIME_EXCEEDED_TTL, TIME_EXCEEDED_REASSEMBLY):
        raise EmitError(f"time exceeded code {code} is not defined")
    return emit_icmp(ICMP_TIME_EXCEEDED, code, 0, quote)


def emit_parameter_problem(pointer: int, quote: Buffer) -> bytes:
    return emit_icmp(ICMP_PARAMETER_PROBLEM, 0, (pointer & 0xFF) << 24, quote)


def quote_of(datagram: Buffer) -> bytes:
    """What an error message carries of ``datagram``: its IP header plus the first 8 data bytes (RFC 792).

    ``datagram`` starts at the IP header; its IHL says where the data begins."""
    if len(datagram) < 20:
        raise EmitError("a quote needs at least the 20-byte IP header")
    header_len = (datagram[0] & 0x0F) << 2
    return bytes(datagram[: header_len + QUOTE_DATA_LEN])
