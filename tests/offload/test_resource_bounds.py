"""A hostile peer against the TCP engine's bounds, on the host engine and offloaded (the software target
runs the same engine): one that SACKs every other byte of what we send (CVE-2019-11478 class) and one that
sends one-byte segments with holes between them (SegmentSmack, CVE-2018-5390). The state each keeps stays
within its bound throughout, what passed the bound is counted where the admin reads counters, and a
legitimate transfer on the attacked connection still completes byte-exact.

The attacker forges segments with b's address and ports; it reads the sequence numbers it needs from b's
connection (an on-path attacker sees them on the wire). The bytes it puts in the holes are the real ones,
so the stream must come out exact: the test is about the bounds, not about blind data injection."""

from __future__ import annotations

import pytest
from offload_harness import ENABLED, Net, Stream, exchange, make_net, payload, tcp_frame
from stack_pair import OutboxNode

from tcpchimney.host.sockets import TcpSocket
from tcpchimney.link.sim import Impairments
from tcpchimney.tcp.config import TcpConfig
from tcpchimney.tcp.connection import TcpConnection
from tcpchimney.wire.seq import SeqNum
from tcpchimney.wire.tcp import ACK, TcpOptions, TcpSegment

NO_TS = TcpConfig(timestamps=False)  # hand-built segments carry no timestamp; four SACK blocks fit
SACK_BOUND = NO_TS.sack_max_ranges
OOO_BOUND = NO_TS.ooo_max_blocks
ACKS = 600  # forged ACKs, four new ranges each: about twenty times what the scoreboard holds
HOMES = pytest.mark.parametrize("offload", [False, True], ids=["host", "offloaded"])


def _attacked(seed: int, offload: bool, delay: float = 0.0) -> tuple[Net, TcpSocket, TcpSocket, OutboxNode]:
    """a (under test) connected to b, and the attacker's node on the link (not the harness's injector,
    which the peer's recorder checks every frame against: quadratic for a flood)."""
    imp = Impairments(delay=delay)
    net = make_net(seed, ENABLED, offload=offload, config=NO_TS, imp_a=imp, imp_b=imp)
    a, b = net.connect()
    if offload:
        net.wait_offloaded(a)
    evil = OutboxNode()
    net.link.attach(evil, "evil")
    return net, a, b, evil


def _engine(net: Net, a: TcpSocket) -> TcpConnection:
    """The engine that runs ``a`` now: the host's, or the target's copy while offloaded."""
    if net.offloaded(a):
        (entry,) = net.nic.table.conns.values()
        return entry.conn
    return a.conn


def _counted(net: Net, reason: str) -> int:
    """How often the engine reported ``reason``, in the host's and the target's counters."""
    host = net.a.counters["tcp"].get(f"engine_drop_{reason}", 0)
    nic = net.nic.counters.snapshot()["engine_drops"].get(reason, 0) if net.target is not None else 0
    return host + nic


def _forged(b: TcpSocket, seq: SeqNum, payload_: bytes = b"", sack: tuple = ()) -> bytes:  # type: ignore[type-arg]
    """A segment with b's address, ports, acknowledgement and advertised window."""
    conn = b.conn
    window = conn.rcv_adv.dist(conn.rcv_nxt) >> conn.rcv_wscale
    opts = TcpOptions(sack_blocks=sack)
    return tcp_frame(TcpSegment(b.local_port, b.remote_port, seq, conn.rcv_nxt, ACK, window, payload_, opts))


@HOMES
def test_peer_sacking_every_other_byte_meets_a_bounded_scoreboard_and_the_transfer_completes(
    offload: bool,
) -> None:
    """While a sends 1 MB to b over a link with 5 ms each way, the attacker answers every step with eight
    ACKs of four SACK blocks each, every other byte of what a has in flight."""
    net, a, b, evil = _attacked(41, offload, delay=0.005)
    data = payload(1_000_000, 41)
    state = {"next": 0, "acks": 0, "most": 0}

    def attack() -> None:
        conn = _engine(net, a)
        held = len(conn.sack.blocks())
        assert held <= SACK_BOUND
        state["most"] = max(state["most"], held)
        base = b.conn.rcv_nxt  # what b acknowledges; a has sent up to SND.MAX above it
        span = conn.snd_max.dist(base)
        for _ in range(8):
            if state["acks"] >= ACKS or span < 16:
                return
            blocks = []
            for _ in range(4):
                if 2 * state["next"] + 2 > span:
                    state["next"] = 0
                off = 2 * state["next"] + 1
                blocks.append((base + off, base + off + 1))
                state["next"] += 1
            evil.send(_forged(b, b.conn.snd_nxt, sack=tuple(blocks)))
            state["acks"] += 1

    exchange(net, [Stream(a, b, data)], timeout=120.0, during=attack)
    assert state["acks"] == ACKS and state["most"] == SACK_BOUND  # the attack ran, the bound held it
    assert _counted(net, "sack_scoreboard_full") > 0


@HOMES
def test_peer_sending_one_byte_holes_meets_a_bounded_queue_and_the_stream_completes(offload: bool) -> None:
    net, a, b, evil = _attacked(42, offload)
    data = payload(300_000, 42)
    start = _engine(net, a).rcv_nxt  # stream offset 0: b has sent nothing yet
    for batch in range(20):  # 10,000 one-byte segments, a one-byte hole before each
        for k in range(500 * batch, 500 * (batch + 1)):
            evil.send(_forged(b, start + 2 * k + 1, data[2 * k + 1 : 2 * k + 2]))
        net.run_for(0.005)
        rcvbuf = _engine(net, a).rcvbuf
        assert rcvbuf.ooo_blocks == OOO_BOUND and rcvbuf.ooo_bytes == OOO_BOUND
    assert _counted(net, "ooo_queue_full") == 10_000 - OOO_BOUND
    exchange(net, [Stream(b, a, data)], timeout=60.0)  # the real sender: the next in-order byte is taken
    assert _engine(net, a).rcvbuf.ooo_blocks == 0
