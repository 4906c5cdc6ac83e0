"""FilterPackets read from real headers (built by scapy, an independent encoder)."""

from __future__ import annotations

from scapy.layers.inet import ICMP, IP, TCP, UDP

from tcpchimney.filter.from_wire import received, sent_datagram, sent_segment
from tcpchimney.filter.packet import Hook
from tcpchimney.wire import tcp as tcp_wire
from tcpchimney.wire.seq import SeqNum

A, B = bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2])


def _l4(pkt: IP) -> tuple[bytes, int]:
    raw = bytes(pkt)
    header_len = (raw[0] & 0x0F) * 4
    return raw[header_len:], header_len


def test_a_syn_gives_ports_flags_and_its_mss_and_window_scale() -> None:
    l4, hl = _l4(
        IP(src="198.18.0.1", dst="198.18.0.2")
        / TCP(sport=40000, dport=80, flags="S", seq=7, options=[("MSS", 536), ("WScale", 7)])
    )
    p = received("tap0", A, B, 6, l4, hl, verify=True)
    assert (p.hook, p.sport, p.dport, p.tcp_flags, p.seq) == (Hook.INPUT, 40000, 80, tcp_wire.SYN, 7)
    assert (p.mss, p.wscale, p.checksum_ok, p.payload_len) == (536, 7, True, 0)
    assert p.length == hl + len(l4)


def test_a_corrupted_tcp_checksum_is_seen_only_when_verifying() -> None:
    l4, hl = _l4(IP(src="198.18.0.1", dst="198.18.0.2") / TCP(sport=1, dport=2, flags="A") / b"data")
    bad = bytearray(l4)
    bad[-1] ^= 0xFF
    assert not received("tap0", A, B, 6, bad, hl, verify=True).checksum_ok
    assert received("tap0", A, B, 6, bad, hl, verify=False).checksum_ok
    assert received("tap0", A, B, 6, l4, hl, verify=True).payload_len == 4


def test_a_short_or_broken_tcp_header_is_not_ok() -> None:
    assert not received("tap0", A, B, 6, b"\x00" * 19, 20, verify=False).checksum_ok
    l4, hl = _l4(IP() / TCP(dataofs=15))  # a data offset of 60 bytes past a 20-byte segment
    assert not received("tap0", A, B, 6, l4, hl, verify=False).checksum_ok


def test_udp_ports() -> None:
    l4, hl = _l4(IP(src="198.18.0.1", dst="198.18.0.2") / UDP(sport=53, dport=5353) / b"abc")
    p = received("tap0", A, B, 17, l4, hl, verify=False)
    assert (p.sport, p.dport, p.payload_len) == (53, 5353, 3)


def test_an_icmp_error_carries_the_connection_it_quotes() -> None:
    inner = IP(src="198.18.0.2", dst="198.18.0.1") / TCP(sport=80, dport=40000, seq=12345)
    l4, hl = _l4(IP(src="198.18.0.1", dst="198.18.0.2") / ICMP(type=3, code=3) / bytes(inner)[:28])
    p = received("tap0", A, B, 1, l4, hl, verify=True)
    assert (p.icmp_type, p.icmp_code, p.checksum_ok) == (3, 3, True)
    q = p.icmp_quoted
    assert q is not None and (q.src, q.dst, q.proto, q.sport, q.dport, q.seq) == (B, A, 6, 80, 40000, 12345)


def test_an_echo_request_quotes_nothing_and_a_broken_quote_is_none() -> None:
    l4, hl = _l4(IP() / ICMP(type=8))
    assert received("tap0", A, B, 1, l4, hl, verify=True).icmp_quoted is None
    l4, hl = _l4(IP() / ICMP(type=11) / b"\x45short")
    p = received("tap0", A, B, 1, l4, hl, verify=True)
    assert p.icmp_type == 11 and p.icmp_quoted is None


def test_what_the_stack_sends() -> None:
    seg = tcp_wire.TcpSegment(
        80,
        40000,
        SeqNum(1),
        SeqNum(2),
        tcp_wire.SYN | tcp_wire.ACK,
        65535,
        options=tcp_wire.TcpOptions(mss=1460, wscale=9),
    )
    p = sent_segment("tap0", B, A, seg, 28)
    assert (p.hook, p.length, p.mss, p.wscale, p.ack) == (Hook.OUTPUT, 48, 1460, 9, 2)
    rst, _ = _l4(IP() / TCP(sport=80, dport=1, flags="R"))
    d = sent_datagram("tap0", B, A, 6, rst)
    assert (d.hook, d.tcp_flags, d.length) == (Hook.OUTPUT, tcp_wire.RST, 40)
