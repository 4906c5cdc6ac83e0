"""Socket options change what the connection does on the wire, set through the blocking socket or asyncio."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from test_runtime import A_IP, echo, run

from tcpchimney.api.runtime import Runtime
from tcpchimney.api.socket import BackgroundRuntime, Socket
from tcpchimney.api.streams import TcpTransport
from tcpchimney.tcp.state import TcpState

pytestmark = pytest.mark.timeout(60)
Pair = tuple[BackgroundRuntime, BackgroundRuntime]


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


@contextlib.contextmanager
def deaf(bg: BackgroundRuntime) -> Iterator[None]:
    """The runtime reads no frame while inside: its peer's segments wait, unanswered, in the device."""
    runtime, fd = bg.runtime, bg.runtime.device.fileno()

    async def stop() -> None:
        runtime.loop.remove_reader(fd)

    async def resume() -> None:
        runtime.loop.add_reader(fd, runtime._on_readable)
        runtime._on_readable()

    bg.call(stop())
    try:
        yield
    finally:
        bg.call(resume())


def connected(
    a: BackgroundRuntime, b: BackgroundRuntime, port: int, **client_opts: int
) -> tuple[Socket, Socket]:
    """(client on b, server on a); ``client_opts`` (SO_*/TCP_* name -> value) are set before connect."""
    listening = a.socket()
    listening.bind(("", port))
    listening.listen()
    client = b.socket()
    for name, value in client_opts.items():
        level = socket.IPPROTO_TCP if name.startswith("TCP_") else socket.SOL_SOCKET
        client.setsockopt(level, getattr(socket, name), value)
    client.settimeout(10)
    client.connect((A_IP, port))
    listening.settimeout(10)
    server, _ = listening.accept()
    listening.close()
    return client, server


def engine(sock: Socket) -> TcpTransport:
    assert sock._transport is not None
    return sock._transport


@pytest.mark.parametrize("nodelay", [False, True])
def test_tcp_nodelay_sends_a_second_small_segment_before_the_first_is_acked(
    pair: Pair, nodelay: bool
) -> None:
    a, b = pair
    client, server = connected(a, b, 30)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(nodelay))
    assert engine(client).tcp_socket.conn.config.nodelay is nodelay
    device = b.runtime.device
    with deaf(a):  # no ACK comes back while we count
        before = device.tx_frames  # type: ignore[attr-defined]
        client.send(b"first")
        wait_for(lambda: device.tx_frames == before + 1)  # type: ignore[attr-defined]
        client.send(b"second")
        time.sleep(0.1)  # below the 200 ms RTO floor: no retransmission is counted
        # Nagle (RFC 9293 3.7.4) holds a small segment while data is unacknowledged; TCP_NODELAY sends it.
        assert device.tx_frames - before == (2 if nodelay else 1)  # type: ignore[attr-defined]
    server.settimeout(5)
    got = b""
    while len(got) < 11:
        got += server.recv(100)
    assert got == b"firstsecond"  # held data leaves once the ACK arrives
    client.close()
    server.close()


def test_so_linger_zero_resets_and_the_peer_sees_econnreset(pair: Pair) -> None:
    a, b = pair
    client, server = connected(a, b, 31)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    server.settimeout(5)
    with pytest.raises(ConnectionResetError) as info:
        server.recv(10)
    assert info.value.errno == errno.ECONNRESET
    server.close()


def test_so_linger_waits_for_the_fin_to_be_acknowledged(pair: Pair) -> None:
    a, b = pair
    client, server = connected(a, b, 32)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 5))
    transport = engine(client)
    with deaf(a):
        closer = threading.Thread(target=client.close)
        closer.start()
        closer.join(0.3)
        assert closer.is_alive()  # the peer has not acknowledged: close() still lingers
        assert transport.tcp_socket.state is TcpState.FIN_WAIT_1
    closer.join(5)
    assert not closer.is_alive()
    assert transport.tcp_socket.state in (TcpState.FIN_WAIT_2, TcpState.TIME_WAIT, TcpState.CLOSED)
    server.close()


