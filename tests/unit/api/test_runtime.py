"""Two Runtimes over a MemoryDevicePair in one event loop: the asyncio API end to end on the real engine."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tcpchimney.api.memdev import MemoryDevice, MemoryDevicePair
from tcpchimney.api.runtime import Runtime
from tcpchimney.host.arp import ArpParams
from tcpchimney.host.interface import InterfaceConfig
from tcpchimney.host.stack import HostStack
from tcpchimney.tcp.config import TcpConfig
from tcpchimney.tcp.state import TcpState

A_IP, B_IP = "198.18.0.10", "198.18.0.11"
TIMEOUT = 20.0

Body = Callable[[Runtime, Runtime], Awaitable[Any]]


def make_stack(
    device: MemoryDevice, mac: str, address: str, config: TcpConfig | None = None, **kwargs: Any
) -> HostStack:
    iface = InterfaceConfig.parse(mac, address + "/24", mtu=device.mtu, features=device.features)
    return HostStack(iface, config, secret=b"secret " + mac.encode(), rng=random.Random(mac), **kwargs)


@contextlib.asynccontextmanager
async def runtimes(pair: MemoryDevicePair | None = None) -> AsyncIterator[tuple[Runtime, Runtime]]:
    pair = pair or MemoryDevicePair()
    a = Runtime(make_stack(pair.a, "02:00:00:00:00:0a", A_IP), pair.a)
    b = Runtime(make_stack(pair.b, "02:00:00:00:00:0b", B_IP), pair.b)
    try:
        async with a, b:
            yield a, b
    finally:
        pair.close()


def run(body: Body, pair: MemoryDevicePair | None = None) -> Any:
    async def main() -> Any:
        async with runtimes(pair) as (a, b):
            return await asyncio.wait_for(body(a, b), TIMEOUT)

    return asyncio.run(main())


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


# ====================================================================== data


def test_echo_round_trip_and_addresses() -> None:
    async def body(a: Runtime, b: Runtime) -> None:
        server = await a.start_server(echo, port=7)
        reader, writer = await b.open_connection(A_IP, 7)
        writer.write(b"hello, stack\n")
        assert await reader.readline() == b"hello, stack\n"
        local = writer.get_extra_info("sockname")
        assert writer.get_extra_info("peername") == (A_IP, 7)
        assert local[0] == B_IP and 1 <= local[1] <= 65535
        (conn,) = a.stack.connections()
        assert conn.remote_port == local[1] and conn.state is TcpState.ESTABLISHED
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(body)


def test_one_megabyte_each_way_byte_exact() -> None:
    size = 1 << 20
    up = os.urandom(size)
    down = os.urandom(size)

    async def body(a: Runtime, b: Runtime) -> None:
        got_up: list[bytes] = []

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            async def send() -> None:
                writer.write(down)
                await writer.drain()
                writer.write_eof()

            sending = asyncio.ensure_future(send())
            got_up.append(await reader.read())  # to the client's FIN
            await sending
            writer.close()

        server = await a.start_server(handler, port=5001)
        reader, writer = await b.open_connection(A_IP, 5001)
        for i in range(0, size, 100_000):
            writer.write(up[i : i + 100_000])
            await writer.drain()
        writer.write_eof()
        got_down = await reader.read()
        await eventually(lambda: bool(got_up))
        assert hashlib.sha256(got_up[0]).digest() == hashlib.sha256(up).digest()
        assert hashlib.sha256(got_down).digest() == hashlib.sha256(down).digest()
        writer.close()
        server.close()

    run(body)


def test_readexactly_readline_readuntil_and_incomplete_read() -> None:
    async def body(a: Runtime, b: Runtime) -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"first line\nsecond;12345678partial")
            await writer.drain()
            writer.close()

        server = await a.start_server(handler, port=5002)
        reader, writer = await b.open_connection(A_IP, 5002)
        assert await reader.readline() == b"first line\n"
        assert await reader.readuntil(b";") == b"second;"
        assert await reader.readexactly(8) == b"12345678"
        with pytest.raises(asyncio.IncompleteReadError) as info:
            await reader.readexactly(100)
        assert info.value.partial == b"partial" and info.value.expected == 100
        assert reader.at_eof()
        writer.close()
        server.close()

    run(body)


def test_write_eof_half_close_lets_the_peer_answer() -> None:
    async def body(a: Runtime, b: Runtime) -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            question = await reader.read()  # ends at the client's FIN
            writer.write(b"answer to " + question)  # our direction is still open
            writer.close()

        server = await a.start_server(handler, port=5003)
        reader, writer = await b.open_connection(A_IP, 5003)
        assert writer.can_write_eof()
        writer.write(b"the question")
        writer.write_eof()
        with pytest.raises(RuntimeError):
            writer.write(b"more")
        assert await reader.read() == b"answer to the question"
        writer.close()
        await writer.wait_closed()
        server.close()

    run(body)


def test_plain_function_callback_is_accepted() -> None:
    async def body(a: Runtime, b: Runtime) -> None:
        def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"hi from a plain function")
            writer.close()

        server = await a.start_server(handler, port=5004)
        reader, writer = await b.open_connection(A_IP, 5004)
        assert await reader.read() == b"hi from a plain function"
        writer.close()
        server.close()

    run(body)


def test_many_connections_at_once() -> None:
    async def body(a: Runtime, b: Runtime) -> None:
        server = await a.start_server(echo, port=7)

        async def client(i: int) -> bytes:
            reader, writer = await b.open_connection(A_IP, 7)
            writer.write(i.to_bytes(4, "big") * 1000)
            writer.write_eof()
            got = await reader.read()
            writer.close()
            return got

        results = await asyncio.gather(*(client(i) for i in range(40)))
        assert results == [i.to_bytes(4, "big") * 1000 for i in range(40)]
        server.close()

    run(body)


# ====================================================================== errors


def test_reset_by_the_peer_raises_connection_reset_error() -> None:
    async def body(a: Runtime, b: Runtime) -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readexactly(5)
            writer.transport.abort()  # RST

        server = await a.start_server(handler, port=5005)
        reader, writer = await b.open_connection(A_IP, 5005)
        writer.write(b"hello")
        with pytest.raises(ConnectionResetError):
            while await reader.read(65536):
                pass
        with pytest.raises(ConnectionResetError):
            writer.write(b"x")
            await writer.drain()
        await eventually(lambda: not a.stack.connections() and not b.stack.connections())
        server.close()

    run(body)


def test_closed_port_refuses() -> None:
    async def body(a: Runtime, b: Runtime) -> None:
        with pytest.raises(ConnectionRefusedError):
            await b.open_connection(A_IP, 4444)
        assert a.stack.counters["tcp"].get("tx_rst", 0) >= 1
        assert not b.stack.connections()

    run(body)


def test_unusable_addresses_raise_os_errors() -> None:
    async def body(a: Runtime, b: Runtime) -> None:
        with pytest.raises(OSError):
            await b.open_connection("203.0.113.1", 80)  # off-link, and the stack has no gateway
        with pytest.raises(OSError):
            await b.open_connection(B_IP, 80)  # our own address: there is no loopback
        await a.start_server(echo, port=7)
        with pytest.raises(OSError) as info:
            await a.start_server(echo, port=7)
        assert info.value.errno == 98  # EADDRINUSE
        with pytest.raises(OSError):
            await a.start_server(echo, host="198.18.0.99", port=8)

    run(body)


# The ARP retries shortened tenfold (3 probes 0.1 s apart): the behaviour, not Linux's 3 s, is under test
# here; tests/interop checks the real timing against a Linux namespace.
FAST_ARP = ArpParams(retrans_time=0.1)
SILENT_IP = "198.18.0.99"  # on-link, and nobody has it


def test_connect_to_a_silent_on_link_address_is_ehostunreach() -> None:
    pair = MemoryDevicePair()

    async def main() -> None:
        stack = make_stack(pair.a, "02:00:00:00:00:0a", A_IP, arp_params=FAST_ARP)
        async with Runtime(stack, pair.a) as a:
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(OSError) as info:
                await asyncio.wait_for(a.open_connection(SILENT_IP, 80), TIMEOUT)
            elapsed = loop.time() - start
            assert type(info.value) is OSError and info.value.errno == errno.EHOSTUNREACH
            assert info.value.strerror == "No route to host"
            limit = FAST_ARP.max_probes * FAST_ARP.retrans_time
            assert limit * 0.9 <= elapsed < limit + 1.0  # the ARP retries, not the SYN retries
            assert stack.connections() == []
            assert stack.counters["arp"]["drop_unresolved"] >= 1

    try:
        asyncio.run(main())
    finally:
        pair.close()


def test_server_close_refuses_new_connections_and_keeps_accepted_ones() -> None:
    async def body(a: Runtime, b: Runtime) -> None:
        server = await a.start_server(echo, port=7)
        assert server.is_serving() and server.sockets[0].getsockname() == (A_IP, 7)
        reader, writer = await b.open_connection(A_IP, 7)
        writer.write(b"accepted?")  # the echo proves a accepted it (a queued one is reset by close)
        assert await reader.readexactly(9) == b"accepted?"
        server.close()
        assert not server.is_serving()
        with pytest.raises(ConnectionRefusedError):
            await b.open_connection(A_IP, 7)
        writer.write(b"still here")
        assert await reader.readexactly(10) == b"still here"
        closed = asyncio.ensure_future(server.wait_closed())
        await asyncio.sleep(0.05)
        assert not closed.done()  # an accepted connection is still open
        writer.close()
        await asyncio.wait_for(closed, 5)

    run(body)


def test_serve_forever_ends_when_cancelled_and_port_zero_picks_a_port() -> None:
    async def body(a: Runtime, b: Runtime) -> None:
        server = await a.start_server(echo, port=0, start_serving=False)
        port = server.sockets[0].getsockname()[1]
        assert 32768 <= port <= 60999
        forever = asyncio.ensure_future(server.serve_forever())
        reader, writer = await b.open_connection(A_IP, port)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        writer.close()
        forever.cancel()
        with pytest.raises(asyncio.CancelledError):
            await forever
        assert not server.is_serving()

    run(body)


# ====================================================================== the runtime itself


def test_device_queue_full_defers_frames_and_loses_none() -> None:
    data = os.urandom(300_000)

    async def body(a: Runtime, b: Runtime) -> None:
        server = await a.start_server(echo, port=7)
        reader, writer = await b.open_connection(A_IP, 7)
        writer.write(data)
        writer.write_eof()
        assert await reader.read() == data
        assert a.counters["tx_deferred"] + b.counters["tx_deferred"] > 0
        assert a.counters["tx_dropped"] == b.counters["tx_dropped"] == 0
        writer.close()
        server.close()

    # A 4-frame queue with 1500-byte frames and no TSO: the device refuses often.
    run(body, MemoryDevicePair(capacity=4, wire_ready=True))


def test_wire_ready_pair_carries_complete_checksums() -> None:
    async def body(a: Runtime, b: Runtime) -> None:
        server = await a.start_server(echo, port=7)
        reader, writer = await b.open_connection(A_IP, 7)
        writer.write(b"x" * 10_000)
        assert await reader.readexactly(10_000) == b"x" * 10_000
        for rt in (a, b):
            assert rt.stack.counters["tcp"].get("drop_bad_checksum", 0) == 0
        writer.close()
        server.close()

    run(body, MemoryDevicePair(wire_ready=True))


def test_close_is_idempotent_resets_connections_and_stops_the_api() -> None:
    async def main() -> None:
        async with runtimes() as (a, b):
            server = await a.start_server(echo, port=7)
            reader, writer = await b.open_connection(A_IP, 7)
            writer.write(b"x")
            assert await reader.readexactly(1) == b"x"
            a.close()
            a.close()
            assert not a.is_running and not server.is_serving()
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(), 5)  # a's close sent a RST
            with pytest.raises(RuntimeError):
                await a.open_connection(B_IP, 7)

    asyncio.run(asyncio.wait_for(main(), TIMEOUT))


def test_timer_drives_time_wait_to_closed() -> None:
    async def main() -> None:
        pair = MemoryDevicePair()
        a = Runtime(make_stack(pair.a, "02:00:00:00:00:0a", A_IP, TcpConfig(msl=0.05)), pair.a)  # 0.1 s
        b = Runtime(make_stack(pair.b, "02:00:00:00:00:0b", B_IP), pair.b)
        async with a, b:

            async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                writer.close()  # a closes first, so a holds TIME-WAIT

            await a.start_server(handler, port=9)
            reader, writer = await b.open_connection(A_IP, 9)
            assert await reader.read() == b""
            writer.close()
            await eventually(lambda: [s.state for s in a.stack.connections()] == [TcpState.TIME_WAIT], 5)
            await eventually(lambda: not a.stack.connections(), 5)  # only a timer can end TIME-WAIT
            assert a.counters["timer_fired"] >= 1
        pair.close()

    asyncio.run(asyncio.wait_for(main(), TIMEOUT))


def test_leaving_the_runtime_lets_what_was_closed_gracefully_be_delivered() -> None:
    """The server writes 3 MB, closes and the application leaves ``async with Runtime`` while the peer
    still holds its window shut: the runtime lingers (LINGER_S) until the bytes and the FIN are
    acknowledged, instead of resetting a connection the application closed gracefully."""

    async def main() -> bytes:
        pair = MemoryDevicePair()
        a = Runtime(make_stack(pair.a, "02:00:00:00:00:0a", A_IP), pair.a)
        b = Runtime(make_stack(pair.b, "02:00:00:00:00:0b", B_IP), pair.b)
        written = asyncio.Event()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(DATA)
            writer.close()
            written.set()

        try:
            async with b:
                async with a:
                    server = await a.start_server(handler, port=6010)
                    reader, writer = await b.open_connection(A_IP, 6010)
                    writer.transport.pause_reading()  # type: ignore[attr-defined]
                    await asyncio.wait_for(written.wait(), TIMEOUT)
                    server.close()
                    reading = asyncio.ensure_future(_read_later(reader, writer, 0.3))
                return await asyncio.wait_for(reading, TIMEOUT)
        finally:
            pair.close()

    DATA = os.urandom(3_000_000)
    assert asyncio.run(main()) == DATA


async def _read_later(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> bytes:
    """The peer's application: busy elsewhere for ``delay`` seconds, then it reads everything."""
    await asyncio.sleep(delay)
    writer.transport.resume_reading()  # type: ignore[attr-defined]
    return await reader.read(-1)
