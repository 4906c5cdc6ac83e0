"""Fragment reassembly (RFC 791 / RFC 815) and fragmentation of our own large datagrams."""

from __future__ import annotations

from conftest import OUR_IP, PEER_IP, echo_request, frame, learn_peer, make_stack, sent
from scapy.layers.inet import ICMP, IP, defragment, fragment
from scapy.layers.l2 import Ether

from tcpchimney.host.reassembly import Reassembler
from tcpchimney.host.stack import HostStack

KEY = (b"\xc6\x12\x00\x02", b"\xc6\x12\x00\x01", 1, 42)


def _pieces(data: bytes, size: int) -> list[tuple[int, bool, bytes]]:
    out = []
    for off in range(0, len(data), size):
        chunk = data[off : off + size]
        out.append((off, off + size < len(data), chunk))
    return out


def test_in_order() -> None:
    counters: dict[str, int] = {}
    r = Reassembler(counters)
    data = bytes(range(256)) * 10
    results = [r.add(KEY, off, more, chunk, 20, 0.0) for off, more, chunk in _pieces(data, 800)]
    assert all(x is None for x in results[:-1])
    assert results[-1] is not None and results[-1].payload == data and results[-1].proto == 1
    assert len(r) == 0 and r.bytes_held == 0 and counters["reassembled"] == 1


def test_out_of_order_and_duplicates() -> None:
    counters: dict[str, int] = {}
    r = Reassembler(counters)
    data = bytes(range(200)) * 20
    pieces = _pieces(data, 504)
    order = [pieces[-1], pieces[2], pieces[0], pieces[2], *pieces[3:-1], pieces[1]]
    results = [r.add(KEY, off, more, chunk, 20, 0.0) for off, more, chunk in order]
    done = [x for x in results if x is not None]
    assert len(done) == 1 and done[0].payload == data
    assert counters["frag_duplicate"] == 1


def test_conflicting_overlap_drops_the_datagram() -> None:
    counters: dict[str, int] = {}
    r = Reassembler(counters)
    assert r.add(KEY, 0, True, b"A" * 16, 20, 0.0) is None
    assert r.add(KEY, 8, True, b"B" * 16, 20, 0.0) is None  # overlaps bytes 8..15
    assert counters["drop_frag_overlap"] == 1 and len(r) == 0 and r.bytes_held == 0
    # the rest of that datagram cannot complete it any more
    assert r.add(KEY, 16, False, b"C" * 8, 20, 0.0) is None


def test_inconsistent_last_fragment_drops_the_datagram() -> None:
    counters: dict[str, int] = {}
    r = Reassembler(counters)
    r.add(KEY, 0, True, b"A" * 16, 20, 0.0)
    r.add(KEY, 32, False, b"A" * 8, 20, 0.0)
    r.add(KEY, 16, False, b"B" * 8, 20, 0.0)  # a second, different end
    assert counters["drop_frag_inconsistent_end"] == 1 and len(r) == 0


def test_non_final_fragment_must_be_a_multiple_of_eight() -> None:
    counters: dict[str, int] = {}
    r = Reassembler(counters)
    assert r.add(KEY, 0, True, b"A" * 10, 20, 0.0) is None
    assert counters["drop_frag_bad_length"] == 1


def test_oversized_datagram_is_refused() -> None:
    counters: dict[str, int] = {}
    r = Reassembler(counters, max_bytes=1 << 20)
    assert r.add(KEY, 65528, False, b"A" * 16, 20, 0.0) is None
    assert counters["drop_frag_bad_length"] == 1


def test_timeout_discards_incomplete_datagrams() -> None:
    counters: dict[str, int] = {}
    r = Reassembler(counters, timeout=30.0)
    r.add(KEY, 0, True, b"A" * 8, 20, 1.0)
    other = (*KEY[:3], 43)
    r.add(other, 0, True, b"A" * 8, 20, 5.0)
    assert r.next_deadline() == 31.0
    assert r.handle_timer(30.9) == 0
    assert r.handle_timer(31.0) == 1 and r.next_deadline() == 35.0
    assert r.add(KEY, 8, False, b"B" * 8, 20, 31.5) is None  # the first half is gone
    assert counters["drop_frag_timeout"] == 1 and r.bytes_held == 16


def test_memory_cap_and_datagram_count_cap() -> None:
    counters: dict[str, int] = {}
    r = Reassembler(counters, max_bytes=4096, max_datagrams=3)
    for ident in range(3):
        r.add((*KEY[:3], ident), 0, True, b"A" * 1024, 20, 0.0)
    assert r.add((*KEY[:3], 99), 0, True, b"A" * 8, 20, 0.0) is None
    assert counters["drop_frag_too_many"] == 1
    assert r.add((*KEY[:3], 0), 1024, True, b"A" * 2048, 20, 0.0) is None
    assert counters["drop_frag_memory"] == 1
    assert r.bytes_held == 3072


def test_stack_reassembles_a_fragmented_echo_and_fragments_the_reply(stack: HostStack) -> None:
    learn_peer(stack)
    payload = bytes(range(256)) * 12  # 3072 bytes: three fragments each way at MTU 1500
    pkt = echo_request(payload=payload, id=777)
    frags = fragment(pkt[IP], fragsize=1480)
    assert len(frags) == 3
    for f in reversed(frags):
        stack.handle_frame(frame(Ether(dst=pkt.dst, src=pkt.src) / f), 0.0)
    out = sent(stack)
    assert len(out) == 3 and all(len(bytes(p)) <= 1514 for p in out)
    assert all(p[IP].src == OUR_IP and p[IP].dst == PEER_IP for p in out)
    (whole,) = defragment([p[IP] for p in out])
    reply = IP(bytes(whole))
    assert reply[ICMP].type == 0 and bytes(reply[ICMP].payload) == payload
    c = stack.counters["ipv4"]
    assert c["reassembled"] == 1 and c["tx_fragmented"] == 1


def test_fragmentation_respects_a_small_mtu() -> None:
    stack = make_stack(mtu=576)
    learn_peer(stack)
    stack.ping(PEER_IP, 3, 1, b"z" * 2000, 0.0)
    out = sent(stack)
    assert len(out) == 4 and all(len(p[IP]) <= 576 for p in out)
    assert all(p[IP].frag * 8 % 8 == 0 for p in out)
    (whole,) = defragment([p[IP] for p in out])
    assert bytes(IP(bytes(whole))[ICMP].payload) == b"z" * 2000
