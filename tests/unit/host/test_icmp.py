"""ICMP: echo both ways, errors counted, fragmentation-needed lowers the path MTU."""

from __future__ import annotations

from conftest import (
    OUR_IP,
    OUR_MAC,
    PEER_IP,
    PEER_MAC,
    echo_request,
    eth_to_us,
    events,
    frame,
    learn_peer,
    sent,
)
from scapy.layers.inet import ICMP, IP, TCP

from tcpchimney.host.events import EchoReply, PathMtuChanged
from tcpchimney.host.interface import ip_bytes
from tcpchimney.host.stack import HostStack


def test_echo_request_is_answered_with_the_same_data(stack: HostStack) -> None:
    learn_peer(stack)
    stack.handle_frame(frame(echo_request(ident=0x1234, seq=9, payload=b"hello world")), 0.0)
    (reply,) = sent(stack)
    assert (reply.src, reply.dst) == (OUR_MAC, PEER_MAC)
    icmp = reply[ICMP]
    assert (icmp.type, icmp.code, icmp.id, icmp.seq) == (0, 0, 0x1234, 9)
    assert bytes(icmp.payload) == b"hello world"
    chk = icmp.chksum
    del icmp.chksum
    assert ICMP(bytes(icmp)).chksum == chk
    c = stack.counters["icmp"]
    assert c["rx_echo_request"] == 1 and c["tx"] == 1


def test_ping_sends_a_request_and_the_reply_becomes_an_event(stack: HostStack) -> None:
    learn_peer(stack)
    stack.ping(PEER_IP, 5, 6, b"data", 1.0)
    (req,) = sent(stack, 1.0)
    assert (req[ICMP].type, req[ICMP].id, req[ICMP].seq, bytes(req[ICMP].payload)) == (8, 5, 6, b"data")
    reply = eth_to_us(IP(src=PEER_IP, dst=OUR_IP) / ICMP(type=0, id=5, seq=6) / b"data")
    stack.handle_frame(frame(reply), 1.25)
    assert events(stack) == [EchoReply(ip_bytes(PEER_IP), 5, 6, b"data", 0.25)]


def test_unsolicited_echo_reply_has_no_rtt(stack: HostStack) -> None:
    reply = eth_to_us(IP(src=PEER_IP, dst=OUR_IP) / ICMP(type=0, id=1, seq=1))
    stack.handle_frame(frame(reply), 0.0)
    (ev,) = events(stack)
    assert isinstance(ev, EchoReply) and ev.rtt is None


def test_bad_icmp_checksum_is_dropped(stack: HostStack) -> None:
    stack.handle_frame(frame(eth_to_us(IP(src=PEER_IP, dst=OUR_IP) / ICMP(type=8, chksum=0x1234))), 0.0)
    assert sent(stack) == []
    assert stack.counters["icmp"]["drop_bad_checksum"] == 1


def test_truncated_icmp_is_dropped(stack: HostStack) -> None:
    stack.handle_frame(frame(eth_to_us(IP(src=PEER_IP, dst=OUR_IP, proto=1) / b"\x08\x00\x00")), 0.0)
    assert stack.counters["icmp"]["drop_truncated"] == 1


def _quote(dst: str = PEER_IP) -> bytes:
    """The head of one of our (ICMP) datagrams, as a router quotes it."""
    return bytes(IP(src=OUR_IP, dst=dst) / ICMP(type=8) / (b"p" * 1400))[:28]


def test_fragmentation_needed_lowers_the_path_mtu_and_reports_it(stack: HostStack) -> None:
    msg = IP(src="198.18.0.254", dst=OUR_IP) / ICMP(type=3, code=4, nexthopmtu=1280) / _quote()
    stack.handle_frame(frame(eth_to_us(msg)), 0.0)
    assert events(stack) == [PathMtuChanged(ip_bytes(PEER_IP), 1280)]
    assert stack.path_mtu(PEER_IP) == 1280
    # a later claim of a larger MTU is ignored; a tiny one is clamped (RFC 1191 attacks)
    bigger = IP(src="198.18.0.254", dst=OUR_IP) / ICMP(type=3, code=4, nexthopmtu=1400) / _quote()
    stack.handle_frame(frame(eth_to_us(bigger)), 0.0)
    tiny = IP(src="198.18.0.254", dst=OUR_IP) / ICMP(type=3, code=4, nexthopmtu=100) / _quote()
    stack.handle_frame(frame(eth_to_us(tiny)), 0.0)
    assert stack.path_mtu(PEER_IP) == 552
    assert stack.counters["icmp"]["rx_frag_needed"] == 3


def test_our_echo_is_fragmented_to_the_path_mtu(stack: HostStack) -> None:
    learn_peer(stack)
    msg = IP(src="198.18.0.254", dst=OUR_IP) / ICMP(type=3, code=4, nexthopmtu=1000) / _quote()
    stack.handle_frame(frame(eth_to_us(msg)), 0.0)
    stack.ping(PEER_IP, 1, 1, b"q" * 1400, 0.0)
    out = sent(stack)
    assert len(out) == 2 and all(len(p[IP]) <= 1000 for p in out)


def test_frag_needed_about_an_unknown_tcp_connection_is_ignored(stack: HostStack) -> None:
    quote = bytes(IP(src=OUR_IP, dst=PEER_IP) / TCP(sport=40000, dport=80, flags="A"))[:28]
    msg = IP(src="198.18.0.254", dst=OUR_IP) / ICMP(type=3, code=4, nexthopmtu=1280) / quote
    stack.handle_frame(frame(eth_to_us(msg)), 0.0)
    assert stack.path_mtu(PEER_IP) == 1500 and events(stack) == []
    assert stack.counters["icmp"]["drop_frag_needed_unmatched"] == 1


def test_time_exceeded_and_port_unreachable_are_counted(stack: HostStack) -> None:
    te = IP(src="198.18.0.254", dst=OUR_IP) / ICMP(type=11, code=0) / _quote()
    pu = IP(src=PEER_IP, dst=OUR_IP) / ICMP(type=3, code=3) / _quote()
    stack.handle_frame(frame(eth_to_us(te)), 0.0)
    stack.handle_frame(frame(eth_to_us(pu)), 0.0)
    c = stack.counters["icmp"]
    assert c["rx_time_exceeded"] == 1 and c["rx_port_unreachable"] == 1 and c["rx_dest_unreachable"] == 1
    assert events(stack) == [] and sent(stack) == []


def test_unknown_protocol_gets_a_rate_limited_protocol_unreachable(stack: HostStack) -> None:
    learn_peer(stack)
    pkt = eth_to_us(IP(src=PEER_IP, dst=OUR_IP, proto=253) / (b"u" * 40))
    stack.handle_frame(frame(pkt), 0.0)
    (err,) = sent(stack)
    assert (err[ICMP].type, err[ICMP].code) == (3, 2)
    assert bytes(err[ICMP].payload) == bytes(pkt[IP])[:28]  # header + 8 bytes (RFC 792)
    for _ in range(100):
        stack.handle_frame(frame(pkt), 0.0)
    assert len(sent(stack)) == 49  # the burst allowance, then the bucket is empty
    assert stack.counters["icmp"]["tx_error_rate_limited"] == 51
    assert stack.counters["ipv4"]["drop_unknown_protocol"] == 101
