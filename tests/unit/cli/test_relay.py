"""The splice of ``chimney proxy`` and ``chimney forward`` between kernel sockets on localhost (the same code
runs between a kernel socket and the stack's transport in tests/interop): bytes both ways, half-close,
resets, a refusing target, backpressure."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tcpchimney.cli.relay import Pipe, RelayStats

MB = 1 << 20
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))  # type: ignore[arg-type]


async def _relay(stats: RelayStats, port: int) -> tuple[asyncio.AbstractServer, int]:
    loop = asyncio.get_running_loop()

    async def connect(pipe: Pipe) -> None:
        await loop.create_connection(lambda: pipe.outbound, "127.0.0.1", port)

    server = await loop.create_server(
        lambda: Pipe(stats, inbound_kernel=True, connect=connect, outbound_kernel=True).inbound,
        "127.0.0.1",
        0,
    )
    return server, server.sockets[0].getsockname()[1]


async def _target(handler: Handler) -> tuple[asyncio.AbstractServer, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await asyncio.sleep(0.01)


def test_bytes_both_ways_and_half_close_pass_through() -> None:
    upload, download = os.urandom(3 * MB), os.urandom(2 * MB)

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got = await reader.read()  # until the client's FIN, relayed
        writer.write(hashlib.sha256(got).digest() + download)
        await writer.drain()
        writer.close()

    async def main() -> None:
        stats = RelayStats()
        tserver, tport = await _target(target)
        rserver, rport = await _relay(stats, tport)
        reader, writer = await asyncio.open_connection("127.0.0.1", rport)
        writer.write(upload)
        writer.write_eof()  # half-close: the answer still comes back
        answer = await reader.read()
        assert answer[:32] == hashlib.sha256(upload).digest() and answer[32:] == download
        writer.close()
        await _until(lambda: stats.closed == 1)
        assert stats.as_dict()["active"] == 0 and stats.reset == 0
        assert (stats.bytes_in, stats.bytes_out) == (len(upload), 32 + len(download))
        rserver.close()
        tserver.close()

    run(main())


def test_a_reset_of_the_target_resets_the_client() -> None:
    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(5)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def main() -> None:
        stats = RelayStats()
        tserver, tport = await _target(target)
        rserver, rport = await _relay(stats, tport)
        reader, writer = await asyncio.open_connection("127.0.0.1", rport)
        writer.write(b"hello")
        with pytest.raises(ConnectionResetError):
            await reader.read()
        writer.close()
        await _until(lambda: stats.reset == 1)
        rserver.close()
        tserver.close()

    run(main())


def test_a_refusing_target_resets_the_accepted_connection() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, not listening: a SYN to it gets RST

        async def main() -> None:
            stats = RelayStats()
            rserver, rport = await _relay(stats, port)
            reader, writer = await asyncio.open_connection("127.0.0.1", rport)
            with pytest.raises(ConnectionResetError):
                await reader.read()
            writer.close()
            assert stats.connect_errors == {"ConnectionRefusedError": 1} and stats.reset == 1
            rserver.close()

        run(main())


def test_a_target_that_does_not_read_stops_the_relay_reading() -> None:
    """Backpressure: what the relay holds stays near its high-water mark however much the client sends."""
    with socket.socket() as listening:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]

        async def main() -> None:
            stats = RelayStats()
            rserver, rport = await _relay(stats, port)
            client = socket.create_connection(("127.0.0.1", rport))
            client.setblocking(False)
            sent, chunk, idle = 0, bytes(MB), 0
            while sent < 64 * MB and idle < 50:  # until the client cannot write for 0.5 s
                try:
                    sent += client.send(chunk)
                    idle = 0
                except BlockingIOError:
                    idle += 1
                    await asyncio.sleep(0.01)
            (pipe,) = stats.live
            assert pipe.outbound.transport is not None
            held = pipe.outbound.transport.get_write_buffer_size()
            assert held < MB, f"the relay buffered {held} bytes of {sent}: reading was not paused"
            assert sent < 64 * MB
            client.close()
            rserver.close()

        run(main())
