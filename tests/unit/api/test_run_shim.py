"""The ``chimney run`` shim and its broker in one process, over two stacks on memory devices (no root needed).

Stack ``a`` runs the broker (as the ``chimney run`` process does); the test thread is the program, using
``StackSocket`` directly (the socket module is not patched here); stack ``b`` is the peer. What is checked is
what a program sees through the descriptor: readiness for ``select``, SO_ERROR, errno values, bytes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import select
import socket
import struct
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from test_runtime import A_IP, B_IP

from tcpchimney.api.run.broker import Broker
from tcpchimney.api.run.relay import ConnectFiller
from tcpchimney.api.run.shim import chimney_shim as shim
from tcpchimney.api.run.shim.chimney_socket import StackSocket
from tcpchimney.api.socket import BackgroundRuntime

ECHO_PORT = 7


@pytest.fixture
def broker(pair: tuple[BackgroundRuntime, BackgroundRuntime]) -> Iterator[Broker]:
    a, b = pair
    directory = tempfile.mkdtemp(prefix="chimney-run-test-")

    async def start() -> Broker:
        found = Broker(a.runtime, directory)
        found.start()
        return found

    async def echo_server() -> None:
        async def echo(reader: Any, writer: Any) -> None:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.write_eof()

        await b.runtime.start_server(echo, port=ECHO_PORT)

    found = a.call(start())
    b.call(echo_server())
    shim.configure({shim.SOCKET_ENV: found.path, shim.ADDR_ENV: A_IP})

    async def stop() -> None:
        found.close()

    try:
        yield found
    finally:
        a.call(stop())
        os.rmdir(directory)


def _writable(sock: socket.socket, timeout: float) -> bool:
    return bool(select.select([], [sock], [], timeout)[1])


def test_blocking_connect_echo_and_addresses(broker: Broker) -> None:
    data = os.urandom(500_000)
    with StackSocket() as sock:
        assert (sock.family, sock.type) == (socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect((B_IP, ECHO_PORT))
        assert sock.getpeername() == (B_IP, ECHO_PORT)
        assert sock.getsockname()[0] == A_IP
        sender = threading.Thread(target=lambda: (sock.sendall(data), sock.shutdown(socket.SHUT_WR)))
        sender.start()
        with sock.makefile("rb") as reader:
            got = reader.read()
        sender.join()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert broker.counters["connects"] == 1 and broker.counters["malformed"] == 0


def test_non_blocking_connect_is_writable_once_established(broker: Broker) -> None:
    with StackSocket() as sock:
        sock.setblocking(False)
        assert sock.connect_ex((B_IP, ECHO_PORT)) == errno.EINPROGRESS
        assert sock.connect_ex((B_IP, ECHO_PORT)) == errno.EALREADY
        assert _writable(sock, 10)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        assert sock.getpeername() == (B_IP, ECHO_PORT)
        sock.sendall(b"ping")
        assert select.select([sock], [], [], 10)[0]
        assert sock.recv(10) == b"ping"


def test_refused_connect_blocking_and_through_so_error(broker: Broker) -> None:
    with StackSocket() as sock, pytest.raises(ConnectionRefusedError) as refused:
        sock.settimeout(10)
        sock.connect((B_IP, 9))
    assert refused.value.errno == errno.ECONNREFUSED
    with StackSocket() as sock:
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.connect((B_IP, 9))
        assert _writable(sock, 10)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNREFUSED
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0  # reported once, as the kernel does
    assert broker.counters["connect_failures"] == 2


def test_listen_accept_readiness_and_bytes(
    broker: Broker, pair: tuple[BackgroundRuntime, BackgroundRuntime]
) -> None:
    _, b = pair
    with StackSocket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("0.0.0.0", 0))
        port = server.getsockname()[1]
        assert port > 0
        server.listen()
        assert server.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        assert not select.select([server], [], [], 0)[0]
        with b.create_connection((A_IP, port), timeout=10) as client:
            assert select.select([server], [], [], 10)[0]
            conn, peer = server.accept()
            with conn:
                assert peer == client.getsockname() and conn.getsockname() == (A_IP, port)
                client.sendall(b"hello")
                assert conn.recv(5) == b"hello"
                conn.sendall(b"world")
                conn.shutdown(socket.SHUT_WR)
                assert client.recv(5) == b"world" and client.recv(5) == b""
    assert broker.counters["accepted"] == 1 and broker.counters["listeners"] == 1


def test_options_are_the_stacks(broker: Broker) -> None:
    with StackSocket() as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM
        with pytest.raises(OSError) as unknown:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 16)
        assert unknown.value.errno == errno.ENOPROTOOPT and "IP_TOS" in str(unknown.value)
        with pytest.raises(OSError) as bad:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 0)
        assert bad.value.errno == errno.EINVAL


def test_unconnected_and_foreign_addresses_fail_as_on_linux(broker: Broker) -> None:
    with StackSocket() as sock:
        with pytest.raises(BrokenPipeError):
            sock.send(b"x")
        with pytest.raises(OSError) as not_connected:
            sock.getpeername()
        assert not_connected.value.errno == errno.ENOTCONN
        with pytest.raises(OSError) as foreign:
            sock.bind(("198.18.0.99", 80))
        assert foreign.value.errno == errno.EADDRNOTAVAIL


def test_loopback_stays_on_the_kernel(broker: Broker) -> None:
    with socket.create_server(("127.0.0.1", 0)) as kernel, StackSocket() as sock:
        sock.settimeout(5)
        sock.connect(kernel.getsockname())
        conn, _ = kernel.accept()
        with conn:
            sock.sendall(b"kernel")
            assert conn.recv(6) == b"kernel"
        assert sock.getpeername() == kernel.getsockname()
    assert broker.counters["connects"] == 0


def test_a_malformed_request_is_answered_and_counted(broker: Broker) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as raw:
        raw.settimeout(10)
        raw.connect(broker.path)
        for message in (
            b"not json",
            b"[1, 2]",
            json.dumps({"op": "fly"}).encode(),
            b'{"op": "bind", "id": "x"}',
        ):
            raw.send(message)
            reply = json.loads(raw.recv(65536))
            assert reply["errno"] == errno.EINVAL and "malformed" in reply["message"], reply
    assert broker.counters["malformed"] == 4


def test_the_connect_filler_holds_writability_until_released() -> None:
    mine, theirs = socket.socketpair()
    with mine, theirs:
        filler = ConnectFiller(socket.socket(fileno=os.dup(mine.fileno())))
        assert filler.size > 0 and not _writable(mine, 0)
        filler.release(theirs)
        assert _writable(mine, 1) and not select.select([theirs], [], [], 0)[0]
        mine.sendall(b"after")
        assert theirs.recv(5) == b"after"  # no filler left in the stream


def test_hosts_file_and_getaddrinfo(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("198.18.0.1 peer peer.test  # the Linux side\n::1 six\n\n")
    assert shim.parse_hosts(hosts.read_text()) == {"peer": "198.18.0.1", "peer.test": "198.18.0.1"}
    with pytest.raises(ValueError, match="line 1"):
        shim.parse_hosts("not-an-address name\n")
    monkeypatch.setenv(shim.HOSTS_ENV, str(hosts))
    monkeypatch.setattr(shim, "_hosts", None)
    (answer,) = shim.getaddrinfo("PEER", 80, type=socket.SOCK_STREAM)
    assert answer[0] == socket.AF_INET and answer[4] == ("198.18.0.1", 80)
    assert shim.getaddrinfo(None, 80, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)[0][4] == ("0.0.0.0", 80)
    with pytest.raises(socket.gaierror) as unknown:
        shim.getaddrinfo("example.invalid", 80)
    assert unknown.value.errno == socket.EAI_NONAME and "--hosts" in str(unknown.value)


def test_a_program_that_stops_reading_stops_the_peer_then_gets_every_byte(
    broker: Broker, pair: tuple[BackgroundRuntime, BackgroundRuntime]
) -> None:
    """Backpressure end to end: the socketpair, the relay and the stack's window fill, the peer's drain()
    waits; once the program reads, every byte arrives in order."""
    _, b = pair
    total, port = 16 << 20, 5005
    data = os.urandom(1 << 20) * (total >> 20)
    pushed = [0]

    async def source_server() -> None:
        async def source(reader: Any, writer: Any) -> None:
            for i in range(0, total, 65536):
                writer.write(data[i : i + 65536])
                await writer.drain()
                pushed[0] = i + 65536
            writer.close()

        await b.runtime.start_server(source, port=port)

    b.call(source_server())
    with StackSocket() as sock:
        sock.settimeout(10)
        sock.connect((B_IP, port))
        last, stable = -1, 0
        while stable < 5:  # until the peer's progress stops: every buffer on the way is full
            threading.Event().wait(0.1)
            stable = stable + 1 if pushed[0] == last else 0
            last = pushed[0]
        assert 0 < pushed[0] < total
        with sock.makefile("rb") as reader:
            got = reader.read()
    assert len(got) == total and hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


def test_create_connection_and_create_server_of_the_socket_module(
    broker: Broker, pair: tuple[BackgroundRuntime, BackgroundRuntime], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What install() does, for this test only: the socket module's own helpers then build stack sockets."""
    _, b = pair
    monkeypatch.setattr(socket, "socket", StackSocket)
    monkeypatch.setattr(socket, "getaddrinfo", shim.getaddrinfo)
    with socket.create_connection((B_IP, ECHO_PORT), timeout=10) as client:
        assert isinstance(client, StackSocket) and client.getpeername() == (B_IP, ECHO_PORT)
        client.sendall(b"echo")
        assert client.recv(4) == b"echo"
    with socket.create_server(("", 0)) as server:
        assert isinstance(server, StackSocket)
        port = server.getsockname()[1]
        with b.create_connection((A_IP, port), timeout=10) as peer:
            conn, _ = server.accept()
            with conn:
                assert isinstance(conn, StackSocket)
                peer.sendall(b"up")
                assert conn.recv(2) == b"up"
