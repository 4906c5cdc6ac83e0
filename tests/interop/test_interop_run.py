"""``chimney run``: unmodified Python programs on the stack against Linux peers in a namespace.

One namespace for the module holds the Linux peers (``python3 -m http.server``, an echo server, a server that
never answers, one that resets); each test runs a program from ``run_programs/`` (or the standard library's
``http.server``) under ``chimney run`` as a user would, and checks what the program printed (SHA-256 of the
bytes both ways, the exceptions it caught) and the ``ready``/``done`` lines.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tcpchimney.cli.nsutil import in_netns, netns_path
from tcpchimney.link.netns import remove_netns, unavailable_reason
from tcpchimney.link.runs import RUN_DIR_ENV

PROGRAMS = Path(__file__).parent / "run_programs"
CHIMNEY = [sys.executable, "-m", "tcpchimney.cli.main"]
SYSTEM_PYTHON = "/usr/bin/python3"  # the programs run on the system's Python where there is one
STACK, PEER = "198.18.0.2", "198.18.0.1"
HTTP_PORT, ECHO_PORT, SILENT_PORT, RESET_PORT, CLOSED_PORT = 8000, 7, 9001, 9002, 9003
ABSENT = "198.18.0.77"  # on the subnet, nobody there: a connect waits for ARP
BLOB_SIZE = 2_000_000


class Peers:
    def __init__(self, netns: str, blob: Path) -> None:
        self.netns = netns
        self.blob_sha256 = hashlib.sha256(blob.read_bytes()).hexdigest()
        self.url = f"http://{PEER}:{HTTP_PORT}/{blob.name}"


def _python() -> str:
    return SYSTEM_PYTHON if os.path.exists(SYSTEM_PYTHON) else sys.executable


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peers]:
    reason = unavailable_reason()
    if reason is not None:
        if os.environ.get("TCPCHIMNEY_REQUIRE_NET") == "1":
            pytest.fail(f"TCPCHIMNEY_REQUIRE_NET=1 but {reason}")
        pytest.skip(reason)
    netns = f"chimney-run-{uuid.uuid4().hex[:8]}"
    www = tmp_path_factory.mktemp("www")
    blob = www / "blob"
    blob.write_bytes(os.urandom(BLOB_SIZE))
    started: list[subprocess.Popen[bytes]] = []
    try:
        subprocess.run(["ip", "netns", "add", netns], check=True)
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        servers = [
            [_python(), "-m", "http.server", str(HTTP_PORT), "--bind", "0.0.0.0", "--directory", str(www)],
            [_python(), str(PROGRAMS / "peers.py"), "echo", str(ECHO_PORT)],
            [_python(), str(PROGRAMS / "peers.py"), "silent", str(SILENT_PORT)],
            [_python(), str(PROGRAMS / "peers.py"), "reset", str(RESET_PORT)],
        ]
        for argv in servers:
            started.append(
                subprocess.Popen(in_netns(netns, *argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        _wait_listening(netns, [HTTP_PORT, ECHO_PORT, SILENT_PORT, RESET_PORT])
        yield Peers(netns, blob)
    finally:
        for proc in started:
            proc.kill()
            proc.wait()
        remove_netns(netns)


def _wait_listening(netns: str, ports: list[int]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        out = subprocess.run(in_netns(netns, "ss", "-Hltn"), capture_output=True, text=True).stdout
        if all(f":{port} " in out for port in ports):
            return
        time.sleep(0.05)
    pytest.fail(f"the Linux peers in {netns} did not listen on {ports}")


def chimney_run(netns: str, *program: str, options: tuple[str, ...] = ()) -> tuple[int, list[dict[str, Any]]]:
    """Run ``chimney run`` to its end: its exit status and every JSON line it and the program printed."""
    result = subprocess.run(
        [*CHIMNEY, "run", "--netns", netns, *options, "--", *program],
        capture_output=True,
        timeout=60,
        check=False,
    )
    lines = [json.loads(x) for x in result.stdout.decode().splitlines() if x.startswith("{")]
    assert lines and lines[0].get("event") == "ready", result.stderr.decode()
    assert lines[-1].get("event") == "done", result.stderr.decode()
    assert b"Traceback" not in result.stderr, result.stderr.decode()
    return result.returncode, lines


def program_output(lines: list[dict[str, Any]], count: int = 1) -> list[dict[str, Any]]:
    printed = [line for line in lines if "event" not in line]
    assert len(printed) == count, lines
    return printed


OFFLOAD = [
    pytest.param((), id="host"),
    # A mean of 5 ms: even a fast run whose transfers take tens of ms sees its connections move.
    pytest.param(("--offload", "enabled", "--churn", "0.005"), id="offload-churn"),
]


@pytest.mark.parametrize("options", OFFLOAD)
def test_urllib_asyncio_selectors_clients_against_linux(peers: Peers, options: tuple[str, ...]) -> None:
    """The system's Python (not this environment's): urllib from Linux's http.server, then an asyncio and a
    selectors client through Linux's echo server, in one program."""
    echo = [PEER, str(ECHO_PORT)]
    status, lines = chimney_run(
        peers.netns,
        _python(),
        str(PROGRAMS / "clients.py"),
        *["urllib", peers.url, "+", "asyncio", *echo, "3000000", "+", "selectors", *echo, "1000000"],
        options=options,
    )
    assert status == 0
    fetched, streamed, selected = program_output(lines, 3)
    assert fetched == {"sha256": peers.blob_sha256, "length": BLOB_SIZE, "status": 200}
    assert streamed["sent"] == streamed["got"] and streamed["length"] == 3_000_000
    assert streamed["sockname"][0] == STACK and streamed["peername"] == [PEER, ECHO_PORT]
    assert selected["sent"] == selected["got"] and selected["length"] == 1_000_000
    assert selected["connect_error"] == 0 and selected["peer"] == [PEER, ECHO_PORT]
    done = lines[-1]
    assert done["exit_status"] == 0 and done["run_counters"]["connects"] == 3
    if options:
        assert done["offload"]["offloads"] >= 3 and done["offload"]["churn_uploads"] >= 1, done["offload"]


