"""IPv4 input validation: one test per drop reason, each with real bytes; and IPv4 output properties."""

from __future__ import annotations

import struct

import pytest
from conftest import OUR_IP, OUR_MAC, PEER_IP, PEER_MAC, echo_request, frame, learn_peer, sent
from scapy.layers.inet import ICMP, IP, IPOption_Router_Alert
from scapy.layers.l2 import Ether

from tcpchimney.host.stack import HostStack
from tcpchimney.wire.frame import Frame


def _replies(stack: HostStack) -> list[Ether]:
    return [p for p in sent(stack) if ICMP in p and p[ICMP].type == 0]


def _patch(raw: bytes, offset: int, value: bytes, fix_checksum: bool = True) -> bytes:
    """Rewrite IPv4 header bytes (offset relative to the IP header) and recompute its checksum."""
    buf = bytearray(raw)
    buf[14 + offset : 14 + offset + len(value)] = value
    if fix_checksum:
        ihl = (buf[14] & 0x0F) * 4
        buf[24:26] = b"\0\0"
        hdr = bytes(buf[14 : 14 + max(ihl, 20)])
        total = sum(struct.unpack(f"!{len(hdr) // 2}H", hdr))
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        buf[24:26] = struct.pack("!H", ~total & 0xFFFF)
    return bytes(buf)


@pytest.fixture
def known(stack: HostStack) -> HostStack:
    learn_peer(stack)
    return stack


def test_valid_echo_request_is_answered(known: HostStack) -> None:
    known.handle_frame(frame(echo_request()), 0.0)
    (reply,) = _replies(known)
    assert reply[IP].src == OUR_IP and reply[IP].dst == PEER_IP and reply[IP].ttl == 64


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda raw: raw[: 14 + 12], "drop_truncated"),
        (lambda raw: _patch(raw, 0, b"\x65"), "drop_bad_version"),
        (lambda raw: _patch(raw, 0, b"\x44"), "drop_bad_header_length"),
        (lambda raw: _patch(raw, 2, struct.pack("!H", 19)), "drop_bad_total_length"),
        (lambda raw: _patch(raw, 2, struct.pack("!H", 1400)), "drop_truncated"),
        (lambda raw: _patch(raw, 0, b"\x4f"), "drop_bad_total_length"),  # IHL beyond the datagram
        (lambda raw: _patch(raw, 10, b"\x12\x34", fix_checksum=False), "drop_bad_checksum"),
        (lambda raw: _patch(raw, 8, b"\x00"), "drop_ttl_zero"),
        (lambda raw: _patch(raw, 16, bytes([198, 18, 0, 9])), "drop_not_our_address"),
        (lambda raw: _patch(raw, 12, bytes([224, 0, 0, 1])), "drop_bad_source"),
        (lambda raw: _patch(raw, 12, bytes([198, 18, 0, 1])), "drop_bad_source"),  # our own address
        (lambda raw: _patch(raw, 9, b"\x11"), "drop_unknown_protocol"),
    ],
)
def test_each_invalid_header_is_dropped_and_counted(known: HostStack, mutate, reason: str) -> None:  # type: ignore[no-untyped-def]
    raw = bytes(echo_request())
    known.handle_frame(Frame(mutate(raw)), 0.0)
    assert _replies(known) == []
    assert known.counters["ipv4"][reason] == 1
    assert known.counters["stack"]["internal_error"] == 0


def test_reserved_flag_is_ignored_as_linux_does(known: HostStack) -> None:
    known.handle_frame(Frame(_patch(bytes(echo_request()), 6, b"\x80\x00")), 0.0)
    assert len(_replies(known)) == 1


def test_malformed_ip_options_are_dropped(known: HostStack) -> None:
    raw = bytes(echo_request(options=[IPOption_Router_Alert()]))
    bad = _patch(raw, 21, b"\x09")  # the option's length now runs past the header
    known.handle_frame(Frame(bad), 0.0)
    assert known.counters["ipv4"]["drop_bad_options"] == 1


def test_valid_ip_options_are_tolerated(known: HostStack) -> None:
    known.handle_frame(frame(echo_request(options=[IPOption_Router_Alert()])), 0.0)
    (reply,) = _replies(known)
    assert reply[ICMP].id == 7


def test_ethernet_padding_after_the_datagram_is_ignored(known: HostStack) -> None:
    known.handle_frame(Frame(bytes(echo_request(payload=b"")) + b"\0" * 18), 0.0)
    (reply,) = _replies(known)
    assert bytes(reply[ICMP].payload) == b""


def test_broadcast_destination_is_accepted_for_icmp_but_echo_not_answered(known: HostStack) -> None:
    pkt = Ether(dst="ff:ff:ff:ff:ff:ff", src=PEER_MAC) / IP(src=PEER_IP, dst="198.18.0.255") / ICMP()
    known.handle_frame(frame(pkt), 0.0)
    assert _replies(known) == []
    assert known.counters["icmp"]["drop_broadcast_echo"] == 1


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\x02\x00\x00", "drop_truncated"),
        (
            bytes(Ether(dst="02:00:00:00:00:77", src=PEER_MAC) / IP(src=PEER_IP, dst=OUR_IP)),
            "drop_not_for_us",
        ),
        (bytes(Ether(dst="01:00:5e:00:00:01", src=PEER_MAC) / IP(src=PEER_IP, dst=OUR_IP)), "drop_multicast"),
        (bytes(Ether(dst=OUR_MAC, src=PEER_MAC, type=0x86DD) / (b"\0" * 40)), "drop_unknown_ethertype"),
    ],
)
def test_ethernet_drops(stack: HostStack, raw: bytes, reason: str) -> None:
    stack.handle_frame(Frame(raw), 0.0)
    assert stack.counters["ethernet"][reason] == 1


def test_output_header_fields(known: HostStack) -> None:
    known.ping(PEER_IP, 1, 1, b"x", 0.0)
    known.ping(PEER_IP, 1, 2, b"x", 0.0)
    a, b = sent(known)
    assert a[IP].ttl == 64 and a[IP].flags == 0 and a[IP].ihl == 5
    assert a[IP].id < 0x8000 and b[IP].id == (a[IP].id + 1) % 0x8000  # the host's half of the ID space
    ip = a[IP]
    chk = ip.chksum
    del ip.chksum
    assert IP(bytes(ip)).chksum == chk


def test_hostile_bytes_never_raise(stack: HostStack) -> None:
    import random

    rng = random.Random(5)
    base = bytes(echo_request())
    for _ in range(300):
        raw = bytearray(base)
        for _ in range(rng.randrange(1, 6)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        stack.handle_frame(Frame(bytes(raw[: rng.randrange(len(raw) + 1)])), 0.0)
        stack.frames_to_send(0.0)
    assert stack.counters["stack"]["internal_error"] == 0, stack.internal_errors
