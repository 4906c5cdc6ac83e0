"""``chimney capture`` against a real ``chimney serve`` over TAP with a Linux peer: a capture taken during an
offloaded download is read by ``tshark``, and the TCP payload it holds for that connection reassembles to
the bytes curl received (SHA-256), with the NIC in its own process (its mirror, also across a restart of
the NIC) and inline; a filter keeps other traffic out; bad input is one sentence; a client that goes away
ends its capture."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_interop_serve import STACK, Command, sh

from tcpchimney.cli.apps import deterministic_sha256

CHIMNEY = [sys.executable, "-m", "tcpchimney.cli.main"]
SIZE, SEED = 4_000_000, 13
# Rate-limited so the transfer runs well past the moment the connection is offloaded.
# Traffic a port 80 filter keeps out: UDP datagrams, a connection attempt to port 81 (answered by a reset).
OTHER_TRAFFIC = (
    f'{sys.executable} -c "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); '
    f"[s.sendto(b'x', ('{STACK}', 9)) for _ in range(5)]\"; curl -sS -m 5 http://{STACK}:81/ || true"
)
CURL = f"curl -sS --fail --limit-rate 8M -o /dev/null http://{STACK}/bytes/{SIZE}?seed={SEED}"


@pytest.fixture
def name() -> str:
    return f"cap-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def tshark() -> str:
    path = shutil.which("tshark")
    if path is None:
        if os.environ.get("TCPCHIMNEY_REQUIRE_NET") == "1":
            pytest.fail("TCPCHIMNEY_REQUIRE_NET=1 but tshark is missing (tools/debian-tools.sh installs it)")
        pytest.skip("tshark is not installed (tools/debian-tools.sh installs it)")
    return path


class Capture:
    """A running ``chimney capture``, started once it said it captures."""

    def __init__(self, *argv: str) -> None:
        self.proc = subprocess.Popen(
            [*CHIMNEY, "capture", "-j", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        assert "capturing into" in line, line + self.proc.stderr.read()

    def stop(self) -> dict[str, Any]:
        """Ctrl-C; the summary it printed."""
        self.proc.send_signal(signal.SIGINT)
        out, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, err
        return json.loads(out.splitlines()[-1])  # type: ignore[no-any-return]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def captures() -> Iterator[list[Capture]]:
    started: list[Capture] = []
    try:
        yield started
    finally:
        for c in started:
            c.kill()


def server_payload(pcap: Path, port: int = 80) -> bytes:
    """The bytes the stack's port ``port`` sent in the capture's first TCP stream, as tshark reassembles
    them (``follow,tcp,raw``: the second node's data is the indented lines)."""
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-q", "-z", "follow,tcp,raw,0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    lines = out.splitlines()
    nodes = [ln for ln in lines if ln.startswith("Node ")]
    assert nodes and nodes[1].endswith(f"{STACK}:{port}"), out[:500]
    return b"".join(bytes.fromhex(ln.strip()) for ln in lines if ln.startswith("\t"))


def tshark_count(pcap: Path, display_filter: str) -> int:
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-Y", display_filter],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return len(out.splitlines())


def handoffs(pcap: Path) -> list[dict[str, Any]]:
    text = Path(str(pcap) + ".handoffs.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.parametrize("nic", ["process", "inline"])
def test_capture_of_an_offloaded_download_reassembles_to_its_bytes(
    netns_name: str,
    name: str,
    nic: str,
    tshark: str,
    commands: list[Command],
    captures: list[Capture],
    tmp_path: Path,
) -> None:
    server = Command(
        "serve", "http", "--netns", netns_name, "--offload", "enabled", "--nic", nic, "--name", name
    )
    commands.append(server)
    pcap = tmp_path / "wire.pcap"
    capture = Capture("-w", str(pcap), "--name", name, "port", "80")
    captures.append(capture)
    sh(netns_name, CURL)
    summary = capture.stop()

    body = server_payload(pcap)
    head, sep, data = body.partition(b"\r\n\r\n")
    assert sep and head.startswith(b"HTTP/1.1 200"), head[:200]
    assert len(data) == SIZE
    assert hashlib.sha256(data).hexdigest() == deterministic_sha256(SIZE, SEED)
    marks = handoffs(pcap)
    assert [m["event"] for m in marks][:1] == ["offloaded"], marks  # the bytes went through the NIC
    assert summary["frames"] == tshark_count(pcap, "frame") and summary["dropped"] == 0
    if nic == "process":
        assert summary["nic_mirrored"] > 0, summary  # the NIC's frames came through its mirror


def test_a_filter_keeps_other_traffic_out(
    netns_name: str, name: str, tshark: str, commands: list[Command], captures: list[Capture], tmp_path: Path
) -> None:
    server = Command("serve", "http", "--netns", netns_name, "--offload", "enabled", "--name", name)
    commands.append(server)
    web, other = tmp_path / "web.pcap", tmp_path / "other.pcap"
    capture = Capture("-w", str(web), "--name", name, "host", STACK, "and", "port", "80")
    captures.append(capture)
    sh(netns_name, OTHER_TRAFFIC)
    sh(netns_name, f"curl -sS --fail -o /dev/null http://{STACK}/bytes/100000")
    summary = capture.stop()
    assert tshark_count(web, "tcp.port == 80") == summary["frames"] > 0
    assert tshark_count(web, "udp or tcp.port == 81 or arp") == 0
    assert summary["filtered"] >= 6  # 5 datagrams, a SYN to port 81 (and what the stack answered)

    capture = Capture("-w", str(other), "--name", name, "port", "81")
    captures.append(capture)
    sh(netns_name, f"curl -sS --fail -o /dev/null http://{STACK}/bytes/100000")
    summary = capture.stop()
    assert summary["frames"] == 0 and summary["filtered"] > 0
    assert tshark_count(other, "frame") == 0  # a valid, empty capture


def test_bad_input_is_one_sentence_and_a_client_that_goes_away_ends_its_capture(
    netns_name: str, name: str, tshark: str, commands: list[Command], captures: list[Capture], tmp_path: Path
) -> None:
    def capture(*argv: str, env: dict[str, str] | None = None) -> str:
        result = subprocess.run(
            [*CHIMNEY, "capture", *argv], capture_output=True, text=True, timeout=30, env=env
        )
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        return result.stderr

    empty = {**os.environ, "TCPCHIMNEY_RUN_DIR": str(tmp_path / "run")}
    assert "no stack is running" in capture("-w", str(tmp_path / "x.pcap"), env=empty)
    assert "give host IP and/or port P" in capture("-w", str(tmp_path / "x.pcap"), "port")
    assert "is not a port" in capture("-w", str(tmp_path / "x.pcap"), "port", "99999")

    server = Command("serve", "http", "--netns", netns_name, "--offload", "enabled", "--name", name)
    commands.append(server)
    unwritable = tmp_path / "no-such-dir" / "x.pcap"
    assert "cannot write the capture file" in capture("-w", str(unwritable), "--name", name)
    assert "not an IPv4 address" in capture("-w", str(tmp_path / "y.pcap"), "--name", name, "host", "web")
    running = Capture("-w", str(tmp_path / "first.pcap"), "--name", name)
    captures.append(running)
    assert "a capture is running already" in capture("-w", str(tmp_path / "z.pcap"), "--name", name)
    running.stop()
    sh(netns_name, f"curl -sS --fail -o /dev/null http://{STACK}/bytes/1000")  # the stack is unaffected

    # A client that goes away ends its capture: the next one may start, and the file is a whole pcap.
    gone = Capture("-w", str(tmp_path / "gone.pcap"), "--name", name)
    captures.append(gone)
    sh(netns_name, f"curl -sS --fail -o /dev/null http://{STACK}/bytes/1000")
    gone.kill()
    deadline = time.monotonic() + 10
    while True:
        try:
            after = Capture("-w", str(tmp_path / "after.pcap"), "--name", name)
            break
        except AssertionError:
            assert time.monotonic() < deadline, "the capture of a client that went away did not end"
            time.sleep(0.2)
    captures.append(after)
    after.stop()
    assert tshark_count(tmp_path / "gone.pcap", "tcp.port == 80") > 0


def test_a_nic_restarted_during_a_capture_mirrors_again(
    netns_name: str, name: str, tshark: str, commands: list[Command], captures: list[Capture], tmp_path: Path
) -> None:
    server = Command("serve", "http", "--netns", netns_name, "--offload", "enabled", "--name", name)
    commands.append(server)
    pcap = tmp_path / "wire.pcap"
    capture = Capture("-w", str(pcap), "--name", name, "port", "80")
    captures.append(capture)
    os.kill(server.ready["nic_pid"], signal.SIGKILL)
    deadline = time.monotonic() + 20
    while _restarts(name) < 1:
        assert time.monotonic() < deadline, "the NIC process was not restarted"
        time.sleep(0.2)
    sh(netns_name, CURL)
    summary = capture.stop()
    data = server_payload(pcap).partition(b"\r\n\r\n")[2]
    assert hashlib.sha256(data).hexdigest() == deterministic_sha256(SIZE, SEED)
    assert handoffs(pcap)[0]["event"] == "offloaded" and summary["nic_mirrored"] > 0, summary


def _restarts(name: str) -> int:
    out = subprocess.run(
        [*CHIMNEY, "show", "target", "-j", "--name", name],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return int(json.loads(out)["health"]["restarts"])
