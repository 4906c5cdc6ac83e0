"""The application of bench/short.py on both sides: the asyncio server (``answer``) that the stack runs with
``runtime.start_server`` and the kernel runs with ``asyncio.start_server``, and the Linux clients.

``python -m bench.short_app serve HOST PORT`` (until stdin closes), ``conns HOST PORT SECONDS PARALLEL`` or
``rr HOST PORT ROUNDS [GAP_US]`` (waits for a line on stdin between its warm-up and the timed rounds); each
prints JSON lines. Standard library only, so that the same file runs in a namespace.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time

from bench.peer import connect, say

SIZE = 64  # every request and every answer
CLOSE = (
    b"C" * SIZE
)  # the connection's last request: the server answers, then closes first (no client TIME-WAIT)
KEEP = b"K" * SIZE
WARMUP = 50  # round trips before the timed ones (ARP, the offload of the connection, the caches)


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo each SIZE-byte request; close after a CLOSE request, or at the peer's EOF."""
    try:
        while True:
            request = await reader.readexactly(SIZE)
            writer.write(request)
            if request == CLOSE:
                break
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve(host: str, port: int) -> None:
    """``answer`` on kernel sockets until stdin closes."""
    server = await asyncio.start_server(answer, host, port, backlog=128)
    say(ready=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    server.close()


def exchange(s: socket.socket, request: bytes) -> None:
    s.sendall(request)
    got = b""
    while len(got) < SIZE:
        data = s.recv(SIZE - len(got))
        if not data:
            raise SystemExit(f"the server closed after {len(got)} bytes of an answer")
        got += data
    if got != request:
        raise SystemExit("the answer is not the request")


def one_connection(host: str, port: int) -> None:
    with socket.create_connection((host, port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        exchange(s, CLOSE)
        if s.recv(1) != b"":
            raise SystemExit("the server sent more than the answer")


def conns(host: str, port: int, seconds: float, parallel: int) -> None:
    """Connect, one request, the answer, the server's FIN, close: back to back on ``parallel`` threads."""
    with connect(host, port) as s:  # warm-up: ARP and a listening server
        exchange(s, CLOSE)
    counts = [0] * parallel
    t0 = time.perf_counter()
    end = t0 + seconds

    def loop(i: int) -> None:
        while time.perf_counter() < end:
            one_connection(host, port)
            counts[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(parallel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    say(count=sum(counts), seconds=time.perf_counter() - t0)


def rr(host: str, port: int, rounds: int, gap_us: float = 0.0) -> None:
    """Round trips of SIZE bytes on one connection, each timed with ``perf_counter_ns``, in microseconds;
    ``gap_us`` of sleep between them (a trickle instead of back to back)."""
    with connect(host, port) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(WARMUP):
            exchange(s, KEEP)
        say(ready=True)
        sys.stdin.readline()  # the bench's go: the connection is where the variant wants it
        us = []
        for _ in range(rounds):
            t0 = time.perf_counter_ns()
            exchange(s, KEEP)
            us.append((time.perf_counter_ns() - t0) / 1000)
            if gap_us:
                time.sleep(gap_us / 1e6)
        exchange(s, CLOSE)
    say(us=[round(u, 1) for u in us])


def main(argv: list[str]) -> None:
    mode, host, port = argv[0], argv[1], int(argv[2])
    if mode == "serve":
        asyncio.run(serve(host, port))
    elif mode == "conns":
        conns(host, port, float(argv[3]), int(argv[4]))
    elif mode == "rr":
        rr(host, port, int(argv[3]), float(argv[4]) if len(argv) > 4 else 0.0)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1:])
