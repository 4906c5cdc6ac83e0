"""The virtio-net header (``struct virtio_net_hdr``, virtio spec 5.1.6) that a TAP device opened with
IFF_VNET_HDR puts before every frame, in both directions.

Layout, little-endian: ``flags`` u8, ``gso_type`` u8, ``hdr_len``, ``gso_size``, ``csum_start``,
``csum_offset`` u16 = 10 bytes, plus ``num_buffers`` u16 when the header size is set to 12.

On receive the header becomes ``Frame`` fields: NEEDS_CSUM -> ``csum_partial``, DATA_VALID -> ``csum_valid``,
GSO TCPV4 -> ``gso_size``. A header whose fields make no sense raises ``Illegal``/``Truncated`` with a stable
``reason``, so the device counts and drops the frame. On transmit, ``tx_header`` derives the header from the
frame's own Ethernet/IPv4/TCP headers; the few distinct header values are computed once and cached.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Final

from tcpchimney.wire.errors import EmitError, Illegal, Truncated
from tcpchimney.wire.frame import Frame

Buffer = bytes | bytearray | memoryview

VNET_HDR_LEN: Final = 10
VNET_HDR_MRG_LEN: Final = 12  # with num_buffers (VIRTIO_NET_F_MRG_RXBUF layout)

# flags
NEEDS_CSUM: Final = 0x01
DATA_VALID: Final = 0x02
_KNOWN_FLAGS: Final = NEEDS_CSUM | DATA_VALID

# gso_type
GSO_NONE: Final = 0
GSO_TCPV4: Final = 1
GSO_UDP: Final = 3
GSO_TCPV6: Final = 4
GSO_UDP_L4: Final = 5
GSO_ECN: Final = 0x80
_KNOWN_GSO: Final = frozenset((GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4))

ETH_HLEN: Final = 14
_VLAN_TPIDS: Final = (b"\x81\x00", b"\x88\xa8")
_IPPROTO_TCP: Final = 6
_IPPROTO_UDP: Final = 17
_CSUM_OFFSET: Final = {_IPPROTO_TCP: 16, _IPPROTO_UDP: 6}  # where the L4 checksum field sits

_HDR = struct.Struct("<BBHHHH")
_HDR_MRG = struct.Struct("<BBHHHHH")


@dataclass(frozen=True, slots=True)
class VnetHeader:
    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0  # Ethernet + IP + TCP header bytes of a GSO frame (a hint on receive)
    gso_size: int = 0  # payload bytes per segment of a GSO frame
    csum_start: int = 0  # offset of the L4 header, where the checksum sum starts (NEEDS_CSUM)
    csum_offset: int = 0  # offset of the checksum field from csum_start (NEEDS_CSUM)


def emit_vnet(hdr: VnetHeader, size: int = VNET_HDR_LEN) -> bytes:
    if size == VNET_HDR_LEN:
        return _HDR.pack(hdr.flags, hdr.gso_type, hdr.hdr_len, hdr.gso_size, hdr.csum_start, hdr.csum_offset)
    if size == VNET_HDR_MRG_LEN:
        return _HDR_MRG.pack(
            hdr.flags, hdr.gso_type, hdr.hdr_len, hdr.gso_size, hdr.csum_start, hdr.csum_offset, 0
        )
    raise EmitError(f"vnet_header_size: a virtio-net header is 10 or 12 bytes, not {size}")


def parse_vnet(buf: Buffer, size: int = VNET_HDR_LEN) -> VnetHeader:
    """The header at the start of ``buf`` (header + frame), validated against the frame that follows."""
    if len(buf) < size:
        raise Truncated("vnet_truncated", f"{len(buf)} bytes, header is {size}")
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = _HDR.unpack_from(buf)
    _validate(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, len(buf) - size)
    return VnetHeader(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def frame_from_read(buf: bytes, size: int = VNET_HDR_LEN) -> Frame:
    """What a TAP read returned (header + frame) as a ``Frame`` with its offload flags; the hot receive path.

    Raises ``Truncated``/``Illegal`` (with ``reason``) for a header that makes no sense.
    """
    if len(buf) < size:
        raise Truncated("vnet_truncated", f"{len(buf)} bytes, header is {size}")
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = _HDR.unpack_from(buf)
    frame = memoryview(buf)[size:]
    if flags or gso_type or gso_size:  # a plain frame (most small ones) needs no further check
        _validate(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, len(frame))
    return Frame(frame, b"", bool(flags & NEEDS_CSUM), bool(flags & DATA_VALID), gso_size)


def _validate(
    flags: int, gso_type: int, hdr_len: int, gso_size: int, csum_start: int, csum_offset: int, frame_len: int
) -> None:
    if flags & ~_KNOWN_FLAGS:
        raise Illegal("vnet_unknown_flags", f"flags {flags:#x}")
    if flags == NEEDS_CSUM | DATA_VALID:
        raise Illegal("vnet_csum_flags_conflict", "NEEDS_CSUM and DATA_VALID together")
    if gso_type & GSO_ECN:
        # TUN_F_TSO_ECN is never negotiated, so the kernel must not hand over ECN-marked GSO frames.
        raise Illegal("vnet_gso_ecn", f"gso_type {gso_type:#x}")
    if gso_type not in _KNOWN_GSO:
        raise Illegal("vnet_gso_type_unknown", f"gso_type {gso_type}")
    if gso_type not in (GSO_NONE, GSO_TCPV4):
        raise Illegal("vnet_gso_type_unsupported", f"gso_type {gso_type} was not negotiated")
    if gso_type == GSO_NONE:
        if gso_size:
            raise Illegal("vnet_gso_size_without_type", f"gso_size {gso_size} with gso_type NONE")
    else:
        if not flags & NEEDS_CSUM:
            raise Illegal("vnet_gso_without_csum", "a GSO frame must carry NEEDS_CSUM")
        if gso_size == 0:
            raise Illegal("vnet_gso_size_zero", "gso_type TCPV4 with gso_size 0")
        if hdr_len > frame_len:
            raise Illegal("vnet_hdr_len_beyond_frame", f"hdr_len {hdr_len} > frame {frame_len}")
    if flags & NEEDS_CSUM:
        if csum_start < ETH_HLEN:
            raise Illegal("vnet_csum_start_in_ethernet", f"csum_start {csum_start}")
        if csum_start + csum_offset + 2 > frame_len:
            raise Illegal(
                "vnet_csum_beyond_frame",
                f"csum_start {csum_start} + offset {csum_offset} > frame {frame_len}",
            )


# ---------------------------------------------------------------------------------------------- transmit


@cache
def plain_header(size: int = VNET_HDR_LEN) -> bytes:
    """The header of a frame without offloads (ARP, or a frame whose checksums are complete)."""
    return emit_vnet(VnetHeader(), size)


@cache
def data_valid_header(size: int = VNET_HDR_LEN) -> bytes:
    return emit_vnet(VnetHeader(flags=DATA_VALID), size)


@lru_cache(maxsize=1024)
def csum_partial_header(
    l3_offset: int, ip_header_len: int, proto: int = _IPPROTO_TCP, size: int = 10
) -> bytes:
    """NEEDS_CSUM for a TCP (or UDP) frame: the device completes the L4 checksum."""
    csum_start = l3_offset + ip_header_len
    return emit_vnet(VnetHeader(NEEDS_CSUM, GSO_NONE, 0, 0, csum_start, _CSUM_OFFSET[proto]), size)


@lru_cache(maxsize=1024)
def tso_header(mss: int, l3_offset: int, ip_header_len: int, tcp_header_len: int, size: int = 10) -> bytes:
    """NEEDS_CSUM + GSO TCPV4: the device cuts the payload into ``mss`` pieces and completes checksums."""
    csum_start = l3_offset + ip_header_len
    hdr = VnetHeader(NEEDS_CSUM, GSO_TCPV4, csum_start + tcp_header_len, mss, csum_start, 16)
    return emit_vnet(hdr, size)


def tx_header(frame: Frame, size: int = VNET_HDR_LEN) -> bytes:
    """The header to write before ``frame``; raises ``EmitError`` for offload flags the frame cannot carry."""
    if not frame.csum_partial:
        if frame.gso_size:
            raise EmitError("vnet_gso_without_csum: a frame with gso_size must be csum_partial")
        return data_valid_header(size) if frame.csum_valid else plain_header(size)
    h = frame.headers
    l3 = ETH_HLEN
    while h[l3 - 2 : l3] in _VLAN_TPIDS:
        l3 += 4
    if len(h) < l3 + 20 or h[l3 - 2 : l3] != b"\x08\x00":
        raise EmitError("vnet_csum_not_ipv4: csum_partial needs an IPv4 header in the frame headers")
    ip_header_len = (h[l3] & 0x0F) * 4
    proto = h[l3 + 9]
    if frame.gso_size:
        if proto != _IPPROTO_TCP or len(h) < l3 + ip_header_len + 13:
            raise EmitError("vnet_gso_not_tcp: gso_size needs the whole TCP header in the frame headers")
        tcp_header_len = (h[l3 + ip_header_len + 12] >> 4) * 4
        if len(frame) - (l3 + ip_header_len + tcp_header_len) > frame.gso_size:
            return tso_header(frame.gso_size, l3, ip_header_len, tcp_header_len, size)
        # Not more than one segment: an ordinary frame (virtio spec 5.1.6.2: GSO only above gso_size).
    elif proto not in _CSUM_OFFSET:
        raise EmitError(f"vnet_csum_not_l4: no checksum offload for IP protocol {proto}")
    return csum_partial_header(l3, ip_header_len, proto, size)