def test_so_linger_gives_up_after_its_timeout(pair: Pair) -> None:
    a, b = pair
    client, server = connected(a, b, 33)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 1))
    transport = engine(client)
    with deaf(a):
        client.close()  # returns after one second without the ACK
        assert transport.tcp_socket.state is TcpState.FIN_WAIT_1
    server.close()


def test_without_linger_close_returns_at_once(pair: Pair) -> None:
    a, b = pair
    client, server = connected(a, b, 34)
    transport = engine(client)
    with deaf(a):
        client.close()
        assert transport.tcp_socket.state is TcpState.FIN_WAIT_1
    server.close()


def test_so_rcvbuf_bounds_the_window_and_unread_data(pair: Pair) -> None:
    a, b = pair
    client, server = connected(a, b, 35, SO_RCVBUF=8192)
    assert client.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 16384  # Linux reports it doubled
    data = os.urandom(300_000)
    sender = threading.Thread(target=server.sendall, args=(data,))
    sender.start()
    receiving = engine(client).tcp_socket
    sending = engine(server).tcp_socket
    wait_for(lambda: receiving.readable > 0)
    time.sleep(0.2)
    assert receiving.readable <= 8192  # nobody reads: what arrived is bounded by SO_RCVBUF
    assert sending.conn.snd_wnd <= 8192  # the window the sender was given
    got = bytearray()
    client.settimeout(10)
    while len(got) < len(data):
        got += client.recv(65536)
    sender.join(10)
    assert bytes(got) == data
    client.close()
    server.close()


def test_so_sndbuf_bounds_what_send_takes(pair: Pair) -> None:
    a, b = pair
    client, server = connected(a, b, 36)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    with deaf(a):
        client.setblocking(False)
        assert client.send(os.urandom(100_000)) == 16384
        with pytest.raises(BlockingIOError):
            client.send(b"more")
    client.close()
    server.close()


def test_keepalive_keeps_an_idle_connection_and_times_out_a_vanished_peer(pair: Pair) -> None:
    a, b = pair
    opts = {"SO_KEEPALIVE": 1, "TCP_KEEPIDLE": 1, "TCP_KEEPINTVL": 1, "TCP_KEEPCNT": 2}
    client, server = connected(a, b, 37, **opts)
    config = engine(client).tcp_socket.conn.config
    assert (config.keepalive, config.keepalive_idle, config.keepalive_interval, config.keepalive_probes) == (
        True,
        1,
        1,
        2,
    )
    device = b.runtime.device
    before = device.tx_frames  # type: ignore[attr-defined]
    time.sleep(2.5)  # idle past TCP_KEEPIDLE and more probes than TCP_KEEPCNT: the answered probes keep it
    assert device.tx_frames - before >= 2  # type: ignore[attr-defined]
    assert engine(client).tcp_socket.state is TcpState.ESTABLISHED
    client.settimeout(10)
    with deaf(a):  # the peer vanishes: 1 s idle, then 2 unanswered probes 1 s apart
        with pytest.raises(TimeoutError) as info:
            client.recv(10)
        assert info.value.errno == errno.ETIMEDOUT
    client.close()
    server.close()


def test_listening_socket_options_pass_to_accepted_sockets(pair: Pair) -> None:
    a, b = pair
    listening = a.socket()
    listening.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    listening.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
    listening.bind(("", 38))
    listening.listen()
    client = b.create_connection((A_IP, 38), timeout=10)
    listening.settimeout(10)
    server, _ = listening.accept()
    config = engine(server).tcp_socket.conn.config
    assert (config.nodelay, config.keepalive, config.keepalive_idle) == (True, True, 60)
    assert server.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    assert server.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 60
    assert not engine(client).tcp_socket.conn.config.nodelay
    for s in (client, server, listening):
        s.close()


