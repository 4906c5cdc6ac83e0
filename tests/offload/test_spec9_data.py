"""Chimney-spec 9.6 scenarios on the data path: send data in all three regions at offload, PMTU update, MAC
change vs next-hop change, urgent data, in-window SYN/RST while offloaded, zero-window persist with an upload
mid-round. A host stack behind the SoftwareTarget on a simulated link, a plain peer, the wire recorded."""

from __future__ import annotations

from offload_harness import (
    A_IP,
    A_MAC,
    B_MAC,
    DISABLED,
    R1_IP,
    R1_MAC,
    R2_IP,
    R2_MAC,
    Stream,
    add_injector,
    arp_announce,
    exchange,
    frag_needed,
    from_b,
    inject,
    make_net,
    payload,
    read_all,
    tcp_frame,
)

from tcpchimney.chimney.reason import Reason, ReasonGroup
from tcpchimney.host.events import Offloaded, Uploaded
from tcpchimney.host.offload import OffloadState
from tcpchimney.host.policy import OffloadPolicy, OffloadRule
from tcpchimney.link.sim import Impairments
from tcpchimney.tcp.config import TcpConfig
from tcpchimney.wire.tcp import ACK, PSH, RST, SYN, URG

NO_TS = TcpConfig(timestamps=False)  # hand-built segments need no PAWS timestamp


def _uploads(net, reason: Reason) -> list:  # type: ignore[no-untyped-def]
    return [e for e in net.events(Uploaded) if e.reason is reason]


def test_send_data_in_all_three_regions_is_sent_in_order_after_offload() -> None:
    """Spec 2.4: [SND.UNA, SND.NXT) sent and unACKed, [SND.NXT, SND.MAX) being retransmitted (go-back after an
    RTO), [SND.MAX, ...) never sent. The target resumes at SND.NXT and the peer gets every byte once, in
    order."""
    net = make_net(21, DISABLED)
    a, b = net.connect()
    net.link.set_impairments("a", Impairments(loss=1.0))  # a's segments vanish: the RTO fires
    data = payload(400_000, 21)
    sent = a.send(data)
    net.run_until(lambda: a.conn.snd_nxt != a.conn.snd_max, 10.0)
    conn = a.conn
    una, nxt, smax = int(conn.snd_una), int(conn.snd_nxt), int(conn.snd_max)
    assert una < nxt < smax, "retransmit-pending region"
    assert smax - una < sent, "unsent region"
    net.link.set_impairments("a", Impairments())
    first_frame = len(net.wire.segments())
    assert net.a.offload_now(a) is None
    net.wait_offloaded(a)
    (entry,) = net.nic.dump_state()["connections"].values()
    assert (entry["snd_una"], entry["snd_nxt"], entry["snd_max"]) == (una, nxt, smax)
    assert sent == len(data)  # all of it in the send buffer: the unsent region is the rest
    got = bytearray()
    net.run_until(lambda: (got.extend(read_all(b)), len(got) >= len(data))[1], 60.0)
    assert bytes(got) == data
    after = [s for _, d, s in net.wire.segments()[first_frame:] if d == "a>b" and s.payload]
    assert int(after[0].seq) == una, "the RTO retransmission of the unACKed region comes first"
    ends = [int(s.seq) + len(s.payload) for s in after]
    assert [int(s.seq) for s in after[1:]] == ends[:-1], (
        "then the retransmit-pending and unsent regions, in order"
    )
    assert net.nic.counters.snapshot()["tcp"]["retransmitted_segments"] >= 1


def test_pmtu_update_shrinks_the_target_segments_on_the_wire() -> None:
    net = make_net(22)
    a, b = net.connect()
    net.wait_offloaded(a)
    inj = add_injector(net)
    exchange(net, [Stream(a, b, payload(50_000, 1))])
    assert max(len(s.payload) for _, d, s in net.wire.segments() if d == "a>b") == 1448
    inject(net, inj, frag_needed(a, int(a.conn.snd_una), 1200))
    mark = len(net.wire.segments())
    exchange(net, [Stream(a, b, payload(200_000, 2))])
    sizes = [len(s.payload) for _, d, s in net.wire.segments()[mark:] if d == "a>b" and s.payload]
    assert sizes and max(sizes) <= 1200 - 40 - 12, max(sizes)  # IPv4 + TCP headers, timestamps
    assert a.offload_state is OffloadState.OFFLOADED, "a PMTU change is an update, not an upload"
    assert all(p["path_mtu"] == 1200 for p in net.nic.dump_state()["paths"].values())


