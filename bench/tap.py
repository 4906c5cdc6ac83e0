"""The stack on a TAP device against the Linux kernel, next to the kernel against itself over a veth pair.

``python -m bench.tap [--mb N] [--seconds S]`` prints one JSON line per figure, each with ``kernel`` (the
same exchange between two kernel namespaces over veth, measured in the same run) and ``ratio_to_kernel``:

- ``tap_bulk_linux_to_stack``: N MB (default 1000) from a kernel socket in the namespace to an asyncio
  server on the stack (``runtime.start_server``) that SHA-256s what it reads; MB/s by wall time from the
  accept to the end of the stream, and ``cpu_s_per_gb`` of the stack process over that span;
- ``tap_bulk_stack_to_linux``: N MB from the stack (``runtime.open_connection``) to a kernel receiver in the
  namespace that SHA-256s what it reads; MB/s by the receiver's wall time from accept to EOF, and
  ``cpu_s_per_gb`` of the stack process from connect to the receiver's report;
- ``tap_connections_per_s``: a kernel client connects, sends one byte, reads EOF (the server closes first, so
  the client's ports see no TIME-WAIT), closes, for S seconds, one connection at a time; ``cpu_us_per_conn``
  of the stack process.

Every Linux-side program is a ``python3`` process in a namespace (``ip netns exec``), so the stack process
runs the stack alone and ``time.process_time`` there is the stack's CPU. The payload is one fixed random
1 MB block repeated (no per-byte Python work on either side). Namespaces and links are removed on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import ipaddress
import json
import random
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from tcpchimney.link.netns import VethTopology, netns_exec, unavailable_reason, unique_name

MB = 1_000_000
BLOCK_SEED = 7
BLOCK_SIZE = 1 << 20
PORT_BULK = 5001
PORT_CONN = 5002
STACK_IF = ipaddress.IPv4Interface("198.18.0.2/24")
PEER_IF = ipaddress.IPv4Interface("198.18.0.1/24")

# The Linux side, one program with four modes; it prints JSON lines on stdout.
LINUX = r"""
import asyncio, hashlib, json, random, socket, sys, time

BLOCK = random.Random(int(sys.argv[1])).randbytes(int(sys.argv[2]))
mode, args = sys.argv[3], sys.argv[4:]


from bench.peer import connect, say


