"""``chimney serve`` with its connections on the emulated NIC, against curl and Python in the Linux namespace.

The same checks as test_interop_serve.py, with ``--offload enabled``, and with ``--churn`` moving every
connection back to the host and onto the NIC again at random moments mid-transfer. Linux must see nothing of
it: byte-exact data (SHA-256), no reset, and the events file must show the moves with their reasons.

RSTs are counted by a packet socket on the namespace's side of the TAP with a kernel filter that passes only
TCP segments with RST set, so 2 GB of traffic cost nothing to watch; a probe of a closed port at the end
proves the counter sees a reset when there is one.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shlex
import socket
import struct
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from test_interop_serve import Command, sh

from tcpchimney.cli.apps import deterministic_bytes, deterministic_sha256
from tcpchimney.cli.nsutil import netns_path, socket_in_netns

STACK = "198.18.0.2"
GB = 1_000_000_000
_SHA256_STDIN = "python3 -c " + shlex.quote(
    "import hashlib, sys\n"
    "h = hashlib.sha256()\n"
    "while b := sys.stdin.buffer.read1(1 << 20):\n"
    "    h.update(b)\n"
    "print(h.hexdigest())"
)


def read_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def get_and_post_sha256(netns: str, n: int, seed: int, get_options: str = "") -> None:
    """A curl GET of n deterministic bytes and a curl POST of n random ones, each SHA-256 checked."""
    out = sh(netns, f"curl -sS --fail {get_options}http://{STACK}/bytes/{n}?seed={seed} | {_SHA256_STDIN}")
    assert out.split()[0] == deterministic_sha256(n, seed)
    body = os.urandom(n)
    answer = json.loads(sh(netns, f"curl -sS --fail --data-binary @- http://{STACK}/sha256", stdin=body))
    assert answer == {"sha256": hashlib.sha256(body).hexdigest(), "length": n}


def stop_offloaded_both_ways(server: Command, n: int) -> dict[str, Any]:
    """Stops a server that offloaded two connections moving n bytes each way; its ``offload`` summary."""
    status, done = server.stop()
    assert status == 0
    offload: dict[str, Any] = done["offload"]
    assert offload["faults"] == 0
    assert offload["host"]["offloaded"] == 2, offload  # both curl connections went to the NIC
    assert offload["nic"]["ip"]["out_octets"] > n  # the bytes left from the NIC, not the host
    assert offload["nic"]["ip"]["in_octets"] > n
    return offload


# Why a connection's last upload happens as it ends (the target hands its entry or its TIME-WAIT back).
_ENDING = frozenset({"closed", "aborted", "host_time_wait", "time_wait", "orphaned_fin_wait_2", "peer_reset"})


def check_cycles(events: list[dict[str, Any]], reason: str) -> int:
    """Every upload of ``reason`` is followed on its connection by an offload caused by it, and the only
    other upload is a connection's last, as it ends; returns how many complete cycles the file records."""
    assert events, "the events file is empty"
    events = [e for e in events if not e["event"].startswith("nic_")]  # the NIC process's own lines
    for e in events:
        assert {"time", "event", "connection", "reason", "duration"} <= e.keys(), e
        assert len(e["connection"]) == 4 and e["connection"][0] == STACK
    kinds = Counter(e["event"] for e in events)
    assert kinds["fault"] == 0, [e for e in events if e["event"] == "fault"]
    moves = [e for e in events if e["event"] in ("offloaded", "uploaded")]
    last_move = {tuple(e["connection"]): i for i, e in enumerate(moves)}
    for i, e in enumerate(moves):
        if e["event"] == "uploaded" and e["reason"] != reason:
            assert e["reason"] in _ENDING and last_move[tuple(e["connection"])] == i, e
    cycles = 0
    last: dict[tuple[Any, ...], str] = {}
    for e in events:
        key = tuple(e["connection"])
        if e["event"] == "offloaded" and e.get("cause") == reason:
            assert last.get(key) == "uploaded", f"re-offload without an upload before it: {e}"
            cycles += 1
        if e["event"] in ("offloaded", "uploaded"):
            assert last.get(key) != e["event"], f"two {e['event']} in a row: {e}"
            last[key] = e["event"]
    return cycles


# ====================================================================== RSTs as Linux sees them

_ETH_P_ALL = 0x0003
_SO_ATTACH_FILTER = 26
_PACKET_OUTGOING = 4
# Classic BPF: IPv4, TCP, first fragment, RST flag set -> whole frame; anything else -> nothing.
_RST_FILTER = [
    (0x28, 0, 0, 12),  # ldh [12]            ethertype
    (0x15, 0, 8, 0x0800),  # jeq IPv4, else drop
    (0x30, 0, 0, 23),  # ldb [23]            IP protocol
    (0x15, 0, 6, 6),  # jeq TCP, else drop
    (0x28, 0, 0, 20),  # ldh [20]            flags + fragment offset
    (0x45, 4, 0, 0x1FFF),  # jset offset: drop (not the first fragment)
    (0xB1, 0, 0, 14),  # ldxb 4*([14]&0xf)   IP header length
    (0x50, 0, 0, 27),  # ldb [x+27]          TCP flags (14 + 13)
    (0x45, 0, 1, 0x04),  # jset RST, else drop
    (0x06, 0, 0, 0x40000),  # ret whole frame
    (0x06, 0, 0, 0),  # ret 0: drop
]


