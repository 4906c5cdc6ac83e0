"""Software TSO and checksum completion: what a NIC does to a frame before it goes on a real wire.

A stack with ``DeviceFeatures(tso=True)`` hands over TCP super-segments (``Frame.gso_size`` > 0) whose
checksum field holds only the pseudo-header sum (``csum_partial``); with ``tx_csum=True`` even ordinary
frames leave the checksum to the device. On a simulated Ethernet without offloads
(``SimLink(offloads=False)``), and whenever a capture must show the real wire, this module finishes that
work as Linux ``tcp_gso_segment`` and ``skb_checksum_help`` do:

- ``segment`` cuts the payload into ``gso_size`` pieces; each piece gets a copy of the headers with the IP
  total length, IP ID (incremented per piece, as Linux does without ``TSO_MANGLEID``) and IP header checksum
  rewritten, the TCP sequence number advanced, FIN and PSH only on the last piece, CWR only on the first, and
  its full TCP checksum.
- ``complete_checksum`` folds the payload sum into the pseudo-header sum left in the L4 checksum field.

Sums run in C through ``wire.checksum`` (big-integer conversion), never byte by byte in Python. Payload
pieces are views into the original buffer: nothing is copied until the frame is joined for the wire.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from tcpchimney.wire.checksum import internet_checksum, l4_checksum, pseudo_header_sum
from tcpchimney.wire.errors import EmitError
from tcpchimney.wire.ethernet import ETH_HEADER_LEN, ETHERTYPE_IPV4, ETHERTYPE_QINQ, ETHERTYPE_VLAN
from tcpchimney.wire.frame import Frame
from tcpchimney.wire.ipv4 import IPV4_HEADER_LEN, PROTO_TCP, PROTO_UDP
from tcpchimney.wire.tcp import CWR, FIN, PSH, TCP_CSUM_OFFSET, TCP_HEADER_LEN

Buffer = bytes | bytearray | memoryview

UDP_HEADER_LEN: Final = 8
UDP_CSUM_OFFSET: Final = 6
_CSUM_OFFSET: Final = {PROTO_TCP: TCP_CSUM_OFFSET, PROTO_UDP: UDP_CSUM_OFFSET}
_VLAN_TPIDS: Final = (ETHERTYPE_VLAN, ETHERTYPE_QINQ)
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_NOT_LAST: Final = ~(FIN | PSH) & 0xFF  # RFC 9293: FIN and PSH belong to the last byte sent
_NOT_FIRST: Final = ~CWR & 0xFF  # RFC 3168 6.1.2: CWR only on the first segment after the window cut


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where the layers of an Ethernet/IPv4/L4 frame start, and its L4 payload (a view, padding cut off)."""

    l3: int  # offset of the IPv4 header (past the Ethernet header and any VLAN tags)
    l4: int  # offset of the L4 header
    end: int  # offset of the L4 payload (the end of all headers)
    proto: int
    headers: bytes  # the frame's bytes up to ``end``
    payload: Buffer  # the L4 payload as the IP total length counts it


def _ip_offset(head: Buffer) -> int:
    """Offset of the IPv4 header past the Ethernet header and up to two VLAN tags; EmitError if not IPv4."""
    l3 = ETH_HEADER_LEN
    ethertype = _U16.unpack_from(head, l3 - 2)[0] if len(head) >= l3 else -1
    for _ in range(2):
        if ethertype not in _VLAN_TPIDS or len(head) < l3 + 4:
            break
        l3 += 4
        ethertype = _U16.unpack_from(head, l3 - 2)[0]
    if ethertype != ETHERTYPE_IPV4 or len(head) < l3 + IPV4_HEADER_LEN:
        raise EmitError("offload_not_ipv4: checksum and segmentation offloads need an IPv4 frame")
    return l3


def _layout(frame: Frame) -> _Layout:
    head: Buffer = frame.headers
    payload: Buffer = frame.payload
    l3 = _ip_offset(head)
    ihl = (head[l3] & 0x0F) << 2
    total_len = _U16.unpack_from(head, l3 + 2)[0]
    proto = head[l3 + 9]
    l4 = l3 + ihl
    if proto == PROTO_TCP:
        if len(head) < l4 + TCP_HEADER_LEN:
            head, payload = frame.tobytes(), b""  # the TCP header is split between the parts: join once
            if len(head) < l4 + TCP_HEADER_LEN:
                raise EmitError("offload_truncated: the frame ends inside the TCP header")
        end = l4 + ((head[l4 + 12] >> 4) << 2)
    elif proto == PROTO_UDP:
        end = l4 + UDP_HEADER_LEN
    else:
        raise EmitError(f"offload_not_l4: no checksum offload for IP protocol {proto}")
    if ihl < IPV4_HEADER_LEN or end - l4 < UDP_HEADER_LEN or len(frame) < end:
        raise EmitError("offload_bad_header: IPv4 or L4 header length out of range")
    if len(head) != end:
        # The headers part does not end where the L4 header does (a received or joined frame): take the
        # payload as a view of the whole frame, copying only when it is split in two.
        whole = memoryview(frame.tobytes() if payload else head)
        head, payload = whole[:end], whole[end:]
    payload_len = total_len - (end - l3)
    if payload_len < 0 or payload_len > len(payload):
        raise EmitError(f"offload_bad_length: IP total length {total_len} does not match the frame")
    if payload_len < len(payload):
        payload = memoryview(payload)[:payload_len]  # Ethernet padding is not part of the datagram
    return _Layout(l3, l4, end, proto, bytes(head), payload)


