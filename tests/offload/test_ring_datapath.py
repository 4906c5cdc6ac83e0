"""The descriptor data path through the rings (nic/host_data.py, nic/nic_data.py, nic/ordering.py), both
ends in this process on the simulated link: Send payload goes through the TX buffers, receive indications
and Send completions come back as descriptors, byte-exact and in order; a Send that does not fit its TX
buffer goes through the control ring, still exact; and a NIC that puts a descriptor that does not check
out (the issue's "bad input from the NIC process") is fenced, its connections rebuilt from the arena, with
no exception in the host, no byte lost, no RST, and no read outside the connection's buffer."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from offload_harness import Net, Stream, exchange, make_net, payload

from tcpchimney.chimney.errors import ContractError
from tcpchimney.chimney.indications import ReceiveIndication
from tcpchimney.nic.arena import Arena
from tcpchimney.nic.descriptors import RING_HEAD_OFF, ArenaError, DescKind, Descriptor, RingId
from tcpchimney.nic.loopback import LOOPBACK_ARENA, LoopbackNic
from tcpchimney.nic.recovery import Shadow
from tcpchimney.wire.tcp import RST


def _nic(net: Net) -> LoopbackNic:
    node = net.link._ports[0].node  # the node attached as "a"
    assert isinstance(node, LoopbackNic)
    return node


def _under_way(seed: int, n: int = 2, up: int = 400_000, down: int = 300_000) -> tuple[Net, list[Stream]]:
    net = make_net(seed, transport="rings")
    pairs = [net.connect(port=7 + i) for i in range(n)]
    for a, _ in pairs:
        net.wait_offloaded(a)
    streams = [Stream(a, b, payload(up, i)) for i, (a, b) in enumerate(pairs)]
    streams += [Stream(b, a, payload(down, 10 + i)) for i, (a, b) in enumerate(pairs)]
    for stream in streams:
        stream.step()
    net.run_for(0.002)
    return net, streams


def _exact(streams: list[Stream]) -> None:
    for stream in streams:
        assert bytes(stream.got) == bytes(stream.data), f"{len(stream.got)} of {len(stream.data)} bytes"


def _no_reset(net: Net) -> None:
    assert not [s for _, _, s in net.wire.segments() if s.flags & RST], "a RST on the wire"


def _shadow(nic: LoopbackNic) -> Shadow:
    shadows = nic.target.recovery.shadows
    return next(s for s in shadows if s.target_handle is not None)


# ------------------------------------------------------------------------------------------ it carries


def test_payload_crosses_as_descriptors_byte_exact() -> None:
    """Both directions at once: every Send's payload through a TX buffer, every receive indication and
    Send completion as a descriptor, and the streams arrive exact."""
    net, streams = _under_way(81)
    exchange(net, streams, timeout=60.0)
    _exact(streams)
    net.run_for(1.0)  # the last ACKs: every Send completes
    counters = _nic(net).target.transport_counters()
    assert counters["tx_bytes"] == 2 * 400_000 and counters["tx_fallback_full"] == 0
    assert counters["rx_bytes"] == 2 * 300_000, "every received byte read from an RX buffer"
    assert counters["send_done"] == counters["tx_sends"]
    assert _nic(net).core is not None and _nic(net).core.data.counters["placed_fallback"] == 0


def test_a_send_larger_than_the_room_in_its_tx_buffer_goes_as_a_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TX buffers of one 16 KiB chunk: Sends that do not fit go through the control ring, in order with
    those that do; the stream is exact."""
    import tcpchimney.nic.shadows as shadows

    monkeypatch.setattr(shadows, "TX_BYTES", LOOPBACK_ARENA.chunk_size)
    net, streams = _under_way(82, n=1, up=600_000, down=50_000)
    exchange(net, streams, timeout=60.0)
    _exact(streams)
    counters = _nic(net).target.transport_counters()
    assert counters["tx_fallback_full"] > 0 and counters["tx_sends"] > 0


# ------------------------------------------------------------------------------------- a broken NIC


def _bad(nic: LoopbackNic, case: str) -> Descriptor:
    """One descriptor that does not check out, on a slot that holds a connection under way."""
    shadow = _shadow(nic)
    epoch = nic.arena.epoch & 0xFFFF
    size = shadow.rx[1]
    placed = Descriptor(DescKind.RECEIVE_PLACED, 0, epoch, shadow.slot, 0, 100, 1)
    unused = next(i for i in range(LOOPBACK_ARENA.max_conns) if i not in nic.target.recovery.shadows.by_slot)
    return {
        "zeroed": Descriptor(0, 0, 0, 0, 0, 0, 0),
        "h2n_kind": placed._replace(kind=DescKind.SEND),
        "reserved_kind": placed._replace(kind=DescKind.SEND_BACKLOG),
        "epoch": placed._replace(epoch=epoch ^ 1),
        "handle": placed._replace(handle=LOOPBACK_ARENA.max_conns),
        "unbound_slot": placed._replace(handle=unused),
        "length": placed._replace(b=size + 1),
        "empty": placed._replace(b=0),
        "offset": placed._replace(a=1 << 62),
        "offset_max": placed._replace(a=(1 << 64) - 1, b=size),
        "send_done": Descriptor(DescKind.SEND_DONE, 0, epoch, shadow.slot, 0, 10, 987654),
    }[case]


