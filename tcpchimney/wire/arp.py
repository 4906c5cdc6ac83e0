"""ARP for Ethernet and IPv4 (RFC 826), the only pairing the stack resolves.

Addresses are bytes: 6 for hardware, 4 for protocol. Anything but htype 1 / ptype 0x0800 / hlen 6 / plen 4
parses as ``Illegal("unsupported_format")``: RFC 826 has a receiver drop what it does not speak.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from tcpchimney.wire.errors import Illegal, Truncated

Buffer = bytes | bytearray | memoryview

ARP_LEN: Final = 28
HTYPE_ETHERNET: Final = 1
PTYPE_IPV4: Final = 0x0800
ARP_REQUEST: Final = 1
ARP_REPLY: Final = 2

_ARP = struct.Struct("!HHBBH6s4s6s4s")
_ZERO_MAC: Final = b"\x00" * 6


@dataclass(slots=True)
class ArpPacket:
    op: int
    sha: bytes  # sender hardware address
    spa: bytes  # sender protocol address
    tha: bytes  # target hardware address (zero in a request)
    tpa: bytes  # target protocol address

    @property
    def is_gratuitous(self) -> bool:
        """A sender announcing its own mapping (RFC 5227 2.3 "ARP Announcement", request or reply):
        sender and target protocol address are the same."""
        return self.spa == self.tpa

    @property
    def is_probe(self) -> bool:
        """An address-conflict probe (RFC 5227 2.1.1): a request with an all-zero sender address."""
        return self.op == ARP_REQUEST and self.spa == b"\x00\x00\x00\x00"


def parse_arp(buf: Buffer, offset: int = 0) -> ArpPacket:
    """Read an ARP packet at ``offset`` (trailing Ethernet padding is ignored)."""
    if len(buf) - offset < ARP_LEN:
        raise Truncated("truncated", f"ARP packet shorter than {ARP_LEN} bytes")
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(buf, offset)
    if htype != HTYPE_ETHERNET or ptype != PTYPE_IPV4 or hlen != 6 or plen != 4:
        raise Illegal("unsupported_format", f"htype={htype} ptype={ptype:#x} hlen={hlen} plen={plen}")
    if op not in (ARP_REQUEST, ARP_REPLY):
        raise Illegal("bad_opcode", f"op={op}")
    return ArpPacket(op, sha, spa, tha, tpa)


def emit_arp(pkt: ArpPacket) -> bytes:
    return _ARP.pack(HTYPE_ETHERNET, PTYPE_IPV4, 6, 4, pkt.op, pkt.sha, pkt.spa, pkt.tha, pkt.tpa)


def emit_arp_request(sha: bytes, spa: bytes, tpa: bytes) -> bytes:
    """Who has ``tpa``? Tell ``spa`` (the target hardware address is zero, RFC 826)."""
    return emit_arp(ArpPacket(ARP_REQUEST, sha, spa, _ZERO_MAC, tpa))


def emit_arp_reply(sha: bytes, spa: bytes, tha: bytes, tpa: bytes) -> bytes:
    """``spa`` is at ``sha``, sent to the requester ``tha``/``tpa``."""
    return emit_arp(ArpPacket(ARP_REPLY, sha, spa, tha, tpa))


def emit_gratuitous(sha: bytes, spa: bytes) -> bytes:
    """An ARP announcement of our own mapping (RFC 5227 2.3): a request with spa == tpa."""
    return emit_arp(ArpPacket(ARP_REQUEST, sha, spa, _ZERO_MAC, spa))
