"""``cli/relay.py``'s splice with one end on the stack (over the in-memory link) and the other a kernel
socket on localhost, as ``chimney forward`` runs it: bytes both ways with a half-close, a kernel reset
arriving on the stack as RST, a stack reset arriving at the kernel server, a refusing target."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import struct

import pytest
from test_runtime import A_IP, eventually, run

from tcpchimney.api.runtime import Runtime
from tcpchimney.cli.relay import Pipe, RelayStats

PORT = 8100


async def _forward(a: Runtime, stats: RelayStats, target_port: int) -> object:
    """Runtime ``a`` listens on PORT and forwards to 127.0.0.1:target_port, as ``forward --to`` does."""
    loop = asyncio.get_running_loop()

    async def connect(pipe: Pipe) -> None:
        await loop.create_connection(lambda: pipe.outbound, "127.0.0.1", target_port)

    return await a.create_server(
        lambda: Pipe(stats, inbound_kernel=False, connect=connect).inbound, port=PORT
    )


def test_bytes_and_half_close_between_the_stack_and_a_kernel_server() -> None:
    upload = os.urandom(2 << 20)

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got = await reader.read()  # to the FIN the relay passed on
        writer.write(hashlib.sha256(got).digest() * 1000)
        writer.close()

    async def body(a: Runtime, b: Runtime) -> None:
        stats = RelayStats()
        kernel = await asyncio.start_server(target, "127.0.0.1", 0)
        server = await _forward(a, stats, kernel.sockets[0].getsockname()[1])
        reader, writer = await b.open_connection(A_IP, PORT)
        writer.write(upload)
        writer.write_eof()
        assert await reader.read() == hashlib.sha256(upload).digest() * 1000
        writer.close()
        await eventually(lambda: stats.closed == 1)
        assert (stats.bytes_in, stats.bytes_out, stats.reset) == (len(upload), 32_000, 0)
        server.close()  # type: ignore[attr-defined]
        kernel.close()

    run(body)


def test_resets_pass_both_ways_and_a_refusal_resets() -> None:
    async def resetting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(5)
        writer.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        writer.transport.abort()

    seen: asyncio.Queue[str] = asyncio.Queue()

    async def watching(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(5)
        writer.write(b"ok")
        try:
            await reader.read()
            await seen.put("eof")
        except ConnectionResetError:
            await seen.put("reset")

    async def body(a: Runtime, b: Runtime) -> None:
        stats = RelayStats()
        kernel = await asyncio.start_server(resetting, "127.0.0.1", 0)
        server = await _forward(a, stats, kernel.sockets[0].getsockname()[1])
        reader, writer = await b.open_connection(A_IP, PORT)
        writer.write(b"hello")
        with pytest.raises(ConnectionResetError):  # the kernel's RST, passed on by the stack
            await reader.read()
        server.close()  # type: ignore[attr-defined]
        kernel.close()

        kernel = await asyncio.start_server(watching, "127.0.0.1", 0)
        server = await _forward(a, stats, kernel.sockets[0].getsockname()[1])
        reader, writer = await b.open_connection(A_IP, PORT)
        writer.write(b"hello")
        assert await reader.readexactly(2) == b"ok"
        writer.transport.abort()  # RST from the stack's client
        assert await asyncio.wait_for(seen.get(), 10) == "reset"
        server.close()  # type: ignore[attr-defined]
        kernel.close()

        with socket.socket() as unused:  # bound, not listening: refused
            unused.bind(("127.0.0.1", 0))
            server = await _forward(a, stats, unused.getsockname()[1])
            reader, writer = await b.open_connection(A_IP, PORT)
            with pytest.raises(ConnectionResetError):
                await reader.read()
            server.close()  # type: ignore[attr-defined]
        await eventually(lambda: stats.reset == 3)
        assert stats.connect_errors == {"ConnectionRefusedError": 1}

    run(body)
