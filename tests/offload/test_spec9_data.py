"""Chimney-spec 9.6 scenarios on the data path: send data in all three regions at offload, PMTU update, MAC
change vs next-hop change, urgent data, in-window SYN/RST while offloaded, zero-window persist with an upload
mid-round. A host stack behind the SoftwareTarget on a simulated link, a plain peer, the wire recorded."""

from __future__ import annotations

from offload_harness import (
    B_MAC,
    DISABLED,
    Stream,
    add_injector,
    arp_announce,
    exchange,
    frag_needed,
    from_b,
    inject,
    invalidate_neighbor,
    make_net,
    payload,
    read_all,
    tcp_frame,
)

from tcpchimney.chimney.reason import Reason
from tcpchimney.host.events import Offloaded, Uploaded
from tcpchimney.host.offload import OffloadState
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


def test_next_hop_change_has_no_host_entry_point_so_the_target_relink_is_driven_by_contract() -> None:
    """Spec 3.4 router change: invalidate -> offload the new neighbor -> update-relink the path -> terminate
    the old neighbor. The host has no route-change entry point (the interface's gateway is fixed), so the
    host half cannot be exercised: what exists is the target half. An invalidated neighbor stops its
    connections, which ask for the upload (INVALID_STATE); the host uploads them and the transfer
    continues."""
    net = make_net(24)
    a, b = net.connect()
    net.wait_offloaded(a)
    stream = Stream(a, b, payload(300_000, 4))
    stream.step()
    net.run_for(0.001)
    invalidate_neighbor(net)
    exchange(net, [stream])
    assert _uploads(net, Reason.INVALID_STATE), net.log["a"]
    assert a.offload_state is OffloadState.IN_HOST


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