REASONS = {
    "zeroed": "descriptor_kind",
    "h2n_kind": "descriptor_kind",
    "reserved_kind": "descriptor_kind",
    "epoch": "descriptor_epoch",
    "handle": "descriptor_handle",
    "unbound_slot": "descriptor_handle",
    "length": "span_length",
    "empty": "span_length",
    "offset": "span_placed",
    "offset_max": "span_placed",
    "send_done": "descriptor_send",
}


@pytest.mark.parametrize("case", sorted(REASONS))
def test_a_descriptor_that_does_not_check_out_fences_the_nic_and_loses_nothing(case: str) -> None:
    net, streams = _under_way(83)
    nic = _nic(net)
    fenced: list[str] = []
    nic.target.on_broken = fenced.append
    ring = nic.nic_arena.descriptor_producer(RingId.N2H_DATA)  # a second producer: a NIC gone astray
    assert ring.put(*_bad(nic, case))
    ring.publish()
    nic.frozen = True
    exchange(net, streams, timeout=30.0)
    assert len(fenced) == 1 and REASONS[case] in fenced[0], fenced
    assert nic.target.failed is not None and nic.target.failed.startswith("broken")
    _exact(streams)
    _no_reset(net)
    assert net.a.internal_errors == []
    counters = nic.target.transport_counters()
    assert counters["recovered"] == 2 and counters["recovery_lost"] == 0


def test_a_data_ring_index_that_jumps_fences_the_nic_and_loses_nothing() -> None:
    net, streams = _under_way(84)
    nic = _nic(net)
    fenced: list[str] = []
    nic.target.on_broken = fenced.append
    spec, off = nic.nic_arena.layout.rings[RingId.N2H_DATA]
    nic.frozen = True
    nic.nic_arena.store(off + RING_HEAD_OFF, nic.nic_arena.load(off + RING_HEAD_OFF) + spec.capacity + 1)
    exchange(net, streams, timeout=30.0)
    assert len(fenced) == 1 and "ring_index" in fenced[0], fenced
    _exact(streams)
    _no_reset(net)
    assert net.a.internal_errors == []


# --------------------------------------------------------------------------- any descriptor at all


def test_any_descriptor_is_refused_or_read_from_inside_its_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Random descriptors against a live connection: each is either refused (ArenaError, ContractError)
    or stands for a message whose bytes are those of the RX buffer; no read leaves the buffer."""
    net, streams = _under_way(85, n=1)
    exchange(net, streams, timeout=60.0)
    nic = _nic(net)
    shadow = _shadow(nic)
    arena, data = nic.arena, nic.target.data
    off, size = shadow.rx
    reads: list[tuple[int, int, int, int]] = []
    real = Arena.read_stream

    def spy(self: Arena, o: int, s: int, pos: int, length: int) -> bytes:
        reads.append((o, s, pos, length))
        return real(self, o, s, pos, length)

    epoch = arena.epoch & 0xFFFF
    u64 = st.integers(0, (1 << 64) - 1)

    @settings(max_examples=300, deadline=None)
    @given(
        kind=st.integers(0, 7),
        flags=st.integers(0, 255),
        epoch16=st.sampled_from([epoch, epoch ^ 1, 0xFFFF]),
        handle=st.sampled_from([shadow.slot, 0, 1, LOOPBACK_ARENA.max_conns, 0xFFFF_FFFF]),
        a=st.one_of(u64, st.integers(0, 2 * size)),
        b=st.one_of(st.integers(0, size + 2), u64),
        c=st.one_of(u64, st.integers(0, 10)),
    )
    def check(kind: int, flags: int, epoch16: int, handle: int, a: int, b: int, c: int) -> None:
        reads.clear()
        desc = Descriptor(kind, flags, epoch16, handle, a, b, c)
        try:
            message = data.output(desc, {})
        except (ArenaError, ContractError):
            message = None
        for o, s, _pos, length in reads:
            assert (o, s) == (off, size) and 0 < length <= size
        if isinstance(message, ReceiveIndication):
            start = a % size
            ring = bytes(arena.mem[off : off + size]) * 2
            assert message.data == ring[start : start + b]

    monkeypatch.setattr(Arena, "read_stream", spy)
    check()
    assert nic.target.failed is None, "output() alone decides nothing: the caller fences"
