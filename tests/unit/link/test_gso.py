"""Software TSO and checksum completion, checked with scapy as the independent decoder."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Dot1Q, Ether

from tcpchimney.link.gso import complete_checksum, segment
from tcpchimney.wire.checksum import pseudo_base_sum, pseudo_csum_partial
from tcpchimney.wire.errors import EmitError
from tcpchimney.wire.ethernet import ETHERTYPE_ARP, ETHERTYPE_IPV4, VlanTag, emit_ethernet
from tcpchimney.wire.frame import Frame
from tcpchimney.wire.ipv4 import PROTO_TCP, PROTO_UDP, emit_ipv4, encode_options
from tcpchimney.wire.seq import SeqNum
from tcpchimney.wire.tcp import (
    ACK,
    CWR,
    ECE,
    FIN,
    PSH,
    TcpOptions,
    TcpSegment,
    emit_tcp_header,
    tcp_checksum_ok,
)

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")
IP_A = bytes([198, 18, 0, 1])
IP_B = bytes([198, 18, 0, 2])
ISS = 0xFFFFF000  # close to the wrap, so the pieces' sequence numbers cross it


def super_segment(
    payload: bytes,
    gso_size: int,
    flags: int = ACK | PSH | FIN | CWR | ECE,
    vlans: tuple[VlanTag, ...] = (),
    options: TcpOptions | None = None,
    ip_options: bytes = b"",
    ident: int = 0xFFFE,
) -> Frame:
    """A TSO super-segment as HostStack hands it to a device: headers and payload apart, checksum partial."""
    opts = options if options is not None else TcpOptions(ts_val=123456, ts_ecr=654321)
    seg = TcpSegment(40000, 80, SeqNum(ISS), SeqNum(77), flags, 501, payload, opts)
    tcp_header = emit_tcp_header(seg, pseudo_base_sum(IP_A, IP_B, PROTO_TCP), csum_partial=True)
    ip = emit_ipv4(IP_A, IP_B, PROTO_TCP, len(tcp_header) + len(payload), ident, options_raw=ip_options)
    eth = emit_ethernet(MAC_B, MAC_A, ETHERTYPE_IPV4, vlans)
    return Frame(eth + ip + tcp_header, memoryview(payload), csum_partial=True, gso_size=gso_size)


def checksums_verify(pkt: Ether) -> bool:
    """scapy recomputes both checksums when they are deleted; equal values mean the originals were right."""
    fresh = pkt.copy()
    del fresh[IP].chksum
    if TCP in fresh:
        del fresh[TCP].chksum
    else:
        del fresh[UDP].chksum
    rebuilt = Ether(bytes(fresh))
    layer = TCP if TCP in pkt else UDP
    return bool(rebuilt[IP].chksum == pkt[IP].chksum and rebuilt[layer].chksum == pkt[layer].chksum)


PAYLOAD = bytes(range(256)) * 20 + b"tail!"  # 5125 bytes: three full pieces of 1448 and a short one


@pytest.mark.parametrize(
    "vlans, ip_options, mss",
    [((), b"", 1448), ((VlanTag(42, pcp=5),), b"", 1448), ((), encode_options(((148, b"\x00\x00"),)), 1444)],
    ids=["plain", "vlan", "ip-options"],
)
def test_pieces_parse_with_valid_checksums_and_rebuild_the_payload(
    vlans: tuple[VlanTag, ...], ip_options: bytes, mss: int
) -> None:
    frame = super_segment(PAYLOAD, mss, vlans=vlans, ip_options=ip_options)
    pieces = segment(frame, 1500)
    assert [len(p.payload) for p in pieces] == [mss, mss, mss, len(PAYLOAD) - 3 * mss]
    pkts = [Ether(p.tobytes()) for p in pieces]
    for pkt, piece in zip(pkts, pieces, strict=True):
        assert checksums_verify(pkt)
        assert pkt[IP].len == len(piece) - (18 if vlans else 14) <= 1500
        assert not (piece.csum_partial or piece.csum_valid or piece.gso_size)
        if vlans:
            assert pkt[Dot1Q].vlan == 42 and pkt[Dot1Q].prio == 5
        assert pkt[TCP].options == [("NOP", None), ("NOP", None), ("Timestamp", (123456, 654321))]
    assert b"".join(bytes(pkt[TCP].payload) for pkt in pkts) == PAYLOAD
    assert [pkt[TCP].seq for pkt in pkts] == [(ISS + i * mss) & 0xFFFFFFFF for i in range(4)]
    if ip_options:
        assert all(pkt[IP].options and pkt[IP].ihl == 6 for pkt in pkts)
    assert [pkt[IP].id for pkt in pkts] == [0xFFFE, 0xFFFF, 0, 1]  # one ID per piece, wrapping


def test_flags_fin_psh_only_on_the_last_piece_cwr_only_on_the_first() -> None:
    pkts = [Ether(p.tobytes()) for p in segment(super_segment(PAYLOAD, 1448), 1500)]
    assert [str(pkt[TCP].flags) for pkt in pkts] == ["AEC", "AE", "AE", "FPAE"]


def test_received_form_with_everything_in_headers_segments_the_same() -> None:
    split = super_segment(PAYLOAD, 1000)
    joined = Frame(split.tobytes(), csum_partial=True, gso_size=1000)
    assert [p.tobytes() for p in segment(joined, 1500)] == [p.tobytes() for p in segment(split, 1500)]


def test_one_piece_super_segment_gets_its_checksum_completed() -> None:
    (piece,) = segment(super_segment(b"small", 1448), 1500)
    pkt = Ether(piece.tobytes())
    assert checksums_verify(pkt) and bytes(pkt[TCP].payload) == b"small"
    assert str(pkt[TCP].flags) == "FPAEC"  # first and last at once: every flag stays


def test_plain_frames_pass_through_untouched() -> None:
    frame = Frame(bytes(Ether() / IP() / TCP() / b"x"))
    assert segment(frame, 1500) == [frame]
    assert complete_checksum(frame) is frame


def test_piece_above_the_mtu_is_refused() -> None:
    with pytest.raises(EmitError, match="gso_exceeds_mtu"):
        segment(super_segment(PAYLOAD, 1461), 1500)  # 20 + 32 + 1461 > 1500


def test_only_tcp_over_ipv4_is_segmented() -> None:
    udp = Frame(
        bytes(Ether() / IP(src="198.18.0.1", dst="198.18.0.2") / UDP() / (b"u" * 3000)), gso_size=1000
    )
    with pytest.raises(EmitError, match="gso_not_tcp"):
        segment(udp, 1500)
    arp = Frame(emit_ethernet(MAC_B, MAC_A, ETHERTYPE_ARP) + bytes(28), csum_partial=True)
    with pytest.raises(EmitError, match="offload_not_ipv4"):
        complete_checksum(arp)


def test_truncated_frame_is_refused() -> None:
    frame = super_segment(PAYLOAD, 1448)
    short = Frame(frame.headers, memoryview(PAYLOAD)[:100], csum_partial=True, gso_size=1448)
    with pytest.raises(EmitError, match="offload_bad_length"):
        segment(short, 1500)


def test_complete_checksum_of_a_tcp_frame_with_ethernet_padding() -> None:
    seg = TcpSegment(1, 2, SeqNum(3), SeqNum(4), ACK, 1000, b"", TcpOptions())
    header = emit_tcp_header(seg, pseudo_base_sum(IP_A, IP_B, PROTO_TCP), csum_partial=True)
    ip = emit_ipv4(IP_A, IP_B, PROTO_TCP, len(header), 1)
    padded = emit_ethernet(MAC_B, MAC_A, ETHERTYPE_IPV4) + ip + header + b"\xaa" * 6  # 60-byte minimum
    done = complete_checksum(Frame(padded, csum_partial=True))
    assert not done.csum_partial
    assert checksums_verify(Ether(done.tobytes()))
    out = done.tobytes()
    assert out[:50] == padded[:50] and out[52:] == padded[52:54]  # only the checksum field changed
    assert len(out) == 54  # the padding is not part of the datagram (the link pads again on the wire)


def test_complete_checksum_of_a_udp_frame() -> None:
    body = b"datagram body"
    pkt = (
        Ether(dst="02:00:00:00:00:02")
        / IP(src="198.18.0.1", dst="198.18.0.2")
        / UDP(sport=1000, dport=2000)
        / body
    )
    raw = bytearray(bytes(pkt))
    partial = pseudo_csum_partial(IP_A, IP_B, PROTO_UDP, 8 + len(body))
    raw[40:42] = partial.to_bytes(2, "big")
    done = complete_checksum(Frame(bytes(raw[:42]), body, csum_partial=True))
    assert done.tobytes() == bytes(pkt)  # scapy's own checksum


@settings(max_examples=60, deadline=None)
@given(
    length=st.integers(0, 9000),
    gso_size=st.integers(1, 1448),
    ident=st.integers(0, 0xFFFF),
    syn_free_flags=st.sampled_from([ACK, ACK | PSH, ACK | FIN, ACK | CWR | PSH | FIN]),
)
def test_any_cut_preserves_bytes_sequence_and_checksums(
    length: int, gso_size: int, ident: int, syn_free_flags: int
) -> None:
    payload = bytes((i * 7) & 0xFF for i in range(length))
    pieces = segment(super_segment(payload, gso_size, flags=syn_free_flags, ident=ident), 1500)
    assert len(pieces) == max(1, -(-length // gso_size))
    pseudo = pseudo_base_sum(IP_A, IP_B, PROTO_TCP)
    offset = 0
    for i, piece in enumerate(pieces):
        wire = piece.tobytes()
        tcp = wire[34:]
        assert tcp_checksum_ok(tcp, pseudo)
        assert int.from_bytes(wire[18:20], "big") == (ident + i) & 0xFFFF
        assert int.from_bytes(tcp[4:8], "big") == (ISS + offset) & 0xFFFFFFFF
        assert tcp[32:] == payload[offset : offset + gso_size]
        offset += len(tcp) - 32
    assert offset == length
