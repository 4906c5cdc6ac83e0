"""TcpTransport under asyncio protocols and streams: flow control both ways, extra info, close and errors."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest
from test_runtime import A_IP, B_IP, echo, eventually, run

from tcpchimney.api.runtime import Runtime
from tcpchimney.api.streams import SocketInfo, TcpTransport
from tcpchimney.host.sockets import TcpSocket


class Collect(asyncio.Protocol):
    """Keeps what arrives; can start paused so that the engine's receive window fills up."""

    def __init__(self, paused: bool = False) -> None:
        self.data = bytearray()
        self.eof = asyncio.get_running_loop().create_future()
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.paused = paused
        self.transport: TcpTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, TcpTransport)
        self.transport = transport
        if self.paused:
            transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool:
        self.eof.set_result(None)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)


class Writer(asyncio.Protocol):
    def __init__(self) -> None:
        self.pauses = 0
        self.resumed = asyncio.Event()

    def pause_writing(self) -> None:
        self.pauses += 1
        self.resumed.clear()

    def resume_writing(self) -> None:
        self.resumed.set()


def test_paused_reader_closes_the_window_and_the_writer_is_paused() -> None:
    data = os.urandom(3 << 20)  # more than the receive buffer (1 MB) plus the send buffer (1 MB)

    async def body(a: Runtime, b: Runtime) -> None:
        receivers: list[Collect] = []

        def factory() -> Collect:
            receivers.append(Collect(paused=True))
            return receivers[-1]

        server = await a.create_server(factory, port=6001)
        transport, writer = await b.create_connection(Writer, A_IP, 6001)
        assert isinstance(writer, Writer)
        transport.write(data)
        await eventually(lambda: bool(receivers) and writer.pauses == 1)
        await asyncio.sleep(0.2)
        (receiver,) = receivers
        assert not receiver.data  # paused: nothing delivered, the engine holds it
        assert transport.get_write_buffer_size() > 0  # the engine's send buffer is full too
        assert receiver.transport is not None and not receiver.transport.is_reading()
        receiver.transport.resume_reading()
        await asyncio.wait_for(writer.resumed.wait(), 10)
        transport.write_eof()
        await asyncio.wait_for(receiver.eof, 10)
        assert bytes(receiver.data) == data
        transport.close()
        server.close()

    run(body)


def test_extra_info_and_socket_options() -> None:
    async def body(a: Runtime, b: Runtime) -> None:
        server = await a.start_server(echo, port=7)
        _, writer = await b.open_connection(A_IP, 7)
        info = writer.get_extra_info("socket")
        assert isinstance(info, SocketInfo)
        assert info.family == socket.AF_INET and info.type == socket.SOCK_STREAM
        info.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        assert info.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert info.getpeername() == (A_IP, 7) and info.getsockname()[0] == B_IP
        assert isinstance(writer.get_extra_info("tcp_socket"), TcpSocket)
        assert writer.get_extra_info("runtime") is b
        assert writer.get_extra_info("nonexistent", "default") == "default"
        transport = writer.transport
        transport.set_write_buffer_limits(high=1000)
        assert transport.get_write_buffer_limits() == (250, 1000)
        with pytest.raises(ValueError):
            transport.set_write_buffer_limits(high=1, low=2)
        with pytest.raises(TypeError):
            writer.write("text")  # type: ignore[arg-type]
        assert not writer.is_closing()
        writer.close()
        assert writer.is_closing()
        await writer.wait_closed()
        server.close()

    run(body)


def test_line_iteration_and_limit_overrun() -> None:
    async def body(a: Runtime, b: Runtime) -> None:
        def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.writelines([b"one\n", b"two\n", b"three\n"])
            writer.write(b"x" * 200 + b"\n")
            writer.close()

        server = await a.start_server(handler, port=6002)
        reader, writer = await b.open_connection(A_IP, 6002, limit=100)
        lines = []
        with pytest.raises(ValueError):  # the 201-byte line is over the 100-byte limit
            async for line in reader:
                lines.append(line)
        assert lines == [b"one\n", b"two\n", b"three\n"]
        writer.close()
        server.close()

    run(body)


def test_buffered_protocol_receives_everything() -> None:
    data = os.urandom(200_000)

    class Buffered(asyncio.BufferedProtocol):
        def __init__(self) -> None:
            self.buf = bytearray(1000)
            self.got = bytearray()
            self.done = asyncio.get_running_loop().create_future()

        def get_buffer(self, sizehint: int) -> bytearray:
            return self.buf

        def buffer_updated(self, nbytes: int) -> None:
            self.got += self.buf[:nbytes]

        def eof_received(self) -> bool:
            self.done.set_result(bytes(self.got))
            return False

    async def body(a: Runtime, b: Runtime) -> None:
        def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(data)
            writer.close()

        server = await a.start_server(handler, port=6003)
        transport, protocol = await b.create_connection(Buffered, A_IP, 6003)
        assert isinstance(protocol, Buffered)
        assert await asyncio.wait_for(protocol.done, 10) == data
        await eventually(transport.is_closing)  # eof_received returned False: the transport closes
        server.close()

    run(body)


def test_drain_after_a_reset_raises_and_abort_is_final() -> None:
    async def body(a: Runtime, b: Runtime) -> None:
        reset = asyncio.Event()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readexactly(1)
            writer.transport.abort()
            writer.transport.abort()  # a second abort changes nothing
            reset.set()

        server = await a.start_server(handler, port=6004)
        reader, writer = await b.open_connection(A_IP, 6004)
        writer.write(b"!")
        await reset.wait()
        with pytest.raises(ConnectionResetError):
            await reader.read()
        with pytest.raises(ConnectionResetError):
            writer.write(b"more")
            await writer.drain()
        server.close()

    run(body)


def test_eof_without_data_and_wait_closed_on_both_sides() -> None:
    async def body(a: Runtime, b: Runtime) -> None:
        handled = asyncio.Event()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            assert await reader.read() == b""
            writer.close()
            await writer.wait_closed()
            handled.set()

        server = await a.start_server(handler, port=6005)
        reader, writer = await b.open_connection(A_IP, 6005)
        writer.write_eof()
        assert await reader.read() == b""
        await asyncio.wait_for(handled.wait(), 5)
        writer.close()
        await writer.wait_closed()
        await eventually(lambda: not b.stack.connections() or not a.stack.connections())
        server.close()
        await server.wait_closed()

    run(body)
