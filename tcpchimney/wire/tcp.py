"""TCP header and options (RFC 9293 section 3.1, RFC 7323, RFC 2018).

``TcpSegment`` is the validated value form exchanged between the host stack and the TCP engine. The
engine never sees IP; the host stack adds addresses. ``payload`` is a view into the received frame (no copy).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

from tcpchimney.wire.checksum import fold, ones_sum
from tcpchimney.wire.errors import ChecksumError, EmitError, Illegal, Malformed, Truncated
from tcpchimney.wire.frame import DeviceFeatures
from tcpchimney.wire.seq import SeqNum

Buffer = bytes | bytearray | memoryview

# Control bits (RFC 9293 3.1)
FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80

# Option kinds
OPT_EOL = 0
OPT_NOP = 1
OPT_MSS = 2
OPT_WSCALE = 3
OPT_SACK_PERM = 4
OPT_SACK = 5
OPT_TIMESTAMP = 8


@dataclass(slots=True)
class TcpOptions:
    mss: int | None = None
    wscale: int | None = None
    sack_permitted: bool = False
    sack_blocks: tuple[tuple[SeqNum, SeqNum], ...] = ()  # (left edge, right edge) pairs
    ts_val: int | None = None  # set together with ts_ecr when the timestamp option is present
    ts_ecr: int = 0
    unknown: tuple[tuple[int, bytes], ...] = ()  # (kind, data) of options we skip but keep for re-emit


@dataclass(slots=True)
class TcpSegment:
    src_port: int
    dst_port: int
    seq: SeqNum
    ack: SeqNum
    flags: int
    window: int  # raw 16-bit field, NOT scaled
    payload: bytes | bytearray | memoryview = b""
    options: TcpOptions = field(default_factory=TcpOptions)
    urgent: int = 0

    @property
    def seg_len(self) -> int:
        """SEG.LEN: payload length plus one for each of SYN and FIN (RFC 9293 3.3.1)."""
        return len(self.payload) + (1 if self.flags & SYN else 0) + (1 if self.flags & FIN else 0)


# ---------------------------------------------------------------------------------------------- codec

TCP_HEADER_LEN: Final = 20
TCP_MAX_OPTIONS_LEN: Final = 40
TCP_CSUM_OFFSET: Final = 16  # virtio-net csum_offset for TCP

_TCP = struct.Struct("!HHIIBBHHH")
_TCP_TS = struct.Struct("!HHIIBBHHHIII")  # header + NOP NOP TS(10): the common established-state layout
_U32X3 = struct.Struct("!III")
_II = struct.Struct("!II")
_TS_LEAD: Final = 0x0101080A  # NOP, NOP, kind 8, length 10 (RFC 7323 appendix A layout)
_TS_SACK_LEAD: Final = 0x0402080A  # SACK-permitted then TS, as Linux puts them in a SYN
_OFF_TS: Final = 8 << 4  # data offset 32 bytes
_new_int = int.__new__
_from_bytes = int.from_bytes


def parse_tcp(buf: Buffer, pseudo_base: int | None = None) -> TcpSegment:
    """Read a TCP segment (header and payload: the whole IP payload); the payload is a view into ``buf``.

    ``pseudo_base`` is ``checksum.pseudo_base_sum(src, dst, PROTO_TCP)``: when given, the checksum is verified
    (the TCP length is added here). Leave it None when the device vouched for the checksum (DATA_VALID) or the
    frame is csum_partial. Raises ``Truncated``, ``ChecksumError``, ``Illegal`` (data offset < 5) or
    ``Malformed`` (options that run past the header).
    """
    n = len(buf)
    if n < TCP_HEADER_LEN:
        raise Truncated("truncated", f"TCP segment of {n} bytes")
    if pseudo_base is not None and ones_sum(buf, pseudo_base + n) != 0xFFFF:
        raise ChecksumError("bad_checksum", "TCP checksum")
    view = buf if isinstance(buf, memoryview) else memoryview(buf)
    if n >= 32:
        sport, dport, seq, ack, off, flags, window, _c, urgent, lead, tsv, tse = _TCP_TS.unpack_from(view)
        if off == _OFF_TS and lead == _TS_LEAD:  # fast path: a segment with only the timestamp option
            return TcpSegment(
                sport, dport, _new_int(SeqNum, seq), _new_int(SeqNum, ack), flags, window,
                view[32:], TcpOptions(ts_val=tsv, ts_ecr=tse), urgent,
            )  # fmt: skip
    else:
        sport, dport, seq, ack, off, flags, window, _c, urgent = _TCP.unpack_from(view)
    data_offset = (off >> 4) << 2
    if data_offset < TCP_HEADER_LEN:
        raise Illegal("bad_data_offset", f"data offset {data_offset >> 2} < 5")
    if data_offset > n:
        raise Truncated("truncated", f"data offset {data_offset} beyond {n} bytes")
    opts = parse_options(bytes(view[TCP_HEADER_LEN:data_offset])) if data_offset > 20 else TcpOptions()
    return TcpSegment(
        sport, dport, _new_int(SeqNum, seq), _new_int(SeqNum, ack), flags, window,
        view[data_offset:], opts, urgent,
    )  # fmt: skip


def parse_options(raw: bytes) -> TcpOptions:
    """The TCP option list (RFC 9293 3.2): EOL ends it, NOP is one byte, any other option is kind/length/data
    with a length of at least 2 that stays inside the header, else ``Malformed``. Known options with a wrong
    length and unknown kinds are skipped by their length and kept in ``unknown`` (Linux ignores both)."""
    opts = TcpOptions()
    unknown: list[tuple[int, bytes]] = []
    i = 0
    n = len(raw)
    while i < n:
        kind = raw[i]
        if kind == OPT_EOL:
            break
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= n:
            raise Malformed("bad_options", f"TCP option kind {kind} at {i} has no length byte")
        length = raw[i + 1]
        if length < 2 or i + length > n:
            raise Malformed(
                "bad_options", f"TCP option kind {kind} (length {length}) at {i} runs past the header"
            )
        if kind == OPT_TIMESTAMP and length == 10:
            opts.ts_val, opts.ts_ecr = _II.unpack_from(raw, i + 2)
        elif kind == OPT_MSS and length == 4:
            opts.mss = (raw[i + 2] << 8) | raw[i + 3]
        elif kind == OPT_WSCALE and length == 3:
            opts.wscale = raw[i + 2]
        elif kind == OPT_SACK_PERM and length == 2:
            opts.sack_permitted = True
        elif kind == OPT_SACK and length >= 10 and (length - 2) % 8 == 0:
            edges = struct.unpack_from(f"!{(length - 2) >> 2}I", raw, i + 2)
            opts.sack_blocks = tuple(
                (_new_int(SeqNum, edges[j]), _new_int(SeqNum, edges[j + 1])) for j in range(0, len(edges), 2)
            )
        else:
            unknown.append((kind, raw[i + 2 : i + length]))
        i += length
    if unknown:
        opts.unknown = tuple(unknown)
    return opts


def encode_options(opts: TcpOptions) -> bytes:
    """Options in the order and layout Linux writes them (``tcp_options_write``): MSS; SACK-permitted and
    timestamps together (4,2,8,10) or NOP NOP TS; NOP NOP SACK-permitted without timestamps; NOP wscale;
    NOP NOP SACK blocks; then any ``unknown`` options; NOP padding to a multiple of 4 bytes."""
    parts: list[bytes] = []
    if opts.mss is not None:
        parts.append(struct.pack("!BBH", OPT_MSS, 4, opts.mss))
    if opts.ts_val is not None:
        lead = _TS_SACK_LEAD if opts.sack_permitted else _TS_LEAD
        parts.append(_U32X3.pack(lead, opts.ts_val, opts.ts_ecr))
    elif opts.sack_permitted:
        parts.append(b"\x01\x01\x04\x02")
    if opts.wscale is not None:
        parts.append(bytes((OPT_NOP, OPT_WSCALE, 3, opts.wscale)))
    if opts.sack_blocks:
        parts.append(bytes((OPT_NOP, OPT_NOP, OPT_SACK, 2 + 8 * len(opts.sack_blocks))))
        parts.append(struct.pack(f"!{2 * len(opts.sack_blocks)}I", *(e for b in opts.sack_blocks for e in b)))
    for kind, data in opts.unknown:
        parts.append(bytes((kind, len(data) + 2)) + data)
    out = b"".join(parts)
    if len(out) & 3:
        out += b"\x01" * (-len(out) & 3)
    if len(out) > TCP_MAX_OPTIONS_LEN:
        raise EmitError(f"TCP options take {len(out)} bytes, at most {TCP_MAX_OPTIONS_LEN} fit")
    return out


def emit_tcp_header(seg: TcpSegment, pseudo_base: int | None = None, csum_partial: bool = False) -> bytes:
    """The TCP header of ``seg`` (options included); the payload stays separate (``seg.payload``).

    The checksum field holds:
    - with ``pseudo_base`` (``checksum.pseudo_base_sum(src, dst, PROTO_TCP)``): the full checksum over
      pseudo-header, header and payload, summed over the payload view without copying it;
    - with ``csum_partial`` as well: only the folded pseudo-header sum over the whole TCP length, for a device
      that completes it (virtio NEEDS_CSUM, csum_offset ``TCP_CSUM_OFFSET``);
    - without ``pseudo_base``: zero, for the caller to fill.
    """
    o = seg.options
    payload = seg.payload
    seq = int(seg.seq)
    ack = int(seg.ack)
    try:
        if (
            o.ts_val is not None
            and o.mss is None
            and o.wscale is None
            and not o.sack_permitted
            and not o.sack_blocks
            and not o.unknown
        ):
            # Fast path: NOP NOP TS is the only option of nearly every established-state segment.
            if pseudo_base is None:
                csum = 0
            else:
                total = pseudo_base + 32 + len(payload)
                if csum_partial:
                    csum = fold(total)
                else:
                    total += (
                        seg.src_port + seg.dst_port + seq + ack + (_OFF_TS << 8) + seg.flags + seg.window
                        + seg.urgent + _TS_LEAD + o.ts_val + o.ts_ecr
                    )  # fmt: skip
                    csum = ~(ones_sum(payload, total) if payload else fold(total)) & 0xFFFF
            return _TCP_TS.pack(
                seg.src_port, seg.dst_port, seq, ack, _OFF_TS, seg.flags, seg.window, csum, seg.urgent,
                _TS_LEAD, o.ts_val, o.ts_ecr,
            )  # fmt: skip
        options = encode_options(o)
        header_len = TCP_HEADER_LEN + len(options)
        off = (header_len >> 2) << 4
        if pseudo_base is None:
            csum = 0
        else:
            total = pseudo_base + header_len + len(payload)
            if csum_partial:
                csum = fold(total)
            else:
                total += (
                    seg.src_port + seg.dst_port + seq + ack + (off << 8) + seg.flags + seg.window + seg.urgent
                    + _from_bytes(options, "big")
                )  # fmt: skip
                csum = ~(ones_sum(payload, total) if payload else fold(total)) & 0xFFFF
        head = _TCP.pack(seg.src_port, seg.dst_port, seq, ack, off, seg.flags, seg.window, csum, seg.urgent)
    except struct.error as err:
        raise EmitError(f"TCP header field out of range: {err}") from None
    return head + options if options else head


def emit_tcp_for_device(
    seg: TcpSegment, pseudo_base: int, gso_mss: int, features: DeviceFeatures
) -> tuple[bytes, bool, int]:
    """The header of ``seg`` as a device will send it: ``(header, csum_partial, gso_size)``.

    With TSO, a payload larger than one wire segment leaves as a super-segment cut into pieces of
    ``gso_mss`` less the options (they repeat in every piece); with checksum offload the sum is left to the
    device (NEEDS_CSUM), otherwise the header carries the full checksum over the payload.
    """
    if not (features.tso or features.tx_csum):
        return emit_tcp_header(seg, pseudo_base), False, 0
    header = emit_tcp_header(seg, pseudo_base, True)
    piece = gso_mss - (len(header) - TCP_HEADER_LEN)
    if features.tso and len(seg.payload) > piece:
        return header, True, piece
    if features.tx_csum:
        return header, True, 0
    return emit_tcp_header(seg, pseudo_base), False, 0  # TSO without checksum offload, one wire segment


def emit_tcp(seg: TcpSegment, pseudo_base: int | None = None) -> bytes:
    """Header and payload as one ``bytes`` (copies the payload: for tests, RSTs and other rare segments)."""
    return emit_tcp_header(seg, pseudo_base) + bytes(seg.payload)


def tcp_checksum_ok(buf: Buffer, pseudo_base: int) -> bool:
    """True when the whole TCP segment ``buf`` verifies against the pseudo-header base sum."""
    return ones_sum(buf, pseudo_base + len(buf)) == 0xFFFF
