"""Snapshot and rebuild (the offload hand-off): at every step of a transfer, in both directions, with and
without loss, the connection is exported and replaced by an engine rebuilt from the export, and the transfer
still completes byte-exact. Exporting the rebuilt engine gives the same snapshot (nothing is lost or
invented on the way)."""

from __future__ import annotations

import random

import pytest
from wire_pair import Endpoint, WirePair, copy

from tcpchimney.chimney.tcp_state import TcpSnapshot
from tcpchimney.tcp.connection import TcpConnection
from tcpchimney.tcp.snapshot import export_snapshot, rebuild
from tcpchimney.tcp.state import TcpState


def _swap(pair: WirePair, which: str) -> TcpSnapshot:
    conn: TcpConnection = getattr(pair, which)
    other: TcpConnection = getattr(pair, "b" if which == "a" else "a")
    for seg in conn.segments_to_send(pair.now):  # the giving side flushes what it owes first
        other.handle_segment(copy(seg), pair.now)
    snap = export_snapshot(conn, pair.now)
    new = rebuild(snap, pair.config, pair.now)
    assert export_snapshot(new, pair.now) == snap
    setattr(pair, which, new)
    return snap


def _transfer(loss: float, seed: int, swap_every: int) -> tuple[WirePair, Endpoint, Endpoint]:
    rng = random.Random(seed)
    pair = WirePair(loss=loss, seed=seed)
    a_app = Endpoint(rng.randbytes(300_000))
    b_app = Endpoint(rng.randbytes(120_000))
    pair.run(lambda: pair.b.state is TcpState.ESTABLISHED and pair.a.state is TcpState.ESTABLISHED)
    steps = 0

    def done() -> bool:
        nonlocal steps
        steps += 1
        a_app.pump(pair.a)
        b_app.pump(pair.b)
        if steps % swap_every == 0:
            for which in ("a", "b"):
                state = getattr(pair, which).state
                if state.synchronized and state is not TcpState.TIME_WAIT:
                    _swap(pair, which)
        ended = (TcpState.TIME_WAIT, TcpState.CLOSED)
        return pair.a.state in ended and pair.b.state in ended

    pair.run(done)
    return pair, a_app, b_app


@pytest.mark.parametrize(("loss", "seed"), [(0.0, 1), (0.03, 2), (0.08, 3)])
def test_rebuilt_at_every_step_continues_byte_exact(loss: float, seed: int) -> None:
    _, a_app, b_app = _transfer(loss, seed, swap_every=1)
    assert bytes(b_app.received) == a_app.payload
    assert bytes(a_app.received) == b_app.payload


def test_snapshot_carries_unacknowledged_and_unread_data() -> None:
    pair = WirePair()
    pair.run(lambda: pair.a.state is TcpState.ESTABLISHED and pair.b.state is TcpState.ESTABLISHED)
    pair.a.send(b"x" * 5000)
    pair.a.segments_to_send(pair.now)  # sent, lost: unacknowledged
    pair.b.send(b"y" * 10)
    for seg in pair.b.segments_to_send(pair.now):
        pair.a.handle_segment(seg, pair.now)  # arrived, not read
    snap = export_snapshot(pair.a, pair.now)
    d = snap.delegated
    assert d.send_data == b"x" * 5000
    assert d.buffered_data == b"y" * 10
    assert d.snd_max.dist(d.snd_una) > 0 and d.retransmit_timeout is not None
    new = rebuild(snap, pair.config, pair.now)
    assert new.receive() == b"y" * 10
    assert new.rto_deadline == pytest.approx(pair.a.rto_deadline)  # the delayed ACK is not carried
