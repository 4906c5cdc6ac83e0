"""More than 2^32 bytes on one connection through the host stack, across an offload and an upload.

The connection is offloaded to the software target, carries messages there, and is uploaded: the host rebuilds
its engine from the target's snapshot, which carries no ISS, so the rebuilt engine takes ISS = SND.UNA - 1 and
SND.UNA comes back to it 2^32 - 1 bytes later. The host then moves that many bytes and more over the simulated
link (64 KB frames), in messages of irregular sizes each acknowledged before the next, one ending exactly on
the ISS; b checks every byte against the generator.

A long run (``make long``, about 20 s of CPU): ``make test`` has the engine-level form of the same hand-off,
tests/unit/tcp/test_seq_wrap.py[rebuilt] (the engine is the same code in both homes). The 4 GiB go over the
host, not the target: the target's data path moves about 30 MB/s here, over two minutes for 4 GiB.
"""

from __future__ import annotations

import os
import random

import pytest
from offload_kit import OffloadNet, make_offload_net
from wrap_stream import PERIOD, WRAP, PeriodicStream, message_sizes

from tcpchimney.host.offload import OffloadState
from tcpchimney.host.policy import OffloadPolicy
from tcpchimney.host.sockets import TcpSocket
from tcpchimney.tcp.config import TcpConfig
from tcpchimney.tcp.state import TcpState

pytestmark = [
    pytest.mark.long,
    pytest.mark.skipif(os.environ.get("TCPCHIMNEY_LONG") != "1", reason="a long run: make long"),
]
_CONFIG = TcpConfig(rcv_buf=32 << 20, snd_buf=32 << 20, delayed_ack=0.001)
_MTU = 65000
_PAST = 2_000_000


def _messages(net: OffloadNet, a: TcpSocket, b: TcpSocket, stream: PeriodicStream, sizes: list[int]) -> None:
    """Send each message and run until b has read it, and (on the host) a's engine has it acknowledged;
    check every byte b reads."""

    def delivered() -> bool:
        while data := b.receive(PERIOD):
            stream.check(data)
        if stream.checked != stream.written:
            return False
        conn = a.conn  # the host's engine; while offloaded the target's runs the connection
        return a.offload_state is not OffloadState.IN_HOST or (
            conn.snd_una == conn.snd_max and not conn.unsent
        )

    for n in sizes:
        msg = stream.next_message(n)
        sent = 0
        while sent < n:
            sent += a.send(msg[sent:])
            net.run_until(delivered, 10.0)


def test_offload_upload_then_past_the_wrap_on_the_host() -> None:
    rng = random.Random(9)
    stream = PeriodicStream(seed=9)
    net = make_offload_net(9, config=_CONFIG, mtu=_MTU)
    a, b = net.connect()
    net.wait_offloaded(a)
    _messages(net, a, b, stream, message_sizes(rng, 3_000_000, 3_000_000))
    net.a.set_offload_policy(OffloadPolicy(mode="disabled"))  # upload, and stay on the host
    net.wait_in_host(a)
    conn = a.conn
    assert conn.iss == conn.snd_una + -1  # the rebuilt engine's count starts here
    held = len(conn.sndbuf)  # written before the upload, not yet acknowledged: already counted
    _messages(net, a, b, stream, message_sizes(rng, WRAP - held + _PAST, WRAP - held))
    assert a.conn is conn and conn.snd_una == conn.iss + _PAST  # the ACKs went past the ISS
    assert a.state is TcpState.ESTABLISHED and b.state is TcpState.ESTABLISHED
