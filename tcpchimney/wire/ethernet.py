"""Ethernet II frames with optional 802.1Q / 802.1ad VLAN tags (IEEE 802.3, 802.1Q).

MAC addresses are 6-byte ``bytes`` inside the stack; ``mac_to_str``/``mac_from_str`` convert at the edges.
The frame check sequence is not part of what devices hand over, so it is neither parsed nor emitted.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from tcpchimney.wire.errors import EmitError, Illegal, Truncated

Buffer = bytes | bytearray | memoryview

ETH_HEADER_LEN: Final = 14
ETH_ADDR_LEN: Final = 6
ETH_MIN_FRAME: Final = 60  # without the FCS; shorter frames are padded by the sender
VLAN_TAG_LEN: Final = 4

ETHERTYPE_IPV4: Final = 0x0800
ETHERTYPE_ARP: Final = 0x0806
ETHERTYPE_VLAN: Final = 0x8100  # 802.1Q customer tag
ETHERTYPE_QINQ: Final = 0x88A8  # 802.1ad service tag
ETHERTYPE_IPV6: Final = 0x86DD

BROADCAST: Final = b"\xff" * 6
ZERO_MAC: Final = b"\x00" * 6

MAX_VLAN_TAGS: Final = 2  # 802.1ad stacks a service tag over a customer tag; deeper stacks are refused

_ETH = struct.Struct("!6s6sH")
_U16 = struct.Struct("!H")
_TAG = struct.Struct("!HH")
_TAG_TPIDS: Final = frozenset((ETHERTYPE_VLAN, ETHERTYPE_QINQ))


@dataclass(frozen=True, slots=True)
class VlanTag:
    """One 802.1Q tag: priority code point, drop-eligible indicator, VLAN id."""

    vid: int
    pcp: int = 0
    dei: bool = False
    tpid: int = ETHERTYPE_VLAN

    @property
    def tci(self) -> int:
        return (self.pcp << 13) | (int(self.dei) << 12) | self.vid


@dataclass(slots=True)
class EthernetFrame:
    dst: bytes
    src: bytes
    ethertype: int  # of the payload: the inner type when the frame is tagged
    payload: memoryview  # the rest of the frame, padding included (the upper layer knows its own length)
    header_len: int = ETH_HEADER_LEN  # offset of the payload in the parsed buffer
    vlans: tuple[VlanTag, ...] = ()  # outermost first

    @property
    def vlan_id(self) -> int | None:
        """The VLAN id of the outermost tag, or None for an untagged frame."""
        return self.vlans[0].vid if self.vlans else None

    @property
    def pcp(self) -> int | None:
        """The priority code point of the outermost tag, or None for an untagged frame."""
        return self.vlans[0].pcp if self.vlans else None


def parse_ethernet(buf: Buffer) -> EthernetFrame:
    """Read the Ethernet header (and up to two VLAN tags); the payload is a view into ``buf``."""
    n = len(buf)
    if n < ETH_HEADER_LEN:
        raise Truncated("truncated", f"{n} bytes, Ethernet header needs {ETH_HEADER_LEN}")
    dst, src, ethertype = _ETH.unpack_from(buf)
    view = buf if isinstance(buf, memoryview) else memoryview(buf)
    if ethertype not in _TAG_TPIDS:
        return EthernetFrame(dst, src, ethertype, view[ETH_HEADER_LEN:])
    offset = ETH_HEADER_LEN - 2
    tags: list[VlanTag] = []
    while ethertype in _TAG_TPIDS:
        if len(tags) == MAX_VLAN_TAGS:
            raise Illegal("too_many_vlan_tags", f"more than {MAX_VLAN_TAGS} VLAN tags")
        if n < offset + 6:
            raise Truncated("truncated", "VLAN tag runs past the frame")
        tci, inner = _TAG.unpack_from(buf, offset + 2)
        tags.append(VlanTag(tci & 0x0FFF, tci >> 13, bool(tci & 0x1000), ethertype))
        ethertype = inner
        offset += VLAN_TAG_LEN
    header_len = offset + 2
    return EthernetFrame(dst, src, ethertype, view[header_len:], header_len, tuple(tags))


def peek_ethertype(buf: Buffer) -> tuple[int, int]:
    """(ethertype, payload offset) of an untagged frame without building a value (the per-frame fast path).

    A tagged frame answers (TPID, 14): callers that care about VLANs use ``parse_ethernet``.
    """
    if len(buf) < ETH_HEADER_LEN:
        raise Truncated("truncated", f"{len(buf)} bytes, Ethernet header needs {ETH_HEADER_LEN}")
    return _U16.unpack_from(buf, 12)[0], ETH_HEADER_LEN


def emit_ethernet(dst: bytes, src: bytes, ethertype: int, vlans: tuple[VlanTag, ...] = ()) -> bytes:
    """The Ethernet header (with ``vlans``, outermost first) for a payload of type ``ethertype``."""
    if not vlans:
        return _ETH.pack(dst, src, ethertype)
    if len(vlans) > MAX_VLAN_TAGS:
        raise EmitError(f"at most {MAX_VLAN_TAGS} VLAN tags")
    parts = [dst, src]
    for tag in vlans:
        if not 0 <= tag.vid <= 0xFFF or not 0 <= tag.pcp <= 7:
            raise EmitError(f"VLAN tag out of range: {tag}")
        parts.append(_TAG.pack(tag.tpid, tag.tci))
    parts.append(_U16.pack(ethertype))
    return b"".join(parts)


def mac_to_str(mac: bytes) -> str:
    """``b"\\x02\\x00..."`` -> ``"02:00:..."``."""
    return mac.hex(":")


def mac_from_str(text: str) -> bytes:
    """``"02:00:5e:10:00:01"`` (or ``-`` separated) -> 6 bytes; raises ValueError on anything else."""
    parts = text.replace("-", ":").split(":")
    if len(parts) != ETH_ADDR_LEN or not all(len(p) == 2 for p in parts):
        raise ValueError(f"not a MAC address: {text!r}")
    return bytes.fromhex("".join(parts))


def is_multicast_mac(mac: bytes) -> bool:
    """The I/G bit: group (multicast or broadcast) addresses have the low bit of the first byte set."""
    return bool(mac[0] & 1)
