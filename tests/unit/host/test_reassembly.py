"""Fragment reassembly (RFC 791 / RFC 815) and fragmentation of our own large datagrams."""

from __future__ import annotations

import tracemalloc

from conftest import OUR_IP, PEER_IP, echo_request, frame, learn_peer, make_stack, sent
from scapy.layers.inet import ICMP, IP, defragment, fragment
from scapy.layers.l2 import Ether

from tcpchimney.host.reassembly import FRAGMENT_OVERHEAD, QUEUE_OVERHEAD, Reassembled, Reassembler
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
    assert len(r) == 0 and r.memory == 0 and counters["reassembled"] == 1


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
    assert counters["drop_frag_overlap"] == 1 and r.memory == QUEUE_OVERHEAD  # a tombstone, nothing held
    # RFC 5722: the fragments still to come are discarded too, even those that would complete it again
    assert r.add(KEY, 0, True, b"A" * 16, 20, 0.1) is None
    assert r.add(KEY, 16, False, b"C" * 8, 20, 0.2) is None
    assert counters["drop_frag_discarded"] == 2 and r.memory == QUEUE_OVERHEAD
    assert r.handle_timer(30.0) == 0 and len(r) == 0 and r.memory == 0  # gone, counted once (as overlap)
    assert "drop_frag_timeout" not in counters
    # ... after which the same key may start a new datagram
    r.add(KEY, 16, False, b"C" * 8, 20, 31.0)
    assert r.add(KEY, 0, True, b"A" * 16, 20, 31.0) == Reassembled(KEY[0], KEY[1], 1, b"A" * 16 + b"C" * 8)


def test_an_overlap_from_either_side_and_a_covering_fragment_are_caught() -> None:
    for first, second in (((8, 16), (0, 16)), ((0, 32), (8, 8)), ((8, 8), (0, 32)), ((0, 16), (8, 8))):
        counters: dict[str, int] = {}
        r = Reassembler(counters)
        r.add(KEY, first[0], True, b"A" * first[1], 20, 0.0)
        r.add(KEY, second[0], True, b"B" * second[1], 20, 0.0)
        assert counters == {"frag_rx": 2, "drop_frag_overlap": 1}, (first, second)


def test_fragments_that_only_touch_are_no_overlap() -> None:
    counters: dict[str, int] = {}
    r = Reassembler(counters)
    r.add(KEY, 8, True, b"B" * 8, 20, 0.0)
    r.add(KEY, 16, False, b"C" * 8, 20, 0.0)
    whole = r.add(KEY, 0, True, b"A" * 8, 20, 0.0)
    assert whole is not None and whole.payload == b"A" * 8 + b"B" * 8 + b"C" * 8
    assert "drop_frag_overlap" not in counters


def test_inconsistent_last_fragment_drops_the_datagram() -> None:
    counters: dict[str, int] = {}
    r = Reassembler(counters)
    r.add(KEY, 0, True, b"A" * 16, 20, 0.0)
    r.add(KEY, 32, False, b"A" * 8, 20, 0.0)
    r.add(KEY, 16, False, b"B" * 8, 20, 0.0)  # a second, different end
    assert counters["drop_frag_inconsistent_end"] == 1 and r.memory == QUEUE_OVERHEAD  # a tombstone
    assert r.add(KEY, 16, True, b"C" * 16, 20, 0.0) is None and counters["drop_frag_discarded"] == 1


def test_non_final_fragment_must_be_a_multiple_of_eight() -> None:
    counters: dict[str, int] = {}
    r = Reassembler(counters)
    assert r.add(KEY, 0, True, b"A" * 10, 20, 0.0) is None
    assert counters["drop_frag_bad_length"] == 1


def test_oversized_datagram_is_refused() -> None:
    counters: dict[str, int] = {}
    r = Reassembler(counters)
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
    assert counters["drop_frag_timeout"] == 1
    assert r.memory == 2 * (QUEUE_OVERHEAD + FRAGMENT_OVERHEAD + 8)


