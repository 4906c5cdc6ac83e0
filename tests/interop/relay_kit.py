"""What the proxy and forward interop tests share: the ``chimney`` subprocess, HTTP servers on either side,
kernel peers that half-close or reset, and SOCKS5 by hand."""

from __future__ import annotations

import hashlib
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tcpchimney.cli.nsutil import in_netns

CHIMNEY = [sys.executable, "-m", "tcpchimney.cli.main"]
STACK = "198.18.0.2"
PEER = "198.18.0.1"
READY_TIMEOUT = 30.0


def need(*tools: str) -> None:
    """Skip, naming what is missing (tools/debian-tools.sh installs ab, wrk and proxychains4 as root), unless
    TCPCHIMNEY_REQUIRE_NET=1: then a missing tool fails the test."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        reason = f"needs {', '.join(missing)} (tools/debian-tools.sh installs them)"
        if os.environ.get("TCPCHIMNEY_REQUIRE_NET") == "1":
            pytest.fail(f"TCPCHIMNEY_REQUIRE_NET=1 but the test {reason}")
        pytest.skip(reason)


class Chimney:
    """A running ``chimney`` subprocess, ready once it printed its ready line."""

    def __init__(self, *argv: str) -> None:
        self.proc = subprocess.Popen([*CHIMNEY, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], READY_TIMEOUT)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            self.kill()
            err = self.proc.stderr.read().decode() if self.proc.stderr else ""
            pytest.fail(f"chimney printed no ready line within {READY_TIMEOUT}s: {err}")
        self.ready: dict[str, Any] = json.loads(line)
        assert self.ready["event"] == "ready", self.ready

    @property
    def port(self) -> int:
        return int(self.ready["listen"].rsplit(":", 1)[1])

    def stop(self) -> dict[str, Any]:
        """SIGTERM; the ``done`` event (the command must exit 0 and print no traceback)."""
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, err.decode()
        assert b"Traceback" not in err, err.decode()
        done = [json.loads(x) for x in out.decode().splitlines() if x.startswith("{")]
        assert done and done[-1]["event"] == "done", out.decode()
        return done[-1]  # type: ignore[no-any-return]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def create_netns(name: str) -> None:
    """The namespace made before chimney runs, so a server can start in it first (chimney keeps it)."""
    from pyroute2 import netns

    netns.create(name)


def files(tmp_path: Path, sizes: dict[str, int]) -> dict[str, str]:
    """Random files to serve; name -> SHA-256."""
    digests = {}
    for name, size in sizes.items():
        data = os.urandom(size)
        (tmp_path / name).write_bytes(data)
        digests[name] = hashlib.sha256(data).hexdigest()
    return digests


@contextmanager
def http_server(
    directory: Path, netns: str | None, bind: str, port: int
) -> Iterator[subprocess.Popen[bytes]]:
    """``python3 -m http.server`` (Linux's python, not ours) in the namespace or on this host."""
    argv = ["python3", "-m", "http.server", str(port), "--bind", bind, "--directory", str(directory)]
    proc = subprocess.Popen(
        in_netns(netns, *argv) if netns else argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_listening(netns, port)
        yield proc
    finally:
        proc.kill()
        proc.wait()


def wait_listening(netns: str | None, port: int, timeout: float = 10.0) -> None:
    probe = f"ss -Hltn 'sport = :{port}'"
    argv = in_netns(netns, "sh", "-c", probe) if netns else ["sh", "-c", probe]
    for _ in range(int(timeout / 0.05)):
        if subprocess.run(argv, capture_output=True, check=False).stdout.strip():
            return
        threading.Event().wait(0.05)
    pytest.fail(f"nothing listens on port {port}")


def free_port() -> int:
    """A port free on this host's loopback now (the kernel's pick: no collision with parallel runs)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(argv: list[str], netns: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(in_netns(netns, *argv) if netns else argv, capture_output=True, timeout=timeout)


def sha256_of(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 0, result.stderr.decode()
    return hashlib.sha256(result.stdout).hexdigest()


# ---------------------------------------------------------------------- kernel peers that half-close or reset


def reset_close(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER zero)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while data := sock.recv(1 << 16):
        chunks.append(data)
    return b"".join(chunks)


class Peer:
    """A kernel listening socket (``listening``, already bound) whose one connection ``behaviour`` handles on
    a thread; what it returned or raised is in ``outcome``."""

    def __init__(self, listening: socket.socket, behaviour: Callable[[socket.socket], object]) -> None:
        self.listening = listening
        listening.listen()
        listening.settimeout(30)
        self.outcome: object = None
        self.thread = threading.Thread(target=self._serve, args=(behaviour,), daemon=True)
        self.thread.start()

    def _serve(self, behaviour: Callable[[socket.socket], object]) -> None:
        try:
            conn, _ = self.listening.accept()
            conn.settimeout(30)
            self.outcome = behaviour(conn)
        except BaseException as exc:  # handed to the test
            self.outcome = exc

    def result(self) -> object:
        self.thread.join(30)
        assert not self.thread.is_alive(), "the peer did not finish"
        self.listening.close()
        return self.outcome


def sha_after_eof(conn: socket.socket) -> str:
    """Read to the (relayed) FIN, answer the SHA-256 of what came, then close: half-close both ways."""
    digest = hashlib.sha256(recv_all(conn)).hexdigest()
    conn.sendall(digest.encode())
    conn.close()
    return digest


def reset_after_hello(conn: socket.socket) -> str:
    conn.recv(5)
    reset_close(conn)
    return "reset"


def watch_for_reset(conn: socket.socket) -> str:
    """Takes the client's hello and says ``ok`` (the client resets only once the relayed connection exists:
    one reset while still in the accept queue never reaches the target), then tells what the reset looks like
    here: ConnectionResetError on recv, not a FIN."""
    try:
        conn.recv(5)
        conn.sendall(b"ok")
        recv_all(conn)
    except ConnectionResetError:
        return "reset"
    finally:
        conn.close()
    return "eof"


def half_close_exchange(sock: socket.socket, payload: bytes) -> str:
    sock.sendall(payload)
    sock.shutdown(socket.SHUT_WR)
    return recv_all(sock).decode()


# ---------------------------------------------------------------------- SOCKS5 by hand


def socks_connect(
    port: int, request: bytes, greeting: bytes = b"\x05\x01\x00"
) -> tuple[bytes, socket.socket]:
    """Greet, send a request; the server's bytes until its reply is complete or it closed."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.sendall(greeting)
    got = sock.recv(2)
    if got[1:2] == b"\xff":  # no acceptable method: the server closes
        return got + _rest(sock), sock
    if got[1:2] != b"\x00":  # a method to negotiate first: the caller does it
        return got, sock
    sock.sendall(request)
    reply = b""
    while len(reply) < 10 and (data := sock.recv(10 - len(reply))):
        reply += data
    return reply, sock


def _rest(sock: socket.socket) -> bytes:
    try:
        return recv_all(sock)
    except ConnectionResetError:
        return b""


def ipv4_request(host: str, port: int, cmd: int = 1) -> bytes:
    return bytes([5, cmd, 0, 1]) + socket.inet_aton(host) + struct.pack("!H", port)


def name_request(name: str, port: int) -> bytes:
    raw = name.encode()
    return bytes([5, 1, 0, 3, len(raw)]) + raw + struct.pack("!H", port)