class RstWatch:
    """Counts TCP RSTs on one interface of the namespace: ``received`` by Linux and ``sent`` by it."""

    def __init__(self, netns: str, ifname: str) -> None:
        self.sock = socket_in_netns(netns, socket.AF_PACKET, socket.SOCK_RAW, 0)  # bound below: no frame yet
        code = b"".join(struct.pack("HBBI", *insn) for insn in _RST_FILTER)
        buf = ctypes.create_string_buffer(code)
        prog = struct.pack("HL", len(_RST_FILTER), ctypes.addressof(buf))
        self.sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, prog)
        self.sock.bind((ifname, _ETH_P_ALL))
        self.sock.settimeout(0.2)
        self.received: list[bytes] = []
        self.sent: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rst-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame, addr = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            (self.sent if addr[2] == _PACKET_OUTGOING else self.received).append(frame)

    def settle(self) -> None:
        time.sleep(0.3)  # frames the filter passed reach the thread

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def snmp_tcp(netns: str) -> dict[str, int]:
    """Linux's TCP MIB counters in the namespace (/proc/net/snmp is per namespace)."""
    lines = [x.split() for x in sh(netns, "cat /proc/net/snmp").splitlines() if x.startswith("Tcp:")]
    return dict(zip(lines[0][1:], map(int, lines[1][1:]), strict=True))


def probe_closed_port(netns: str) -> None:
    """One connection attempt the stack answers with a RST (nothing listens on port 1)."""
    with socket_in_netns(netns) as s:
        s.settimeout(5)
        with pytest.raises(ConnectionRefusedError):
            s.connect((STACK, 1))


# ====================================================================== tests