def test_mac_change_is_an_update_the_target_frames_follow() -> None:
    """Spec 3.3: ARP learns a new MAC for the next hop: one update of the shared neighbor, no upload; the
    target's frames carry the new destination MAC at once."""
    net = make_net(23)
    a, b = net.connect()
    net.wait_offloaded(a)
    inj = add_injector(net)
    inject(net, inj, arp_announce("02:00:00:00:00:99"))
    a.send(b"to the new mac")
    net.run_for(0.05)
    frames = [f for _, f in net.wire.frames if f[6:12] == bytes.fromhex("020000000001")]
    assert frames[-1][:6] == bytes.fromhex("020000000099")
    assert a.offload_state is OffloadState.OFFLOADED and not net.events(Uploaded)
    inj.send(arp_announce(B_MAC))  # the peer answers at its own MAC again: the retransmission reaches it
    net.run_until(lambda: b.readable == 14, 10.0)
    assert b.receive(100) == b"to the new mac"


def _via(net, router: str, mark: int) -> list[int]:  # type: ignore[no-untyped-def]
    """IP IDs of a's TCP frames that reached b through ``router`` since frame ``mark`` of the wire."""
    mac = net.routers[router].mac
    return [
        int.from_bytes(f[18:20], "big")
        for _, f in net.wire.frames[mark:]
        if f[6:12] == mac and f[26:30] == bytes(map(int, A_IP.split("."))) and f[23] == 6
    ]


def test_next_hop_change_relinks_the_offloaded_path_to_the_new_router() -> None:
    """Spec 3.4 router change through the host's public call: the administrator moves the default route
    from R1 to R2 (not yet resolved) in mid-transfer. The host resolves R2, offloads it as a new neighbor,
    relinks the path to it and terminates the old neighbor: the connection never leaves the target and its
    frames now go through R2 (R1 no longer forwards a's frames). A connection kept on the host (a policy
    rule) simply follows the new route."""
    rules = (OffloadRule(remote_port=8),)
    slow = Impairments(delay=0.002)  # the transfers last long enough for the change to land mid-way
    net = make_net(24, OffloadPolicy(mode="enabled", rules=rules), routed=True, imp_a=slow, imp_b=slow)
    a, b = net.connect()
    h, hb = net.connect(port=8)
    net.wait_offloaded(a)
    assert h.offload_state is OffloadState.IN_HOST
    (old,) = net.nic.dump_state()["neighbors"].values()
    assert old["dest_mac"] == R1_MAC
    streams = [Stream(a, b, payload(300_000, 4)), Stream(h, hb, payload(100_000, 5))]
    streams += [Stream(b, a, payload(100_000, 6))]
    for stream in streams:
        stream.step()
    net.run_for(0.001)
    assert not any(stream.done for stream in streams)
    assert net.a.arp.entry(bytes(map(int, R2_IP.split(".")))) is None, "R2 must be resolved first"
    mark = len(net.wire.frames)
    calls: list[str] = []
    submit = net.nic.submit
    net.nic.submit = lambda request, now: (calls.append(type(request).__name__), submit(request, now))[1]  # type: ignore[method-assign]
    net.a.set_gateway(R2_IP, net.now)
    net.routers["r1"].drop_from.add(bytes.fromhex(A_MAC.replace(":", "")))  # the old route is gone
    exchange(net, streams)
    state_calls = [c for c in calls if c.endswith("Offload")]
    assert state_calls == ["InitiateOffload", "UpdateOffload", "TerminateOffload"], state_calls
    assert a.offload_state is OffloadState.OFFLOADED and not net.events(Uploaded)
    dump = net.nic.dump_state()
    ((handle, new),) = dump["neighbors"].items()
    assert new["dest_mac"] == R2_MAC and new["host_handle"] != old["host_handle"], "old neighbor terminated"
    ((path_handle, path),) = dump["paths"].items()
    assert path["neighbor"] == handle and new["paths"] == [path_handle], "the same path, relinked"
    ids = _via(net, "r2", mark)
    assert any(i >= 0x8000 for i in ids), "the target sends through R2"
    assert any(i < 0x8000 for i in ids), "the host-only connection too"