def test_requests_and_aiohttp_clients_download_from_linux(peers: Peers, tmp_path: Path) -> None:
    """requests/urllib3 and aiohttp from this environment's Python (where they are installed); requests
    reaches the peer by a name of the --hosts file."""
    hosts = tmp_path / "hosts"
    hosts.write_text(f"{PEER} linux-peer.test\n")
    by_name = peers.url.replace(PEER, "linux-peer.test")
    status, lines = chimney_run(
        peers.netns,
        sys.executable,
        str(PROGRAMS / "clients.py"),
        *["requests", by_name, "+", "aiohttp", peers.url],
        options=("--hosts", str(hosts)),
    )
    assert status == 0
    assert program_output(lines, 2) == [
        {"sha256": peers.blob_sha256, "length": BLOB_SIZE, "same": True, "status": 200},
        {"sha256": peers.blob_sha256, "length": BLOB_SIZE},
    ]


def test_errors_are_what_cpython_raises_on_kernel_sockets(peers: Peers) -> None:
    status, lines = chimney_run(
        peers.netns,
        _python(),
        str(PROGRAMS / "clients.py"),
        "errors",
        PEER,
        str(CLOSED_PORT),
        str(SILENT_PORT),
        str(RESET_PORT),
        ABSENT,
        *["+", "exit", "7"],
    )
    assert status == 7 and lines[-1]["exit_status"] == 7  # chimney run exits with the program's status
    (got,) = program_output(lines)
    assert got["refused"] == ["ConnectionRefusedError", 111, "[Errno 111] Connection refused"]
    assert got["connect_timeout"] == ["TimeoutError", None, "timed out"]
    assert got["recv_timeout"] == ["TimeoutError", None, "timed out"]
    assert got["reset"] == ["ConnectionResetError", 104, "[Errno 104] Connection reset by peer"]
    assert got["after_reset"][:2] == ["BrokenPipeError", 32]
    assert got["asyncio_reset"][:2] == ["ConnectionResetError", 104]
    assert got["unconnected_send"][:2] == ["BrokenPipeError", 32]
    assert got["getpeername_unconnected"][:2] == ["OSError", 107]
    assert got["sockname"][0] == STACK and got["peername"] == [PEER, SILENT_PORT]
    assert got["nodelay"] == [None, 1]
    # What the stack does not have: the kernel's errno for it, and a message naming it.
    assert got["unknown_option"][:2] == ["OSError", 92] and "IP_TOS" in got["unknown_option"][2]
    assert got["udp"][:2] == ["OSError", 101] and "UDP" in got["udp"][2]
    assert got["ipv6"][:2] == ["OSError", 101] and "IPv6" in got["ipv6"][2]
    assert got["sendfile"] == [300_000, True]  # socket.sendfile works (os.sendfile into the socketpair)


