"""The NIC's capture mirror (``chimney capture``, nic/core.py) through the ring transport, both ends in
this process: while it is on, every frame an offloaded connection receives or sends comes up the frames
ring as a copy, and the copies hold each direction's bytes; while it is off, none comes."""

from __future__ import annotations

import dataclasses

import offload_harness
import pytest
from offload_harness import Net, Stream, exchange, make_net, payload

from tcpchimney.nic.arena import nic_rings
from tcpchimney.nic.loopback import LOOPBACK_ARENA, LoopbackNic


def _nic(net: Net) -> LoopbackNic:
    node = net.link._ports[0].node  # the node attached as "a"
    assert isinstance(node, LoopbackNic)
    return node


def _payloads(frames: list[bytes], src_port: int) -> bytes:
    """The TCP payload of the frames from ``src_port``, in sequence order, each byte once."""
    pieces: dict[int, bytes] = {}
    for f in frames:
        ihl = (f[14] & 0x0F) * 4
        tcp = 14 + ihl
        if f[23] != 6 or int.from_bytes(f[tcp : tcp + 2]) != src_port:
            continue
        end = 14 + int.from_bytes(f[16:18])
        data = f[tcp + (f[tcp + 12] >> 4) * 4 : end]
        if data:
            pieces[int.from_bytes(f[tcp + 4 : tcp + 8])] = data
    out, seq = bytearray(), None
    for start in sorted(pieces):
        data = pieces[start]
        if seq is not None and start < seq:
            data = data[seq - start :]
        out += data
        seq = start + len(pieces[start])
    return bytes(out)


def test_the_mirror_holds_both_directions_of_an_offloaded_connection() -> None:
    net = make_net(5, transport="rings")
    nic = _nic(net)
    seen: dict[bool, list[bytes]] = {True: [], False: []}
    nic.target.mirror = lambda frame, inbound: seen[inbound].append(bytes(frame))
    assert nic.core is not None
    nic.core.mirror = True
    a, b = net.connect(port=7)
    net.wait_offloaded(a)
    up, down = payload(300_000, 1), payload(200_000, 2)
    exchange(net, [Stream(a, b, up), Stream(b, a, down)])
    assert _payloads(seen[False], a.local_port) == up  # what the NIC sent for a
    assert _payloads(seen[True], b.local_port) == down  # what it received for a
    counters = nic.target.transport_counters()
    assert counters["mirrored"] == nic.core.counters["mirrored"] > 0
    assert nic.core.counters["mirror_dropped"] == 0


def test_no_copy_comes_while_the_mirror_is_off() -> None:
    net = make_net(6, transport="rings")
    nic = _nic(net)
    copies: list[bool] = []
    nic.target.mirror = lambda frame, inbound: copies.append(inbound)
    a, b = net.connect(port=7)
    net.wait_offloaded(a)
    exchange(net, [Stream(a, b, payload(100_000, 3))])
    assert nic.target.transport_counters()["mirrored"] == 0
    assert all(copies)  # only the frames passed up for the host, never an offloaded connection's copy


def test_a_mirror_that_cannot_keep_up_drops_and_counts_and_the_transfer_is_exact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A frames ring of 16 KiB: copies may take at most its first half, so most of a turn's copies find no
    room. They are dropped and counted; the frames the host needs and the transfer are unaffected."""
    small = dataclasses.replace(LOOPBACK_ARENA, rings=nic_rings(256 << 10, 4096, 16 << 10))
    monkeypatch.setattr(offload_harness, "LoopbackNic", lambda target: LoopbackNic(target, small))
    net = make_net(7, transport="rings")
    nic = _nic(net)
    copies: list[bool] = []
    nic.target.mirror = lambda frame, inbound: copies.append(inbound)
    assert nic.core is not None
    nic.core.mirror = True
    a, b = net.connect(port=7)
    net.wait_offloaded(a)
    exchange(net, [Stream(a, b, payload(400_000, 4)), Stream(b, a, payload(300_000, 5))])
    counters = nic.core.counters
    assert counters["mirror_dropped"] > 0 and counters["mirrored"] > 0
    assert nic.target.transport_counters()["mirrored"] == counters["mirrored"]
    assert counters["frames_up_dropped"] == 0  # the copies never took the host's frames' room
