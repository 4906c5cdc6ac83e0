"""Offloaded connections move data byte-exact both ways, and can come back to the host and go out again at
any point of a transfer (docs/offload-design.md, chimney-spec 3.1, 3.5, 9.6)."""

from __future__ import annotations

import random

import pytest
from offload_kit import A_IP, ENABLED, Stream, exchange, make_offload_net, payload

from tcpchimney.chimney.indications import ReceiveIndication
from tcpchimney.chimney.reason import Reason
from tcpchimney.chimney.requests import Send
from tcpchimney.host.events import Offloaded, OffloadFault, OffloadRefused, Uploaded
from tcpchimney.host.offload import MAX_SEND_CHUNK, OffloadState
from tcpchimney.link.sim import Impairments
from tcpchimney.tcp.config import TcpConfig
from tcpchimney.tcp.events import Connected, PeerClosed
from tcpchimney.tcp.state import TcpState


def test_without_a_target_nothing_changes() -> None:
    net = make_offload_net(policy=None)
    assert net.a.offload_policy is not None  # a target with the default policy: disabled
    c, _ = net.connect()
    assert c.offload_state is OffloadState.IN_HOST
    assert [e.reason for e in net.events(OffloadRefused)] == [Reason.MODE_DISABLED]  # type: ignore[attr-defined]
    assert net.b.offload_policy is None and "offload" not in net.b.counters
    with pytest.raises(RuntimeError):
        net.b.offload_now(net.b.connections()[0])


@pytest.mark.parametrize("a_listens", [False, True])
def test_enabled_mode_offloads_at_establishment(a_listens: bool) -> None:
    net = make_offload_net()
    sock, _ = net.connect(a_listens=a_listens)
    net.wait_offloaded(sock)
    (ev,) = net.events(Offloaded)
    assert ev.sock is sock and ev.duration >= 0.0  # type: ignore[attr-defined]
    assert sock.state is TcpState.ESTABLISHED and net.has_event(sock, Connected) is not a_listens
    assert len(net.target.table.conns) == 1
    assert net.a.counters["offload"]["offloaded"] == 1


@pytest.mark.parametrize("seed", [1, 2])
def test_byte_exact_both_ways_while_offloaded(seed: int) -> None:
    imp = Impairments(loss=0.01, reorder=0.01) if seed == 2 else None
    net = make_offload_net(seed, imp_a=imp, imp_b=imp)
    a, b = net.connect()
    net.wait_offloaded(a)
    streams = [Stream(a, b, payload(600_000, seed)), Stream(b, a, payload(500_000, seed + 10))]
    exchange(net, streams, 120.0)
    assert a.offload_state is OffloadState.OFFLOADED  # the whole transfer ran on the target
    lifecycle = net.target.counters.snapshot()["lifecycle"]
    assert lifecycle["send_completions"] > 0 and lifecycle["receive_indications"] > 0
    assert net.a.counters["stack"]["internal_error"] == 0


def test_upload_mid_transfer_and_reoffload_keeps_both_streams_exact() -> None:
    net = make_offload_net(3)
    a, b = net.connect()
    net.wait_offloaded(a)
    up, down = Stream(a, b, payload(2_000_000, 5)), Stream(b, a, payload(1_500_000, 6))
    moves: list[str] = []

    def churn() -> None:
        progress = len(up.got) + len(down.got)
        if a.offload_state is OffloadState.OFFLOADED and progress > (len(moves) + 1) * 500_000:
            assert net.a.upload(a, Reason.CHURN)
            moves.append("up")
        elif a.offload_state is OffloadState.IN_HOST and moves and moves[-1] == "up":
            assert net.a.offload_now(a) is None
            moves.append("down")

    exchange(net, [up, down], 120.0, during=churn)
    uploads = net.events(Uploaded)
    assert len(uploads) >= 2 and all(u.reason is Reason.CHURN for u in uploads)  # type: ignore[attr-defined]
    assert len(net.events(Offloaded)) >= 3
    assert net.a.counters["stack"]["internal_error"] == 0


def test_upload_returns_unacknowledged_send_data_and_queued_sends_follow_it() -> None:
    net = make_offload_net(4)
    a, b = net.connect()
    net.wait_offloaded(a)
    net.link.set_impairments("b", Impairments(loss=1.0))  # no ACK reaches the target: all stays unACKed
    first = payload(100_000, 7)
    assert a.send(first) == len(first)
    net.run_for(0.05)
    assert net.a.upload(a, Reason.ADMIN)
    assert a.offload_state is OffloadState.UPLOADING
    second = payload(50_000, 8)
    assert a.send(second) == len(second)  # queued while the terminate is in flight
    net.run_until(lambda: a.offload_state is OffloadState.IN_HOST)
    assert a.conn.snd_una.dist(a.conn.snd_max) <= 0 and len(a.conn.sndbuf) == len(first) + len(second)
    net.link.set_impairments("b", Impairments())
    stream = Stream(a, b, b"")
    net.run_until(lambda: (stream.step(), len(stream.got) == len(first) + len(second))[1], 30.0)
    assert bytes(stream.got) == first + second


