"""The virtio-net header codec: round trips, the Frame mapping, every refused header, the transmit headers."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcpchimney.wire import vnet
from tcpchimney.wire.errors import EmitError, Illegal, Truncated
from tcpchimney.wire.ethernet import VlanTag, emit_ethernet
from tcpchimney.wire.frame import Frame
from tcpchimney.wire.ipv4 import emit_ipv4
from tcpchimney.wire.seq import SeqNum
from tcpchimney.wire.tcp import ACK, TcpOptions, TcpSegment, emit_tcp_header
from tcpchimney.wire.vnet import (
    DATA_VALID,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP,
    GSO_UDP_L4,
    NEEDS_CSUM,
    VnetHeader,
    emit_vnet,
    frame_from_read,
    parse_vnet,
    tx_header,
)

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")
IP_A = bytes([198, 18, 0, 1])
IP_B = bytes([198, 18, 0, 2])


def tcp_frame(
    payload_len: int, ip_options: bytes = b"", ts: bool = False, vlans: tuple[VlanTag, ...] = ()
) -> Frame:
    opts = TcpOptions(ts_val=1, ts_ecr=2) if ts else TcpOptions()
    seg = TcpSegment(1000, 80, SeqNum(1), SeqNum(2), ACK, 500, b"x" * payload_len, opts)
    tcp = emit_tcp_header(seg)
    ip = emit_ipv4(IP_A, IP_B, 6, len(tcp) + payload_len, 7, options_raw=ip_options)
    return Frame(emit_ethernet(MAC_B, MAC_A, 0x0800, vlans) + ip + tcp, seg.payload)


def raw(hdr: VnetHeader, frame_len: int, size: int = 10) -> bytes:
    return emit_vnet(hdr, size) + bytes(frame_len)


# --------------------------------------------------------------------------------------------- codec


valid_headers = st.one_of(
    st.builds(VnetHeader, st.just(0), st.just(GSO_NONE), st.integers(0, 54)),
    st.builds(VnetHeader, st.just(DATA_VALID), st.just(GSO_NONE), st.integers(0, 54)),
    st.builds(
        VnetHeader, st.just(NEEDS_CSUM), st.just(GSO_NONE), st.just(0), st.just(0),
        st.integers(14, 60), st.sampled_from([6, 16]),
    ),
    st.builds(
        VnetHeader, st.just(NEEDS_CSUM), st.just(GSO_TCPV4), st.integers(54, 120), st.integers(1, 65535),
        st.integers(14, 60), st.just(16),
    ),
)  # fmt: skip


@given(valid_headers, st.sampled_from([10, 12]))
def test_round_trip(hdr: VnetHeader, size: int) -> None:
    data = raw(hdr, 200, size)
    assert len(emit_vnet(hdr, size)) == size
    assert parse_vnet(data, size) == hdr


def test_layout_is_little_endian() -> None:
    hdr = VnetHeader(NEEDS_CSUM, GSO_TCPV4, 54, 1460, 34, 16)
    assert emit_vnet(hdr) == bytes([1, 1, 54, 0]) + struct.pack("<HHH", 1460, 34, 16)
    assert emit_vnet(hdr, 12)[10:] == b"\0\0"  # num_buffers


def test_emit_refuses_other_sizes() -> None:
    with pytest.raises(EmitError):
        emit_vnet(VnetHeader(), 11)


@given(valid_headers, st.sampled_from([10, 12]))
def test_frame_mapping(hdr: VnetHeader, size: int) -> None:
    data = raw(hdr, 200, size)
    frame = frame_from_read(data, size)
    assert frame.csum_partial == bool(hdr.flags & NEEDS_CSUM)
    assert frame.csum_valid == bool(hdr.flags & DATA_VALID)
    assert frame.gso_size == (hdr.gso_size if hdr.gso_type == GSO_TCPV4 else 0)
    assert bytes(frame.headers) == data[size:] and len(frame.payload) == 0


def test_kernel_gso_header_as_measured() -> None:
    # What Linux hands over at MTU 1500 with TSO negotiated (reference/tap-offloads.md).
    frame = frame_from_read(raw(VnetHeader(NEEDS_CSUM, GSO_TCPV4, 54, 1460, 34, 16), 54 + 64240))
    assert frame.csum_partial and not frame.csum_valid and frame.gso_size == 1460
    assert len(frame) == 54 + 64240


# ------------------------------------------------------------------------------------ refused headers

BAD = [
    (VnetHeader(flags=0x04), 100, "vnet_unknown_flags"),
    (VnetHeader(flags=0x80), 100, "vnet_unknown_flags"),
    (VnetHeader(NEEDS_CSUM | DATA_VALID, 0, 0, 0, 34, 16), 100, "vnet_csum_flags_conflict"),
    (VnetHeader(NEEDS_CSUM, GSO_TCPV4 | GSO_ECN, 54, 1460, 34, 16), 2000, "vnet_gso_ecn"),
    (VnetHeader(NEEDS_CSUM, 2, 54, 1460, 34, 16), 2000, "vnet_gso_type_unknown"),
    (VnetHeader(NEEDS_CSUM, 0x7F, 54, 1460, 34, 16), 2000, "vnet_gso_type_unknown"),
    (VnetHeader(NEEDS_CSUM, GSO_UDP, 42, 1472, 34, 6), 2000, "vnet_gso_type_unsupported"),
    (VnetHeader(NEEDS_CSUM, GSO_TCPV6, 74, 1440, 54, 16), 2000, "vnet_gso_type_unsupported"),
    (VnetHeader(NEEDS_CSUM, GSO_UDP_L4, 42, 1472, 34, 6), 2000, "vnet_gso_type_unsupported"),
    (VnetHeader(0, GSO_TCPV4, 54, 1460, 0, 0), 2000, "vnet_gso_without_csum"),
    (VnetHeader(DATA_VALID, GSO_TCPV4, 54, 1460, 0, 0), 2000, "vnet_gso_without_csum"),
    (VnetHeader(NEEDS_CSUM, GSO_TCPV4, 54, 0, 34, 16), 2000, "vnet_gso_size_zero"),
    (VnetHeader(0, GSO_NONE, 0, 1460, 0, 0), 2000, "vnet_gso_size_without_type"),
    (VnetHeader(NEEDS_CSUM, GSO_TCPV4, 2001, 1460, 34, 16), 2000, "vnet_hdr_len_beyond_frame"),
    (VnetHeader(NEEDS_CSUM, GSO_NONE, 0, 0, 6, 16), 100, "vnet_csum_start_in_ethernet"),
    (VnetHeader(NEEDS_CSUM, GSO_NONE, 0, 0, 34, 16), 51, "vnet_csum_beyond_frame"),
    (VnetHeader(NEEDS_CSUM, GSO_NONE, 0, 0, 0xFFFF, 0xFFFF), 100, "vnet_csum_beyond_frame"),
]


@pytest.mark.parametrize(
    ("hdr", "frame_len", "reason"), BAD, ids=[f"{r}-{i}" for i, (_, _, r) in enumerate(BAD)]
)
@pytest.mark.parametrize("size", [10, 12])
def test_refused(hdr: VnetHeader, frame_len: int, reason: str, size: int) -> None:
    data = raw(hdr, frame_len, size)
    with pytest.raises(Illegal) as parsed:
        parse_vnet(data, size)
    with pytest.raises(Illegal) as read:
        frame_from_read(data, size)
    assert parsed.value.reason == read.value.reason == reason


def test_checksum_field_at_frame_end_is_accepted() -> None:
    # csum_start + csum_offset + 2 == frame length: the field is the frame's last two bytes.
    assert frame_from_read(raw(VnetHeader(NEEDS_CSUM, 0, 0, 0, 34, 16), 52)).csum_partial


@pytest.mark.parametrize("size", [10, 12])
def test_truncated(size: int) -> None:
    for n in range(size):
        with pytest.raises(Truncated) as exc:
            frame_from_read(bytes(n), size)
        assert exc.value.reason == "vnet_truncated"
        with pytest.raises(Truncated):
            parse_vnet(bytes(n), size)


# ------------------------------------------------------------------------------------------- transmit


@pytest.mark.parametrize("size", [10, 12])
def test_tx_plain_and_data_valid(size: int) -> None:
    assert parse_vnet(tx_header(tcp_frame(10), size) + bytes(64), size) == VnetHeader()
    frame = tcp_frame(10)
    frame.csum_valid = True
    assert parse_vnet(tx_header(frame, size) + bytes(64), size) == VnetHeader(DATA_VALID)


@pytest.mark.parametrize(("ip_options", "csum_start"), [(b"", 34), (b"\x01\x01\x01\x00", 38)])
def test_tx_csum_partial(ip_options: bytes, csum_start: int) -> None:
    frame = tcp_frame(100, ip_options)
    frame.csum_partial = True
    hdr = parse_vnet(tx_header(frame) + frame.tobytes())
    assert hdr == VnetHeader(NEEDS_CSUM, GSO_NONE, 0, 0, csum_start, 16)


def test_tx_csum_partial_udp() -> None:
    udp = struct.pack("!HHHH", 1, 2, 12, 0) + b"abcd"
    frame = Frame(emit_ethernet(MAC_B, MAC_A, 0x0800) + emit_ipv4(IP_A, IP_B, 17, len(udp), 1) + udp)
    frame.csum_partial = True
    assert parse_vnet(tx_header(frame) + frame.tobytes()) == VnetHeader(NEEDS_CSUM, 0, 0, 0, 34, 6)


@pytest.mark.parametrize(("ts", "hdr_len"), [(False, 54), (True, 66)])
def test_tx_tso(ts: bool, hdr_len: int) -> None:
    frame = tcp_frame(65000, ts=ts)
    frame.csum_partial, frame.gso_size = True, 1448
    hdr = parse_vnet(tx_header(frame) + frame.tobytes())
    assert hdr == VnetHeader(NEEDS_CSUM, GSO_TCPV4, hdr_len, 1448, 34, 16)


def test_tx_tso_with_vlan_tag() -> None:
    frame = tcp_frame(3000, vlans=(VlanTag(7),))
    frame.csum_partial, frame.gso_size = True, 1460
    hdr = parse_vnet(tx_header(frame) + frame.tobytes())
    assert hdr == VnetHeader(NEEDS_CSUM, GSO_TCPV4, 58, 1460, 38, 16)


def test_tx_one_segment_is_not_gso() -> None:
    # virtio 5.1.6.2: GSO only when the payload exceeds gso_size; a 1460-byte payload is an ordinary frame.
    frame = tcp_frame(1460)
    frame.csum_partial, frame.gso_size = True, 1460
    assert parse_vnet(tx_header(frame) + frame.tobytes()) == VnetHeader(NEEDS_CSUM, 0, 0, 0, 34, 16)


def test_tx_headers_are_precomputed() -> None:
    a, b = tcp_frame(5000), tcp_frame(7000)
    for f in (a, b):
        f.csum_partial, f.gso_size = True, 1460
    assert tx_header(a) is tx_header(b)  # one cached bytes object per (mss, header lengths)
    assert vnet.plain_header() is vnet.plain_header()


def test_tx_refuses_what_it_cannot_offload() -> None:
    gso_only = tcp_frame(5000)
    gso_only.gso_size = 1460
    arp = Frame(emit_ethernet(MAC_B, MAC_A, 0x0806) + bytes(28), csum_partial=True)
    icmp = Frame(
        emit_ethernet(MAC_B, MAC_A, 0x0800) + emit_ipv4(IP_A, IP_B, 1, 8, 1) + bytes(8), csum_partial=True
    )
    udp = Frame(emit_ethernet(MAC_B, MAC_A, 0x0800) + emit_ipv4(IP_A, IP_B, 17, 8, 1) + bytes(8), b"x" * 3000)
    udp.csum_partial, udp.gso_size = True, 1000
    for frame, reason in [
        (gso_only, "vnet_gso_without_csum"),
        (arp, "vnet_csum_not_ipv4"),
        (icmp, "vnet_csum_not_l4"),
        (udp, "vnet_gso_not_tcp"),
    ]:
        with pytest.raises(EmitError) as exc:
            tx_header(frame)
        assert exc.value.args[0].startswith(reason)
