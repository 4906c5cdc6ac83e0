"""Short connections and small messages: the stack's asyncio server against the same server on kernel sockets.

``python -m bench.short [--seconds S] [--rounds N] [--parallel P] [--runs R] [--variants ...]`` prints one
JSON line per (figure, variant); ``variant`` is ``host`` (``--offload disabled``), ``process`` (``--offload
enabled`` with the default NIC, its own process) or ``process_auto`` (``--offload automatic``, the NIC in its
own process: short connections stay on the host, but every frame crosses the NIC), as in bench/nic.py
(``inline`` and ``process_pinned`` on request). The application is ``bench.short_app.answer``, an asyncio
echo of 64-byte requests that closes first after a request marked last; the client is bench/short_app.py, a
``python3`` process in a namespace.

- ``connections_per_s``: the client connects, sends one request marked last, reads the answer and the server's
  FIN, closes, back to back on ``parallel`` threads for S seconds. ``host_cpu_us_per_conn`` is the stack
  process's CPU per connection; ``offloaded`` the connections the NIC took (a short connection may close
  before its offload completes).
- ``rr_latency_us``: one connection, 50 warm-up round trips (with the NIC, then until the connection is
  offloaded), then ``rounds`` 64-byte request/response round trips timed by the client; ``value`` the median,
  ``p99`` beside it. ``process_auto``'s connection stays on the host (``AUTO_ROUNDS`` round trips, under the
  policy's 64 KiB), so its line is what the NIC process costs a connection it does not run.

``kernel`` is the same client against ``answer`` under ``asyncio.start_server`` in a second namespace over a
veth pair (bench/tap.py's kernel topology). That is the comparable setting: both servers are one Python
process with one asyncio loop and the same handler, both reached by the client across a namespace boundary
through a virtual link (TAP, veth), and both carry real Ethernet frames through the kernel's stack on the
client's side; loopback in one namespace would skip the link and the second device queue. Each run measures
the kernel, then every variant in a fresh session, back to back; ``ratio_to_kernel`` is the median over the
runs of that run's ratio. Namespaces and links are removed on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.nic import (
    Meter,
    Variant,
    common_options,
    median,
    nic_pid,
    offloads,
    session_for,
    skipped,
    variants,
)
from bench.nic_handoff import pct
from bench.short_app import SIZE, answer
from bench.tap import LinuxProc, in_thread, peer
from tcpchimney.link.netns import VethTopology

PORT = 5003
SHORT_VARIANTS = ("host", "process", "process_auto")
# --offload automatic moves a connection once it carried 64 KiB (host/policy.py): 400 round trips of
# 2 x 64 bytes after the warm-up stay under it, so process_auto's ping-pong measures a connection that stays
# on the host while the NIC process owns the wire (``offloaded`` in its line says whether it did).
AUTO_ROUNDS = 400
OFFLOAD_WAIT = 10.0  # seconds for the rr connection to reach the NIC before the timed rounds
NAMES = ("connections_per_s", "rr_latency_us")


@dataclass
class Run:
    """One variant's figures in one run (the kernel's too, with no CPU or offload figures)."""

    rate: float = 0.0  # connections per second, the client's count over its time
    host_us: float | None = None  # stack CPU per connection
    offloaded: int | None = None  # connections the NIC took during the rate run
    rtts: list[float] = field(default_factory=list)  # microseconds
    rr_offloaded: bool | None = None  # the ping-pong connection was on the NIC during its timed rounds


def client(netns: str, mode: str, host: str, *args: object) -> Any:
    return peer(netns, "-m", "bench.short_app", mode, host, PORT, *args)


async def ping_pong(proc: LinuxProc, ready: Any = None) -> list[float]:
    """The rr client's warm-up, then ``ready()`` (awaited), then the go and the timed rounds."""
    await proc.line()
    if ready is not None:
        await ready()
    assert proc.proc.stdin is not None
    proc.proc.stdin.write(b"go\n")
    await proc.proc.stdin.drain()
    return [float(u) for u in (await proc.line())["us"]]


# ====================================================================== the kernel


@contextlib.asynccontextmanager
async def kernel_server() -> AsyncIterator[VethTopology]:
    """``answer`` on kernel sockets in one namespace of a fresh veth pair, listening once this yields."""
    async with (
        in_thread(VethTopology()) as topo,
        peer(topo.ns_b, "-m", "bench.short_app", "serve", topo.ip_b, PORT) as server,
    ):
        await server.line()
        yield topo


async def kernel_run(seconds: float, parallel: int, rounds: int) -> Run:
    async with kernel_server() as topo:
        host = str(topo.ip_b)  # the default topology addresses both ends
        async with client(topo.ns_a, "conns", host, seconds, parallel) as c:
            result = await c.line()
        async with client(topo.ns_a, "rr", host, rounds) as c:
            rtts = await ping_pong(c)
    return Run(rate=result["count"] / result["seconds"], rtts=rtts)


# ====================================================================== the stack


