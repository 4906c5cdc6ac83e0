"""The software target moves a real connection's data: Send completes only once the peer ACKed it, received
data reaches the host through posted buffers first, then indications, and an upload hands back a state the
host engine continues from byte-exact."""

from __future__ import annotations

import itertools
import random

import pytest
from nic_kit import Bench, read_all

from tcpchimney.chimney import (
    BlockList,
    Layer,
    PostReceive,
    QueryOffload,
    ReceiveCompletion,
    ReceiveIndication,
    ReturnReceive,
    Role,
    Send,
    SendBacklogChanged,
    SendCompletion,
    Status,
    TcpSnapshot,
    walk,
)
from tcpchimney.link.sim import Impairments
from tcpchimney.nic.target import send_backlog
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire.frame import DeviceFeatures

FEATURES = [DeviceFeatures(), DeviceFeatures(tx_csum=True, rx_csum=True, tso=True, gro=True)]


@pytest.mark.parametrize("features", FEATURES, ids=["plain", "tso"])
def test_sends_complete_only_after_the_peer_acked_them(features: DeviceFeatures) -> None:
    bench = Bench(features=features)
    sock, server = bench.connect()
    off = bench.offload(sock)
    payload = random.Random(1).randbytes(200_000)
    ids = []
    for i in range(0, len(payload), 50_000):
        ids.append(bench.rid())
        bench.submit(Send(ids[-1], off.ctx, payload[i : i + 50_000]))
    assert bench.take(SendCompletion) == []  # nothing is ACKed before anything was sent
    got = bytearray()

    def done() -> bool:
        got.extend(read_all(server))
        return len(got) == len(payload) and len(bench.outputs) >= 4

    bench.run_until(done)
    bench.link.run_for(0.5)
    completions = bench.take(SendCompletion)
    assert [c.request_id for c in completions] == ids
    assert all(c.status is Status.SUCCESS and c.bytes_acked == 50_000 for c in completions)
    assert bytes(got) == payload
    counters = bench.target.dump_state()["counters"]
    assert counters["tcp"]["out_segments"] > 0 and counters["lifecycle"]["offloads"] == 1


def test_received_data_is_indicated_and_returned() -> None:
    bench = Bench()
    sock, server = bench.connect()
    off = bench.offload(sock)
    payload = random.Random(2).randbytes(100_000)
    server.send(payload)
    got = bytearray()

    def done() -> bool:
        bench.answer_indications(off, got)
        return len(got) == len(payload)

    bench.run_until(done)
    assert bytes(got) == payload
    # Only one indication at a time: each was answered before the next came.
    assert bench.target.dump_state()["connections"][off.ctx]["indication"] is None


def test_partly_taken_indication_waits_for_a_posted_buffer() -> None:
    bench = Bench()
    sock, server = bench.connect()
    off = bench.offload(sock)
    server.send(b"a" * 3000)
    bench.run_until(lambda: any(isinstance(o, ReceiveIndication) for o in bench.outputs))
    got = bytearray()
    bench.answer_indications(off, got, take=1000)
    server.send(b"b" * 500)
    bench.link.run_for(1.0)
    assert bench.take(ReceiveIndication) == []  # the rest is kept, not offered again unasked
    rid = bench.rid()
    bench.submit(PostReceive(rid, off.ctx, 0))  # a zero-byte post re-enables indications
    assert bench.completion(rid) == ReceiveCompletion(rid, Status.SUCCESS, b"")
    bench.answer_indications(off, got)
    assert bytes(got) == b"a" * 3000 + b"b" * 500


def test_posted_buffers_fill_before_any_indication() -> None:
    bench = Bench()
    sock, server = bench.connect()
    off = bench.offload(sock)
    rid = bench.rid()
    bench.submit(PostReceive(rid, off.ctx, 1000, push=False))
    server.send(b"x" * 2500)
    bench.run_until(lambda: any(isinstance(o, ReceiveIndication) for o in bench.outputs))
    assert bench.completion(rid) == ReceiveCompletion(rid, Status.SUCCESS, b"x" * 1000)
    rest = bytearray()

    def done() -> bool:
        bench.answer_indications(off, rest)
        return len(rest) >= 1500

    bench.run_until(done)
    assert rest == b"x" * 1500


def test_push_mode_buffer_completes_partly_on_psh() -> None:
    bench = Bench()
    sock, server = bench.connect()
    off = bench.offload(sock)
    rid = bench.rid()
    bench.submit(PostReceive(rid, off.ctx, 10_000, push=True))
    server.send(b"hello")
    bench.run_until(lambda: any(getattr(o, "request_id", None) == rid for o in bench.outputs))
    assert bench.completion(rid) == ReceiveCompletion(rid, Status.SUCCESS, b"hello")
    assert bench.take(ReceiveIndication) == []


