"""TCP header and options (RFC 9293 3.1, RFC 7323, RFC 2018)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wire_fixtures import LINUX_SYN

from tcpchimney.wire import tcp
from tcpchimney.wire.checksum import ones_sum, pseudo_base_sum, pseudo_header_sum
from tcpchimney.wire.errors import ChecksumError, EmitError, Illegal, Malformed, Truncated
from tcpchimney.wire.frame import DeviceFeatures
from tcpchimney.wire.seq import SeqNum
from tcpchimney.wire.tcp import (
    ACK,
    TcpOptions,
    TcpSegment,
    emit_tcp_for_device,
    emit_tcp_header,
    tcp_checksum_ok,
)

SRC, DST = bytes((198, 18, 0, 1)), bytes((198, 18, 0, 2))
PSEUDO = pseudo_base_sum(SRC, DST, 6)
u32 = st.integers(0, 2**32 - 1)
seqs = u32.map(SeqNum)
blocks = st.lists(st.tuples(seqs, seqs), min_size=1, max_size=3).map(tuple)
unknown = st.lists(
    st.tuples(st.sampled_from([6, 7, 14, 28, 30, 34, 253, 254]), st.binary(max_size=4)), max_size=2
).map(tuple)


@st.composite
def options(draw: st.DrawFn) -> TcpOptions:
    o = TcpOptions(
        mss=draw(st.none() | st.integers(0, 0xFFFF)),
        wscale=draw(st.none() | st.integers(0, 14)),
        sack_permitted=draw(st.booleans()),
        unknown=draw(unknown),
    )
    if draw(st.booleans()):
        o.ts_val, o.ts_ecr = draw(u32), draw(u32)
    if len(tcp.encode_options(o)) <= 40 - 28 and draw(st.booleans()):
        o.sack_blocks = draw(blocks.filter(lambda b: len(b) * 8 + 4 + len(tcp.encode_options(o)) <= 40))
    return o


segments = st.builds(
    TcpSegment,
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    seqs,
    seqs,
    st.integers(0, 0xFF),
    st.integers(0, 0xFFFF),
    st.binary(max_size=1500),
    options(),
    st.integers(0, 0xFFFF),
)


def test_parse_linux_syn() -> None:
    data = LINUX_SYN[34:]
    seg = tcp.parse_tcp(data, PSEUDO)
    assert (seg.src_port, seg.dst_port, seg.seq, seg.ack) == (45678, 80, 0x3A1B2C3D, 0)
    assert seg.flags == tcp.SYN and seg.window == 64240 and seg.urgent == 0 and len(seg.payload) == 0
    assert isinstance(seg.seq, SeqNum) and isinstance(seg.ack, SeqNum)
    o = seg.options
    assert (o.mss, o.wscale, o.sack_permitted, o.ts_val, o.ts_ecr) == (1460, 10, True, 2915243155, 0)
    assert o.sack_blocks == () and o.unknown == ()
    # Re-emitted in Linux's order and layout, byte for byte, checksum included.
    assert tcp.emit_tcp_header(seg, PSEUDO) == data
    assert tcp.encode_options(o) == bytes.fromhex("020405b40402080aadc31493000000000103030a")


def test_timestamp_fast_path_and_view() -> None:
    seg = TcpSegment(
        1, 2, SeqNum(10), SeqNum(20), tcp.ACK | tcp.PSH, 500, b"hello", TcpOptions(ts_val=7, ts_ecr=9)
    )
    header = tcp.emit_tcp_header(seg, PSEUDO)
    assert len(header) == 32 and header[20:24] == b"\x01\x01\x08\x0a"
    wire = bytearray(header + b"hello")
    parsed = tcp.parse_tcp(wire, PSEUDO)
    assert parsed == seg  # payload compares by content
    assert isinstance(parsed.payload, memoryview) and parsed.payload.obj is wire  # a view, not a copy


@given(segments)
def test_round_trip(seg: TcpSegment) -> None:
    wire = tcp.emit_tcp(seg, PSEUDO)
    assert tcp.tcp_checksum_ok(wire, PSEUDO)
    parsed = tcp.parse_tcp(wire, PSEUDO)
    fields = ("src_port", "dst_port", "seq", "ack", "flags", "window", "urgent")
    assert [getattr(parsed, f) for f in fields] == [getattr(seg, f) for f in fields]
    assert bytes(parsed.payload) == bytes(seg.payload)
    assert parsed.options == seg.options
    assert tcp.emit_tcp(parsed, PSEUDO) == wire


@given(segments)
def test_csum_partial_holds_pseudo_sum(seg: TcpSegment) -> None:
    header = tcp.emit_tcp_header(seg, PSEUDO, csum_partial=True)
    total = len(header) + len(seg.payload)
    field = struct.unpack_from("!H", header, tcp.TCP_CSUM_OFFSET)[0]
    assert field == pseudo_header_sum(SRC, DST, 6, total)
    # What a device does with NEEDS_CSUM: sum from csum_start to the end, store the complement.
    completed = bytearray(header + bytes(seg.payload))
    completed[16:18] = (~ones_sum(completed) & 0xFFFF).to_bytes(2, "big")
    assert bytes(completed) == tcp.emit_tcp(seg, PSEUDO)
    assert struct.unpack_from("!H", tcp.emit_tcp_header(seg), tcp.TCP_CSUM_OFFSET)[0] == 0


def test_option_parsing_details() -> None:
    raw = bytes.fromhex("010104020101050a0000000a00000014fe0401020000")  # SACK-perm, 1 block, exp, EOL
    o = tcp.parse_options(raw)
    assert o.sack_permitted and o.sack_blocks == ((SeqNum(10), SeqNum(20)),)
    assert o.unknown == ((254, b"\x01\x02"),)
    # A known kind with the wrong length is skipped by its length and kept (Linux ignores it).
    assert tcp.parse_options(bytes.fromhex("0203050000000000")).unknown == ((2, b"\x05"),)
    assert tcp.parse_options(bytes.fromhex("0203050000000000")).mss is None
    # Everything after EOL is ignored, even garbage.
    assert tcp.parse_options(bytes.fromhex("00ff")) == TcpOptions()


def _segment_with_options(raw: bytes) -> bytes:
    header = struct.pack("!HHIIBBHHH", 1, 2, 3, 4, ((20 + len(raw)) // 4) << 4, tcp.ACK, 100, 0, 0)
    return header + raw


@pytest.mark.parametrize(
    "raw",
    [bytes.fromhex("0205"), bytes.fromhex("08"), bytes.fromhex("010101fe"), bytes.fromhex("0201000000000000"),
     bytes.fromhex("080a00000000000000000000")[:8], bytes.fromhex("fe09000000000000")],
)  # fmt: skip
def test_malformed_options(raw: bytes) -> None:
    raw += bytes(-len(raw) % 4)
    with pytest.raises(Malformed) as err:
        tcp.parse_tcp(_segment_with_options(raw))
    assert err.value.reason == "bad_options"


def test_header_errors() -> None:
    good = tcp.emit_tcp(TcpSegment(1, 2, SeqNum(3), SeqNum(4), tcp.ACK, 100, b"data"), PSEUDO)
    with pytest.raises(Truncated):
        tcp.parse_tcp(good[:19])
    low = bytearray(good)
    low[12] = 4 << 4
    with pytest.raises(Illegal) as illegal:
        tcp.parse_tcp(low)
    assert illegal.value.reason == "bad_data_offset"
    beyond = bytearray(good)
    beyond[12] = 7 << 4  # 28 bytes of header in a 24-byte segment
    with pytest.raises(Truncated):
        tcp.parse_tcp(beyond)
    corrupt = bytearray(good)
    corrupt[-1] ^= 0x40
    with pytest.raises(ChecksumError) as bad:
        tcp.parse_tcp(corrupt, PSEUDO)
    assert bad.value.reason == "bad_checksum"
    assert bytes(tcp.parse_tcp(corrupt).payload) == b"dat!"  # not verified when the caller says so
    assert not tcp.tcp_checksum_ok(corrupt, PSEUDO)


def test_emit_errors() -> None:
    too_many = TcpOptions(mss=1460, ts_val=1, sack_blocks=((SeqNum(1), SeqNum(2)),) * 3)
    with pytest.raises(EmitError):
        tcp.encode_options(too_many)
    with pytest.raises(EmitError):
        tcp.emit_tcp_header(TcpSegment(1, 2, SeqNum(3), SeqNum(4), tcp.ACK, 70000, b""))
    with pytest.raises(EmitError):
        tcp.emit_tcp_header(TcpSegment(1, 2, SeqNum(3), SeqNum(4), tcp.ACK, 1, b"", TcpOptions(ts_val=2**32)))


def test_seg_len() -> None:
    assert TcpSegment(1, 2, SeqNum(0), SeqNum(0), tcp.SYN | tcp.FIN, 0, b"abc").seg_len == 5


def _data_segment(payload_len: int, sack: bool) -> TcpSegment:
    opts = TcpOptions(ts_val=1, ts_ecr=2)
    if sack:
        opts.sack_blocks = ((SeqNum(10), SeqNum(20)),)
    return TcpSegment(1, 2, SeqNum(100), SeqNum(200), ACK, 1000, b"x" * payload_len, opts)


@pytest.mark.parametrize(
    ("features", "payload", "sack", "want_partial", "want_gso"),
    [
        (DeviceFeatures(), 4000, False, False, 0),  # no offload: full checksum, never a super-segment
        (DeviceFeatures(tx_csum=True), 4000, False, True, 0),
        (DeviceFeatures(tx_csum=True, tso=True), 1448, False, True, 0),  # exactly one wire segment
        (DeviceFeatures(tx_csum=True, tso=True), 1449, False, True, 1448),
        (DeviceFeatures(tx_csum=True, tso=True), 1448, True, True, 1436),  # SACK blocks shrink each piece
        (DeviceFeatures(tso=True), 1000, False, False, 0),  # TSO alone, one segment: full checksum
    ],
)
def test_emit_for_device_decides_super_segment_and_checksum_from_the_header(
    features: DeviceFeatures, payload: int, sack: bool, want_partial: bool, want_gso: int
) -> None:
    seg = _data_segment(payload, sack)
    base = pseudo_base_sum(bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 6)
    header, partial, gso = emit_tcp_for_device(seg, base, 1460, features)
    assert (partial, gso) == (want_partial, want_gso)
    assert header == emit_tcp_header(seg, base, partial)
    if not partial:
        assert tcp_checksum_ok(header + seg.payload, base)
