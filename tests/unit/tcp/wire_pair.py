"""Two engines joined by an in-test wire: virtual time, seeded loss, nothing else (no host, no frames); and
the application of one side, which writes its payload and reads everything."""

from __future__ import annotations

import random
from collections.abc import Callable

from tcpchimney.tcp.config import TcpConfig
from tcpchimney.tcp.connection import TcpConnection
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire.seq import SeqNum
from tcpchimney.wire.tcp import TcpOptions, TcpSegment


def copy(seg: TcpSegment) -> TcpSegment:
    """What the peer receives: its own bytes, not a view into the sender's buffer."""
    o = seg.options
    opts = TcpOptions(o.mss, o.wscale, o.sack_permitted, tuple(o.sack_blocks), o.ts_val, o.ts_ecr)
    return TcpSegment(
        seg.src_port, seg.dst_port, seg.seq, seg.ack, seg.flags, seg.window, bytes(seg.payload), opts
    )


class WirePair:
    def __init__(self, config: TcpConfig | None = None, loss: float = 0.0, seed: int = 1) -> None:
        self.config = config or TcpConfig(rcv_buf=256 * 1024, snd_buf=256 * 1024)
        self.rng = random.Random(seed)
        self.loss = loss
        self.now = 0.0
        self.a = TcpConnection.connect(self.config, 40000, 80, SeqNum(0xFFFFF000), 0.0, 7)
        syn = self.a.segments_to_send(0.0)[0]
        self.b = TcpConnection.accept_syn(self.config, 80, 40000, copy(syn), SeqNum(123), 0.0, 99)
        self.carried = 0

    def _deliver(self, src: TcpConnection, dst: TcpConnection) -> bool:
        segs = src.segments_to_send(self.now)
        for seg in segs:
            self.carried += 1
            if self.loss and self.rng.random() < self.loss:
                continue
            dst.handle_segment(copy(seg), self.now)
        return bool(segs)

    def step(self) -> None:
        """Deliver what both sides have; when nothing moves, jump to the earliest deadline."""
        moved = self._deliver(self.a, self.b)
        moved = self._deliver(self.b, self.a) or moved
        if moved:
            self.now += 0.0005  # half a millisecond per exchange: RTT samples stay positive
            return
        deadlines = [d for c in (self.a, self.b) if (d := c.next_deadline()) is not None]
        if not deadlines:
            raise AssertionError("both sides are idle and no timer runs")
        self.now = max(self.now, min(deadlines))
        for c in (self.a, self.b):
            d = c.next_deadline()
            if d is not None and d <= self.now:
                c.handle_timer(self.now)

    def run(self, done: Callable[[], bool], steps: int = 200_000) -> None:
        for _ in range(steps):
            if done():
                return
            self.step()
        raise AssertionError(f"not done after {steps} steps (t={self.now:.3f}, a={self.a!r}, b={self.b!r})")


class Endpoint:
    """Application side of one engine: writes its payload, reads everything, closes when done."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.sent = 0
        self.received = bytearray()
        self.shut = False

    def pump(self, conn: TcpConnection) -> None:
        if conn.state is TcpState.CLOSED:
            return
        if self.sent < len(self.payload) and conn.send_space:
            self.sent += conn.send(memoryview(self.payload)[self.sent :])
        if self.sent == len(self.payload) and not self.shut and conn.state.synchronized:
            conn.shutdown()
            self.shut = True
        while data := conn.receive():
            self.received += data
