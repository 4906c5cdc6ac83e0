"""The NIC process's transport: arena rings, records and doorbells (tcpchimney/nic/{ring,arena,doorbell}.py).
One JSON line per figure, each the median of ``RUNS`` runs (``runs`` lists them).

In one process (both ends mapped here, no second core involved):

- ``rings_put_get_us``: one 32-byte descriptor put and taken, per descriptor; ``batch`` 1 publishes and
  releases each one, 32 publishes and takes 32 at a time.
- ``rings_record_put_get_us``: one byte-ring record of ``size`` bytes put and taken (two copies).
- ``rings_control_message_us``: a small control message (Disconnect) encoded with the chimney codec, put,
  taken and decoded.
- ``rings_commit_us``: one connection record committed by the NIC side plus ``read_us``, one read by the host.

Across processes (bench/rings_peer.py as the NIC, spawned; the two share the machine's 2 CPUs):

- ``rings_xproc_msgs_per_s``: 200,000 descriptors from this process to a consumer that takes every batch
  available, doorbell rung after each publish (only if the consumer sleeps). ``producer_us_per_msg`` /
  ``consumer_us_per_msg``: each side's CPU per descriptor.
- ``rings_doorbell_rtt_us``: one descriptor there and back, median and p99 over 1,000 rounds; ``mode``
  sleep: both sides block on the eventfd between rounds (spin 0), spin: both spin up to 1 ms (never sleep).
  ``late_wakeups``: sleeps, on either side, that ended at the bound with work waiting (a missed doorbell).
- ``rings_idle_consumer_cpu_s``: a consumer with no work for 2 s (default 75 us spin, sleep bound
  ``bound_ms``; 50 is the default): its CPU seconds over those 2 s (getrusage), and ``wakeups_per_s``
  (bound expiries).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tcpchimney.chimney import codec
from tcpchimney.chimney.requests import Disconnect
from tcpchimney.nic.arena import Arena, ArenaConfig, send_arena
from tcpchimney.nic.descriptors import ConnRecord, DescFlag, DescKind, RecordKind, RingId
from tcpchimney.nic.doorbell import Direction, Doorbell, Waiter, make_eventfd

RUNS = 5
XPROC_RUNS = 3
N = 50_000
XPROC_N = 200_000
ROOT = Path(__file__).resolve().parents[1]


def _median_line(name: str, runs: list[float], unit: str, **extra: object) -> dict[str, object]:
    return {
        "bench": name,
        "value": round(statistics.median(runs), 3),
        "unit": unit,
        "runs": [round(r, 3) for r in sorted(runs)],
        **extra,
    }


def _per_op_us(step: Callable[[int], None], n: int) -> float:
    start = time.perf_counter()
    step(n)
    return (time.perf_counter() - start) / n * 1e6


def _pair() -> tuple[Arena, Arena]:
    host = Arena.create(ArenaConfig(max_conns=16, pool_size=1 << 20))
    return host, Arena.attach(os.dup(host.fd))


def descriptors(batch: int) -> dict[str, object]:
    host, nic = _pair()
    out, into = host.descriptor_producer(RingId.H2N_DATA), nic.descriptor_consumer(RingId.H2N_DATA)

    def step(n: int) -> None:
        for i in range(0, n, batch):
            for j in range(batch):
                out.put(DescKind.SEND, 0, 0, 1, i + j, 1460, 0)
            out.publish()
            into.take()
            into.release()

    runs = [_per_op_us(step, N) for _ in range(RUNS)]
    nic.close()
    host.close()
    return _median_line("rings_put_get_us", runs, "us", batch=batch)


def records(size: int) -> dict[str, object]:
    host, nic = _pair()
    out, into = host.byte_producer(RingId.H2N_CONTROL), nic.byte_consumer(RingId.H2N_CONTROL)
    payload = bytes(size)
    n = N if size < 4096 else N // 10

    def step(n: int) -> None:
        for _ in range(n):
            out.put(RecordKind.FRAME, payload)
            out.publish()
            into.take()
            into.release()

    runs = [_per_op_us(step, n) for _ in range(RUNS)]
    nic.close()
    host.close()
    return _median_line("rings_record_put_get_us", runs, "us", size=size)


def control_messages() -> dict[str, object]:
    host, nic = _pair()
    out, into = host.byte_producer(RingId.H2N_CONTROL), nic.byte_consumer(RingId.H2N_CONTROL)
    message = Disconnect(request_id=12345, ctx=7)

    def step(n: int) -> None:
        for _ in range(n):
            out.put(RecordKind.CONTROL, codec.encode(message))
            out.publish()
            for r in into.take():
                codec.decode(r.data)
            into.release()

    runs = [_per_op_us(step, N // 5) for _ in range(RUNS)]
    nic.close()
    host.close()
    return _median_line("rings_control_message_us", runs, "us", message="Disconnect")


def commits() -> dict[str, object]:
    host, nic = _pair()
    pool = host.layout.pool_off
    host.bind(3, 1, (pool, 4096), (pool + 4096, 4096))
    rec = ConnRecord(1, 0, 1 << 33, (1 << 33) + 65535, 1 << 20, 123456, 200, 3000, 1500, 14600, 1 << 30)
    runs = [_per_op_us(lambda n: [nic.commit(3, rec) for _ in range(n)] and None, N) for _ in range(RUNS)]
    reads = [_per_op_us(lambda n: [host.read_record(3) for _ in range(n)] and None, N) for _ in range(RUNS)]
    nic.close()
    host.close()
    return _median_line("rings_commit_us", runs, "us", read_us=round(statistics.median(reads), 3))


class _Peer:
    """bench/rings_peer.py attached to a fresh arena; killed and reaped by ``close`` whatever happened."""

    def __init__(self, *args: str) -> None:
        self.arena = Arena.create()
        self.efds = (make_eventfd(), make_eventfd())
        self.sock, theirs = socket.socketpair()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.rings_peer", str(theirs.fileno()), *args],
            pass_fds=(theirs.fileno(),),
            cwd=ROOT,
        )
        theirs.close()
        self.sock.settimeout(60)
        self.lines = self.sock.makefile("rb")
        send_arena(self.sock, self.arena, self.efds)
        if self.lines.readline() != b"ready\n":
            raise RuntimeError("the ring peer did not start")

    def report(self) -> dict[str, float]:
        report: dict[str, float] = json.loads(self.lines.readline())
        return report

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.lines.close()
        self.sock.close()
        for fd in self.efds:
            os.close(fd)
        self.arena.close()


def _xproc_run(batch: int) -> tuple[float, float, float, float, int]:
    peer = _Peer("sink", "75")
    try:
        out = peer.arena.descriptor_producer(RingId.H2N_DATA)
        bell = Doorbell(peer.arena.words, peer.efds[0], Direction.H2N)
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(0, XPROC_N, batch):
            for j in range(batch):
                flags = DescFlag.FIN if i + j == XPROC_N - 1 else 0
                while not out.put(DescKind.SEND, flags, 0, 1, i + j, 1460, 0):
                    if out.publish():
                        bell.ring()
                    elif peer.proc.poll() is not None:
                        raise RuntimeError(f"the ring peer died: {peer.proc.returncode}")
            out.publish()
            bell.ring()
        cpu = time.process_time() - cpu
        report = peer.report()
        wall = time.perf_counter() - wall
        if report["count"] != XPROC_N:
            raise RuntimeError(f"the consumer took {report['count']} of {XPROC_N}")
        return (
            XPROC_N / wall,
            cpu / XPROC_N * 1e6,
            report["cpu_s"] / XPROC_N * 1e6,
            report["batches"],
            bell.rung,
        )
    finally:
        peer.close()


def cross_process(batch: int) -> dict[str, object]:
    runs = [_xproc_run(batch) for _ in range(XPROC_RUNS)]
    mid = sorted(runs)[len(runs) // 2]
    return _median_line(
        "rings_xproc_msgs_per_s",
        [r[0] for r in runs],
        "msg/s",
        batch=batch,
        messages=XPROC_N,
        producer_us_per_msg=round(mid[1], 3),
        consumer_us_per_msg=round(mid[2], 3),
        consumer_batches=mid[3],
        doorbells_rung=mid[4],
    )


def ping_pong(mode: str, rounds: int = 1000) -> dict[str, object]:
    spin_us = 0 if mode == "sleep" else 1000
    peer = _Peer("echo", str(spin_us))
    try:
        out = peer.arena.descriptor_producer(RingId.H2N_DATA)
        back = peer.arena.descriptor_consumer(RingId.N2H_DATA)
        bell = Doorbell(peer.arena.words, peer.efds[0], Direction.H2N)
        waiter = Waiter(peer.arena.words, peer.efds[1], Direction.N2H, spin_s=spin_us / 1e6)
        rtts = []
        for i in range(rounds + 1):
            start = time.perf_counter()
            out.put(DescKind.SEND, DescFlag.FIN if i == rounds else 0, 0, 1, i, 1, 0)
            out.publish()
            bell.ring()
            while not waiter.wait(lambda: back.available() > 0):
                pass
            back.take()
            back.release()
            rtts.append((time.perf_counter() - start) * 1e6)
        theirs = peer.report()
    finally:
        peer.close()
    rtts.sort()
    return {
        "bench": "rings_doorbell_rtt_us",
        "value": round(statistics.median(rtts), 1),
        "unit": "us",
        "mode": mode,
        "p99": round(rtts[int(len(rtts) * 0.99)], 1),
        "rounds": rounds,
        "doorbells_rung": bell.rung,
        "late_wakeups": waiter.late_wakeups + int(theirs["late_wakeups"]),  # a missed doorbell, either side
    }


def idle_cpu(bound_ms: float, seconds: float = 2.0) -> dict[str, object]:
    peer = _Peer("idle", str(seconds), str(bound_ms))
    try:
        report = peer.report()
    finally:
        peer.close()
    return {
        "bench": "rings_idle_consumer_cpu_s",
        "value": round(report["cpu_s"], 4),
        "unit": "s",
        "seconds": round(report["seconds"], 2),
        "bound_ms": bound_ms,
        "wakeups_per_s": round(report["wakeup_timeouts"] / report["seconds"], 1),
    }


def run() -> Iterator[dict[str, object]]:
    yield descriptors(1)
    yield descriptors(32)
    yield records(64)
    yield records(65536)
    yield control_messages()
    yield commits()
    yield cross_process(1)
    yield cross_process(32)
    yield ping_pong("sleep")
    yield ping_pong("spin")
    yield idle_cpu(50)  # the default bound
    yield idle_cpu(10)
    yield idle_cpu(1)


if __name__ == "__main__":
    for line in run():
        print(json.dumps(line), flush=True)
