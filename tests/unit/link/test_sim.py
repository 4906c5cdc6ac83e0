"""The simulated link: virtual time, each impairment's effect on raw frames, the wire model, the capture, and
two HostStacks answering ICMP echo over it (ARP first)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from pathlib import Path

import dpkt
import pytest
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.l2 import ARP, Ether
from scapy.utils import rdpcap

from tcpchimney.host.events import EchoReply
from tcpchimney.host.interface import InterfaceConfig
from tcpchimney.host.stack import HostStack
from tcpchimney.link import sim
from tcpchimney.link.clock import VirtualClock
from tcpchimney.link.sim import Impairments, SimLink, SimTimeout
from tcpchimney.wire.checksum import pseudo_base_sum
from tcpchimney.wire.ethernet import BROADCAST, ETHERTYPE_IPV4, emit_ethernet
from tcpchimney.wire.frame import Frame
from tcpchimney.wire.ipv4 import PROTO_TCP, emit_ipv4
from tcpchimney.wire.seq import SeqNum
from tcpchimney.wire.tcp import ACK, PSH, TcpOptions, TcpSegment, emit_tcp_header

ETHERTYPE_TEST = 0x88B5  # IEEE 802 local experimental ethertype: no stack interprets it


def raw_frame(index: int, size: int = 100, src: int = 1) -> bytes:
    """A test frame of ``size`` bytes carrying ``index`` right after the Ethernet header."""
    head = BROADCAST + bytes([2, 0, 0, 0, 0, src]) + ETHERTYPE_TEST.to_bytes(2, "big")
    body = index.to_bytes(4, "big")
    return head + body + bytes(size - len(head) - len(body))


def index_of(data: bytes) -> int:
    return int.from_bytes(data[14:18], "big")


class Recorder:
    """A tiny node: sends the frames it is given at the given times, records what it receives and its timer
    calls."""

    def __init__(self) -> None:
        self.outbox: list[tuple[float, Frame]] = []
        self.received: list[tuple[float, bytes]] = []
        self.frames: list[Frame] = []
        self.timer_calls: list[float] = []

    def send_at(self, t: float, frame: Frame | bytes) -> None:
        self.outbox.append((t, frame if isinstance(frame, Frame) else Frame(frame)))
        self.outbox.sort(key=lambda item: item[0])

    def handle_frame(self, frame: Frame, now: float) -> None:
        self.received.append((now, frame.tobytes()))
        self.frames.append(frame)

    def handle_timer(self, now: float) -> None:
        self.timer_calls.append(now)

    def frames_to_send(self, now: float) -> list[Frame]:
        due = [f for t, f in self.outbox if t <= now]
        self.outbox = [(t, f) for t, f in self.outbox if t > now]
        return due

    def next_deadline(self) -> float | None:
        return self.outbox[0][0] if self.outbox else None


def pair(imp: Impairments | None = None, seed: int = 0, **link: object) -> tuple[SimLink, Recorder, Recorder]:
    net = SimLink(seed, **link)  # type: ignore[arg-type]
    a, b = Recorder(), Recorder()
    net.attach(a, "a", imp)
    net.attach(b, "b")
    return net, a, b


def send_many(a: Recorder, n: int, gap: float = 0.001, size: int = 100) -> None:
    for i in range(n):
        a.send_at(i * gap, raw_frame(i, size))


def run_all(net: SimLink) -> None:
    while net.step():
        pass


# ---------------------------------------------------------------------------------------------- clock


def test_clock_moves_forward_only() -> None:
    clock = VirtualClock(1.0)
    clock.advance_to(1.0)
    clock.advance_to(2.5)
    assert clock.now == 2.5
    for bad in (2.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            clock.advance_to(bad)
    assert clock.now == 2.5


# ---------------------------------------------------------------------------------------------- set-up


@pytest.mark.parametrize(
    "field, value",
    [
        ("loss", 1.5),
        ("duplicate", -0.1),
        ("reorder", float("nan")),
        ("corrupt", True),
        ("delay", -1.0),
        ("jitter", float("inf")),
        ("reorder_delay", "1ms"),
        ("bandwidth", 0),
    ],
)
def test_impairments_are_validated_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"Impairments.{field}"):
        Impairments(**{field: value})  # type: ignore[arg-type]


def test_attach_names_and_refusals() -> None:
    net = SimLink()
    a, b = Recorder(), Recorder()
    assert net.attach(a) == "node0"
    assert net.attach(b, "b") == "b"
    with pytest.raises(ValueError, match="already attached"):
        net.attach(a, "again")
    with pytest.raises(ValueError, match="'b'"):
        net.attach(Recorder(), "b")
    with pytest.raises(KeyError, match="nope"):
        net.set_impairments("nope", Impairments())
    assert net.names == ["node0", "b"]
    assert set(net.counters["b"]) == set(sim.COUNTER_KEYS)


# ---------------------------------------------------------------------------------------------- time


def test_frames_reach_every_other_node_after_the_delay() -> None:
    net = SimLink(start=10.0)
    a, b, c = Recorder(), Recorder(), Recorder()
    net.attach(a, "a", Impairments(delay=0.25))
    net.attach(b, "b")
    net.attach(c, "c")
    a.send_at(11.0, raw_frame(7))
    assert net.step() and net.now == 11.0  # a's deadline: it sends
    assert net.step() and net.now == 11.25  # the frame arrives
    assert not net.step() and net.now == 11.25  # nothing left: the clock stays put
    assert b.received == c.received == [(11.25, raw_frame(7))]
    assert a.received == []
    counters = net.counters
    assert counters["a"]["tx_frames"] == 1 and counters["a"]["tx_bytes"] == 100
    assert (counters["a"]["delivered"], counters["b"]["delivered"], counters["c"]["delivered"]) == (0, 1, 1)


def test_same_instant_frames_keep_their_order() -> None:
    net, a, b = pair()
    for i in range(20):
        a.send_at(0.5, raw_frame(i))
    run_all(net)
    assert [index_of(d) for _, d in b.received] == list(range(20))
    assert {t for t, _ in b.received} == {0.5}


def test_bandwidth_serialises_each_senders_frames_exactly() -> None:
    net, a, b = pair(Impairments(bandwidth=1024, delay=0.25))  # 128 bytes take 1/8 s
    for i in range(4):
        a.send_at(0.0, raw_frame(i, size=128))
    a.send_at(2.0, raw_frame(4, size=128))  # the transmitter is idle again by then
    run_all(net)
    assert [t for t, _ in b.received] == [0.375, 0.5, 0.625, 0.75, 2.375]
    assert [index_of(d) for _, d in b.received] == [0, 1, 2, 3, 4]


def test_delay_and_jitter_bound_the_arrival_times() -> None:
    net, a, b = pair(Impairments(delay=0.010, jitter=0.005))
    send_many(a, 200, gap=0.1)
    run_all(net)
    assert len(b.received) == 200
    one_way = [t - index_of(d) * 0.1 for t, d in b.received]
    assert all(0.010 - 1e-9 <= d <= 0.015 + 1e-9 for d in one_way)
    assert max(one_way) - min(one_way) > 0.004  # jitter spreads them


def test_run_for_lands_on_the_exact_end_time() -> None:
    net, a, b = pair(Impairments(delay=1.0))
    a.send_at(0.5, raw_frame(1))
    net.run_for(1.0)
    assert net.now == 1.0 and b.received == []  # due at 1.5, not yet
    net.run_for(1.0)
    assert net.now == 2.0 and b.received == [(1.5, raw_frame(1))]


def test_run_until_checks_before_the_first_step_and_after_each() -> None:
    net, a, b = pair(Impairments(delay=0.1))
    send_many(a, 3, gap=1.0)
    net.run_until(lambda: True, timeout=10)
    assert net.now == 0.0 and b.received == []  # nothing processed: the predicate already held
    net.run_until(lambda: len(b.received) == 2, timeout=10)
    assert net.now == pytest.approx(1.1) and len(b.received) == 2


def test_run_until_raises_sim_timeout_with_time_and_counters() -> None:
    net, a, b = pair(Impairments(delay=0.1))
    send_many(a, 100, gap=1.0)
    with pytest.raises(SimTimeout) as info:
        net.run_until(lambda: len(b.received) > 50, timeout=5.0)
    assert isinstance(info.value, TimeoutError)
    assert "t=5.000000000" in str(info.value) and "'tx_frames': 6" in str(info.value)
    assert net.now == 5.0 and len(b.received) == 5
    idle = SimLink()
    with pytest.raises(SimTimeout, match="nothing is scheduled"):
        idle.run_until(lambda: False, timeout=3)
    assert idle.now == 3.0


# ---------------------------------------------------------------------------------------------- impairments


def test_loss_drops_a_seeded_share_of_frames() -> None:
    net, a, b = pair(Impairments(loss=0.3), seed=5)
    send_many(a, 1000)
    run_all(net)
    lost = net.counters["a"]["dropped_loss"]
    assert 220 <= lost <= 380
    assert len(b.received) == 1000 - lost == net.counters["b"]["delivered"]
    assert len({index_of(d) for _, d in b.received}) == len(b.received)


def test_duplication_delivers_extra_identical_copies() -> None:
    net, a, b = pair(Impairments(duplicate=0.25), seed=5)
    send_many(a, 1000)
    run_all(net)
    dup = net.counters["a"]["duplicated"]
    assert 170 <= dup <= 330 and len(b.received) == 1000 + dup
    indices = [index_of(d) for _, d in b.received]
    assert sorted(set(indices)) == list(range(1000))
    assert sum(1 for x, y in itertools.pairwise(indices) if x == y) == dup  # copies right behind


def test_reordering_holds_frames_back_so_later_ones_overtake() -> None:
    net, a, b = pair(Impairments(reorder=0.2, reorder_delay=0.0035), seed=5)
    send_many(a, 500)
    run_all(net)
    held = net.counters["a"]["reordered"]
    assert 60 <= held <= 140
    indices = [index_of(d) for _, d in b.received]
    assert sorted(indices) == list(range(500))  # every frame once
    inversions = sum(1 for x, y in itertools.pairwise(indices) if x > y)
    assert inversions >= held // 2


def one_bit_flips(sent: bytes, got: bytes) -> list[int]:
    """Offsets of the bytes that differ, after checking each differs in exactly one bit."""
    diff = [i for i, (x, y) in enumerate(zip(sent, got, strict=True)) if x != y]
    assert all(bin(sent[i] ^ got[i]).count("1") == 1 for i in diff)
    return diff


def test_corruption_flips_exactly_one_bit_past_the_ethernet_header() -> None:
    net, a, b = pair(Impairments(corrupt=0.3), seed=5)
    for i in range(300):
        a.send_at(i * 0.001, raw_frame(0))
    run_all(net)
    flips = [one_bit_flips(raw_frame(0), d) for _, d in b.received]
    damaged = [f for f in flips if f]
    assert len(b.received) == 300
    assert len(damaged) == net.counters["a"]["corrupted"] and 50 <= len(damaged) <= 130
    assert all(len(f) == 1 and f[0] >= 14 for f in damaged)
    assert len({f[0] for f in damaged}) > 20  # a random byte, not always the same one


def test_corruption_of_short_frames_lands_in_the_padding_or_body() -> None:
    net, a, b = pair(Impairments(corrupt=1.0), seed=9)
    short = raw_frame(5)[:20]
    for i in range(100):
        a.send_at(i * 0.001, short)
    run_all(net)
    padded = short + bytes(40)  # the wire pads to 60 bytes before the bits fly
    flips = [one_bit_flips(padded, d) for _, d in b.received]
    assert all(len(f) == 1 and 14 <= f[0] < 60 for f in flips) and len(flips) == 100
    assert net.counters["a"]["corrupted"] == 100


def test_impairments_apply_to_the_sender_only_and_can_change() -> None:
    net, a, b = pair(Impairments(loss=1.0))
    b.send_at(0.0, raw_frame(1))
    a.send_at(0.0, raw_frame(2))
    run_all(net)
    assert a.received and not b.received  # a's frames are lost, b's are not
    net.set_impairments("a", Impairments())
    assert net.impairments("a") == Impairments()
    a.send_at(1.0, raw_frame(3))
    run_all(net)
    assert [index_of(d) for _, d in b.received] == [3]


def delivery_log(seed: int) -> list[tuple[float, bytes]]:
    imp = Impairments(loss=0.1, duplicate=0.1, reorder=0.1, corrupt=0.1, delay=0.002, jitter=0.001)
    net, a, b = pair(imp, seed=seed)
    send_many(a, 300)
    for i in range(300):
        b.send_at(i * 0.0015, raw_frame(10_000 + i, src=2))
    net.set_impairments("b", imp)
    run_all(net)
    return [*a.received, (-1.0, b""), *b.received]


def test_same_seed_same_delivery_log_and_different_seed_differs() -> None:
    assert delivery_log(11) == delivery_log(11)
    assert delivery_log(11) != delivery_log(12)


# ---------------------------------------------------------------------------------------------- wire model


def tso_frame(payload: bytes, gso_size: int = 1448) -> Frame:
    ip_a, ip_b = bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2])
    seg = TcpSegment(
        40000, 80, SeqNum(1000), SeqNum(1), ACK | PSH, 500, payload, TcpOptions(ts_val=1, ts_ecr=2)
    )
    header = emit_tcp_header(seg, pseudo_base_sum(ip_a, ip_b, PROTO_TCP), csum_partial=True)
    ip = emit_ipv4(ip_a, ip_b, PROTO_TCP, len(header) + len(payload), 9, flags_frag=0x4000)
    eth = emit_ethernet(bytes.fromhex("020000000002"), bytes.fromhex("020000000001"), ETHERTYPE_IPV4)
    return Frame(eth + ip + header, memoryview(payload), csum_partial=True, gso_size=gso_size)


def tcp_checksums_ok(data: bytes) -> bool:
    pkt = Ether(data)
    fresh = pkt.copy()
    del fresh[IP].chksum, fresh[TCP].chksum
    again = Ether(bytes(fresh))
    return bool(again[IP].chksum == pkt[IP].chksum and again[TCP].chksum == pkt[TCP].chksum)


def test_without_offloads_super_segments_are_cut_and_checksummed() -> None:
    payload = bytes(range(256)) * 16
    net, a, b = pair()
    a.send_at(0.0, tso_frame(payload))
    run_all(net)
    assert len(b.received) == 3 == net.counters["a"]["tx_frames"]
    assert all(len(d) <= 1514 and tcp_checksums_ok(d) for _, d in b.received)
    assert all(not (f.csum_partial or f.csum_valid or f.gso_size) for f in b.frames)
    assert b"".join(bytes(Ether(d)[TCP].payload) for _, d in b.received) == payload


def test_with_offloads_frames_pass_as_a_device_hands_them_over() -> None:
    payload = bytes(range(256)) * 16
    net, a, b = pair(offloads=True)
    frame = tso_frame(payload)
    a.send_at(0.0, frame)
    run_all(net)
    ((_, data),) = b.received
    (got,) = b.frames
    assert data == frame.tobytes() and got.csum_partial and got.gso_size == 1448 and not got.payload


def test_with_offloads_the_capture_still_shows_the_wire(tmp_path: Path) -> None:
    path = tmp_path / "virtio.pcap"
    net, a, b = pair(offloads=True, pcap=path)
    with net:
        a.send_at(0.0, tso_frame(bytes(4000)))
        run_all(net)
    assert len(b.received) == 1
    pkts = rdpcap(str(path))
    assert len(pkts) == 3 and all(tcp_checksums_ok(bytes(p)) for p in pkts)


def test_with_offloads_corruption_hits_one_wire_ready_piece() -> None:
    net, a, b = pair(Impairments(corrupt=1.0), offloads=True)
    a.send_at(0.0, tso_frame(bytes(4000)))
    run_all(net)
    assert len(b.received) == 3 and not any(f.csum_partial or f.gso_size for f in b.frames)
    assert sum(not tcp_checksums_ok(d) for _, d in b.received) == 1


def test_frames_above_the_mtu_are_dropped_and_short_ones_padded() -> None:
    net, a, b = pair(mtu=1000)
    a.send_at(0.0, raw_frame(1, size=1014))
    a.send_at(0.0, raw_frame(2, size=1015))
    a.send_at(0.0, tso_frame(bytes(3000), gso_size=1000))  # 1052-byte pieces: no wire can carry them
    a.send_at(0.0, raw_frame(3, size=20))
    run_all(net)
    assert [(index_of(d), len(d)) for _, d in b.received] == [(1, 1014), (3, 60)]
    assert net.counters["a"]["dropped_invalid"] == 2


# ---------------------------------------------------------------------------------------------- guards


class StaleNode(Recorder):
    """Keeps reporting a deadline of 1.0 whatever handle_timer is told."""

    def next_deadline(self) -> float | None:
        return 1.0


def test_a_deadline_that_never_moves_is_a_spin_and_named(monkeypatch: pytest.MonkeyPatch) -> None:
    # A real event loop calls such a node again and again at full speed; the link stops and names it
    # instead of hiding the bug (and every later timer of that node behind it).
    monkeypatch.setattr(sim, "MAX_TIMER_ONLY_STEPS", 50)
    net = SimLink()
    stale = StaleNode()
    net.attach(stale, "stale")
    net.attach(Recorder(), "other")
    with pytest.raises(RuntimeError, match=r"'stale'.*due deadline"):
        run_all(net)
    assert len(stale.timer_calls) == 51 and set(stale.timer_calls) == {1.0} and net.now == 1.0


class Rearming(Recorder):
    """Timers as a sorted list; handle_timer runs every due one and may re-arm one "for now" (as a stack
    that switches its offload policy from inside a timer does)."""

    def __init__(self, deadlines: list[float], rearm_now: int = 1) -> None:
        super().__init__()
        self.deadlines = sorted(deadlines)
        self.rearm_now = rearm_now  # how many times to re-arm "now" from inside handle_timer

    def handle_timer(self, now: float) -> None:
        super().handle_timer(now)
        due = [d for d in self.deadlines if d <= now]
        self.deadlines = [d for d in self.deadlines if d > now]
        if due and self.rearm_now:
            self.rearm_now -= 1
            self.deadlines.insert(0, now)

    def next_deadline(self) -> float | None:
        return self.deadlines[0] if self.deadlines else None


def test_a_timer_rearmed_for_now_fires_again_at_once_and_later_timers_still_fire() -> None:
    net = SimLink()
    node = Rearming([1.0, 2.0, 5.0])
    net.attach(node, "node")
    run_all(net)
    assert node.timer_calls == [1.0, 1.0, 2.0, 5.0] and net.now == 5.0


def test_a_node_rearming_now_still_receives_the_frames_of_that_instant() -> None:
    net = SimLink()
    node = Rearming([1.0, 3.0], rearm_now=3)
    sender = Recorder()
    net.attach(node, "node")
    net.attach(sender, "sender")
    sender.send_at(1.0, raw_frame(7))
    run_all(net)
    assert node.timer_calls == [1.0, 1.0, 1.0, 1.0, 3.0]
    assert [(t, index_of(f)) for t, f in node.received] == [(1.0, 7)]


def test_run_until_sees_a_timer_rearmed_for_now() -> None:
    net = SimLink()
    node = Rearming([1.0, 4.0])
    net.attach(node, "node")
    net.run_until(lambda: 4.0 in node.timer_calls, timeout=10.0)
    assert node.timer_calls == [1.0, 1.0, 4.0]


def test_a_node_rearming_now_forever_is_stopped_and_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sim, "MAX_TIMER_ONLY_STEPS", 100)
    net = SimLink()
    net.attach(Recorder(), "quiet")
    forever = Rearming([1.0], rearm_now=10**9)
    net.attach(forever, "forever")
    with pytest.raises(RuntimeError, match="'forever'"):
        run_all(net)
    assert len(forever.timer_calls) == 101 and net.now == 1.0


class Regressing(Recorder):
    """Each call reports a new deadline in the past: a bug the link must name, not spin on."""

    def next_deadline(self) -> float | None:
        return -float(len(self.timer_calls))


def test_a_node_stuck_in_the_past_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sim, "MAX_TIMER_ONLY_STEPS", 50)
    net = SimLink()
    net.attach(Recorder(), "quiet")
    net.attach(Regressing(), "regressing")
    with pytest.raises(RuntimeError, match="'regressing'"):
        run_all(net)


class Echo(Recorder):
    """Sends back every frame it receives, at once: two of them loop forever at zero delay."""

    def handle_frame(self, frame: Frame, now: float) -> None:
        super().handle_frame(frame, now)
        self.send_at(now, frame.tobytes())


def test_a_zero_delay_loop_is_stopped_and_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sim, "MAX_STEPS_PER_INSTANT", 500)
    net = SimLink()
    first, second = Echo(), Echo()
    net.attach(first, "first")
    net.attach(second, "second")
    first.send_at(0.0, raw_frame(1))
    with pytest.raises(RuntimeError, match=r"node '(first|second)'.*zero-delay"):
        run_all(net)


# ---------------------------------------------------------------------------------------------- capture


def test_capture_holds_every_frame_sent_lost_ones_included_in_time_order(tmp_path: Path) -> None:
    path = tmp_path / "link.pcap"
    with SimLink(3, pcap=path) as net:
        a, b = Recorder(), Recorder()
        net.attach(a, "a", Impairments(loss=0.5, bandwidth=10_000))
        net.attach(b, "b", Impairments(delay=0.001))
        for i in range(20):
            a.send_at(0.0, raw_frame(i, size=500))  # queued behind the bandwidth: stamped up to 0.95 s
            b.send_at(i * 0.02, raw_frame(100 + i, src=2))
        run_all(net)
        lost = net.counters["a"]["dropped_loss"]
    pkts = rdpcap(str(path))
    assert 0 < lost < 20 and len(pkts) == 40
    times = [float(p.time) for p in pkts]
    assert times == sorted(times)
    a_times = [float(p.time) for p in pkts if p.src == "02:00:00:00:00:01"]
    assert a_times == pytest.approx([i * 0.05 for i in range(20)])  # transmit start, not arrival


# ---------------------------------------------------------------------------------------------- two stacks


def stacks(loss: float = 0.0, seed: int = 1, **link: object) -> tuple[SimLink, HostStack, HostStack]:
    a = HostStack(
        InterfaceConfig.parse("02:00:00:00:00:01", "198.18.0.1/24"), secret=b"x" * 16, rng=random.Random(1)
    )
    b = HostStack(
        InterfaceConfig.parse("02:00:00:00:00:02", "198.18.0.2/24"), secret=b"y" * 16, rng=random.Random(2)
    )
    net = SimLink(seed, **link)  # type: ignore[arg-type]
    imp = Impairments(loss=loss, delay=0.0005)
    net.attach(a, "a", imp)
    net.attach(b, "b", imp)
    return net, a, b


def replies(stack: HostStack) -> Callable[[], list[EchoReply]]:
    got: list[EchoReply] = []

    def poll() -> list[EchoReply]:
        while (ev := stack.next_event()) is not None:
            if isinstance(ev, EchoReply):
                got.append(ev)
        return got

    return poll


def test_two_stacks_ping_with_arp_first(tmp_path: Path) -> None:
    path = tmp_path / "ping.pcap"
    net, a, _b = stacks(pcap=path)
    with net:
        poll = replies(a)
        for seq in range(1, 4):
            a.ping("198.18.0.2", 77, seq, b"payload-%d" % seq, net.now)
            net.run_until(lambda s=seq: len(poll()) == s, timeout=2.0)  # type: ignore[misc]
        assert [(r.seq, r.payload, r.src_ip) for r in poll()] == [
            (s, b"payload-%d" % s, bytes([198, 18, 0, 2])) for s in (1, 2, 3)
        ]
        assert poll()[0].rtt == pytest.approx(0.002)  # ARP request/reply, then echo request/reply
        assert poll()[1].rtt == pytest.approx(0.001)
        sent = net.counters["a"]["tx_frames"] + net.counters["b"]["tx_frames"]
    pkts = rdpcap(str(path))
    assert len(pkts) == sent == 8
    assert ARP in pkts[0] and pkts[0][ARP].op == 1 and ARP in pkts[1] and pkts[1][ARP].op == 2
    assert [p[ICMP].type for p in pkts[2:]] == [8, 0] * 3
    times = [float(p.time) for p in pkts]
    assert times == sorted(times)
    with path.open("rb") as f:
        records = list(dpkt.pcap.Reader(f))
    assert len(records) == 8
    decoded = [dpkt.ethernet.Ethernet(buf) for _, buf in records]
    assert isinstance(decoded[0].data, dpkt.arp.ARP)
    assert all(
        isinstance(e.data, dpkt.ip.IP) and isinstance(e.data.data, dpkt.icmp.ICMP) for e in decoded[2:]
    )
    stamps = [float(ts) for ts, _ in records]
    assert stamps == sorted(stamps)


def test_two_stacks_ping_through_loss() -> None:
    net, a, _b = stacks(loss=0.3, seed=4)
    poll = replies(a)
    for seq in range(40):
        a.ping("198.18.0.2", 1, seq, b"x" * 32, net.now)
        net.run_for(0.5)
    answered = {r.seq for r in poll()}
    lost = net.counters["a"]["dropped_loss"] + net.counters["b"]["dropped_loss"]
    assert lost > 0 and 5 <= len(answered) < 40  # ARP retries get through; some echoes do not


def test_two_stacks_ping_is_deterministic() -> None:
    def run() -> list[tuple[int, float | None]]:
        net, a, _ = stacks(loss=0.3, seed=8)
        poll = replies(a)
        for seq in range(15):
            a.ping("198.18.0.2", 1, seq, b"x", net.now)
            net.run_for(0.3)
        return [(r.seq, r.rtt) for r in poll()]

    assert run() == run()