def test_memory_is_charged_per_fragment_and_per_datagram() -> None:
    r = Reassembler({})
    r.add(KEY, 0, True, b"A" * 1024, 20, 0.0)
    assert r.memory == QUEUE_OVERHEAD + FRAGMENT_OVERHEAD + 1024
    r.add(KEY, 1024, True, b"A" * 8, 20, 0.0)
    r.add((*KEY[:3], 43), 0, True, b"A" * 8, 20, 0.0)
    assert r.memory == 2 * QUEUE_OVERHEAD + 3 * FRAGMENT_OVERHEAD + 1040
    r.add(KEY, 1032, True, b"A" * 8, 20, 0.0)  # a duplicate costs nothing
    r.add(KEY, 1032, True, b"A" * 8, 20, 0.0)
    assert r.memory == 2 * QUEUE_OVERHEAD + 4 * FRAGMENT_OVERHEAD + 1048


def test_above_the_high_threshold_the_oldest_go_until_the_low_threshold_holds() -> None:
    counters: dict[str, int] = {}
    each = QUEUE_OVERHEAD + FRAGMENT_OVERHEAD + 8
    r = Reassembler(counters, high_thresh=10 * each, low_thresh=6 * each)
    for ident in range(10):
        r.add((*KEY[:3], ident), 0, True, b"A" * 8, 20, float(ident))
    assert len(r) == 10 and r.memory == 10 * each and "drop_frag_evicted" not in counters
    r.add((*KEY[:3], 10), 0, True, b"A" * 8, 20, 10.0)  # the eleventh passes the high threshold
    assert len(r) == 6 and r.memory == 6 * each and counters["drop_frag_evicted"] == 5
    assert r.next_deadline() == 5.0 + r.timeout  # datagrams 0..4 went, the oldest
    for ident in (10, 5):  # the newest and the oldest left both complete
        whole = r.add((*KEY[:3], ident), 8, False, b"B" * 8, 20, 10.0)
        assert whole is not None and whole.payload == b"A" * 8 + b"B" * 8
    assert r.add((*KEY[:3], 4), 8, False, b"B" * 8, 20, 10.0) is None  # its first half was evicted


def test_a_datagram_completed_by_the_fragment_that_passes_the_threshold_is_delivered() -> None:
    counters: dict[str, int] = {}
    r = Reassembler(counters, high_thresh=3000, low_thresh=0)
    r.add(KEY, 0, True, b"A" * 1000, 20, 0.0)
    whole = r.add(KEY, 1000, False, b"B" * 1000, 20, 0.0)
    assert whole is not None and len(whole.payload) == 2000 and "drop_frag_evicted" not in counters


def test_a_junk_flood_is_bounded_in_real_memory_and_a_fresh_datagram_still_completes() -> None:
    counters: dict[str, int] = {}
    r = Reassembler(counters, high_thresh=1 << 20, low_thresh=3 << 18)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(20_000):  # 8-byte first fragments, each its own datagram, never completed
            r.add((bytes([198, 18, i >> 8 & 255, i & 255]), KEY[1], 17, i), 0, True, b"J" * 8, 20, 0.0)
            assert r.memory <= r.high_thresh
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held <= r.memory <= r.high_thresh, "the charge must not under-count what is really held"
    assert counters["drop_frag_evicted"] > 15_000 and len(r) < 2_000
    r.add(KEY, 0, True, b"A" * 1480, 20, 1.0)
    whole = r.add(KEY, 1480, False, b"B" * 100, 20, 1.0)
    assert whole is not None and whole.payload == b"A" * 1480 + b"B" * 100


def test_a_zero_length_middle_fragment_is_dropped_alone() -> None:
    counters: dict[str, int] = {}
    r = Reassembler(counters)
    r.add(KEY, 0, True, b"A" * 8, 20, 0.0)
    assert r.add(KEY, 8, True, b"", 20, 0.0) is None
    assert counters["drop_frag_bad_length"] == 1
    assert r.add(KEY, 8, False, b"B", 20, 0.0) is not None


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
