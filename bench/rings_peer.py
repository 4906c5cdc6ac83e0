"""The NIC side of bench/rings.py, a separate process: ``python -m bench.rings_peer SOCK_FD MODE [ARGS]``.

It receives the arena and the eventfds over the socket, writes ``ready``, and then:

- ``sink SPIN_US``: takes H2N_DATA batches until a descriptor flagged FIN; writes {"count", "cpu_s",
  "batches", counters}.
- ``echo SPIN_US``: every H2N_DATA descriptor goes back on N2H_DATA at once; stops after a FIN.
- ``idle SECONDS BOUND_MS``: waits for work that never comes; writes its CPU seconds over that span.
"""

from __future__ import annotations

import json
import resource
import socket
import sys
import time

from tcpchimney.nic.arena import Arena, receive_arena
from tcpchimney.nic.descriptors import DescFlag, DescKind, RingId
from tcpchimney.nic.doorbell import Direction, Doorbell, Waiter


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def sink(arena: Arena, waiter: Waiter) -> dict[str, object]:
    ring = arena.descriptor_consumer(RingId.H2N_DATA)
    count = batches = 0
    start = cpu_s()
    while True:
        waiter.wait(lambda: ring.available() > 0)
        batch = ring.take()
        ring.release()
        if batch:
            batches += 1
            count += len(batch)
            if batch[-1].flags & DescFlag.FIN:
                break
    return {"count": count, "batches": batches, "cpu_s": cpu_s() - start, **waiter.counters()}


def echo(arena: Arena, waiter: Waiter, bell: Doorbell) -> dict[str, object]:
    ring = arena.descriptor_consumer(RingId.H2N_DATA)
    out = arena.descriptor_producer(RingId.N2H_DATA)
    while True:
        waiter.wait(lambda: ring.available() > 0)
        batch = ring.take()
        ring.release()
        for d in batch:
            out.put(DescKind.SEND_DONE, d.flags, d.epoch, d.handle, d.a, d.b, d.c)
        if out.publish():
            bell.ring()
        if batch and batch[-1].flags & DescFlag.FIN:
            return {**waiter.counters(), **bell.counters()}


def idle(arena: Arena, waiter: Waiter, seconds: float) -> dict[str, object]:
    ring = arena.descriptor_consumer(RingId.H2N_DATA)
    start, wall = cpu_s(), time.monotonic()
    while time.monotonic() - wall < seconds:
        waiter.wait(lambda: ring.available() > 0)
    return {"cpu_s": cpu_s() - start, "seconds": time.monotonic() - wall, **waiter.counters()}


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    arena, (efd_h2n, efd_n2h) = receive_arena(sock)
    mode, arg = sys.argv[2], float(sys.argv[3])
    if mode == "idle":
        waiter = Waiter(arena.words, efd_h2n, Direction.H2N, sleep_bound_s=float(sys.argv[4]) / 1000)
    else:
        waiter = Waiter(arena.words, efd_h2n, Direction.H2N, spin_s=arg / 1e6)
    sock.sendall(b"ready\n")
    if mode == "sink":
        report = sink(arena, waiter)
    elif mode == "echo":
        report = echo(arena, waiter, Doorbell(arena.words, efd_n2h, Direction.N2H))
    else:
        report = idle(arena, waiter, arg)
    sock.sendall(json.dumps(report).encode() + b"\n")


if __name__ == "__main__":
    main()
