"""``chimney serve`` and ``chimney nc`` as a user runs them, against curl and Python in the Linux namespace.

Each test starts the command as a subprocess in a fresh, uniquely named namespace, waits for its ready line,
talks to it from the namespace, stops it with SIGTERM and checks its final counters and its clean-up.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any

import pytest

from tcpchimney.cli.apps import deterministic_bytes, deterministic_sha256
from tcpchimney.cli.nsutil import in_netns, netns_path, socket_in_netns

STACK = "198.18.0.2"
CHIMNEY = [sys.executable, "-m", "tcpchimney.cli.main"]
READY_TIMEOUT = 20.0


class Command:
    """A running ``chimney`` subprocess, ready once it printed its ready line."""

    def __init__(self, *argv: str, stdin: int | None = None, events_on_stderr: bool = False) -> None:
        self.proc = subprocess.Popen(
            [*CHIMNEY, *argv], stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.events = self.proc.stderr if events_on_stderr else self.proc.stdout
        self.ready = self._next_event(READY_TIMEOUT)
        assert self.ready["event"] == "ready", self.ready

    def _next_event(self, timeout: float) -> dict[str, Any]:
        assert self.events is not None
        ready, _, _ = select.select([self.events], [], [], timeout)
        line = self.events.readline() if ready else b""
        if not line:
            self.kill()
            err = self.proc.stderr.read().decode() if self.proc.stderr else ""
            pytest.fail(f"chimney printed no event within {timeout}s (exit {self.proc.returncode}): {err}")
        return json.loads(line)  # type: ignore[no-any-return]

    def stop(self) -> tuple[int, dict[str, Any]]:
        """SIGTERM, then the exit status and the final ``done`` event."""
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=20)
        stream = err if self.events is self.proc.stderr else out
        lines = [json.loads(x) for x in stream.decode().splitlines() if x.startswith("{")]
        done = [e for e in lines if e.get("event") == "done"]
        assert done, f"no done event; stderr: {err.decode()}"
        return self.proc.returncode, done[-1]

    def kill(self) -> None:
        """End it as a user would (SIGTERM: it removes what it made, its run record and control socket
        included), and SIGKILL only if it does not end."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def sh(netns: str, shell: str, stdin: bytes | None = None, timeout: float = 120) -> str:
    result = subprocess.run(
        in_netns(netns, "sh", "-c", shell), input=stdin, capture_output=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{shell!r} failed ({result.returncode}): {result.stderr.decode()}"
    return result.stdout.decode()


def test_curl_against_serve_http(netns_name: str, commands: list[Command]) -> None:
    server = Command("serve", "http", "--netns", netns_name)
    commands.append(server)
    assert server.ready["port"] == 80 and server.ready["created_netns"] is True

    # Two requests in one curl run: the second reuses the connection (keep-alive).
    urls = f"http://{STACK}/bytes/1000000?seed=3 http://{STACK}/bytes/10"
    out = sh(netns_name, f"curl -sS --fail -o /dev/null -o /dev/null -w '%{{num_connects}} ' {urls}")
    assert out.split() == ["1", "0"]

    got = sh(netns_name, f"curl -sS --fail -D - http://{STACK}/bytes/1000000?seed=3 -o /dev/null")
    header = next(line for line in got.splitlines() if line.lower().startswith("x-content-sha256"))
    assert header.split(":", 1)[1].strip() == deterministic_sha256(1_000_000, 3)

    body = os.urandom(300_000)
    answer = json.loads(sh(netns_name, f"curl -sS --fail --data-binary @- http://{STACK}/sha256", stdin=body))
    assert answer == {"sha256": hashlib.sha256(body).hexdigest(), "length": len(body)}

    missing = subprocess.run(
        in_netns(
            netns_name, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://{STACK}/nothing"
        ),
        capture_output=True,
        check=False,
    )
    assert missing.stdout == b"404"

    status, done = server.stop()
    assert status == 0
    assert done["app_counters"]["requests"] >= 5
    assert done["counters"]["tcp"]["rx"] > 0 and done["counters"]["tcp"]["tx"] > 0
    assert not os.path.exists(netns_path(netns_name)), "serve created the namespace and must remove it"


def test_offload_events_and_counters_agree_on_a_real_run(
    netns_name: str, commands: list[Command], tmp_path: Any
) -> None:
    """Every offload and every upload (also the one that frees the target's entry once a connection ended
    there) is an event of --events, and the host, the target and the event log count the same."""
    events = tmp_path / "events.jsonl"
    server = Command("serve", "http", "--netns", netns_name, "--offload", "enabled", "--events", str(events))
    commands.append(server)
    for seed in range(3):
        sh(netns_name, f"curl -sS --fail -o /dev/null http://{STACK}/bytes/1000000?seed={seed}")
    sh(
        netns_name,
        f"curl -sS --fail -o /dev/null http://{STACK}/bytes/10 -o /dev/null http://{STACK}/bytes/300000",
    )

    def log() -> list[dict[str, Any]]:
        return [json.loads(x) for x in events.read_text().splitlines()]

    # Each connection ends with its upload: wait until every offloaded one has been handed back.
    deadline = time.monotonic() + 20
    while (c := Counter(x["event"] for x in log()))["uploaded"] < c["offloaded"]:
        assert time.monotonic() < deadline, c
        time.sleep(0.05)
    status, done = server.stop()
    assert status == 0
    lines = log()
    offload = done["offload"]
    host, nic = offload["host"], offload["nic"]["lifecycle"]
    count = Counter(x["event"] for x in lines)
    assert count["offloaded"] == 4 == offload["offloads"] == host["offloaded"] == nic["offloads"]
    assert count["uploaded"] == 4 == offload["uploads"] == host["uploaded"] == nic["uploads"]
    assert sum(v for k, v in host.items() if k.startswith("uploaded_")) == host["uploaded"]
    assert count["refused"] == offload["refusals"] == 0 and not [k for k in host if k.startswith("refused_")]
    assert {x["reason"] for x in lines if x["event"] == "uploaded"} <= {"closed", "host_time_wait"}


def test_200_mb_each_way_sha256(netns_name: str, commands: list[Command], tmp_path: Any) -> None:
    n = 200_000_000
    commands.append(server := Command("serve", "http", "--netns", netns_name))
    out = sh(netns_name, f"curl -sS --fail http://{STACK}/bytes/{n}?seed=11 | sha256sum", timeout=170)
    assert out.split()[0] == deterministic_sha256(n, 11)

    payload = tmp_path / "up.bin"
    with payload.open("wb") as f:
        for block in deterministic_bytes(n, 12):
            f.write(block)
    answer = json.loads(
        sh(netns_name, f"curl -sS --fail -X POST -T {payload} http://{STACK}/sha256", timeout=170)
    )
    assert answer == {"sha256": deterministic_sha256(n, 12), "length": n}
    assert server.stop()[0] == 0


def test_echo_half_close_from_linux_python(netns_name: str, commands: list[Command]) -> None:
    commands.append(server := Command("serve", "echo", "--netns", netns_name))
    data = b"".join(deterministic_bytes(3_000_000, 4))
    with socket_in_netns(netns_name) as s:
        s.settimeout(30)
        s.connect((STACK, 7))

        def send_then_half_close() -> None:
            s.sendall(data)
            s.shutdown(1)  # SHUT_WR: our FIN; echo must still send everything back, then its own FIN

        # Sending and reading at once, as any echo client must: 3 MB exceed what the buffers on the way can
        # hold while nobody reads, with the kernel's echo server as with ours.
        sender = threading.Thread(target=send_then_half_close)
        sender.start()
        got = bytearray()
        while chunk := s.recv(1 << 20):
            got += chunk
        sender.join(30)
    assert bytes(got) == data
    status, done = server.stop()
    assert status == 0 and done["app_counters"]["bytes_in"] == len(data)


def test_an_existing_namespace_is_kept(netns_name: str, commands: list[Command]) -> None:
    from pyroute2 import netns

    netns.create(netns_name)
    commands.append(server := Command("serve", "discard", "--netns", netns_name))
    assert server.ready["created_netns"] is False
    with socket_in_netns(netns_name) as s:
        s.settimeout(10)
        s.connect((STACK, 9))
        s.sendall(b"x" * 100_000)
    assert server.stop()[0] == 0
    assert os.path.exists(netns_path(netns_name)), "a namespace serve did not create must be left alone"


def test_nc_listen_relays_both_ways(netns_name: str, commands: list[Command]) -> None:
    nc = Command("nc", "-l", "5000", "--netns", netns_name, stdin=subprocess.PIPE, events_on_stderr=True)
    commands.append(nc)
    with socket_in_netns(netns_name) as s:
        s.settimeout(20)
        s.connect((STACK, 5000))
        assert nc.proc.stdin is not None
        nc.proc.stdin.write(b"from the stack\n")
        nc.proc.stdin.close()  # EOF: nc half-closes
        s.sendall(b"from linux\n")
        s.shutdown(1)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    assert nc.proc.stdout is not None
    out = nc.proc.stdout.read()  # to nc's exit, which follows both directions' end
    nc.proc.wait(timeout=20)
    assert got == b"from the stack\n"
    assert out == b"from linux\n"
    assert nc.proc.returncode == 0


def test_nc_connects_to_a_linux_server(netns_name: str, commands: list[Command]) -> None:
    from pyroute2 import NetNS, netns

    # The namespace and the peer address exist before nc runs, so that Linux can listen first.
    netns.create(netns_name)
    with NetNS(netns_name) as ns:
        lo = ns.link_lookup(ifname="lo")[0]
        ns.addr("add", index=lo, address="198.18.0.1", prefixlen=32)
        ns.link("set", index=lo, state="up")
    with socket_in_netns(netns_name) as listening:
        listening.bind(("198.18.0.1", 6000))
        listening.listen()
        listening.settimeout(20)
        nc = Command(
            "nc", "198.18.0.1", "6000", "--netns", netns_name, stdin=subprocess.PIPE, events_on_stderr=True
        )
        commands.append(nc)
        conn, _ = listening.accept()
    with conn:
        conn.settimeout(20)
        conn.sendall(b"hello stack\n")
        conn.shutdown(1)
        assert nc.proc.stdin is not None and nc.proc.stdout is not None
        nc.proc.stdin.write(b"hello linux\n")
        nc.proc.stdin.close()
        got = b""
        while chunk := conn.recv(65536):
            got += chunk
    assert got == b"hello linux\n"
    assert nc.proc.stdout.read() == b"hello stack\n"
    assert nc.proc.wait(timeout=20) == 0