def test_receive_queue_is_read_first_after_upload() -> None:
    net = make_offload_net(5)
    a, b = net.connect()
    net.wait_offloaded(a)
    data = payload(3_000_000, 9)  # more than a's receive buffer: the target keeps the rest
    sent = 0

    def feed() -> bool:
        nonlocal sent
        sent += b.send(data[sent : sent + 65536]) if sent < len(data) else 0
        return a.readable >= a.conn.config.rcv_buf

    net.run_until(feed, 30.0)
    assert net.a.upload(a, Reason.ADMIN)
    got = bytearray(a.receive(100_000))  # served from the socket's queue while the upload is in flight
    net.run_until(lambda: a.offload_state is OffloadState.IN_HOST)
    stream = Stream(b, a, data)
    stream.sent, stream.got = sent, got
    exchange(net, [stream], 60.0)


def test_offload_keeps_unread_data_readable() -> None:
    net = make_offload_net(6, policy=None)
    a, b = net.connect()
    b.send(b"before offload")
    net.run_until(lambda: a.readable == 14)
    assert net.a.offload_now(a) is None
    assert a.offload_state is OffloadState.OFFLOADING and a.readable == 14
    net.wait_offloaded(a)
    b.send(b" and after")
    net.run_until(lambda: a.readable == 24)
    assert a.receive(100) == b"before offload and after"
    assert A_IP == "198.18.0.1" and ENABLED.mode.value == "enabled"


@pytest.mark.parametrize("seed", [1, 7, 11])
def test_random_uploads_and_offloads_under_impairments(seed: int) -> None:
    """Offloaded, uploaded, offloaded again at random points of a two-way transfer over a lossy,
    reordering, duplicating link; then both sides close: every byte once, in order, and both FINs seen."""
    imp = Impairments(loss=0.02, reorder=0.02, duplicate=0.01)
    net = make_offload_net(seed, imp_a=imp, imp_b=imp)
    a, b = net.connect()
    net.wait_offloaded(a, 10.0)
    rnd = random.Random(seed)

    def churn() -> None:
        if rnd.random() < 0.02:
            if a.offload_state is OffloadState.OFFLOADED:
                net.a.upload(a, Reason.CHURN)
            elif a.offload_state is OffloadState.IN_HOST:
                net.a.offload_now(a)

    streams = [Stream(a, b, payload(1_000_000, seed)), Stream(b, a, payload(800_000, seed + 100))]
    exchange(net, streams, 300.0, during=churn)
    assert len(net.events(Uploaded)) >= 2
    a.shutdown()
    b.shutdown()
    net.run_until(lambda: net.has_event(a, PeerClosed) and net.has_event(b, PeerClosed), 60.0)
    assert a.receive(10) == b"" and b.receive(10) == b""
    assert net.a.counters["stack"]["internal_error"] == 0 and not net.events(OffloadFault)


def _record_sends(net) -> list[Send]:  # type: ignore[no-untyped-def]
    sends: list[Send] = []
    submit = net.target.submit

    def recording(request, now):  # type: ignore[no-untyped-def]
        if isinstance(request, Send):
            sends.append(request)
        submit(request, now)

    net.target.submit = recording
    return sends


def test_offloaded_sends_copy_each_byte_at_most_once() -> None:
    """A bytes object goes to the target as it is; a large buffer the application may reuse is copied once,
    into pieces that become the Send requests whole; every Send stays within the chunk size."""
    net = make_offload_net(21, config=TcpConfig(snd_buf=4 << 20, rcv_buf=4 << 20))
    a, b = net.connect()
    net.wait_offloaded(a)
    sends = _record_sends(net)
    whole = payload(100_000, 21)
    assert a.send(whole) == len(whole)
    assert sends[-1].data is whole
    big = bytearray(payload(1_000_000, 22))
    assert a.send(memoryview(big)) == len(big)
    pieces = [s.data for s in sends[1:]]
    assert b"".join(pieces) == big and all(len(p) <= MAX_SEND_CHUNK for p in pieces)
    assert len(pieces) == -(-len(big) // MAX_SEND_CHUNK)  # cut once, at the chunk size: never re-joined
    stream = Stream(a, b, whole + bytes(big))
    stream.sent = len(stream.data)
    exchange(net, [stream])


def test_offloaded_reads_return_the_indicated_bytes_without_a_copy() -> None:
    net = make_offload_net(22, tamper=True)
    indicated: list[bytes] = []

    def tamper(out):  # type: ignore[no-untyped-def]
        if isinstance(out, ReceiveIndication):
            indicated.append(out.data)
        return [out]

    net.tamperer.tamper = tamper  # type: ignore[attr-defined]
    a, b = net.connect()
    net.wait_offloaded(a)
    b.send(payload(1000, 23))
    net.run_until(lambda: a.readable == 1000)
    assert len(indicated) == 1
    assert a.receive(1 << 20) is indicated[0]
    b.send(payload(3000, 24))
    net.run_until(lambda: a.readable == 3000)
    got = a.receive(1000) + a.receive(1500) + a.receive(-1)
    assert got == payload(3000, 24) and a.readable == 0
