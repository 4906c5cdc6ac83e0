"""Cross-check against scapy, an independent codec, on random packets in both directions."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP  # imported once: scapy is slow to import
from scapy.layers.l2 import ARP, Dot1Q, Ether

from tcpchimney.wire import arp, ethernet, icmp, ipv4, tcp
from tcpchimney.wire.checksum import pseudo_base_sum
from tcpchimney.wire.seq import SeqNum
from tcpchimney.wire.tcp import TcpOptions, TcpSegment

u32 = st.integers(0, 2**32 - 1)
u16 = st.integers(0, 0xFFFF)
addrs = st.integers(0, 2**32 - 1).map(lambda v: v.to_bytes(4, "big"))
macs = st.binary(min_size=6, max_size=6)
payloads = st.binary(max_size=600)
flag_bits = st.integers(0, 0xFF)


def _dotted(addr: bytes) -> str:
    return ipv4.addr_to_str(addr)


@st.composite
def scapy_options(draw: st.DrawFn) -> list[tuple[str, object]]:
    opts: list[tuple[str, object]] = []
    if draw(st.booleans()):
        opts.append(("MSS", draw(u16)))
    if draw(st.booleans()):
        opts.append(("SAckOK", b""))
    if draw(st.booleans()):
        opts.append(("Timestamp", (draw(u32), draw(u32))))
    if draw(st.booleans()):
        opts.append(("NOP", None))
        opts.append(("WScale", draw(st.integers(0, 14))))
    if draw(st.booleans()):
        opts.append(("SAck", (draw(u32), draw(u32))))
    draw(st.randoms(use_true_random=False)).shuffle(opts)  # any order must parse
    return opts


@settings(max_examples=60)
@given(addrs, addrs, u16, u16, u32, u32, flag_bits, u16, scapy_options(), payloads, u16, st.integers(1, 255))
def test_scapy_builds_we_parse(
    src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int, window: int,
    opts: list[tuple[str, object]], payload: bytes, ident: int, ttl: int,
) -> None:  # fmt: skip
    pkt = (
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IP(src=_dotted(src), dst=_dotted(dst), id=ident, ttl=ttl, flags="DF")
        / TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, window=window, options=opts)
        / payload
    )
    frame = bytes(pkt)
    eth = ethernet.parse_ethernet(frame)
    assert eth.ethertype == ethernet.ETHERTYPE_IPV4 and eth.src == b"\x02\x00\x00\x00\x00\x01"
    ip = ipv4.parse_ipv4(eth.payload)  # verifies scapy's header checksum
    assert (ip.src, ip.dst, ip.ident, ip.ttl, ip.proto, ip.dont_fragment) == (src, dst, ident, ttl, 6, True)
    seg = tcp.parse_tcp(ip.payload, pseudo_base_sum(src, dst, 6))  # verifies scapy's TCP checksum
    assert (seg.src_port, seg.dst_port, seg.seq, seg.ack, seg.flags, seg.window) == (
        sport, dport, seq, ack, flags, window
    )  # fmt: skip
    assert bytes(seg.payload) == payload
    expect = dict(opts)
    o = seg.options
    assert o.mss == expect.get("MSS")
    assert o.sack_permitted == ("SAckOK" in expect)
    assert o.wscale == expect.get("WScale")
    assert (o.ts_val, o.ts_ecr) == expect.get("Timestamp", (None, 0))
    sack = expect.get("SAck")
    assert o.sack_blocks == (() if sack is None else (tuple(SeqNum(e) for e in sack),))  # type: ignore[attr-defined]


@st.composite
def our_options(draw: st.DrawFn) -> TcpOptions:
    o = TcpOptions(
        mss=draw(st.none() | u16),
        wscale=draw(st.none() | st.integers(0, 14)),
        sack_permitted=draw(st.booleans()),
    )
    if draw(st.booleans()):
        o.ts_val, o.ts_ecr = draw(u32), draw(u32)
    if draw(st.booleans()):
        o.sack_blocks = ((SeqNum(draw(u32)), SeqNum(draw(u32))),)
    return o


@settings(max_examples=60)
@given(addrs, addrs, u16, u16, u32, u32, flag_bits, u16, our_options(), payloads, u16, st.booleans())
def test_we_emit_scapy_parses(
    src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int, window: int,
    opts: TcpOptions, payload: bytes, ident: int, df: bool,
) -> None:  # fmt: skip
    seg = TcpSegment(sport, dport, SeqNum(seq), SeqNum(ack), flags, window, memoryview(payload), opts)
    tcp_header = tcp.emit_tcp_header(seg, pseudo_base_sum(src, dst, 6))
    ip_header = ipv4.Ipv4HeaderTemplate(src, dst, 6, df=df).header(20 + len(tcp_header) + len(payload), ident)
    frame = ethernet.emit_ethernet(b"\x02" * 6, b"\x04" * 6, ethernet.ETHERTYPE_IPV4) + ip_header + tcp_header
    frame += payload
    pkt = Ether(frame)
    ours_ip, ours_tcp = pkt[IP].chksum, pkt[TCP].chksum
    assert (pkt[IP].src, pkt[IP].dst, pkt[IP].id, pkt[IP].flags.DF) == (_dotted(src), _dotted(dst), ident, df)
    t = pkt[TCP]
    assert (t.sport, t.dport, t.seq, t.ack, int(t.flags), t.window) == (sport, dport, seq, ack, flags, window)
    assert bytes(t.payload) == payload
    got = dict(t.options)
    assert got.get("MSS") == opts.mss and got.get("WScale") == opts.wscale
    assert ("SAckOK" in got) == opts.sack_permitted
    assert got.get("Timestamp") == ((opts.ts_val, opts.ts_ecr) if opts.ts_val is not None else None)
    if opts.sack_blocks:
        assert got["SAck"] == tuple(int(e) for e in opts.sack_blocks[0])
    # scapy recomputes both checksums from scratch; they must equal ours.
    del pkt[IP].chksum
    del pkt[TCP].chksum
    rebuilt = Ether(bytes(pkt))
    assert (rebuilt[IP].chksum, rebuilt[TCP].chksum) == (ours_ip, ours_tcp)


@settings(max_examples=40)
@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.binary(max_size=200), st.booleans())
def test_icmp_echo_both_ways(ident: int, seq: int, data: bytes, request: bool) -> None:
    ours = (icmp.emit_echo_request if request else icmp.emit_echo_reply)(ident, seq, data)
    theirs = ICMP(ours)
    assert (theirs.type, theirs.id, theirs.seq, bytes(theirs.payload)) == (
        8 if request else 0,
        ident,
        seq,
        data,
    )
    built = bytes(ICMP(type=8 if request else 0, id=ident, seq=seq) / data)
    assert built == ours
    msg = icmp.parse_icmp(built)
    assert (msg.ident, msg.seq, bytes(msg.data)) == (ident, seq, data)


@settings(max_examples=30)
@given(st.integers(0, 15), st.integers(0, 0xFFFF), addrs, addrs)
def test_icmp_unreachable_both_ways(code: int, mtu: int, src: bytes, dst: bytes) -> None:
    quote = bytes(IP(src=_dotted(src), dst=_dotted(dst)) / TCP(sport=1, dport=2))[:28]
    mtu = mtu if code == 4 else 0
    ours = icmp.emit_dest_unreachable(code, quote, mtu)
    theirs = ICMP(type=3, code=code, nexthopmtu=mtu) / quote
    assert bytes(theirs) == ours
    msg = icmp.parse_icmp(bytes(theirs))
    assert msg.next_hop_mtu == mtu and msg.quoted_header().dst == dst


@settings(max_examples=30)
@given(st.sampled_from([1, 2]), macs, addrs, macs, addrs, st.integers(0, 0xFFF), st.integers(0, 7))
def test_arp_and_vlan_both_ways(
    op: int, sha: bytes, spa: bytes, tha: bytes, tpa: bytes, vid: int, pcp: int
) -> None:
    theirs = bytes(
        Ether(dst="ff:ff:ff:ff:ff:ff", src=ethernet.mac_to_str(sha))
        / Dot1Q(vlan=vid, prio=pcp)
        / ARP(
            op=op,
            hwsrc=ethernet.mac_to_str(sha),
            psrc=_dotted(spa),
            hwdst=ethernet.mac_to_str(tha),
            pdst=_dotted(tpa),
        )
    )
    f = ethernet.parse_ethernet(theirs)
    assert f.vlan_id == vid and f.pcp == pcp and f.ethertype == ethernet.ETHERTYPE_ARP
    assert arp.parse_arp(f.payload) == arp.ArpPacket(op, sha, spa, tha, tpa)
    ours = ethernet.emit_ethernet(
        ethernet.BROADCAST, sha, ethernet.ETHERTYPE_ARP, (ethernet.VlanTag(vid, pcp),)
    )
    ours += arp.emit_arp(arp.ArpPacket(op, sha, spa, tha, tpa))
    assert ours == theirs


def test_linux_syn_layout_matches_scapy() -> None:
    # The option bytes we emit for a Linux-style SYN are what scapy writes for the same option list.
    opts = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (5, 0)), ("NOP", None), ("WScale", 10)]
    theirs = bytes(TCP(sport=1, dport=2, seq=3, flags="S", window=64240, options=opts))
    syn = TcpSegment(1, 2, SeqNum(3), SeqNum(0), tcp.SYN, 64240, b"",
                     TcpOptions(mss=1460, sack_permitted=True, ts_val=5, ts_ecr=0, wscale=10))  # fmt: skip
    ours = tcp.emit_tcp_header(syn)
    assert ours[20:] == theirs[20:] and ours[:16] == theirs[:16]
    assert struct.unpack_from("!H", ours, 16)[0] == 0