def test_http_offloaded_curl_get_post_sha256(
    netns_name: str, commands: list[Command], tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    server = Command("serve", "http", "--netns", netns_name, "--offload", "enabled", "--events", str(events))
    commands.append(server)
    assert server.ready["offload"] == "enabled"
    n = 20_000_000
    headers = tmp_path / "headers"
    get_and_post_sha256(netns_name, n, 21, get_options=f"-D {headers} ")
    header = next(x for x in headers.read_text().splitlines() if x.lower().startswith("x-content-sha256"))
    assert header.split(":", 1)[1].strip() == deterministic_sha256(n, 21)

    offload = stop_offloaded_both_ways(server, n)
    assert offload["mode"] == "enabled"
    offloaded = [e for e in read_events(events) if e["event"] == "offloaded"]
    assert len(offloaded) == offload["offloads"]
    assert {e["cause"] for e in offloaded} == {"policy: enabled"}
    assert not os.path.exists(netns_path(netns_name))


def test_echo_with_churn_and_half_close_from_linux_python(
    netns_name: str, commands: list[Command], tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    argv = ["serve", "echo", "--netns", netns_name, "--offload", "enabled", "--churn", "0.05"]
    commands.append(server := Command(*argv, "--events", str(events)))
    data = b"".join(deterministic_bytes(30_000_000, 22))
    with socket_in_netns(netns_name) as s:
        s.settimeout(30)
        s.connect((STACK, 7))

        def send_then_half_close() -> None:
            # Paced, so that the transfer spans many churn periods (about 1.5 s).
            for i in range(0, len(data), 200_000):
                s.sendall(data[i : i + 200_000])
                time.sleep(0.01)
            s.shutdown(socket.SHUT_WR)  # our FIN; echo sends everything back, then its own FIN

        sender = threading.Thread(target=send_then_half_close)
        sender.start()
        got = bytearray()
        while chunk := s.recv(1 << 20):
            got += chunk
        sender.join(30)
    assert len(got) == len(data) and bytes(got) == data
    status, done = server.stop()
    assert status == 0 and done["app_counters"]["bytes_in"] == len(data)
    assert done["offload"]["faults"] == 0
    cycles = check_cycles(read_events(events), "churn")
    assert cycles >= 5, f"only {cycles} churn cycles in a 1.5 s transfer at a 50 ms mean"
    assert cycles == done["offload"]["cycles"]


def _upload_file(path: Path, n: int, seed: int) -> None:
    with path.open("wb") as f:
        for block in deterministic_bytes(n, seed):
            f.write(block)


def _transfers_script(tmp_path: Path, n: int, parallel: int) -> tuple[Path, dict[Path, str]]:
    """A bash script that runs ``parallel`` GETs and ``parallel`` POSTs of n/parallel bytes each, all at
    once, each on its own connection; returns it and, per output file, the line that file must hold."""
    size = n // parallel
    assert size * parallel == n
    body = tmp_path / "up.bin"
    _upload_file(body, size, 32)
    up = json.dumps({"sha256": deterministic_sha256(size, 32), "length": size})
    lines, want = ["pids=''"], {}
    for i in range(parallel):
        get, post = tmp_path / f"get{i}.out", tmp_path / f"post{i}.out"
        url = f"http://{STACK}/bytes/{size}?seed={31 + i}"
        lines.append(f'(curl -sS --fail {url} | {_SHA256_STDIN}) > {get} & pids="$pids $!"')
        lines.append(f'curl -sS --fail -X POST -T {body} http://{STACK}/sha256 > {post} & pids="$pids $!"')
        want[get], want[post] = deterministic_sha256(size, 31 + i), up
    lines.append('for p in $pids; do wait "$p" || exit 1; done')
    script = tmp_path / "transfers.sh"
    script.write_text("set -o pipefail\n" + "\n".join(lines) + "\n")
    return script, want


def _churned_gets_and_posts(
    netns: str, commands: list[Command], tmp_path: Path, n: int, churn: str, parallel: int = 1
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, float]]:
    """serve http with ``--churn``; n bytes each way at once, over ``parallel`` curl GETs and as many
    POSTs, each SHA-256 checked, and no RST either way."""
    events = tmp_path / "events.jsonl"
    script, want = _transfers_script(tmp_path, n, parallel)
    argv = ["serve", "http", "--netns", netns, "--offload", "enabled", "--churn", churn]
    commands.append(server := Command(*argv, "--events", str(events)))
    watch = RstWatch(netns, server.ready["tap"])
    try:
        start = time.perf_counter()
        sh(netns, f"bash {script}", timeout=300)
        spent = time.perf_counter() - start
        for path, line in want.items():
            got = path.read_text().strip()
            assert (json.loads(got) if line.startswith("{") else got) == (
                json.loads(line) if line.startswith("{") else line
            ), path.name
        watch.settle()
        assert (watch.received, watch.sent) == ([], []), "a reset crossed the link during the transfers"
        mib = snmp_tcp(netns)
        assert mib["EstabResets"] == mib["OutRsts"] == mib["AttemptFails"] == 0, mib
        probe_closed_port(netns)  # the watch is live: it must see exactly this one reset
        watch.settle()
        assert len(watch.received) == 1 and not watch.sent
    finally:
        watch.close()
    status, done = server.stop()
    assert status == 0 and done["offload"]["faults"] == 0
    return done, read_events(events), {"each_way_MB_per_s": n / 1e6 / spent, "seconds": spent}


def test_1_gb_each_way_with_churn_sha256_and_no_reset(
    netns_name: str, commands: list[Command], tmp_path: Path, record_property: Any
) -> None:
    """The issue's acceptance run: ``serve http --offload enabled --churn 0.05 --events E``, 1 GB each way
    at once over 8 GETs and 8 POSTs (a client's parallel ranges), while E records hundreds of cycles. The
    count follows the transfer's length, so the bound is a rate too: 44-51 cycles per second of transfer
    with the NIC process (188-225 cycles in 4.3 s), about 31 with the NIC inline (319 in 10 s), 14-19 on a
    machine whose two cores other work keeps busy (the churn timers fire late); 10 per second still fails a
    churn that stops part-way."""
    done, events, speed = _churned_gets_and_posts(netns_name, commands, tmp_path, GB, "0.05", parallel=8)
    cycles = check_cycles(events, "churn")
    for key, value in {**speed, "churn_cycles": cycles}.items():
        record_property(key, value)
    print(f"1 GB each way over 16 connections, churn 0.05 s: {speed} cycles={cycles}")
    assert cycles >= 100 and cycles >= 10 * speed["seconds"], f"{cycles} cycles in {speed['seconds']:.1f} s"
    assert cycles == done["offload"]["cycles"]
    assert done["app_counters"]["bytes_in"] == GB


def test_churn_at_a_millisecond_mean_mid_transfer(
    netns_name: str, commands: list[Command], tmp_path: Path, record_property: Any
) -> None:
    """Moves as fast as the loop can make them: one connection each way, 500 MB, churn mean 1 ms. The
    rate is bounded by the hand-offs themselves and the loop: 55-140 cycles per second of transfer on a
    quiet machine, 25-37 with the machine's two cores shared with other suites (load 6-7). The bound is a
    count and a rate low enough for a shared machine: this asserts that churn keeps happening mid-transfer
    (speed is for the benchmarks)."""
    n = 500_000_000
    done, events, speed = _churned_gets_and_posts(netns_name, commands, tmp_path, n, "0.001")
    cycles = check_cycles(events, "churn")
    record_property("churn_cycles", cycles)
    print(f"500 MB each way at once, churn 0.001 s: {speed} cycles={cycles}")
    assert cycles >= 50, f"only {cycles} churn cycles"
    assert cycles >= 15 * speed["seconds"], f"only {cycles} churn cycles in {speed['seconds']:.1f} s"
    churned = sum(1 for e in events if e["event"] == "uploaded" and e["reason"] == "churn")
    assert done["offload"]["host"].get("uploaded_churn", 0) == churned
    assert done["offload"]["host"]["uploaded"] == done["offload"]["uploads"]
