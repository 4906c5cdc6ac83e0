"""Wrong use of the blocking socket raises what CPython's socket raises on Linux: same class, same errno.

Calls that need no connection run side by side on a kernel socket (no packet leaves: unconnected sockets and a
listener nobody connects to). Calls that need a connection compare with values recorded from kernel sockets
over loopback (Linux 6.x), quoted next to each case.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from test_runtime import A_IP, FAST_ARP, SILENT_IP, TIMEOUT, make_stack

from tcpchimney.api.memdev import MemoryDevicePair
from tcpchimney.api.socket import BackgroundRuntime, Socket

pytestmark = pytest.mark.timeout(60)
Pair = tuple[BackgroundRuntime, BackgroundRuntime]
AnySocket = Any  # socket.socket or Socket: the calls below are the same on both


def outcome(call: Callable[[], object]) -> tuple[str, object]:
    """What a call did: ("ok", value) or (exception class name, errno)."""
    try:
        return "ok", call()
    except Exception as exc:
        return type(exc).__name__, getattr(exc, "errno", None)


FRESH_CASES: dict[str, Callable[[AnySocket], object]] = {
    "send": lambda s: s.send(b"x"),
    "sendall": lambda s: s.sendall(b"x"),
    "recv": lambda s: s.recv(1),
    "recv_into": lambda s: s.recv_into(bytearray(4)),
    "recv negative": lambda s: s.recv(-1),
    "getpeername": lambda s: s.getpeername(),
    "getsockname": lambda s: s.getsockname(),
    "shutdown": lambda s: s.shutdown(socket.SHUT_WR),
    "shutdown bad how": lambda s: s.shutdown(7),
    "accept": lambda s: s.accept(),
    "settimeout negative": lambda s: s.settimeout(-1),
    "bind port overflow": lambda s: s.bind(("", 70000)),
    "bind foreign address": lambda s: s.bind(("198.18.0.99", 0)),
    "makefile bad mode": lambda s: s.makefile("rx"),
    "makefile unbuffered text": lambda s: s.makefile("r", buffering=0),
    "linger as int": lambda s: s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 1),
    "linger short": lambda s: s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0"),
    "linger get": lambda s: s.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER),
    "linger get raw": lambda s: s.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8),
    "linger set get": lambda s: (
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 7)),
        s.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8),
    ),
    "keepidle 0": lambda s: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 0),
    "keepidle too big": lambda s: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 32768),
    "keepintvl too big": lambda s: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 32768),
    "keepcnt too big": lambda s: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 128),
    "keepcnt 0": lambda s: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 0),
    "keep* defaults": lambda s: [
        s.getsockopt(socket.IPPROTO_TCP, o)
        for o in (socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT)
    ],
    "keep* set": lambda s: [
        (s.setsockopt(socket.IPPROTO_TCP, o, v), s.getsockopt(socket.IPPROTO_TCP, o))
        for o, v in ((socket.TCP_KEEPIDLE, 1), (socket.TCP_KEEPINTVL, 32767), (socket.TCP_KEEPCNT, 127))
    ],
    "nodelay reads 0/1": lambda s: (
        s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 5),
        s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
        s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 4),
    ),
    "keepalive reads 0/1": lambda s: (
        s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 7),
        s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
    ),
    "nodelay as bytes": lambda s: (
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, struct.pack("i", 1)),
        s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
    ),
    "nodelay short bytes": lambda s: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, b"\1"),
    "str value": lambda s: s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, "x"),
    "rcvbuf tiny": lambda s: (
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 10),
        s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
    ),
    "sndbuf tiny": lambda s: (
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 10),
        s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
    ),
    "rcvbuf doubled": lambda s: (
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192),
        s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
    ),
    "sndbuf doubled": lambda s: (
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536),
        s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
    ),
    "reuseaddr": lambda s: (
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 3),
        s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR),
    ),
    "unknown tcp option": lambda s: s.setsockopt(socket.IPPROTO_TCP, 99, 1),
    "unknown socket option": lambda s: s.setsockopt(socket.SOL_SOCKET, 999, 1),
    "get unknown socket option": lambda s: s.getsockopt(socket.SOL_SOCKET, 999),
    "unknown level": lambda s: s.setsockopt(12345, 1, 1),
    "SO_ERROR": lambda s: s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR),
    "SO_TYPE": lambda s: s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE),
    "SO_ACCEPTCONN": lambda s: s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN),
    "fileno": lambda s: s.fileno() if s.fileno() < 0 else -1,
}

CLOSED_CASES: dict[str, Callable[[AnySocket], object]] = {
    "send": lambda s: s.send(b"x"),
    "recv": lambda s: s.recv(1),
    "connect": lambda s: s.connect(("198.18.0.99", 1)),
    "bind": lambda s: s.bind(("", 0)),
    "listen": lambda s: s.listen(),
    "accept": lambda s: s.accept(),
    "shutdown": lambda s: s.shutdown(socket.SHUT_RDWR),
    "getsockname": lambda s: s.getsockname(),
    "getpeername": lambda s: s.getpeername(),
    "setsockopt": lambda s: s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    "getsockopt": lambda s: s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
    "settimeout": lambda s: s.settimeout(1),
    "fileno": lambda s: s.fileno(),
    "close again": lambda s: s.close(),
}

LISTENING_CASES: dict[str, Callable[[AnySocket], object]] = {
    "send": lambda s: s.send(b"x"),
    "recv": lambda s: s.recv(1),
    "getpeername": lambda s: s.getpeername(),
    "connect": lambda s: s.connect(("198.18.0.99", 1)),
    "bind again": lambda s: s.bind(("", 0)),
    "SO_ACCEPTCONN": lambda s: s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN),
    "accept non-blocking": lambda s: (s.setblocking(False), s.accept()),
}


@pytest.fixture
def kernel_sockets() -> Iterator[list[socket.socket]]:
    made: list[socket.socket] = []
    yield made
    for s in made:
        s.close()


def compare(
    cases: dict[str, Callable[[AnySocket], object]],
    make_kernel: Callable[[], socket.socket],
    make_ours: Callable[[], Socket],
) -> None:
    for name, call in cases.items():
        kernel, ours = make_kernel(), make_ours()
        assert outcome(lambda: call(ours)) == outcome(lambda: call(kernel)), name  # noqa: B023


def test_unconnected_socket_calls_match_the_kernel(pair: Pair, kernel_sockets: list[socket.socket]) -> None:
    _, b = pair

    def kernel() -> socket.socket:
        kernel_sockets.append(socket.socket())
        return kernel_sockets[-1]

    compare(FRESH_CASES, kernel, b.socket)


def test_closed_socket_calls_match_the_kernel(pair: Pair, kernel_sockets: list[socket.socket]) -> None:
    _, b = pair

    def kernel() -> socket.socket:
        s = socket.socket()
        s.close()
        return s

    def ours() -> Socket:
        s = b.socket()
        s.close()
        return s

    compare(CLOSED_CASES, kernel, ours)


def test_listening_socket_calls_match_the_kernel(pair: Pair, kernel_sockets: list[socket.socket]) -> None:
    a, _ = pair

    def kernel() -> socket.socket:
        s = socket.socket()
        kernel_sockets.append(s)
        s.bind(("127.0.0.1", 0))  # nothing connects: no packet is sent
        s.listen()
        return s

    def ours() -> Socket:
        s = a.socket()
        s.bind(("", 0))
        s.listen()
        return s

    compare(LISTENING_CASES, kernel, ours)


def test_port_in_use_is_eaddrinuse(pair: Pair) -> None:
    a, _ = pair
    with a.socket() as first, a.socket() as second:
        first.bind(("", 5000))
        first.listen()
        second.bind(("", 5000))
        with pytest.raises(OSError) as info:
            second.listen()  # the stack reserves ports at listen(); Linux already refuses the bind()
        assert info.value.errno == errno.EADDRINUSE


def connected(a: BackgroundRuntime, b: BackgroundRuntime, port: int) -> tuple[Socket, Socket, Socket]:
    listening = a.socket()
    listening.bind(("", port))
    listening.listen()
    client = b.create_connection((A_IP, port), timeout=10)
    listening.settimeout(10)
    server, _ = listening.accept()
    return listening, client, server


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def reset_by(sock: Socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_reset_is_reported_once_after_the_data_before_it(pair: Pair) -> None:
    a, b = pair
    listening, client, server = connected(a, b, 20)
    server.sendall(b"data-before-rst")
    wait_for(lambda: client._transport is not None and client._transport.tcp_socket.readable == 15)
    reset_by(server)
    time.sleep(0.1)
    # Linux: recv -> b'data-before-rst', then ECONNRESET, then b'' ; send -> EPIPE ; getpeername -> ENOTCONN.
    client.settimeout(5)
    assert client.recv(100) == b"data-before-rst"
    assert outcome(lambda: client.recv(100)) == ("ConnectionResetError", errno.ECONNRESET)
    assert client.recv(100) == b""
    assert outcome(lambda: client.send(b"x")) == ("BrokenPipeError", errno.EPIPE)
    assert outcome(client.getpeername) == ("OSError", errno.ENOTCONN)
    client.close()
    listening.close()


def test_reset_reported_by_send_then_so_error_is_clear(pair: Pair) -> None:
    a, b = pair
    listening, client, server = connected(a, b, 21)
    reset_by(server)
    time.sleep(0.1)
    # Linux: send -> ECONNRESET, send -> EPIPE, SO_ERROR -> 0.
    assert outcome(lambda: client.send(b"x")) == ("ConnectionResetError", errno.ECONNRESET)
    assert outcome(lambda: client.send(b"x")) == ("BrokenPipeError", errno.EPIPE)
    assert client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    client.close()
    other_client = b.create_connection((A_IP, 21), timeout=10)
    other_server, _ = listening.accept()
    reset_by(other_server)
    time.sleep(0.1)
    # Linux: SO_ERROR -> 104 once, then 0, and recv -> b'' (the error was consumed).
    assert other_client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNRESET
    assert other_client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    other_client.settimeout(5)
    assert other_client.recv(1) == b""
    other_client.close()
    listening.close()


def test_connected_socket_misuse(pair: Pair) -> None:
    a, b = pair
    listening, client, server = connected(a, b, 22)
    # Linux: connect again -> EISCONN, bind -> EINVAL, listen -> EINVAL, shutdown(SHUT_WR) twice -> fine,
    # send after it -> EPIPE, recv after SHUT_RD -> b''.
    assert outcome(lambda: client.connect((A_IP, 22))) == ("OSError", errno.EISCONN)
    assert outcome(lambda: client.bind(("", 0))) == ("OSError", errno.EINVAL)
    assert outcome(client.listen) == ("OSError", errno.EINVAL)
    client.shutdown(socket.SHUT_WR)
    client.shutdown(socket.SHUT_WR)
    assert outcome(lambda: client.send(b"x")) == ("BrokenPipeError", errno.EPIPE)
    client.shutdown(socket.SHUT_RD)
    assert client.recv(1) == b""
    server.settimeout(5)
    assert server.recv(1) == b""  # our FIN
    # Linux, after the peer closed: the first send is taken, the peer's RST then makes the next one EPIPE.
    server.sendall(b"to a half-closed peer")
    client.close()
    server.close()
    listening.close()


def test_refused_connect_can_be_retried(pair: Pair) -> None:
    _, b = pair
    with b.socket() as s:
        # Linux: ECONNREFUSED, and again ECONNREFUSED for a second attempt on the same socket.
        assert outcome(lambda: s.connect((A_IP, 1))) == ("ConnectionRefusedError", errno.ECONNREFUSED)
        assert outcome(lambda: s.connect((A_IP, 1))) == ("ConnectionRefusedError", errno.ECONNREFUSED)
    assert b.socket().connect_ex((A_IP, 1)) == errno.ECONNREFUSED


def test_connect_to_a_silent_on_link_address_is_ehostunreach() -> None:
    # Linux: connect() to an on-link address nobody answers ARP for fails after the ARP retries with
    # OSError(EHOSTUNREACH, 'No route to host'); connect_ex returns the errno, and SO_ERROR after a
    # non-blocking attempt.
    devices = MemoryDevicePair()
    stack = make_stack(devices.a, "02:00:00:00:00:0a", A_IP, arp_params=FAST_ARP)
    try:
        with BackgroundRuntime(stack, devices.a) as bg:
            with bg.socket() as s:
                s.settimeout(TIMEOUT)
                start = time.monotonic()
                assert outcome(lambda: s.connect((SILENT_IP, 80))) == ("OSError", errno.EHOSTUNREACH)
                assert time.monotonic() - start < FAST_ARP.max_probes * FAST_ARP.retrans_time + 1.0
            assert bg.socket().connect_ex((SILENT_IP, 80)) == errno.EHOSTUNREACH
            with bg.socket() as s:
                s.setblocking(False)
                assert outcome(lambda: s.connect((SILENT_IP, 80))) == ("BlockingIOError", errno.EINPROGRESS)
                deadline = time.monotonic() + TIMEOUT
                while (err := s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)) == 0:
                    assert time.monotonic() < deadline
                    time.sleep(0.02)
                assert err == errno.EHOSTUNREACH
    finally:
        devices.close()


def test_non_blocking_connect(pair: Pair) -> None:
    a, b = pair
    listening = a.socket()
    listening.bind(("", 23))
    listening.listen()
    s = b.socket()
    s.setblocking(False)
    # Linux: EINPROGRESS; EALREADY (a BlockingIOError in Python) while the handshake goes on; then once
    # success (None); then EISCONN.
    assert outcome(lambda: s.connect((A_IP, 23))) == ("BlockingIOError", errno.EINPROGRESS)
    result = outcome(lambda: s.connect((A_IP, 23)))
    while result == ("BlockingIOError", errno.EALREADY):
        time.sleep(0.01)
        result = outcome(lambda: s.connect((A_IP, 23)))
    assert result == ("ok", None)
    assert outcome(lambda: s.connect((A_IP, 23))) == ("OSError", errno.EISCONN)
    assert outcome(lambda: s.recv(1)) == ("BlockingIOError", errno.EAGAIN)
    assert s.getpeername() == (A_IP, 23)
    s.close()
    refused = b.socket()
    refused.setblocking(False)
    # Linux: EINPROGRESS, SO_ERROR -> ECONNREFUSED, then connect -> ECONNABORTED (the error was consumed).
    assert outcome(lambda: refused.connect((A_IP, 1))) == ("BlockingIOError", errno.EINPROGRESS)
    deadline = time.monotonic() + 5
    while (
        err := refused.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    ) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert err == errno.ECONNREFUSED
    assert outcome(lambda: refused.connect((A_IP, 1))) == ("ConnectionAbortedError", errno.ECONNABORTED)
    refused.close()
    listening.close()