def listener(host, port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(128)
    return s


if mode == "send":  # host port nbytes
    s = connect(args[0], int(args[1]))
    left, view = int(args[2]), memoryview(BLOCK)
    while left:
        n = min(left, len(BLOCK))
        s.sendall(view[:n])
        left -= n
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
    s.close()
    say(done=True)
elif mode == "recv":  # host port
    ls = listener(args[0], int(args[1]))
    say(ready=True)
    c, _ = ls.accept()
    t0 = time.perf_counter()
    h, buf, total = hashlib.sha256(), bytearray(1 << 20), 0
    view = memoryview(buf)
    while n := c.recv_into(buf):
        h.update(view[:n])
        total += n
    seconds = time.perf_counter() - t0
    c.close()
    say(bytes=total, sha256=h.hexdigest(), seconds=seconds)
elif mode == "serve_conns":  # host port: read one byte, close first; until stdin closes
    async def handle(reader, writer):
        await reader.read(1)
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, args[0], int(args[1]), backlog=128)
        say(ready=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        server.close()

    asyncio.run(main())
elif mode == "conns":  # host port seconds
    host, port, seconds = args[0], int(args[1]), float(args[2])
    connect(host, port).close()  # warm-up: ARP and a listening server
    count, t0 = 0, time.perf_counter()
    end = t0 + seconds
    while time.perf_counter() < end:
        s = socket.create_connection((host, port))
        s.sendall(b"x")
        if s.recv(1) != b"":
            raise SystemExit("the server sent data")
        s.close()
        count += 1
    say(count=count, seconds=time.perf_counter() - t0)
"""


def block() -> bytes:
    return random.Random(BLOCK_SEED).randbytes(BLOCK_SIZE)


def expected_sha256(nbytes: int) -> str:
    h, data = hashlib.sha256(), memoryview(block())
    left = nbytes
    while left:
        n = min(left, len(data))
        h.update(data[:n])
        left -= n
    return h.hexdigest()


# ====================================================================== Linux processes


class LinuxProc:
    """The Linux-side program in a namespace; its JSON lines read on the loop."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def line(self, timeout: float = 120.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not raw:
            await self.proc.wait()
            assert self.proc.stderr is not None
            err = (await self.proc.stderr.read()).decode().strip()
            raise RuntimeError(f"the Linux side exited ({self.proc.returncode}): {err}")
        return dict(json.loads(raw))


def linux(netns: str, mode: str, *args: object) -> contextlib.AbstractAsyncContextManager[LinuxProc]:
    """The Linux program above in ``mode``."""
    return peer(netns, "-c", LINUX, BLOCK_SEED, BLOCK_SIZE, mode, *args)


@contextlib.asynccontextmanager
async def peer(netns: str, *args: object) -> AsyncIterator[LinuxProc]:
    """``python3 ARGS...`` in ``netns`` (stdin closed on the way out, killed if it does not end then)."""
    argv = netns_exec(netns, sys.executable, *map(str, args))
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield LinuxProc(proc)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()


# ====================================================================== kernel <-> kernel over veth


@contextlib.asynccontextmanager
async def in_thread(topo: VethTopology) -> AsyncIterator[VethTopology]:
    """The topology built and removed on a worker thread: pyroute2's synchronous sockets run their own
    event loop and refuse to start inside a running one."""
    entered = await asyncio.to_thread(topo.__enter__)
    try:
        yield entered
    finally:
        await asyncio.shield(asyncio.to_thread(topo.__exit__, None, None, None))


async def kernel_bulk(topo: VethTopology, nbytes: int, expected: str) -> float:
    """MB/s from ns_a to a receiver in ns_b (the receiver's wall time, accept to EOF)."""
    async with linux(topo.ns_b, "recv", topo.ip_b, PORT_BULK) as rx:
        await rx.line()
        async with linux(topo.ns_a, "send", topo.ip_b, PORT_BULK, nbytes) as tx:
            result = await rx.line()
            await tx.line()
    check(result, nbytes, expected)
    return nbytes / float(result["seconds"]) / MB


async def kernel_conns(topo: VethTopology, seconds: float) -> float:
    async with linux(topo.ns_b, "serve_conns", topo.ip_b, PORT_CONN) as server:
        await server.line()
        async with linux(topo.ns_a, "conns", topo.ip_b, PORT_CONN, seconds) as client:
            result = await client.line()
    return float(result["count"] / result["seconds"])


def check(result: dict[str, Any], nbytes: int, expected: str) -> None:
    if result["bytes"] != nbytes or result["sha256"] != expected:
        raise RuntimeError(f"corrupt transfer: {result['bytes']} bytes, sha256 {result['sha256']}")


# ====================================================================== the stack on a TAP


class Span:
    """Wall and process CPU seconds from creation to ``stop``."""

    def __init__(self) -> None:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        self.wall = self.cpu = 0.0

    def stop(self) -> Span:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0
        return self


async def stack_receive(session: Any, nbytes: int, expected: str) -> Span:
    """Linux sends; an asyncio server on the stack hashes; the span runs from accept to EOF."""
    done: asyncio.Future[tuple[Span, int, str]] = asyncio.get_running_loop().create_future()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The digest runs on a worker thread (hashlib releases the GIL on large buffers), in order since
        # there is one worker, so the application's hashing does not take the stack's CPU.
        span, h, total = Span(), hashlib.sha256(), 0
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=1) as hasher:
            pending: list[asyncio.Future[None]] = []
            while data := await reader.read(1 << 20):
                pending.append(loop.run_in_executor(hasher, h.update, data))
                total += len(data)
                if len(pending) > 32:
                    await pending.pop(0)
            await asyncio.gather(*pending)
        span.stop()
        writer.close()
        done.set_result((span, total, h.hexdigest()))

    server = await session.runtime.start_server(sink, port=PORT_BULK)
    try:
        async with linux(session.netns, "send", str(session.addr.ip), PORT_BULK, nbytes) as tx:
            span, total, digest = await asyncio.wait_for(done, 120)
            await tx.line()
    finally:
        server.close()
    check({"bytes": total, "sha256": digest}, nbytes, expected)
    return span