class Background:
    """``chimney run`` of a server program, ready once its ready line came."""

    def __init__(self, netns: str, *program: str, options: tuple[str, ...] = ()) -> None:
        self.proc = subprocess.Popen(
            [*CHIMNEY, "run", "--netns", netns, *options, "--", *program],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # a process group of its own, as a terminal's foreground job
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 20)
        line = self.proc.stdout.readline() if ready else b"{}"
        self.ready = json.loads(line)
        assert self.ready.get("event") == "ready", self.proc.stderr.read() if self.proc.stderr else ""

    def stop(self, ctrl_c: bool = False) -> tuple[int, dict[str, Any]]:
        """SIGTERM to chimney run, or SIGINT to its whole process group as a terminal's Ctrl-C sends it."""
        if ctrl_c:
            os.killpg(self.proc.pid, signal.SIGINT)
        else:
            self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=20)
        lines = [json.loads(x) for x in out.decode().splitlines() if x.startswith("{")]
        assert lines and lines[-1].get("event") == "done", err.decode()
        return self.proc.returncode, lines[-1]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _in_peer(netns: str, *argv: str) -> str:
    result = subprocess.run(in_netns(netns, *argv), capture_output=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


@pytest.mark.parametrize("options", OFFLOAD)
def test_stdlib_http_server_serves_linux_curl(peers: Peers, tmp_path: Path, options: tuple[str, ...]) -> None:
    body = os.urandom(1_500_000)
    (tmp_path / "file").write_bytes(body)
    server = Background(
        peers.netns, _python(), "-m", "http.server", "8080", "--directory", str(tmp_path), options=options
    )
    try:
        url = f"http://{STACK}:8080/file"
        curl = ["curl", "-sS", "--fail", "--retry", "50", "--retry-connrefused", "--retry-delay", "0"]
        # Two transfers in one curl run (http.server speaks HTTP/1.0: a connection each), then a third.
        codes = _in_peer(
            peers.netns, *curl, "-o", "/dev/null", "-o", "/dev/null", "-w", "%{http_code} ", url, url
        )
        assert codes.split() == ["200", "200"]
        digest = _in_peer(peers.netns, "sh", "-c", f"{' '.join(curl)} {url} | sha256sum")
        assert digest.split()[0] == hashlib.sha256(body).hexdigest()
        # Ctrl-C for one variant: http.server exits 0 on its KeyboardInterrupt, which a second SIGINT from
        # chimney run would cut short; SIGTERM for the other: passed on, http.server dies of it.
        ctrl_c = not options
        status, done = server.stop(ctrl_c)
    finally:
        server.kill()
    assert status == (0 if ctrl_c else 128 + signal.SIGTERM)
    assert done["exit_status"] == status and done["signal"] == ("SIGINT" if ctrl_c else "SIGTERM")
    assert done["run_counters"]["accepted"] >= 2 and done["run_counters"]["listeners"] == 1


def test_asyncio_echo_server_serves_linux_client(peers: Peers) -> None:
    server = Background(peers.netns, _python(), str(PROGRAMS / "peers.py"), "asyncio-echo", "7007")
    try:
        got = json.loads(
            _in_peer(
                peers.netns, _python(), str(PROGRAMS / "peers.py"), "echo-client", STACK, "7007", "2000000"
            )
        )
        assert got["sent"] == got["got"]
        _, done = server.stop()
    finally:
        server.kill()
    assert done["run_counters"]["accepted"] == 1


def test_a_command_that_cannot_run_is_one_sentence_and_127(peers: Peers) -> None:
    result = subprocess.run(
        [*CHIMNEY, "run", "--netns", peers.netns, "--", "/nonexistent/python3", "app.py"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 127  # as a shell says "command not found"
    err = result.stderr.decode()
    assert err.strip() == "chimney: cannot run /nonexistent/python3: No such file or directory.", err
    done = json.loads(result.stdout.decode().splitlines()[-1])
    assert done["event"] == "done" and done["exit_status"] == 127 and done["pid"] is None


def test_kill_9_leaves_the_program_to_chimney_cleanup(netns_name: str, tmp_path: Path) -> None:
    """COMMAND is in the run record: after a kill -9 of chimney run, ``chimney cleanup`` ends it and removes
    the control directory, the TAP and the namespace."""
    env = {**os.environ, RUN_DIR_ENV: str(tmp_path / "runs")}
    sleeper = "import os, time; print(os.getpid(), flush=True); time.sleep(120)"
    proc = subprocess.Popen(
        [*CHIMNEY, "run", "--netns", netns_name, "--", _python(), "-c", sleeper],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        program = int(proc.stdout.readline())
        proc.kill()
        proc.wait()
        os.kill(program, 0)  # still running: nobody ended it
        done = subprocess.run([*CHIMNEY, "cleanup"], capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == 0 and f"removed process {program}" in done.stdout, done.stdout + done.stderr
        deadline = time.monotonic() + 10
        while _alive(program) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(program)
        assert not glob.glob(f"/tmp/chimney-run-{ready['pid']}-*") and not os.path.exists(
            netns_path(netns_name)
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"  # a zombie has ended (its parent is gone)
    except FileNotFoundError:
        return False
