"""The target behind the NIC process's ring transport (arena, rings, codec, ``ProcessTarget``), both ends in
this process on the simulated link (``nic.loopback``): the offload suite holds through it (a subset here;
``make test-rings`` runs all of tests/offload that way), and a NIC that dies or breaks the protocol costs
the host no exception and no hang: what it held is reset, what it never took goes on, and the host then
carries every connection itself.
"""

from __future__ import annotations

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
from tcpchimney.host.events import Offloaded, OffloadFault
from tcpchimney.host.offload import OffloadState
from tcpchimney.nic.descriptors import RecordKind, RingId
from tcpchimney.nic.loopback import LoopbackNic
from tcpchimney.tcp.events import ConnectionReset
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


def test_a_dead_nic_resets_what_it_held_and_the_host_carries_on_alone() -> None:
    """Chimney-spec 3.2 with every state lost: each connection the NIC held ends reset for its application
    and the peer gets an RST it accepts; nothing raises; new connections stay on the host (the target is
    paused) and work, over the wire the host now reads itself."""
    net, pairs, _ = _under_way(61)
    _nic(net).fail("killed")
    net.run_until(lambda: all(net.has_event(a, ConnectionReset) for a, _ in pairs), 5.0)  # type: ignore[arg-type]
    net.run_until(lambda: all(net.has_event(b, ConnectionReset) for _, b in pairs), 5.0)  # type: ignore[arg-type]
    resets = [s for _, d, s in net.wire.segments() if d == "a>b" and s.flags & RST]
    assert len(resets) >= len(pairs)
    assert all(a.offload_state is OffloadState.IN_HOST for a, _ in pairs)  # type: ignore[attr-defined]
    faults = net.events(OffloadFault)
    assert faults and all("lost" in f.detail for f in faults)  # type: ignore[attr-defined]
    assert all(not e.startswith(("AttributeError", "TypeError", "KeyError")) for e in net.a.internal_errors)
    a, b = net.connect(port=40)
    net.run_for(0.1)
    assert a.offload_state is OffloadState.IN_HOST
    data = payload(200_000, 40)
    exchange(net, [Stream(a, b, data), Stream(b, a, data[::-1])])
    assert _nic(net).target.counters["answered_dead"] >= len(pairs)  # the terminates, answered for it


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


def test_a_nic_that_writes_garbage_is_fenced_and_its_connections_reset() -> None:
    """Bytes on N2H_CONTROL that are no message: the host fences the NIC (its ``on_broken``) and fails it
    as if it had died; it reads nothing more the NIC wrote."""
    net, pairs, _ = _under_way(63)
    nic = _nic(net)
    fenced: list[str] = []
    nic.target.on_broken = fenced.append
    ring = nic.nic_arena.byte_producer(RingId.N2H_CONTROL)  # a second producer: a NIC gone astray
    ring.put(RecordKind.CONTROL, b"\xff\xff\xff\xff")
    ring.publish()
    nic.frozen = True
    net.run_until(lambda: all(net.has_event(a, ConnectionReset) for a, _ in pairs), 5.0)  # type: ignore[arg-type]
    assert len(fenced) == 1 and "CodecError" in fenced[0]
    assert nic.target.failed is not None and nic.target.failed.startswith("broken")


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
    net.run_until(lambda: net.has_event(a, ConnectionReset), 5.0)
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
