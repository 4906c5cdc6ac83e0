"""The blocking socket API: two BackgroundRuntimes over a MemoryDevicePair, used from plain threads."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import threading
from dataclasses import dataclass

import pytest
from test_runtime import A_IP, B_IP

from tcpchimney.api.socket import BackgroundRuntime, Socket

pytestmark = pytest.mark.timeout(60)


@dataclass
class Echo:
    """A listening socket whose ``serving`` thread echoes each accepted connection on a thread of its own
    until EOF; ``stop`` waits for all of them, so that none outlives the runtimes the fixture stops."""

    listening: Socket
    serving: threading.Thread
    echoes: list[threading.Thread]

    def stop(self) -> None:
        self.listening.close()
        self.serving.join(10)  # accept fails once the socket is closed: no echo thread starts after this
        for t in [self.serving, *self.echoes]:
            t.join(10)
            assert not t.is_alive(), f"{t.name} did not end"


def echo_server(bg: BackgroundRuntime, port: int) -> Echo:
    listening = bg.socket()
    listening.bind(("", port))
    listening.listen()
    echoes: list[threading.Thread] = []

    def serve() -> None:
        with contextlib.suppress(OSError):  # the listening socket was closed
            while True:
                conn, _ = listening.accept()
                echo = threading.Thread(target=echo_one, args=(conn,), daemon=True)
                echo.start()
                echoes.append(echo)

    serving = threading.Thread(target=serve, daemon=True)
    serving.start()
    return Echo(listening, serving, echoes)


def echo_one(conn: Socket) -> None:
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


def test_connect_send_recv_and_addresses(pair: tuple[BackgroundRuntime, BackgroundRuntime]) -> None:
    a, b = pair
    echo = echo_server(a, 7)
    assert echo.listening.getsockname() == (A_IP, 7)
    with b.create_connection((A_IP, 7), timeout=10) as s:
        assert s.getpeername() == (A_IP, 7) and s.getsockname()[0] == B_IP
        assert s.send(b"hello") == 5
        got = b""
        while len(got) < 5:
            got += s.recv(100)
        assert got == b"hello"
    echo.stop()


def test_sendall_one_megabyte_with_half_close(pair: tuple[BackgroundRuntime, BackgroundRuntime]) -> None:
    a, b = pair
    echo = echo_server(a, 7)
    data = os.urandom(1 << 20)
    with b.socket() as s:
        s.connect((A_IP, 7))
        received = bytearray()

        def reader() -> None:
            while chunk := s.recv(1 << 16):
                received.extend(chunk)

        t = threading.Thread(target=reader)
        t.start()
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)  # the echo sees EOF, closes, and our reader sees EOF
        t.join(30)
        assert not t.is_alive() and bytes(received) == data
    echo.stop()


def test_accept_returns_the_peer_and_recv_into(pair: tuple[BackgroundRuntime, BackgroundRuntime]) -> None:
    a, b = pair
    with a.socket() as listening:
        listening.bind((A_IP, 0))
        listening.listen(5)
        port = listening.getsockname()[1]
        with b.create_connection((A_IP, port)) as client:
            listening.settimeout(5)
            conn, peer = listening.accept()
            with conn:
                assert peer == client.getsockname()
                client.sendall(b"abc")
                buf = bytearray(10)
                n = 0
                while n < 3:
                    n += conn.recv_into(memoryview(buf)[n:])
                assert bytes(buf[:3]) == b"abc"


def test_timeouts_and_non_blocking(pair: tuple[BackgroundRuntime, BackgroundRuntime]) -> None:
    a, b = pair
    echo = echo_server(a, 7)
    with b.create_connection((A_IP, 7)) as s:
        s.settimeout(0.1)
        with pytest.raises(TimeoutError, match="timed out"):
            s.recv(10)
        s.setblocking(False)
        assert not s.getblocking() and s.gettimeout() == 0.0
        with pytest.raises(BlockingIOError):
            s.recv(10)
        s.settimeout(5)
        s.sendall(b"late")  # nothing was lost to the timeouts above
        assert s.recv(10) == b"late"
        with pytest.raises(ValueError):
            s.settimeout(-1)
    echo.stop()
    with a.socket() as quiet:
        quiet.bind(("", 8))
        quiet.listen()
        quiet.settimeout(0.05)
        with pytest.raises(TimeoutError):
            quiet.accept()


def test_refused_and_wrong_use_raise_what_the_kernel_would(
    pair: tuple[BackgroundRuntime, BackgroundRuntime],
) -> None:
    a, b = pair
    with b.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect((A_IP, 4444))
    assert b.socket().connect_ex((A_IP, 4444)) == errno.ECONNREFUSED
    fresh = b.socket()
    with pytest.raises(BrokenPipeError):
        fresh.send(b"x")  # never connected: EPIPE, as Linux
    with pytest.raises(OSError) as info:
        fresh.recv(1)
    assert info.value.errno == errno.ENOTCONN
    with pytest.raises(OSError) as info:
        fresh.accept()
    assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError) as info:
        fresh.bind(("198.18.0.99", 1))
    assert info.value.errno == errno.EADDRNOTAVAIL
    echo = echo_server(a, 7)
    s = b.create_connection((A_IP, 7))
    with pytest.raises(OSError) as info:
        s.connect((A_IP, 7))
    assert info.value.errno == errno.EISCONN
    s.shutdown(socket.SHUT_WR)
    with pytest.raises(BrokenPipeError):
        s.sendall(b"after shutdown")
    s.close()
    s.close()
    for call in (lambda: s.send(b"x"), lambda: s.recv(1), lambda: s.connect((A_IP, 7))):
        with pytest.raises(OSError) as info:
            call()
        assert info.value.errno == errno.EBADF
    echo.stop()


def test_reset_reaches_a_blocked_recv(pair: tuple[BackgroundRuntime, BackgroundRuntime]) -> None:
    a, b = pair
    with a.socket() as listening:
        listening.bind(("", 9))
        listening.listen()
        client = b.create_connection((A_IP, 9))
        conn, _ = listening.accept()
        errors: list[BaseException] = []

        def blocked() -> None:
            try:
                client.recv(10)
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=blocked)
        t.start()
        assert conn._transport is not None
        a.call(_abort(conn._transport))
        t.join(10)
        assert len(errors) == 1 and isinstance(errors[0], ConnectionResetError)
        client.close()


async def _abort(transport: object) -> None:
    transport.abort()  # type: ignore[attr-defined]
