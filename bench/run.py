"""What ``chimney run`` costs: an unmodified program under it against the same program on the native API.

``python -m bench.run [--mb N] [--seconds S] [--runs R] [--offload MODE]``

``bench/run_app.py`` (asyncio streams) runs in each run twice against one Linux peer (a ``python3`` of its own
in a fresh namespace): on the native API (``runtime.open_connection`` in the stack's process, set up as
``chimney serve`` sets it up) and unmodified under ``chimney run`` (its sockets relayed over an AF_UNIX
socketpair to the stack in the ``chimney run`` process). Both on the host stack (``--offload disabled``)
unless asked otherwise. One JSON line per figure:

- ``run_bulk``: per ``variant`` (``native``, ``run``) and ``direction`` (``stack_to_linux``,
  ``linux_to_stack``): ``value`` MB/s of N MB, the median of the runs (``runs_mb_s``).
- ``run_requests_per_s``: per variant, 64-byte request/response round trips per second on one connection for
  S seconds, median.
- ``run_overhead_ratio``: per figure (the two directions, ``requests_per_s``), ``value`` = run / native, the
  median over the runs of that run's ratio (both variants run back to back in each run).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench import run_app
from tcpchimney.link.netns import remove_netns, unavailable_reason, unique_name

MB = 1_000_000
STACK_IF = ipaddress.IPv4Interface("198.18.0.2/24")
PEER_IF = ipaddress.IPv4Interface("198.18.0.1/24")
APP = Path(run_app.__file__)
NAMES = ("run_bulk", "run_requests_per_s", "run_overhead_ratio")
FIGURES = ("stack_to_linux", "linux_to_stack", "requests_per_s")
VARIANTS = ("native", "run")

# The Linux peer: a bulk server (up: count what comes, answer the count; down: send N bytes), an echo server.
PEER = r"""
import socket, sys, threading

def bulk(conn):
    with conn:
        f = conn.makefile("rb")
        verb, n = f.readline().split()
        n = int(n)
        if verb == b"up":
            left = n
            while left:
                data = f.read1(min(left, 1 << 20))
                if not data:
                    break
                left -= len(data)
            conn.sendall(b"%d\n" % (n - left))
        else:
            block = bytes(range(256)) * 4096
            while n:
                k = min(n, len(block))
                conn.sendall(block[:k])
                n -= k
            conn.shutdown(socket.SHUT_WR)

def echo(conn):
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := conn.recv(65536):
            conn.sendall(data)

def serve(port, handle):
    server = socket.create_server(("0.0.0.0", port))
    while True:
        conn, _ = server.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()

threading.Thread(target=serve, args=(int(sys.argv[2]), echo), daemon=True).start()
print("ready", flush=True)
serve(int(sys.argv[1]), bulk)
"""


def _chimney(netns: str, offload: str, *program: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tcpchimney.cli.main",
        "run",
        "--netns",
        netns,
        "--offload",
        offload,
        "--",
        *program,
    ]


async def _native(netns: str, offload: str, nbytes: int, seconds: float) -> dict[str, Any]:
    from tcpchimney.cli.offload import OffloadOptions
    from tcpchimney.cli.wiring import open_session

    async with open_session(netns, STACK_IF, PEER_IF, offload=OffloadOptions(offload)) as session:
        return await run_app.measure(session.runtime.open_connection, str(PEER_IF.ip), nbytes, seconds)


def _under_run(netns: str, offload: str, nbytes: int, seconds: float) -> dict[str, Any]:
    program = [sys.executable, str(APP), str(PEER_IF.ip), str(nbytes), str(seconds)]
    result = subprocess.run(_chimney(netns, offload, *program), capture_output=True, timeout=600, check=False)
    lines = [json.loads(x) for x in result.stdout.decode().splitlines() if x.startswith("{")]
    printed = [line for line in lines if "event" not in line]
    if result.returncode != 0 or len(printed) != 1:
        raise RuntimeError(f"chimney run failed ({result.returncode}): {result.stderr.decode()[-2000:]}")
    return printed[0]


class _Peer:
    def __init__(self, netns: str) -> None:
        python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
        argv = [
            "ip",
            "netns",
            "exec",
            netns,
            python,
            "-c",
            PEER,
            str(run_app.PORT_BULK),
            str(run_app.PORT_RR),
        ]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("the Linux peer did not start")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def measure(nbytes: int, seconds: float, runs: int, offload: str) -> list[dict[str, dict[str, float]]]:
    netns = unique_name("run")
    results: list[dict[str, dict[str, float]]] = []
    peer = None
    try:
        subprocess.run(["ip", "netns", "add", netns], check=True)
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        peer = _Peer(netns)
        for _ in range(runs):
            native = asyncio.run(_native(netns, offload, nbytes, seconds))
            time.sleep(0.2)  # the previous session's TAP is gone before the next one takes the subnet
            results.append({"native": native, "run": _under_run(netns, offload, nbytes, seconds)})
    finally:
        if peer is not None:
            peer.stop()
        remove_netns(netns)
    return results


def lines(
    results: list[dict[str, dict[str, float]]], nbytes: int, seconds: float
) -> Iterator[dict[str, Any]]:
    for variant in VARIANTS:
        for direction in FIGURES[:2]:
            each = [r[variant][direction] for r in results]
            yield {
                "bench": "run_bulk",
                "variant": variant,
                "direction": direction,
                "value": round(statistics.median(each), 1),
                "unit": "MB/s",
                "mb": nbytes // MB,
                "runs_mb_s": [round(x, 1) for x in each],
            }
        each = [r[variant]["requests_per_s"] for r in results]
        yield {
            "bench": "run_requests_per_s",
            "variant": variant,
            "value": round(statistics.median(each)),
            "unit": "requests/s",
            "size": run_app.RR_SIZE,
            "seconds": seconds,
            "runs": [round(x) for x in each],
        }
    for figure in FIGURES:
        ratios = [r["run"][figure] / r["native"][figure] for r in results]
        yield {
            "bench": "run_overhead_ratio",
            "figure": figure,
            "value": round(statistics.median(ratios), 3),
            "unit": "run/native",
            "native": round(statistics.median(r["native"][figure] for r in results), 1),
            "run": round(statistics.median(r["run"][figure] for r in results), 1),
            "runs": [round(x, 3) for x in ratios],
        }


def run(
    nbytes: int = 200 * MB, seconds: float = 2.0, runs: int = 3, offload: str = "disabled"
) -> Iterator[dict[str, Any]]:
    reason = unavailable_reason()
    if reason is not None:
        yield from ({"bench": name, "skipped": reason} for name in NAMES)
        return
    results = measure(nbytes, seconds, runs, offload)
    for line in lines(results, nbytes, seconds):
        yield {**line, "offload": offload}


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=200, help="megabytes each way (default 200)")
    parser.add_argument("--seconds", type=float, default=2.0, help="ping-pong seconds (default 2)")
    parser.add_argument("--runs", type=int, default=3, help="runs; the medians are reported (default 3)")
    parser.add_argument("--offload", choices=("disabled", "enabled", "automatic"), default="disabled")
    args = parser.parse_args(argv)
    for line in run(args.mb * MB, args.seconds, args.runs, args.offload):
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
