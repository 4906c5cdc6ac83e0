"""More than 2^32 bytes on one connection: SND.UNA comes back around to the ISS and the stream must stay
byte-exact (RFC 9293 3.4: all sequence arithmetic is modulo 2^32; nothing may compare a live sequence number
with the ISS or IRS once the handshake is over).

Two engines back to back with 64 KB segments (TSO-sized emits of a few hundred KB) and windows of tens of MB
move 4 GiB in seconds. The application writes messages of irregular sizes and waits for each to be
acknowledged (an RPC channel or a tunnel does this), so every message boundary is an ACK point; one boundary
is placed at exactly 2^32 - 1 bytes after the first data byte from where the count starts (the handshake, or a
rebuild from a snapshot, whose ISS is SND.UNA - 1), so that an ACK lands exactly on the ISS. The received
stream is compared piecewise with the generator that produced it; nothing of the 4 GiB is stored.
"""

from __future__ import annotations

import random

import pytest
from wrap_stream import PERIOD, WRAP, PeriodicStream, message_sizes

from tcpchimney.tcp.config import TcpConfig
from tcpchimney.tcp.connection import TcpConnection
from tcpchimney.tcp.snapshot import export_snapshot, rebuild
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire.seq import SeqNum

_PAST = 3_000_000  # bytes to move after the wrap point
_CONFIG = TcpConfig(
    mss=65000,
    max_segment_payload=4 * 65000,
    rcv_buf=32 << 20,
    snd_buf=32 << 20,
    delayed_ack=0.001,
)


class _Pair:
    """Two engines, nothing between them: the receiver is handed the sender's segments (views into its
    immutable send chunks), one exchange per step, timers fired when nothing moves."""

    def __init__(self, iss_a: int) -> None:
        self.now = 0.0
        self.a = TcpConnection.connect(_CONFIG, 40000, 80, SeqNum(iss_a), 0.0, 7)
        syn = self.a.segments_to_send(0.0)[0]
        self.b = TcpConnection.accept_syn(_CONFIG, 80, 40000, syn, SeqNum(0x7000_0000), 0.0, 99)

    def step(self) -> None:
        moved = False
        for src, dst in ((self.a, self.b), (self.b, self.a)):
            for seg in src.segments_to_send(self.now):
                dst.handle_segment(seg, self.now)
                moved = True
        if moved:
            self.now += 0.0005
            return
        deadlines = [d for c in (self.a, self.b) if (d := c.next_deadline()) is not None]
        assert deadlines, "both sides are idle and no timer runs"
        self.now = max(self.now, min(deadlines))
        for c in (self.a, self.b):
            if (d := c.next_deadline()) is not None and d <= self.now:
                c.handle_timer(self.now)


def _transfer(pair: _Pair, stream: PeriodicStream, sizes: list[int]) -> None:
    """Write each message, wait until it is acknowledged, check every byte read."""
    a, b = pair.a, pair.b
    for n in sizes:
        assert a.send(stream.next_message(n)) == n
        while a.snd_una != a.snd_max or a.unsent:
            pair.step()
            while data := b.receive(PERIOD):
                stream.check(data)
        assert a.state is TcpState.ESTABLISHED and b.state is TcpState.ESTABLISHED
    while data := b.receive(PERIOD):
        stream.check(data)


@pytest.mark.slow
@pytest.mark.parametrize("rebuilt", [False, True], ids=["fresh", "rebuilt"])
def test_snd_una_back_at_iss_after_2_32_bytes(rebuilt: bool) -> None:
    """Fresh: the count starts at the handshake. Rebuilt: after 5 MB the sender is exported and rebuilt
    (the offload hand-off), which takes ISS = SND.UNA - 1, and the count starts again from there."""
    rng = random.Random(8)
    stream = PeriodicStream(seed=8)
    pair = _Pair(iss_a=0xFFFF_F000)
    while pair.a.state is not TcpState.ESTABLISHED or pair.b.state is not TcpState.ESTABLISHED:
        pair.step()
    if rebuilt:
        _transfer(pair, stream, message_sizes(rng, 5_000_000, 5_000_000))
        pair.a = rebuild(export_snapshot(pair.a, pair.now), _CONFIG, pair.now)
        assert pair.a.iss == pair.a.snd_una + -1
    start = stream.written
    _transfer(pair, stream, message_sizes(rng, WRAP + _PAST, WRAP))
    assert stream.written - start == WRAP + _PAST
    assert stream.checked == stream.written