def test_buffered_data_handed_over_is_delivered_first() -> None:
    bench = Bench()
    sock, server = bench.connect()
    server.send(b"before offload;")
    bench.link.run_for(1.0)  # the local engine received it; nobody read it
    off = bench.offload(sock)
    (first,) = bench.take(ReceiveIndication)
    assert first.data == b"before offload;"
    server.send(b"after")
    bench.run_until(lambda: True)
    bench.target.submit(ReturnReceive(bench.rid(), off.ctx, first.indication_id, len(first.data)), bench.now)
    got = bytearray()

    def done() -> bool:
        bench.answer_indications(off, got)
        return got == b"after"

    bench.run_until(done)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_upload_mid_transfer_continues_byte_exact(seed: int) -> None:
    """Data both ways, terminate at a random instant with sends outstanding, rebuild the host engine from the
    returned state: the peer sees every byte exactly once and so does the host."""
    rng = random.Random(seed)
    bench = Bench(seed=seed)
    sock, server = bench.connect()
    off = bench.offload(sock)
    up = rng.randbytes(150_000)
    down = rng.randbytes(120_000)
    sends = []
    for i in range(0, len(up), 30_000):
        sends.append(bench.rid())
        bench.submit(Send(sends[-1], off.ctx, up[i : i + 30_000]))
    server.send(down)
    at_host = bytearray()
    at_peer = bytearray()
    bench.link.run_for(rng.uniform(0.0005, 0.02))
    bench.answer_indications(off, at_host)
    at_peer += read_all(server)
    delegated = bench.terminate(off)
    completions = bench.take(SendCompletion)
    assert sorted(c.request_id for c in completions) == sends  # every Send completed, in order
    acked = sum(c.bytes_acked for c in completions)
    assert all(c.status in (Status.SUCCESS, Status.UPLOAD_IN_PROGRESS) for c in completions)
    assert any(c.status is Status.UPLOAD_IN_PROGRESS for c in completions)  # the upload caught data in flight
    # send data = every accepted byte not yet ACKed: what the host now owns is exactly the rest
    assert delegated.send_data == up[acked:]
    assert delegated.state is TcpState.ESTABLISHED
    bench.upload_into_host(off, delegated)
    assert bench.target.dump_state()["connections"] == {}
    # buffered data = received and not taken by the host: it continues right after what was indicated
    assert down[len(at_host) : len(at_host) + len(delegated.buffered_data)] == delegated.buffered_data

    def done() -> bool:
        at_peer.extend(read_all(server))
        at_host.extend(read_all(sock))
        return len(at_peer) >= len(up) and len(at_host) >= len(down)

    bench.run_until(done, 60.0)
    assert bytes(at_peer) == up
    assert bytes(at_host) == down
    bench.target.close()


def test_send_backlog_changes_are_indicated_throttled_and_match_the_query() -> None:
    """Spec 4.3 TcpIndicateSendBacklogChange: the estimate (nic.target.send_backlog) is indicated as the
    connection's window grows, each value more than a quarter away from the previous one; a query returns
    the same rule's current value (spec 2.4 SendBacklogSize)."""
    bench = Bench()
    sock, server = bench.connect()
    off = bench.offload(sock)
    for name in ("nic", "peer"):
        bench.set_impairments(name, Impairments(delay=0.005))  # a 10 ms RTT: the window grows over time
    data = random.Random(7).randbytes(1_000_000)
    for i in range(0, len(data), 100_000):
        bench.submit(Send(bench.rid(), off.ctx, data[i : i + 100_000]))
    got = bytearray()
    bench.run_until(lambda: (got.extend(read_all(server)), len(got) == len(data))[1])
    changes = bench.take(SendBacklogChanged)
    values = [c.backlog for c in changes]
    assert len(values) >= 3 and {c.host_handle for c in changes} == {off.host_handle}
    assert all(abs(new - old) * 4 > old for old, new in itertools.pairwise(values)), values
    entry = bench.target.table.conns[off.ctx]
    assert values[-1] == entry.backlog_indicated
    assert abs(send_backlog(entry.conn) - values[-1]) * 4 <= values[-1], "the last change was indicated"
    rid = bench.rid()
    tcp = BlockList(Layer.TCP, Role.LINKER, None, off.ctx)
    path = BlockList(Layer.PATH, Role.LINKER, None, off.path, dependents=(tcp,))
    bench.submit(
        QueryOffload(rid, (BlockList(Layer.NEIGHBOR, Role.LINKER, None, off.neighbor, dependents=(path,)),))
    )
    state = next(b for b in walk(bench.completion(rid).tree) if b.layer is Layer.TCP).state
    assert isinstance(state, TcpSnapshot)
    assert (
        state.delegated.send_backlog_size
        == send_backlog(entry.conn)
        == 2 * min(entry.conn.cwnd, entry.conn.max_snd_wnd)
    )