def test_next_hop_that_does_not_resolve_uploads_with_a_host_reason() -> None:
    """The new gateway does not answer ARP: the host cannot relink, uploads the connection
    (NEIGHBOR_CHANGE, its own decision) and its engine keeps it; once the route is back, the transfer ends
    byte-exact."""
    net = make_net(28, routed=True, imp_a=Impairments(delay=0.002))
    a, b = net.connect()
    net.wait_offloaded(a)
    stream = Stream(a, b, payload(200_000, 7))
    stream.step()
    net.a.set_gateway("198.18.0.99", net.now)  # nobody has that address
    net.wait_in_host(a, 10.0)
    assert _uploads(net, Reason.NEIGHBOR_CHANGE) and Reason.NEIGHBOR_CHANGE.group is ReasonGroup.HOST_UPLOAD
    assert len(net.nic.table) == 0
    net.a.set_gateway(R1_IP, net.now)
    exchange(net, [stream])


def test_next_hop_change_while_the_offload_is_in_flight_relinks_after_it() -> None:
    """The route changes while the initiate (built for R1) waits at a stalled target: once it completes the
    host moves the new path to R2 all the same."""
    net = make_net(29, routed=True, imp_a=Impairments(delay=0.002))
    net.nic.stall(True)
    a, b = net.connect()
    assert a.offload_state is OffloadState.OFFLOADING
    net.a.set_gateway(R2_IP, net.now)
    net.run_for(0.01)  # R2 resolves meanwhile
    net.nic.stall(False)
    net.wait_offloaded(a)
    net.run_for(0.01)
    ((_, neighbor),) = net.nic.dump_state()["neighbors"].items()
    assert neighbor["dest_mac"] == R2_MAC
    net.routers["r1"].drop_from.add(bytes.fromhex(A_MAC.replace(":", "")))
    exchange(net, [Stream(a, b, payload(100_000, 29))])
    assert a.offload_state is OffloadState.OFFLOADED


def test_a_new_next_hop_the_target_cannot_hold_uploads_the_connection() -> None:
    """The target has no entry left for the new neighbor (NEIGHBOR_ENTRIES): the relink cannot happen, the
    connection comes back (NEIGHBOR_CHANGE) and the host engine sends through R2."""
    net = make_net(30, routed=True, imp_a=Impairments(delay=0.002))
    a, b = net.connect()
    net.wait_offloaded(a)
    net.nic.table.capacity = 1  # one neighbor: R1's
    net.a.set_gateway(R2_IP, net.now)
    net.wait_in_host(a)
    assert _uploads(net, Reason.NEIGHBOR_CHANGE)
    net.routers["r1"].drop_from.add(bytes.fromhex(A_MAC.replace(":", "")))
    exchange(net, [Stream(a, b, payload(100_000, 30))])


def test_urgent_data_asks_for_the_upload_and_no_byte_is_lost() -> None:
    """Spec 4.3: URG is the host's; the target stops, asks for the upload (URGENT_DATA) and hands the segment
    up raw after it; the host engine delivers it (inline) after every earlier byte."""
    net = make_net(25, config=NO_TS)
    a, b = net.connect()
    net.wait_offloaded(a)
    inj = add_injector(net)
    exchange(net, [Stream(b, a, payload(30_000, 5))])
    inject(net, inj, tcp_frame(from_b(b, ACK | PSH | URG, b"!", urgent=1)))
    net.run_until(lambda: a.offload_state is OffloadState.IN_HOST, 5.0)
    assert _uploads(net, Reason.URGENT_DATA)
    net.run_until(lambda: a.readable >= 1, 5.0)
    assert read_all(a) == b"!"
    assert net.nic.counters.snapshot()["lifecycle"]["held_for_host"] >= 1


def _challenge_acks(net, mark: int) -> list:  # type: ignore[no-untyped-def]
    return [s for _, d, s in net.wire.segments()[mark:] if d == "a>b" and s.flags == ACK and not s.payload]