def test_asyncio_transport_socket_applies_options() -> None:
    async def body(a: Runtime, b: Runtime) -> None:
        server = await a.start_server(echo, port=7)
        server.sockets[0].setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        reader, writer = await b.open_connection(A_IP, 7)
        sock_info = writer.get_extra_info("socket")
        sock_info.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)  # as aiohttp's tcp_nodelay()
        sock_info.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        tcp = writer.get_extra_info("tcp_socket")
        assert tcp.conn.config.nodelay and tcp.conn.config.rcv_buf == 65536
        assert sock_info.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        writer.write(b"ping\n")
        assert await reader.readline() == b"ping\n"
        accepted = next(iter(server._transports))
        assert accepted.tcp_socket.conn.config.keepalive  # inherited from the server's socket
        writer.close()
        server.close()

    run(body)


def test_makefile_reads_and_writes_lines(pair: Pair) -> None:
    a, b = pair
    client, server = connected(a, b, 39)
    out = client.makefile("w", encoding="utf-8", newline="\r\n")
    incoming = server.makefile("rb")
    out.write("GET / HTTP/1.0\nHost: stack\n\n")
    out.flush()
    assert incoming.readline() == b"GET / HTTP/1.0\r\n"
    assert incoming.readline() == b"Host: stack\r\n"
    assert incoming.readline() == b"\r\n"
    reply = server.makefile("wb", buffering=0)
    reply.write("héllo\nworld\n".encode())
    lines = client.makefile("r", encoding="utf-8")
    assert lines.readline() == "héllo\n"
    client.close()  # the file objects keep the connection open, as with Python's sockets
    assert lines.readline() == "world\n"
    out.close()
    lines.close()  # the last file object: now the connection closes
    assert incoming.read() == b""
    incoming.close()
    reply.close()
    server.close()


def test_makefile_timeout_and_rw_pair(pair: Pair) -> None:
    a, b = pair
    client, server = connected(a, b, 40)
    client.settimeout(0.05)
    stream = client.makefile("rwb")
    with pytest.raises(TimeoutError):
        stream.read(1)
    server.sendall(b"abc")
    stream.write(b"xyz")
    stream.flush()
    server.settimeout(5)
    assert server.recv(3) == b"xyz"
    stream.close()
    client.close()
    server.close()


def test_asyncio_loop_is_not_blocked_by_a_lingering_close(pair: Pair) -> None:
    a, b = pair
    client, server = connected(a, b, 41)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 2))
    with deaf(a):
        closer = threading.Thread(target=client.close)
        closer.start()
        time.sleep(0.1)

        async def still_running() -> int:
            await asyncio.sleep(0)
            return 1

        assert b.call(still_running(), timeout=1) == 1  # the loop serves others while close() waits
    closer.join(5)
    server.close()


def test_asyncio_transports_send_small_writes_at_once_as_asyncio_does() -> None:
    """asyncio sets TCP_NODELAY on every TCP transport it makes (CPython's selector transports, since 3.6): an
    application writing a response's head, then its body, never waits for the peer's delayed ACK. The stack's
    asyncio transports do the same, accepted and connected (the blocking Socket keeps Nagle, as Linux's:
    test_listening_socket_options_pass_to_accepted_sockets)."""

    async def body(a: Runtime, b: Runtime) -> None:
        server = await a.start_server(echo, port=8)
        reader, writer = await b.open_connection(A_IP, 8)
        assert writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        writer.write(b"hello\n")
        assert await reader.readline() == b"hello\n"
        (accepted,) = server._transports
        assert accepted.tcp_socket.conn.config.nodelay
        assert accepted.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        fd, device = a.device.fileno(), b.device
        a.loop.remove_reader(fd)  # a reads nothing: no ACK comes back while we count
        try:
            before = device.tx_frames  # type: ignore[attr-defined]
            writer.write(b"head")
            for _ in range(100):
                await asyncio.sleep(0.001)
                if device.tx_frames > before:  # type: ignore[attr-defined]
                    break
            writer.write(b"body")  # Nagle would hold it until "head" is acknowledged
            await asyncio.sleep(0.1)
            assert device.tx_frames - before == 2  # type: ignore[attr-defined]
        finally:
            a.loop.add_reader(fd, a._on_readable)
            a._on_readable()
        assert await reader.readexactly(8) == b"headbody"
        writer.close()
        server.close()

    run(body)
