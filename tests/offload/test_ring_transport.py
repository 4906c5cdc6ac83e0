"""The target behind the NIC process's ring transport (arena, rings, codec, ``ProcessTarget``), both ends in
this process on the simulated link (``nic.loopback``): the offload suite holds through it (a subset here;
``make test-rings`` runs all of tests/offload that way), and a NIC that dies or breaks the protocol costs
the host no exception and no hang: what it held is reset, what it never took goes on, and the host then
carries every connection itself.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from offload_harness import (
    PROFILES,
    Net,
    Stream,
    check_streams,
    check_wire_consistent,
    exchange,
    make_net,
    payload,
    read_all,
)
from test_differential import SCRIPTS, run_script

from tcpchimney.chimney.indications import PeerReset
from tcpchimney.chimney.reason import Reason
from tcpchimney.host.events import Offloaded, Uploaded
from tcpchimney.host.offload import OffloadState
from tcpchimney.nic.descriptors import RECORD_COMMIT_OFF, RECORD_SIZE, RecordKind, RingId
from tcpchimney.nic.loopback import LoopbackNic
from tcpchimney.tcp.events import ConnectionReset, PeerClosed
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire.tcp import RST

_SETTINGS = settings(
    max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


@_SETTINGS
@given(script=st.sampled_from(sorted(SCRIPTS)), seed=st.integers(1, 10_000), a_client=st.booleans())
def test_through_the_rings_the_wire_is_the_in_process_targets(script: str, seed: int, a_client: bool) -> None:
    """The same target code behind the codec and the rings: the same application streams and the same
    segments on the wire as with the target called in-process."""
    inline = run_script(script, seed, "offload", "clean", a_client, transport="inline")
    rings = run_script(script, seed, "offload", "clean", a_client, transport="rings")
    check_streams(rings)
    assert rings.net.events(Offloaded)
    assert rings.streams() == inline.streams()
    assert rings.ends() == inline.ends()
    assert rings.trace == inline.trace


@_SETTINGS
@given(
    script=st.sampled_from(sorted(SCRIPTS)),
    seed=st.integers(1, 10_000),
    profile=st.sampled_from(sorted(PROFILES)),
    toggles=st.lists(st.floats(0.0, 0.06), min_size=1, max_size=8),
)
def test_through_the_rings_handoffs_at_random_points_change_nothing(
    script: str, seed: int, profile: str, toggles: list[float]
) -> None:
    host = run_script(script, seed, "host", profile)
    moved = run_script(script, seed, "handoff", profile, toggles=tuple(toggles), transport="rings")
    check_streams(moved)
    check_wire_consistent(moved)
    assert moved.streams() == host.streams()
    assert moved.ends() == host.ends()


# ---------------------------------------------------------------------------------------------- failures


def _nic(net: Net) -> LoopbackNic:
    node = net.link._ports[0].node  # the node attached as "a"
    assert isinstance(node, LoopbackNic)
    return node


def _under_way(seed: int) -> tuple[Net, list[tuple[object, object]], list[Stream]]:
    net = make_net(seed, transport="rings")
    pairs = [net.connect(port=7 + i) for i in range(3)]
    for a, _ in pairs:
        net.wait_offloaded(a)
    streams = [Stream(a, b, payload(300_000, i)) for i, (a, b) in enumerate(pairs)]
    streams += [Stream(b, a, payload(200_000, 10 + i)) for i, (a, b) in enumerate(pairs)]
    for stream in streams:
        stream.step()
    net.run_for(0.002)
    return net, pairs, streams  # type: ignore[return-value]


def _no_reset(net: Net) -> None:
    resets = [(d, s) for _, d, s in net.wire.segments() if s.flags & RST]
    assert resets == [], f"{len(resets)} RST on the wire, the first {resets[0]}"


def _exact(streams: list[Stream]) -> None:
    for stream in streams:
        assert bytes(stream.got) == bytes(stream.data), f"{len(stream.got)} of {len(stream.data)} bytes"


def test_a_dead_nic_loses_no_connection_no_byte_and_sends_no_reset() -> None:
    """The NIC dies mid-transfer in both directions: every connection it held is rebuilt on the host from the
    arena (``Uploaded`` NIC_FAILED), each stream arrives exact, and no RST crosses the wire."""
    net, pairs, streams = _under_way(61)
    nic = _nic(net)
    nic.fail("killed")
    exchange(net, streams, timeout=30.0)
    _exact(streams)
    _no_reset(net)
    assert all(a.offload_state is OffloadState.IN_HOST for a, _ in pairs)  # type: ignore[attr-defined]
    assert not any(net.has_event(a, ConnectionReset) for a, _ in pairs)  # type: ignore[arg-type]
    reasons = [e.reason for e in net.events(Uploaded)]  # type: ignore[attr-defined]
    assert reasons.count(Reason.NIC_FAILED) == len(pairs)
    counters = nic.target.transport_counters()
    assert counters["recovered"] == len(pairs) and counters["recovery_lost"] == 0
    assert net.a.internal_errors == []


def test_bytes_the_nic_acknowledged_but_the_host_never_took_come_back_from_the_rx_buffer() -> None:
    """The application does not read, so the NIC keeps what it acknowledged beyond the host's buffer (its
    indication only partly taken): those bytes exist nowhere but in the NIC and in the RX buffer it wrote
    before acknowledging them. After its death they reach the application exactly once."""
    net = make_net(71, transport="rings")
    a, b = net.connect(port=7)
    net.wait_offloaded(a)
    data = payload(2_500_000, 71)
    stream = Stream(b, a, data)
    for _ in range(100):  # b writes, a reads nothing: both windows fill
        while stream.sent < len(data) and (n := b.send(stream.data[stream.sent : stream.sent + 65536])):
            stream.sent += n
        net.run_for(0.01)
    nic = _nic(net)
    off = a.offload
    assert off is not None and off.target_holds, "the NIC must hold bytes the host did not take"
    nic.fail("killed")
    exchange(net, [stream], timeout=60.0)
    _exact([stream])
    _no_reset(net)
    assert nic.target.transport_counters()["recovered_rx_bytes"] > 0


def test_a_death_before_the_window_update_left_costs_the_peer_no_persist_timeout() -> None:
    """The application stopped reading, so the NIC closed its window. The application's read reopens it, and
    the NIC dies in that turn after committing and publishing (the record has the open window) but before
    writing the ACK that announces it: the peer still sees a zero window. The host's rebuilt connection
    announces the window at once instead of leaving the peer to its persist probe (against Linux: 200 ms of
    a stalled stream, bench/nic_recovery.py)."""
    net = make_net(72, transport="rings")
    a, b = net.connect(port=7)
    net.wait_offloaded(a)
    data = payload(3_000_000, 72)
    stream = Stream(b, a, data)

    def closed() -> bool:
        while stream.sent < len(data) and (n := b.send(stream.data[stream.sent : stream.sent + 65536])):
            stream.sent += n
        return b.conn.snd_wnd == 0 and b.conn.persisting

    net.run_until(closed, 30.0)
    probe = b.conn.rto_deadline
    nic = _nic(net)
    assert nic.core is not None and probe is not None
    nic.core.crash.arm("after_publish")
    stream.step()  # the read: the next turn indicates the rest, commits the open window, dies before its ACK
    net.run_for(0.001)
    assert nic.core is None, "the NIC died at after_publish"
    net.run_until(lambda: b.conn.snd_wnd > 0, 5.0)
    assert net.now < probe, "the peer heard of the open window before its persist probe was due"
    exchange(net, [stream], timeout=60.0)
    _exact([stream])
    _no_reset(net)


@pytest.mark.parametrize("lie", ["rcv_nxt_ahead", "rcv_nxt_behind", "torn"])
def test_a_record_that_lies_costs_its_connection_only(lie: str) -> None:
    """A dead NIC left one connection's record out of range (RCV.NXT beyond its RX buffer, or behind what
    the host already took) or torn: that connection is reset, as one whose state is lost; the others are
    rebuilt exact; nothing raises and nothing is read outside the buffer."""
    net, pairs, streams = _under_way(72)
    nic = _nic(net)
    victim = pairs[0][0]
    off = victim.offload  # type: ignore[attr-defined]
    shadow = nic.target.recovery.shadows.by_host[off.handle]
    record = nic.nic_arena.read_record(shadow.slot)
    assert record is not None
    if lie == "torn":
        base = nic.nic_arena.layout.records_off + shadow.slot * RECORD_SIZE
        nic.nic_arena.store(base + RECORD_COMMIT_OFF, nic.nic_arena.load(base + RECORD_COMMIT_OFF) + 2)
    else:
        d0 = shadow.snap.delegated
        took = int(d0.buffered_start + len(d0.buffered_data)) + shadow.taken  # what the host took, extended
        moved = took + 10 * shadow.rx[1] if lie == "rcv_nxt_ahead" else took - 1
        nic.nic_arena.commit(shadow.slot, record._replace(rcv_nxt=moved, rcv_adv=max(moved, record.rcv_adv)))
    nic.frozen = True
    nic.fail("killed")
    others = [s for s in streams if victim not in (s.src, s.dst)]
    exchange(net, others, timeout=30.0)
    _exact(others)
    net.run_until(lambda: net.has_event(victim, ConnectionReset), 10.0)
    counters = nic.target.transport_counters()
    assert counters["recovery_lost"] == 1 and counters["recovered"] == len(pairs) - 1
    assert all("lost" in e for e in net.a.internal_errors), net.a.internal_errors  # the fault, no bug


def _held_in_close_wait(net: Net, a: object, b: object, data: bytes) -> bytearray:
    """b sends ``data`` and its FIN; a reads slowly, until the NIC is in CLOSE-WAIT with bytes a has not
    taken. Returns what a read."""
    nic, got, sent = _nic(net), bytearray(), 0
    for i in range(400):
        while sent < len(data) and (n := b.send(data[sent : sent + 65536])):  # type: ignore[attr-defined]
            sent += n
        if sent == len(data):
            b.shutdown()  # type: ignore[attr-defined]
        net.run_for(0.01)
        entry = next(iter(nic.software.table.conns.values()), None)
        if entry is not None and entry.conn.state is TcpState.CLOSE_WAIT and entry.conn.rcvbuf.readable:
            return got
        if i % 20 == 19:
            got += a.receive(300_000)  # type: ignore[attr-defined]
    raise AssertionError("the NIC never held bytes in CLOSE-WAIT")


def test_a_connection_closed_on_the_nic_with_bytes_held_comes_back_exact() -> None:
    """The peer's FIN is in, the host shuts down, the NIC goes LAST-ACK -> CLOSED while it still holds bytes
    the application has not read, then dies: the application gets every byte once and EOF, the connection
    ends CLOSED (the FIN stays counted in the record after CLOSED)."""
    net = make_net(71, transport="rings")
    a, b = net.connect(port=7)
    net.wait_offloaded(a)
    data = payload(1_600_000, 71)
    got = _held_in_close_wait(net, a, b, data)
    a.shutdown()
    net.run_for(0.05)
    _nic(net).fail("killed")
    for _ in range(300):
        got += a.receive(1 << 20)
        net.run_for(0.01)
    assert bytes(got) == data
    assert net.has_event(a, PeerClosed) and not net.has_event(a, ConnectionReset)
    assert a.conn.state is TcpState.CLOSED
    assert _nic(net).target.transport_counters()["recovery_lost"] == 0


def test_the_fin_that_came_first_decides_the_rebuilt_state() -> None:
    """Peer FIN first (CLOSE-WAIT), then the host's shutdown (LAST-ACK): a NIC that dies as the peer
    acknowledges our FIN is rebuilt from its own state, so the host ends CLOSED, not in TIME-WAIT."""
    net = make_net(72, transport="rings")
    a, b = net.connect(port=7)
    net.wait_offloaded(a)
    data = payload(20_000, 3)
    b.send(data)
    b.shutdown()
    got = bytearray()
    for _ in range(50):
        net.run_for(0.01)
        got += a.receive(1 << 20)
    nic = _nic(net)
    assert nic.core is not None
    nic.core.crash.arm("after_commit")  # dies in the turn that sees the ACK of our FIN
    a.shutdown()
    net.run_for(0.5)
    assert nic.core is None and bytes(got) == data
    assert a.offload_state is OffloadState.IN_HOST and a.conn.state is TcpState.CLOSED
    assert not net.has_event(a, ConnectionReset)


def _kill_and_restart(net: Net, nic: LoopbackNic, streams: list[Stream], kills: list[float]) -> None:
    """Kill the NIC at each of ``kills`` (seconds apart), restarting it each time, during the streams."""
    for gap in kills:
        net.run_for(gap)
        for stream in streams:
            stream.step()
        if nic.core is None:
            nic.restart()
            continue
        nic.fail("killed")
        nic.restart()


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(1, 10_000),
    profile=st.sampled_from(["clean", "lossy"]),
    kills=st.lists(st.floats(0.0005, 0.05), min_size=1, max_size=6),
)
def test_kills_at_random_moments_with_restarts_lose_nothing(
    seed: int, profile: str, kills: list[float]
) -> None:
    """Deaths at random instants, each followed by a new NIC the policy offloads to again: the streams in
    both directions arrive exact, and neither side ever sends an RST."""
    imp = PROFILES[profile]
    net = make_net(seed, transport="rings", imp_a=imp, imp_b=imp)
    pairs = [net.connect(port=7 + i) for i in range(2)]
    for a, _ in pairs:
        net.wait_offloaded(a)
    streams = [Stream(a, b, payload(250_000, seed + i)) for i, (a, b) in enumerate(pairs)]
    streams += [Stream(b, a, payload(150_000, seed + 10 + i)) for i, (a, b) in enumerate(pairs)]
    nic = _nic(net)
    _kill_and_restart(net, nic, streams, kills)
    exchange(net, streams, timeout=60.0)
    _exact(streams)
    _no_reset(net)
    assert nic.target.transport_counters()["recovery_lost"] == 0
    assert net.a.internal_errors == [] and net.b.internal_errors == []


@pytest.mark.parametrize(
    "point", ["after_place", "after_commit", "after_publish", "mid_initiate", "mid_terminate"]
)
def test_a_death_at_each_crash_point_loses_nothing(point: str) -> None:
    """The NIC dies inside a turn at each named point (bytes placed but not committed, committed but not
    published, published but the ACKs not sent, in the middle of a hand-off): nothing is lost."""
    net, pairs, streams = _under_way(70)
    nic = _nic(net)
    assert nic.core is not None
    if point == "mid_initiate":
        for a, _ in pairs:
            net.a.upload(a, Reason.UPLOAD_ALL)  # type: ignore[arg-type]
        net.run_until(lambda: all(a.offload_state is OffloadState.IN_HOST for a, _ in pairs), 5.0)  # type: ignore[attr-defined]
        nic.core.crash.arm(point, after=2)
        for a, _ in pairs:
            net.a.offload_now(a)  # type: ignore[arg-type]
    elif point == "mid_terminate":
        nic.core.crash.arm(point, after=2)
        for a, _ in pairs:
            net.a.upload(a, Reason.UPLOAD_ALL)  # type: ignore[arg-type]
    else:
        nic.core.crash.arm(point, after=3)
    for _ in range(40):
        if nic.core is None:
            break
        net.run_for(0.002)
        for stream in streams:
            stream.step()
    assert nic.core is None, f"{point} never reached"
    nic.restart()
    exchange(net, streams, timeout=60.0)
    _exact(streams)
    _no_reset(net)


def test_an_initiate_the_nic_never_took_fails_and_the_connection_goes_on_byte_exact() -> None:
    """A stopped NIC (it takes no request, sends nothing) is then killed: the initiate it never answered
    fails (the NIC put nothing of that connection on the wire, nic/core.py), so the host keeps the
    connection, and the transfer ends byte-exact."""
    net = make_net(62, transport="rings", policy=None)
    a, b = net.connect()
    nic = _nic(net)
    data = payload(150_000, 62)
    stream = Stream(a, b, data)
    stream.step()
    net.run_for(0.005)
    nic.frozen = True
    assert net.a.offload_now(a) is None
    net.run_for(0.01)
    assert a.offload_state is OffloadState.OFFLOADING
    nic.fail("killed")
    exchange(net, [stream, Stream(b, a, data[:5000])])
    assert a.offload_state is OffloadState.IN_HOST and not net.has_event(a, ConnectionReset)


def test_a_nic_that_writes_garbage_is_fenced_and_its_connections_recovered() -> None:
    """Bytes on N2H_CONTROL that are no message: the host fences the NIC (its ``on_broken``), reads nothing
    more of its rings, and rebuilds its connections from the arena as after a death: nothing is lost."""
    net, _, streams = _under_way(63)
    nic = _nic(net)
    fenced: list[str] = []
    nic.target.on_broken = fenced.append
    ring = nic.nic_arena.byte_producer(RingId.N2H_CONTROL)  # a second producer: a NIC gone astray
    ring.put(RecordKind.CONTROL, b"\xff\xff\xff\xff")
    ring.publish()
    nic.frozen = True
    exchange(net, streams, timeout=30.0)
    assert len(fenced) == 1 and "CodecError" in fenced[0]
    assert nic.target.failed is not None and nic.target.failed.startswith("broken")
    _exact(streams)
    _no_reset(net)


def test_what_the_nic_published_before_it_died_is_still_read() -> None:
    """A PeerReset the NIC put on the ring just before its death reaches the host before the failure."""
    net, pairs, _ = _under_way(64)
    nic = _nic(net)
    a = pairs[0][0]
    off = a.offload  # type: ignore[attr-defined]
    assert off is not None
    nic.frozen = True
    writer = nic.core.outputs if nic.core is not None else None
    assert writer is not None
    writer.send(PeerReset(off.handle))
    writer.publish()
    nic.fail("killed")
    got = []
    while (out := nic.target.poll()) is not None:
        got.append(out)
    assert got[0] == PeerReset(off.handle), "read before the failure's own indications"


def test_after_the_death_every_later_call_is_answered() -> None:
    net = make_net(65, transport="rings")
    a, _ = net.connect()
    net.wait_offloaded(a)
    _nic(net).fail("killed")
    net.run_until(lambda: a.offload_state is OffloadState.IN_HOST, 5.0)
    assert not net.has_event(a, ConnectionReset)
    a2, b2 = net.connect(port=9)
    assert net.a.offload_now(a2) is not None, "paused: refused on the host, nothing left waiting"
    b2.send(b"hello")
    net.run_until(lambda: a2.readable == 5, 5.0)
    assert read_all(a2) == b"hello"


def test_frames_the_nic_passed_up_before_it_died_reach_the_host() -> None:
    """An ARP request the NIC put on the frames ring just before its death is answered by the host."""
    from offload_harness import B_IP, B_MAC

    from tcpchimney.host.interface import ip_bytes, mac_bytes
    from tcpchimney.nic.messages import put_frame
    from tcpchimney.wire import arp as arp_wire
    from tcpchimney.wire import ethernet
    from tcpchimney.wire.frame import Frame

    net = make_net(66, transport="rings")
    nic = _nic(net)
    assert nic.core is not None
    request = arp_wire.emit_arp_request(mac_bytes(B_MAC), ip_bytes(B_IP), ip_bytes("198.18.0.1"))
    frame = ethernet.emit_ethernet(b"\xff" * 6, mac_bytes(B_MAC), ethernet.ETHERTYPE_ARP) + request
    assert put_frame(nic.core.frames, Frame(frame))
    nic.core.publish()
    nic.fail("killed")
    assert net.a.counters["arp"].get("tx_reply", 0) == 1
