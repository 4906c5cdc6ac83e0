"""The program ``bench/run.py`` measures, twice in each run: under ``chimney run`` with asyncio's own
``asyncio.open_connection`` (unmodified, as any program is), and on the native API with
``runtime.open_connection`` in the stack's own process. The code is the same; only the connect function
differs.

``python3 bench/run_app.py HOST BYTES SECONDS`` prints one JSON line: ``stack_to_linux`` and
``linux_to_stack`` MB/s of BYTES each way, ``requests_per_s`` of 64-byte ping-pongs for SECONDS.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

PORT_BULK = 5201  # the Linux peer: "up N\n" then N bytes (answers the count), or "down N\n" (sends N bytes)
PORT_RR = 5202  # the Linux peer: echoes
RR_SIZE = 64
_BLOCK = bytes(range(256)) * 256  # 64 KiB

OpenConnection = Callable[..., Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


async def stack_to_linux(open_connection: OpenConnection, host: str, nbytes: int) -> float:
    reader, writer = await open_connection(host, PORT_BULK)
    start = time.perf_counter()
    writer.write(f"up {nbytes}\n".encode())
    left = nbytes
    while left:
        n = min(left, len(_BLOCK))
        writer.write(_BLOCK[:n])
        await writer.drain()
        left -= n
    counted = int(await reader.readline())  # the peer answers once it read everything
    elapsed = time.perf_counter() - start
    writer.close()
    if counted != nbytes:
        raise RuntimeError(f"the Linux peer counted {counted} bytes of {nbytes}")
    return nbytes / elapsed / 1e6


async def linux_to_stack(open_connection: OpenConnection, host: str, nbytes: int) -> float:
    reader, writer = await open_connection(host, PORT_BULK)
    start = time.perf_counter()
    writer.write(f"down {nbytes}\n".encode())
    total = 0
    while data := await reader.read(1 << 20):
        total += len(data)
    elapsed = time.perf_counter() - start
    writer.close()
    if total != nbytes:
        raise RuntimeError(f"received {total} bytes of {nbytes}")
    return nbytes / elapsed / 1e6


async def ping_pong(open_connection: OpenConnection, host: str, seconds: float) -> float:
    reader, writer = await open_connection(host, PORT_RR)
    # asyncio sets it on its sockets; the native transport's socket takes it too, so both run alike
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    message, count = b"r" * RR_SIZE, 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        writer.write(message)
        if await reader.readexactly(RR_SIZE) != message:
            raise RuntimeError("the echo differs")
        count += 1
    writer.close()
    return count / elapsed


async def measure(open_connection: OpenConnection, host: str, nbytes: int, seconds: float) -> dict[str, Any]:
    return {
        "stack_to_linux": await stack_to_linux(open_connection, host, nbytes),
        "linux_to_stack": await linux_to_stack(open_connection, host, nbytes),
        "requests_per_s": await ping_pong(open_connection, host, seconds),
    }


if __name__ == "__main__":
    host, nbytes, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    print(json.dumps(asyncio.run(measure(asyncio.open_connection, host, nbytes, seconds))), flush=True)
