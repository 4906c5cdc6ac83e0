"""The engine under a hostile peer: the SACK scoreboard and the out-of-order queue stay within their bounds
(TcpConfig.sack_max_ranges, ooo_max_blocks, ooo_max_bytes), what passes them is reported as
``SegmentDropped(reason)``, and transfers with real loss still complete with small bounds."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from dsl import R0, S0, arrive, cfg, established, events, expect, seg
from wire_pair import Endpoint, WirePair

from tcpchimney.tcp.config import TcpConfig
from tcpchimney.tcp.connection import TcpConnection
from tcpchimney.tcp.events import SegmentDropped
from tcpchimney.tcp.state import TcpState

BOUND_REASONS = ("sack_scoreboard_full", "ooo_queue_full", "ooo_bytes_full")


def test_peer_sacking_every_other_byte_keeps_the_scoreboard_bounded() -> None:
    """10,000 bytes in flight; the peer SACKs 2,000 one-byte ranges, four per duplicate ACK. The
    scoreboard keeps the 128 nearest SND.UNA, every ACK past the bound is reported, and the connection
    carries on normally once the peer acknowledges everything."""
    c = established(sack=True)
    c.send(b"x" * 20_000)
    expect(c, *[seg("A", length=1000)] * 10, at=0.0)
    blocks = [(S0 + 2 * k + 1, S0 + 2 * k + 2) for k in range(2000)]
    for i in range(0, len(blocks), 4):
        arrive(c, seg("A", ack=S0, sack=blocks[i : i + 4]), at=0.01)
        c.segments_to_send(0.01)
        assert len(c.sack.blocks()) <= 128
    assert c.sack.blocks()[-1] == (S0 + 255, S0 + 256)
    dropped = [e for e in events(c) if isinstance(e, SegmentDropped)]
    assert dropped and set(dropped) == {SegmentDropped("sack_scoreboard_full")}
    assert len(dropped) == (2000 - 128) // 4
    arrive(c, seg("A", ack=S0 + 10_000), at=0.05)  # everything, cumulatively
    assert c.sack.blocks() == [] and not c.cc.in_recovery
    out = c.segments_to_send(0.05)
    assert out and int(out[0].seq) == S0 + 10_000  # new data follows


def test_out_of_order_segment_past_the_bound_is_dropped_and_the_sack_blocks_stay_right() -> None:
    """Three runs held at most. The fourth run is dropped and reported, and its duplicate ACK reports the
    runs held, the most recently changed first (RFC 2018 section 4); the segment at RCV.NXT is always
    taken and the ACK then covers every run it reached."""
    c = established(config=cfg(ooo_max_blocks=3), sack=True)
    for k, at in zip((1, 5, 3), (0.1, 0.2, 0.3), strict=True):
        arrive(c, seg("A", seq=R0 + 1000 * k, data=b"k" * 500), at=at)
        c.segments_to_send(at)
    arrive(c, seg("A", seq=R0 + 7000, data=b"n" * 500), at=0.4)
    expect(
        c,
        seg("A", ack=R0, sack=[(R0 + 3000, R0 + 3500), (R0 + 5000, R0 + 5500), (R0 + 1000, R0 + 1500)]),
        at=0.4,
    )
    assert SegmentDropped("ooo_queue_full") in events(c)
    arrive(c, seg("A", seq=R0 + 1500, data=b"g" * 100), at=0.5)  # grows a run: taken at the bound
    expect(
        c,
        seg("A", ack=R0, sack=[(R0 + 1000, R0 + 1600), (R0 + 3000, R0 + 3500), (R0 + 5000, R0 + 5500)]),
        at=0.5,
    )
    arrive(c, seg("A", seq=R0, data=b"i" * 1000), at=0.6)  # RCV.NXT: always taken
    expect(c, seg("A", ack=R0 + 1600, sack=[(R0 + 3000, R0 + 3500), (R0 + 5000, R0 + 5500)]), at=0.6)
    assert c.receive() == b"i" * 1000 + b"k" * 500 + b"g" * 100
    assert not [e for e in events(c) if isinstance(e, SegmentDropped)]


def test_out_of_order_byte_bound_is_reported() -> None:
    c = established(config=cfg(ooo_max_bytes=1000), sack=True)
    arrive(c, seg("A", seq=R0 + 1000, data=b"a" * 800), at=0.1)
    arrive(c, seg("A", seq=R0 + 3000, data=b"b" * 800), at=0.2)
    expect(c, seg("A", ack=R0, sack=[(R0 + 1000, R0 + 1800)]), at=0.2)
    assert SegmentDropped("ooo_bytes_full") in events(c)
    assert c.rcvbuf.ooo_bytes == 800


class _App(Endpoint):
    """One side's application (Endpoint) that also counts the engine's reports of the bounds."""

    def __init__(self, payload: bytes) -> None:
        super().__init__(payload)
        self.bounded: Counter[str] = Counter()

    def pump(self, conn: TcpConnection) -> None:
        while (ev := conn.next_event()) is not None:
            if isinstance(ev, SegmentDropped) and ev.reason in BOUND_REASONS:
                self.bounded[ev.reason] += 1
        super().pump(conn)


@pytest.mark.parametrize(("loss", "seed"), [(0.05, 2), (0.1, 3), (0.2, 4)])
def test_lossy_transfer_with_tiny_bounds_completes_byte_exact(loss: float, seed: int) -> None:
    """Two ranges on the scoreboard, three runs out of order (so the receiver reports more than the sender
    keeps): loss recovery has far less to go on and the receiver drops much of what arrives out of order,
    but both streams still complete byte-exact."""
    config = TcpConfig(rcv_buf=256 * 1024, snd_buf=256 * 1024, sack_max_ranges=2, ooo_max_blocks=3, mss=1000)
    pair = WirePair(config, loss=loss, seed=seed)
    rng = random.Random(seed)
    a_app, b_app = _App(rng.randbytes(1_000_000)), _App(rng.randbytes(300_000))

    def done() -> bool:
        a_app.pump(pair.a)
        b_app.pump(pair.b)
        for conn in (pair.a, pair.b):
            assert len(conn.sack.blocks()) <= 2 and conn.rcvbuf.ooo_blocks <= 3
        ended = (TcpState.TIME_WAIT, TcpState.CLOSED)
        return pair.a.state in ended and pair.b.state in ended

    pair.run(done)
    assert bytes(b_app.received) == a_app.payload
    assert bytes(a_app.received) == b_app.payload
    met = a_app.bounded + b_app.bounded
    assert met["sack_scoreboard_full"] and met["ooo_queue_full"], met  # the bounds were met, not just set