def complete_checksum(frame: Frame) -> Frame:
    """``frame`` with its L4 checksum completed when it is ``csum_partial``; other frames come back as is.

    The checksum field of a NEEDS_CSUM frame holds the folded pseudo-header sum, so the checksum is the
    complement of the sum over the whole L4 message with the field as it stands (virtio-net 5.1.6.2).
    """
    if not frame.csum_partial:
        return frame
    lay = _layout(frame)
    field = lay.l4 + _CSUM_OFFSET[lay.proto]
    csum = l4_checksum(0, memoryview(lay.headers)[lay.l4 :], lay.payload)
    if lay.proto == PROTO_UDP and csum == 0:
        csum = 0xFFFF  # RFC 768: a computed zero is sent as all ones (zero means "no checksum")
    headers = bytearray(lay.headers)
    _U16.pack_into(headers, field, csum)
    return Frame(bytes(headers), lay.payload, False, False, frame.gso_size)


def segment(frame: Frame, mtu: int) -> list[Frame]:
    """Cut a TCP/IPv4 super-segment into wire frames of at most ``gso_size`` payload bytes each.

    Frames without ``gso_size`` pass through (checksum completed when ``csum_partial``). Raises ``EmitError``
    when the frame is not TCP over IPv4 or a piece's IP datagram would exceed ``mtu`` (Linux drops such a
    packet rather than send it: ``skb_gso_validate_network_len``).
    """
    if not frame.gso_size:
        return [complete_checksum(frame)]
    lay = _layout(frame)
    if lay.proto != PROTO_TCP:
        raise EmitError(f"gso_not_tcp: software segmentation of IP protocol {lay.proto} is not supported")
    mss = frame.gso_size
    hdr_len = lay.end - lay.l3  # IP + TCP headers
    if hdr_len + min(mss, len(lay.payload)) > mtu:
        raise EmitError(f"gso_exceeds_mtu: {hdr_len} header bytes + gso_size {mss} > MTU {mtu}")
    payload = lay.payload
    if len(payload) <= mss and not frame.csum_partial:
        return [Frame(lay.headers, payload)]
    view = payload if isinstance(payload, memoryview) else memoryview(payload)
    starts = range(0, max(len(view), 1), mss)
    last = len(starts) - 1
    return [_piece(lay, view[start : start + mss], start, i, i == last) for i, start in enumerate(starts)]


def _piece(lay: _Layout, data: memoryview, offset: int, index: int, last: bool) -> Frame:
    """Wire frame number ``index`` of the super-segment: the headers copied and fixed for ``data``, which
    starts ``offset`` bytes into the payload."""
    h = bytearray(lay.headers)
    l3, l4 = lay.l3, lay.l4
    _U16.pack_into(h, l3 + 2, lay.end - l3 + len(data))
    _U16.pack_into(h, l3 + 4, (_U16.unpack_from(h, l3 + 4)[0] + index) & 0xFFFF)
    _U16.pack_into(h, l3 + 10, 0)
    _U16.pack_into(h, l3 + 10, internet_checksum(memoryview(h)[l3:l4]))
    seq = _U32.unpack_from(h, l4 + 4)[0]
    _U32.pack_into(h, l4 + 4, (seq + offset) & 0xFFFFFFFF)
    flags = h[l4 + 13]
    if not last:
        flags &= _NOT_LAST
    if index:
        flags &= _NOT_FIRST
    h[l4 + 13] = flags
    tcp_len = len(h) - l4 + len(data)
    _U16.pack_into(h, l4 + TCP_CSUM_OFFSET, 0)
    pseudo = pseudo_header_sum(bytes(h[l3 + 12 : l3 + 16]), bytes(h[l3 + 16 : l3 + 20]), PROTO_TCP, tcp_len)
    _U16.pack_into(h, l4 + TCP_CSUM_OFFSET, l4_checksum(pseudo, memoryview(h)[l4:], data))
    return Frame(bytes(h), data)
