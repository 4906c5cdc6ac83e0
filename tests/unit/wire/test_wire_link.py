"""Ethernet II (with 802.1Q/802.1ad tags) and ARP (RFC 826)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wire_fixtures import ARP_REQUEST, LINUX_SYN

from tcpchimney.wire import arp, ethernet
from tcpchimney.wire.errors import EmitError, Illegal, Truncated

macs = st.binary(min_size=6, max_size=6)
ipv4s = st.binary(min_size=4, max_size=4)
tags = st.builds(
    ethernet.VlanTag,
    st.integers(0, 0xFFF),
    st.integers(0, 7),
    st.booleans(),
    st.sampled_from([ethernet.ETHERTYPE_VLAN, ethernet.ETHERTYPE_QINQ]),
)


def test_parse_linux_frame() -> None:
    f = ethernet.parse_ethernet(LINUX_SYN)
    assert f.dst == ethernet.mac_from_str("02:00:00:00:00:02")
    assert ethernet.mac_to_str(f.src) == "02:00:00:00:00:01"
    assert f.ethertype == ethernet.ETHERTYPE_IPV4
    assert f.header_len == 14 and f.vlans == () and f.vlan_id is None and f.pcp is None
    assert isinstance(f.payload, memoryview) and f.payload.obj is LINUX_SYN
    assert bytes(f.payload) == LINUX_SYN[14:]
    assert ethernet.peek_ethertype(LINUX_SYN) == (ethernet.ETHERTYPE_IPV4, 14)


@given(macs, macs, st.integers(0x0600, 0xFFFF).filter(lambda t: t not in (0x8100, 0x88A8)),
       st.lists(tags, max_size=2).map(tuple), st.binary(max_size=64))  # fmt: skip
def test_round_trip(
    dst: bytes, src: bytes, ethertype: int, vlans: tuple[ethernet.VlanTag, ...], body: bytes
) -> None:
    frame = ethernet.emit_ethernet(dst, src, ethertype, vlans) + body
    f = ethernet.parse_ethernet(frame)
    assert (f.dst, f.src, f.ethertype, f.vlans) == (dst, src, ethertype, vlans)
    assert f.header_len == 14 + 4 * len(vlans)
    assert bytes(f.payload) == body
    if vlans:
        assert f.vlan_id == vlans[0].vid and f.pcp == vlans[0].pcp


def test_vlan_fields() -> None:
    # 802.1Q tag: PCP 5, DEI 0, VID 100 -> TCI 0xa064.
    frame = bytes(6) + bytes(6) + bytes.fromhex("8100a0640800") + b"x"
    f = ethernet.parse_ethernet(frame)
    assert f.vlan_id == 100 and f.pcp == 5 and f.ethertype == 0x0800 and f.header_len == 18
    assert bytes(f.payload) == b"x"


def test_errors() -> None:
    with pytest.raises(Truncated):
        ethernet.parse_ethernet(LINUX_SYN[:13])
    with pytest.raises(Truncated):
        ethernet.peek_ethertype(b"\x00" * 5)
    with pytest.raises(Truncated):
        ethernet.parse_ethernet(bytes(12) + b"\x81\x00\x00")  # tag cut short
    with pytest.raises(Illegal) as err:
        ethernet.parse_ethernet(bytes(12) + bytes.fromhex("88a800018100000281000003") + bytes.fromhex("0800"))
    assert err.value.reason == "too_many_vlan_tags"
    with pytest.raises(EmitError):
        ethernet.emit_ethernet(bytes(6), bytes(6), 0x0800, (ethernet.VlanTag(4096),))
    for bad in ("02:00:00:00:00", "02:00:00:00:00:zz", "0200.0000.0001"):
        with pytest.raises(ValueError):
            ethernet.mac_from_str(bad)
    assert ethernet.mac_from_str("02-00-5E-10-00-01") == bytes.fromhex("02005e100001")
    assert ethernet.is_multicast_mac(ethernet.BROADCAST) and not ethernet.is_multicast_mac(bytes(6))


# --- ARP ---------------------------------------------------------------------------------------------


def test_parse_arp_fixture() -> None:
    f = ethernet.parse_ethernet(ARP_REQUEST)
    assert f.dst == ethernet.BROADCAST and f.ethertype == ethernet.ETHERTYPE_ARP
    p = arp.parse_arp(ARP_REQUEST, f.header_len)
    assert p.op == arp.ARP_REQUEST
    assert p.sha == f.src and p.spa == bytes((198, 18, 0, 1))
    assert p.tha == bytes(6) and p.tpa == bytes((198, 18, 0, 2))
    assert not p.is_gratuitous and not p.is_probe
    assert arp.emit_arp_request(p.sha, p.spa, p.tpa) == ARP_REQUEST[14:]


@given(st.sampled_from([arp.ARP_REQUEST, arp.ARP_REPLY]), macs, ipv4s, macs, ipv4s, st.binary(max_size=18))
def test_arp_round_trip(op: int, sha: bytes, spa: bytes, tha: bytes, tpa: bytes, padding: bytes) -> None:
    pkt = arp.ArpPacket(op, sha, spa, tha, tpa)
    assert arp.parse_arp(arp.emit_arp(pkt) + padding) == pkt


def test_arp_helpers() -> None:
    mac, ip, peer_mac, peer_ip = b"\x02" * 6, b"\xc6\x12\x00\x01", b"\x04" * 6, b"\xc6\x12\x00\x02"
    reply = arp.parse_arp(arp.emit_arp_reply(mac, ip, peer_mac, peer_ip))
    assert (reply.op, reply.sha, reply.spa, reply.tha, reply.tpa) == (
        arp.ARP_REPLY,
        mac,
        ip,
        peer_mac,
        peer_ip,
    )
    grat = arp.parse_arp(arp.emit_gratuitous(mac, ip))
    assert grat.is_gratuitous and grat.op == arp.ARP_REQUEST and grat.spa == grat.tpa == ip
    probe = arp.parse_arp(arp.emit_arp_request(mac, bytes(4), ip))
    assert probe.is_probe and not probe.is_gratuitous


@pytest.mark.parametrize(
    ("offset", "value", "reason"),
    [(0, b"\x00\x06", "unsupported_format"), (2, b"\x86\xdd", "unsupported_format"),
     (4, b"\x08", "unsupported_format"), (5, b"\x10", "unsupported_format"), (6, b"\x00\x03", "bad_opcode"),
     (6, b"\x00\x00", "bad_opcode")],
)  # fmt: skip
def test_arp_illegal(offset: int, value: bytes, reason: str) -> None:
    body = bytearray(ARP_REQUEST[14:])
    body[offset : offset + len(value)] = value
    with pytest.raises(Illegal) as err:
        arp.parse_arp(body)
    assert err.value.reason == reason


def test_arp_truncated() -> None:
    with pytest.raises(Truncated):
        arp.parse_arp(ARP_REQUEST, 15)
