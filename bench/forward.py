"""``chimney forward`` against the same kernel server reached directly: requests/s and MB/s of ``wrk``.

``python -m bench.forward [--runs R] [--seconds S] [--connections C] [--small B] [--big B] [--offload M]``
prints one JSON line per figure:

- ``forward_requests_per_s``: ``wrk`` (HTTP/1.1 keep-alive, C connections, S seconds) asking for a
  ``small``-byte answer, back to back;
- ``forward_mb_per_s``: the same asking for a ``big``-byte answer; payload MB/s (10^6 bytes), that is
  requests/s x ``big``.

The server is bench/forward_server.py under the Linux side's ``python3`` (one asyncio loop, keep-alive, the
answer a slice of one buffer). ``value`` is through ``chimney forward --listen 80 --to 127.0.0.1:PORT``:
``wrk`` in chimney's namespace talks to the stack's address over the TAP, and each connection the stack
accepts is relayed to the server on this host's loopback. ``direct`` is the same ``wrk`` against the same
server program in a second namespace across a veth pair (the kernel's own path, no relay).
``ratio_to_direct`` is the median over the runs of each run's ratio (both measured back to back in that
run); ``value`` and ``direct`` are medians too. ``offload`` is chimney's ``--offload`` mode (default
``automatic``, the NIC in its own process). Namespaces, links and processes are removed on the way out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.nic import median, skipped
from tcpchimney.link.netns import VethTopology, netns_exec, unique_name

NAMES = ("forward_requests_per_s", "forward_mb_per_s")
PORT = 8080
STACK = "198.18.0.2"
CHIMNEY = [sys.executable, "-m", "tcpchimney.cli.main"]
SERVER = str(Path(__file__).with_name("forward_server.py"))  # the Linux side's python3 runs it as a script


@contextlib.contextmanager
def kernel_server(netns: str | None, host: str, port: int) -> Iterator[None]:
    argv = ["python3", SERVER, host, str(port)]
    proc = subprocess.Popen(netns_exec(netns, *argv) if netns else argv, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "listening":
            raise RuntimeError(f"the kernel server did not start (exit {proc.wait()})")
        yield
    finally:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def chimney_forward(netns: str, port: int, offload: str) -> Iterator[dict[str, Any]]:
    argv = [*CHIMNEY, "forward", "--netns", netns, "--listen", "80", "--to", f"127.0.0.1:{port}"]
    proc = subprocess.Popen([*argv, "--offload", offload], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline() if ready else b""
        if not line:
            raise RuntimeError(
                f"chimney forward did not start: {proc.stderr.read().decode() if proc.stderr else ''}"
            )
        yield json.loads(line)
    finally:
        proc.send_signal(signal.SIGTERM)  # its clean-up removes the namespace it made
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def wrk(netns: str, url: str, seconds: float, connections: int) -> float:
    """Requests per second; a socket error or a non-2xx answer fails the benchmark."""
    threads = min(2, connections)
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", url]  # whole seconds
    result = subprocess.run(netns_exec(netns, *argv), capture_output=True, text=True, timeout=seconds + 60)
    out = result.stdout
    if result.returncode != 0 or "Socket errors" in out or "Non-2xx" in out:
        raise RuntimeError(f"wrk against {url} failed: {out} {result.stderr}")
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None:
        raise RuntimeError(f"no Requests/sec in wrk's output: {out}")
    return float(found.group(1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(
    runs: int = 3,
    seconds: float = 3.0,
    connections: int = 8,
    small: int = 1024,
    big: int = 1 << 20,
    offload: str = "automatic",
) -> Iterator[dict[str, Any]]:
    skip = skipped(NAMES)
    if skip is not None:
        yield from skip
        return
    sizes = {"forward_requests_per_s": small, "forward_mb_per_s": big}
    through: dict[str, list[float]] = {name: [] for name in NAMES}
    direct: dict[str, list[float]] = {name: [] for name in NAMES}
    port = _free_port()
    topo = VethTopology(ip_a="198.18.1.1/24", ip_b="198.18.1.2/24")
    with (
        topo,
        kernel_server(topo.ns_b, topo.ip_b, PORT),
        kernel_server(None, "127.0.0.1", port),
        chimney_forward(unique_name("fw"), port, offload) as ready,
    ):
        for _ in range(runs):
            for name, size in sizes.items():
                scale = size / 1e6 if name == "forward_mb_per_s" else 1.0
                via = wrk(ready["netns"], f"http://{STACK}/{size}", seconds, connections)
                plain = wrk(topo.ns_a, f"http://{topo.ip_b}:{PORT}/{size}", seconds, connections)
                through[name].append(via * scale)
                direct[name].append(plain * scale)
    for name, size in sizes.items():
        ratios = [v / d for v, d in zip(through[name], direct[name], strict=True)]
        yield {
            "bench": name,
            "value": round(median(through[name]), 1),
            "unit": "MB/s" if name == "forward_mb_per_s" else "req/s",
            "direct": round(median(direct[name]), 1),
            "ratio_to_direct": round(median(ratios), 3),
            "size": size,
            "connections": connections,
            "seconds": seconds,
            "runs": runs,
            "offload": offload,
            "each": [round(v, 1) for v in through[name]],
            "direct_each": [round(v, 1) for v in direct[name]],
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--small", type=int, default=1024, help="bytes of the requests/s answer")
    parser.add_argument("--big", type=int, default=1 << 20, help="bytes of the MB/s answer")
    parser.add_argument("--offload", choices=("disabled", "enabled", "automatic"), default="automatic")
    args = parser.parse_args(argv)
    for line in run(args.runs, args.seconds, args.connections, args.small, args.big, args.offload):
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
