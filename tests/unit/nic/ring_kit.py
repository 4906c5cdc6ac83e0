"""What the arena, ring and doorbell tests share: small arenas, both ends of one in this process, and peer
processes (ring_peer.py) that are always killed and reaped however the test ends."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tcpchimney.nic.arena import Arena, ArenaConfig, RingSpec, send_arena
from tcpchimney.nic.descriptors import RingId, RingKind, Side
from tcpchimney.nic.doorbell import make_eventfd

PEER = Path(__file__).with_name("ring_peer.py")

SMALL_RINGS = (
    RingSpec(RingId.H2N_CONTROL, RingKind.BYTES, Side.HOST, 4096),
    RingSpec(RingId.N2H_CONTROL, RingKind.BYTES, Side.NIC, 4096),
    RingSpec(RingId.H2N_DATA, RingKind.DESCRIPTOR, Side.HOST, 16),
    RingSpec(RingId.N2H_DATA, RingKind.DESCRIPTOR, Side.NIC, 16),
    RingSpec(RingId.N2H_FRAMES, RingKind.BYTES, Side.NIC, 8192),
)
SMALL = ArenaConfig(max_conns=8, pool_size=256 << 10, chunk_size=4096, rings=SMALL_RINGS)


@contextmanager
def pair(config: ArenaConfig = SMALL) -> Iterator[tuple[Arena, Arena]]:
    """The host's arena and a NIC-side mapping of it in this process."""
    host = Arena.create(config)
    nic = Arena.attach(os.dup(host.fd))
    try:
        yield host, nic
    finally:
        nic.close()
        host.close()


@dataclass
class Peer:
    proc: subprocess.Popen[bytes]
    sock: socket.socket
    efds: tuple[int, int]  # H2N, N2H
    lines: Iterator[bytes] = field(init=False)

    def __post_init__(self) -> None:
        self.sock.settimeout(30)
        self.lines = iter(self.sock.makefile("rb"))

    def line(self) -> str:
        return next(self.lines).decode().strip()


@contextmanager
def peer(arena: Arena, *args: str) -> Iterator[Peer]:
    """ring_peer.py in ``args``'s mode, attached to ``arena`` with a fresh pair of eventfds; it has said
    ``ready`` when this yields. Killed (SIGKILL) and reaped on the way out, whatever happened."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    efds = (make_eventfd(), make_eventfd())
    proc = subprocess.Popen(
        [sys.executable, str(PEER), str(theirs.fileno()), *args], pass_fds=(theirs.fileno(),)
    )
    theirs.close()
    try:
        send_arena(mine, arena, efds)
        p = Peer(proc, mine, efds)
        assert p.line() == "ready"
        yield p
    finally:
        proc.kill()
        proc.wait(timeout=30)
        mine.close()
        for fd in efds:
            os.close(fd)
