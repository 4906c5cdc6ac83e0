"""Segments to closed ports: RFC 9293 3.10.7.1 resets, and never a RST for a RST."""

from __future__ import annotations

import pytest
from conftest import OUR_IP, PEER_IP, eth_to_us, frame, learn_peer, sent
from scapy.layers.inet import IP, TCP

from tcpchimney.host.stack import HostStack


@pytest.fixture
def known(stack: HostStack) -> HostStack:
    learn_peer(stack)
    return stack


def _segment(**tcp: object) -> object:
    return eth_to_us(IP(src=PEER_IP, dst=OUR_IP) / TCP(sport=5555, dport=81, **tcp))


def _only_rst(stack: HostStack) -> TCP:
    (pkt,) = sent(stack)
    assert pkt[IP].src == OUR_IP and pkt[IP].dst == PEER_IP and pkt[IP].flags == "DF"
    seg = pkt[TCP]
    chk = seg.chksum
    del seg.chksum
    assert TCP(bytes(IP(src=OUR_IP, dst=PEER_IP) / seg)[20:]).chksum == chk  # a real checksum
    return seg


def test_syn_to_closed_port_gets_rst_ack_acknowledging_the_syn(known: HostStack) -> None:
    known.handle_frame(frame(_segment(flags="S", seq=1000)), 0.0)
    rst = _only_rst(known)
    assert (rst.sport, rst.dport) == (81, 5555)
    assert rst.flags == "RA" and rst.seq == 0 and rst.ack == 1001  # <SEQ=0><ACK=SEG.SEQ+SEG.LEN>
    assert known.counters["tcp"]["closed_port"] == 1 and known.counters["tcp"]["tx_rst"] == 1


def test_data_without_ack_counts_its_length(known: HostStack) -> None:
    known.handle_frame(frame(_segment(flags="F", seq=0xFFFFFFF0) / (b"x" * 40)), 0.0)
    rst = _only_rst(known)
    assert rst.flags == "RA" and rst.ack == (0xFFFFFFF0 + 40 + 1) % (1 << 32)  # FIN counts, wraps


def test_ack_bearing_segment_gets_rst_with_seq_of_its_ack(known: HostStack) -> None:
    known.handle_frame(frame(_segment(flags="PA", seq=5, ack=777777) / b"data"), 0.0)
    rst = _only_rst(known)
    assert rst.flags == "R" and rst.seq == 777777 and rst.ack == 0  # <SEQ=SEG.ACK><CTL=RST>


def test_rst_is_never_answered(known: HostStack) -> None:
    known.handle_frame(frame(_segment(flags="R", seq=5)), 0.0)
    known.handle_frame(frame(_segment(flags="RA", seq=5, ack=9)), 0.0)
    assert sent(known) == []
    assert known.counters["tcp"]["drop_rst_no_connection"] == 2


def test_bad_tcp_checksum_is_dropped_without_reply(known: HostStack) -> None:
    known.handle_frame(frame(_segment(flags="S", chksum=0xBEEF)), 0.0)
    assert sent(known) == []
    assert known.counters["tcp"]["drop_bad_checksum"] == 1


def test_checksum_not_verified_when_the_device_did(known: HostStack) -> None:
    from tcpchimney.wire.frame import Frame

    raw = bytes(_segment(flags="S", chksum=0xBEEF))  # type: ignore[call-overload]
    known.handle_frame(Frame(raw, csum_valid=True), 0.0)
    assert _only_rst(known).flags == "RA"


def test_tcp_to_broadcast_is_dropped(known: HostStack) -> None:
    pkt = eth_to_us(IP(src=PEER_IP, dst="198.18.0.255") / TCP(sport=1, dport=2, flags="S"))
    known.handle_frame(frame(pkt), 0.0)
    assert sent(known) == []
    assert known.counters["tcp"]["drop_broadcast"] == 1


def test_bad_data_offset_is_dropped(known: HostStack) -> None:
    pkt = _segment(flags="S", dataofs=3)
    known.handle_frame(frame(pkt), 0.0)
    assert sent(known) == []
    assert known.counters["tcp"]["drop_bad_data_offset"] == 1