class Stops(Protocol):
    def stop(self) -> object: ...


M = TypeVar("M", bound=Stops)


async def stack_send(
    session: Any, nbytes: int, start: Callable[[], M], timeout: float = 120.0
) -> tuple[M, dict[str, Any]]:
    """The stack sends to a Linux receiver that hashes; the meter ``start`` makes runs from connect to its
    report."""
    data = memoryview(block())
    async with linux(session.netns, "recv", str(session.peer.ip), PORT_BULK) as rx:
        await rx.line()
        meter = start()
        reader, writer = await session.runtime.open_connection(str(session.peer.ip), PORT_BULK)
        left = nbytes
        while left:
            n = min(left, len(data))
            writer.write(data[:n])
            await writer.drain()
            left -= n
        writer.write_eof()
        result = await rx.line(timeout=timeout)
        meter.stop()
        await reader.read()
        writer.close()
    return meter, result


async def stack_conns(session: Any, seconds: float) -> tuple[float, float]:
    """Connections per second and stack CPU microseconds per connection."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.close()

    server = await session.runtime.start_server(handle, port=PORT_CONN)
    try:
        async with linux(session.netns, "conns", str(session.addr.ip), PORT_CONN, seconds) as client:
            span = Span()
            result = await client.line()
            span.stop()
    finally:
        server.close()
    rate = result["count"] / result["seconds"]
    return rate, span.cpu / result["count"] * 1e6


# ====================================================================== the run


async def measure(nbytes: int, seconds: float) -> list[dict[str, Any]]:
    from tcpchimney.cli.wiring import open_session

    expected = expected_sha256(nbytes)
    async with in_thread(VethTopology()) as veth:
        # Kernel to kernel is the same exchange either way round; one run per stack figure, as a pair.
        k_to_stack = await kernel_bulk(veth, nbytes, expected)
        k_from_stack = await kernel_bulk(veth, nbytes, expected)
        k_conns = await kernel_conns(veth, seconds)
    async with open_session(unique_name("ns"), STACK_IF, PEER_IF) as session:
        rx = await stack_receive(session, nbytes, expected)
        tx, tx_result = await stack_send(session, nbytes, Span)
        check(tx_result, nbytes, expected)
        conns, us_per_conn = await stack_conns(session, seconds)
    gb = nbytes / 1e9
    lines = [
        _bulk("tap_bulk_linux_to_stack", nbytes / rx.wall / MB, k_to_stack, rx.cpu / gb, nbytes),
        _bulk(
            "tap_bulk_stack_to_linux", nbytes / tx_result["seconds"] / MB, k_from_stack, tx.cpu / gb, nbytes
        ),
        {
            "bench": "tap_connections_per_s",
            "value": round(conns),
            "unit": "conn/s",
            "kernel": round(k_conns),
            "ratio_to_kernel": round(conns / k_conns, 3),
            "cpu_us_per_conn": round(us_per_conn, 1),
        },
    ]
    return lines


def _bulk(name: str, value: float, kernel: float, cpu_s_per_gb: float, nbytes: int) -> dict[str, Any]:
    return {
        "bench": name,
        "value": round(value, 1),
        "unit": "MB/s",
        "kernel": round(kernel, 1),
        "ratio_to_kernel": round(value / kernel, 4),
        "cpu_s_per_gb": round(cpu_s_per_gb, 2),
        "bytes": nbytes,
        "sha256_ok": True,
    }


NAMES = ("tap_bulk_linux_to_stack", "tap_bulk_stack_to_linux", "tap_connections_per_s")


def run(nbytes: int = 1000 * MB, seconds: float = 3.0) -> Iterator[dict[str, Any]]:
    reason = unavailable_reason()
    if reason is not None:
        for name in NAMES:
            yield {"bench": name, "skipped": reason}
        return
    yield from asyncio.run(measure(nbytes, seconds))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=1000, help="MB per bulk transfer")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of the connection-rate runs")
    args = parser.parse_args(argv)
    for line in run(args.mb * MB, args.seconds):
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