async def wait_offloaded(session: Any, before: int) -> None:
    """Until the host counts one more offloaded connection (the rr connection): the timed rounds then run on
    the NIC."""
    loop = asyncio.get_running_loop()
    end = loop.time() + OFFLOAD_WAIT
    while offloads(session) <= before:
        if loop.time() > end:
            raise RuntimeError(f"the ping-pong connection was not offloaded in {OFFLOAD_WAIT} s")
        await asyncio.sleep(0.01)


async def stack_run(variant: Variant, seconds: float, parallel: int, rounds: int) -> Run:
    async with session_for(variant, "sh") as session:
        host = str(session.addr.ip)
        server = await session.runtime.start_server(answer, port=PORT)
        try:
            before = offloads(session)
            async with client(session.netns, "conns", host, seconds, parallel) as c:
                meter = Meter(nic_pid(session))
                result = await c.line()
                meter.stop()
            moved = offloads(session)

            automatic = variant.offload == "automatic"

            async def ready() -> None:
                if variant.nic is not None and not automatic:
                    await wait_offloaded(session, moved)

            async with client(
                session.netns, "rr", host, min(rounds, AUTO_ROUNDS) if automatic else rounds
            ) as c:
                rtts = await ping_pong(c, ready)
            rr_moved = offloads(session) > moved
        finally:
            server.close()
    count = int(result["count"])
    offloaded = moved - before if variant.nic is not None else None
    rr_offloaded = rr_moved if variant.nic is not None else None
    return Run(count / float(result["seconds"]), meter.host / count * 1e6, offloaded, rtts, rr_offloaded)


# ====================================================================== the lines


Runs = list[dict[str, Run]]  # per run: "kernel" and each variant's name


def ratio(runs: Runs, name: str, what: Any) -> float:
    return round(median([what(run[name]) / what(run["kernel"]) for run in runs]), 3)


def rate_line(runs: Runs, v: Variant, seconds: float, parallel: int) -> dict[str, Any]:
    mine = [run[v.name] for run in runs]
    return {
        "bench": "connections_per_s",
        **v.fields(),
        "value": round(median([r.rate for r in mine])),
        "unit": "conn/s",
        "kernel": round(median([run["kernel"].rate for run in runs])),
        "ratio_to_kernel": ratio(runs, v.name, lambda r: r.rate),
        "host_cpu_us_per_conn": round(median([r.host_us or 0.0 for r in mine]), 1),
        "offloaded": [r.offloaded for r in mine],
        "runs_conn_s": [round(r.rate) for r in mine],
        "kernel_runs_conn_s": [round(run["kernel"].rate) for run in runs],
        "parallel": parallel,
        "seconds": seconds,
    }


def rr_line(runs: Runs, v: Variant, rounds: int) -> dict[str, Any]:
    def mid(r: Run) -> float:
        return median(r.rtts)

    def p99(r: Run) -> float:
        return pct(r.rtts, 0.99)

    def over(name: str, what: Any) -> float:
        return round(median([what(run[name]) for run in runs]), 1)

    return {
        "bench": "rr_latency_us",
        **v.fields(),
        "value": over(v.name, mid),
        "unit": "us",
        "p99": over(v.name, p99),
        "kernel": over("kernel", mid),
        "kernel_p99": over("kernel", p99),
        "ratio_to_kernel": ratio(runs, v.name, mid),
        "p99_ratio_to_kernel": ratio(runs, v.name, p99),
        "runs_us": [round(mid(run[v.name]), 1) for run in runs],
        "offloaded": [run[v.name].rr_offloaded for run in runs],
        "size": SIZE,
        "rounds": len(runs[0][v.name].rtts),
    }


async def measure(chosen: list[Variant], seconds: float, parallel: int, rounds: int, runs: int) -> Runs:
    results: Runs = []
    for _ in range(runs):  # the kernel and every variant once per run: neighbours in time on a shared machine
        run = {"kernel": await kernel_run(seconds, parallel, rounds)}
        for v in chosen:
            run[v.name] = await stack_run(v, seconds, parallel, rounds)
        results.append(run)
    return results


def run(
    seconds: float = 3.0,
    rounds: int = 2000,
    parallel: int = 1,
    runs: int = 1,
    cpu: int | None = None,
    names: Sequence[str] = SHORT_VARIANTS,
) -> Iterator[dict[str, Any]]:
    skip = skipped(NAMES)
    if skip is not None:
        yield from skip
        return
    chosen = variants(cpu, names)
    results = asyncio.run(measure(chosen, seconds, parallel, rounds, runs))
    for v in chosen:
        yield rate_line(results, v, seconds, parallel)
    for v in chosen:
        yield rr_line(results, v, rounds)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_options(parser)
    parser.set_defaults(runs=1, variants=SHORT_VARIANTS)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each connection-rate run")
    parser.add_argument("--rounds", type=int, default=2000, help="timed round trips of the ping-pong")
    parser.add_argument("--parallel", type=int, default=1, help="client threads opening connections")
    args = parser.parse_args(argv)
    for line in run(args.seconds, args.rounds, args.parallel, args.runs, args.nic_cpu, args.variants):
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