def test_in_window_rst_and_syn_get_a_challenge_ack_from_the_target() -> None:
    """RFC 5961 3.2 / 4.2 while offloaded: an RST that is in the window but not at RCV.NXT, and any SYN,
    are answered with a challenge ACK by the target (its IP ID half), the connection survives offloaded."""
    net = make_net(26, config=NO_TS)
    a, b = net.connect()
    net.wait_offloaded(a)
    inj = add_injector(net)
    for flags in (RST, SYN):
        mark = len(net.wire.segments())
        ids = len(net.wire.ip_ids())
        inject(net, inj, tcp_frame(from_b(b, flags, seq_offset=1000)))
        acks = _challenge_acks(net, mark)
        assert acks, f"no challenge ACK for flags {flags}"
        assert int(acks[0].seq) == int(b.conn.rcv_nxt) and int(acks[0].ack) == int(b.conn.snd_nxt)
        assert all(i >= 0x8000 for i in net.wire.ip_ids()[ids:]), "sent by the target"
        assert a.offload_state is OffloadState.OFFLOADED
        net.run_for(NO_TS.invalid_ack_interval)  # one ACK to unacceptable segments per interval (RFC 5961 7)
    exchange(net, [Stream(a, b, payload(20_000, 6)), Stream(b, a, payload(20_000, 7))])
    assert not net.has_event(a, __import__("tcpchimney.tcp.events", fromlist=["x"]).ConnectionReset)


def test_zero_window_persist_with_an_upload_mid_round() -> None:
    """The peer stops reading: the target probes the zero window; an upload between two probes hands the
    persist state over (spec 2.4: the shared timer slot, SndWndProbeCount); the host keeps probing, and once
    the peer reads the transfer ends byte-exact."""
    net = make_net(27, config_b=TcpConfig(rcv_buf=32 * 1024))
    a, b = net.connect()
    net.wait_offloaded(a)
    data = payload(200_000, 8)
    stream = Stream(a, b, data)

    def fill() -> bool:
        while stream.sent < len(data) and (n := a.send(memoryview(data)[stream.sent : stream.sent + 65536])):
            stream.sent += n
        entry = next(iter(net.nic.table.conns.values()))
        return entry.conn.persisting and entry.conn.retransmit_count >= 2

    net.run_until(fill, 30.0)
    assert net.a.upload(a, Reason.ADMIN)
    net.wait_in_host(a)
    assert a.conn.persisting and a.conn.snd_wnd == 0 and a.conn.retransmit_count >= 2
    due = a.conn.rto_deadline  # the persist round carried over, not restarted
    assert due is not None and due > net.now
    mark = len(net.wire.ip_ids())
    net.run_for(5.0)
    sent_by_a = [t for t, d, _ in net.wire.segments() if d == "a>b"]
    probes = list(zip(sent_by_a[mark:], net.wire.ip_ids()[mark:], strict=True))
    host = [t for t, i in probes if i < 0x8000]
    assert len(host) >= 2, "the host keeps probing the zero window"
    assert host[0] == due, "on the handed-over persist timer"
    assert all(t < due for t, i in probes if i >= 0x8000), (
        "the target's last ACK left at the upload, then nothing"
    )
    exchange(net, [stream], timeout=60.0)
    assert net.events(Offloaded)


def test_upload_sends_the_targets_pending_delayed_ack_first() -> None:
    """Spec 3.5 step 1: the delayed-ACK timer is not part of the handed-over state, so a target giving a
    connection up sends its pending ACK at once (as the host does at offload). Without it the peer, whose
    Nagle-held tail waits for that ACK, stalls until its RTO."""
    net = make_net(28)
    a, b = net.connect()
    net.wait_offloaded(a)
    b.send(b"x" * 100)
    net.run_for(0.005)
    (entry,) = net.nic.table.conns.values()
    assert entry.conn.delack_deadline is not None, "one small segment: its ACK is delayed"
    mark = len(net.wire.segments())
    assert net.a.upload(a, Reason.ADMIN)
    net.run_for(0.005)
    acks = [s for _, d, s in net.wire.segments()[mark:] if d == "a>b" and not s.payload]
    assert [int(s.ack) for s in acks] == [int(b.conn.snd_nxt)], "the pending ACK left at the upload"
    assert all(i >= 0x8000 for i in net.wire.ip_ids()[-len(acks) :]), "sent by the target"
