"""A second process for the ring tests, playing the NIC's side of an arena. Started with
``python ring_peer.py SOCK_FD MODE [ARG]`` (the socket passed with ``pass_fds``); it receives the arena and
the two eventfds over that socket (``receive_arena``), writes one line ``ready`` to it, then:

- ``echo [BOUND]``: every H2N_DATA descriptor goes back on N2H_DATA with ``a`` and ``c`` swapped, every
  H2N_CONTROL record is decoded with the chimney codec and sent back re-encoded; a SEND whose flags say FIN
  is the last. Sleeps on the doorbell between batches (at most BOUND seconds at a time), rings the host's
  after each; then writes its counters as JSON.
- ``hold K``: takes K descriptors and releases them, takes the rest without releasing, writes ``took N``
  and waits to be killed.
- ``commit HANDLE N``: commits N records for HANDLE (rcv_nxt = 1..N), writes ``committed`` and waits.
- ``beat N``: writes ``beating``, then N heartbeats as fast as it can, then waits.
"""

from __future__ import annotations

import json
import signal
import socket
import sys

from tcpchimney.chimney import codec
from tcpchimney.nic.arena import Arena, receive_arena
from tcpchimney.nic.descriptors import ConnRecord, DescFlag, DescKind, RecordKind, RingId
from tcpchimney.nic.doorbell import Direction, Doorbell, Waiter


def echo(arena: Arena, efd_h2n: int, efd_n2h: int, sock: socket.socket, bound: float) -> None:
    data_in = arena.descriptor_consumer(RingId.H2N_DATA)
    ctl_in = arena.byte_consumer(RingId.H2N_CONTROL)
    data_out = arena.descriptor_producer(RingId.N2H_DATA)
    ctl_out = arena.byte_producer(RingId.N2H_CONTROL)
    waiter = Waiter(arena.words, efd_h2n, Direction.H2N, spin_s=50e-6, sleep_bound_s=bound)
    bell = Doorbell(arena.words, efd_n2h, Direction.N2H)
    epoch = arena.epoch & 0xFFFF
    done = False
    while not done:
        waiter.wait(lambda: data_in.available() > 0 or ctl_in.available() > 0)
        for record in ctl_in.take():
            while not ctl_out.put(RecordKind.CONTROL, codec.encode(codec.decode(record.data))):
                ctl_out.publish()
        ctl_in.release()
        for d in data_in.take():
            while not data_out.put(DescKind.SEND_DONE, d.flags, epoch, d.handle, d.c, d.b, d.a):
                data_out.publish()  # full: the host drains as it goes
                bell.ring()
            done = done or bool(d.kind == DescKind.SEND and d.flags & DescFlag.FIN)
        data_in.release()
        if data_out.publish() | ctl_out.publish():
            bell.ring()
    sock.sendall(json.dumps(waiter.counters() | bell.counters()).encode() + b"\n")


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    arena, fds = receive_arena(sock)
    arena.announce()
    sock.sendall(b"ready\n")
    mode = sys.argv[2]
    if mode == "echo":
        echo(arena, fds[0], fds[1], sock, float(sys.argv[3]) if len(sys.argv) > 3 else 0.01)
        return
    if mode == "hold":
        ring = arena.descriptor_consumer(RingId.H2N_DATA)
        ring.take(int(sys.argv[3]))
        ring.release()
        held = ring.take()
        sock.sendall(f"took {len(held)}\n".encode())
    elif mode == "commit":
        handle, n = int(sys.argv[3]), int(sys.argv[4])
        for i in range(1, n + 1):
            arena.commit(handle, ConnRecord(arena.binding(handle).conn_id, 0, i, i + 1000, i))
        sock.sendall(b"committed\n")
    elif mode == "beat":
        sock.sendall(b"beating\n")
        for _ in range(int(sys.argv[3])):
            arena.beat()
    signal.pause()  # until killed


if __name__ == "__main__":
    main()
