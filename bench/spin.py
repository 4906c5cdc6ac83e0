"""The NIC process's spin before it sleeps (``--nic-spin-us``) and the host's busy poll of its rings
(``--busy-poll-us``): ping-pong latency against the CPU they burn.

``python -m bench.spin [--spins 0,25,75,200,500] [--busy-polls 50,100,200] [--rounds N] [--gap-us G]
[--runs R]`` prints one JSON line ``nic_spin`` per setting: each spin value with the host not polling, then
each busy poll with the default spin. For each setting, a fresh session with ``--offload enabled`` and the NIC
in its own process, and two connections from bench/short_app.py's client, each warmed up until the
NIC holds it:

- back to back: ``rounds`` 64-byte round trips; ``value`` their median, ``p99``, and the NIC's and the host's
  CPU per round trip (``nic_cpu_us_per_rt``, ``host_cpu_us_per_rt``);
- a trickle: ``rounds // 4`` round trips with ``gap_us`` of client sleep between them (a client that talks
  now and then, where every message finds the NIC asleep unless the spin outlasts the gap):
  ``trickle_us`` (median) and ``trickle_nic_cpu_pct``, the NIC's CPU over the trickle in % of one CPU.

A spin is paid after every burst of work, so its cost shows in the NIC's CPU per round trip and in the
trickle's CPU; what it buys is the wake-up it saves when the next message comes within it. ``kernel`` is the
same client against the same server on kernel sockets in the same run (bench/short.py's topology), and
``ratio_to_kernel`` the median of the runs' ratios. ``default`` marks the value ``chimney serve`` uses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from bench.nic import Meter, Variant, median, nic_pid, offloads, session_for, skipped
from bench.nic_handoff import pct
from bench.short import PORT, client, kernel_server, ping_pong, wait_offloaded
from bench.short_app import answer
from bench.tap import LinuxProc
from tcpchimney.nic.doorbell import DEFAULT_SPIN_US

SPINS = (0.0, 25.0, 75.0, 200.0, 500.0)
BUSY_POLLS = (50.0, 100.0, 200.0)
Setting = tuple[float, float]  # (NIC spin, host busy poll), microseconds
GAP_US = 1000.0
NAMES = ("nic_spin",)


@dataclass
class Figures:
    """One spin value in one run."""

    rtts: list[float]
    nic_us: float  # NIC CPU per back-to-back round trip
    host_us: float
    trickle: list[float]
    trickle_pct: float  # NIC CPU over the trickle, % of one CPU


async def timed(proc: LinuxProc, session: Any, before: int) -> tuple[list[float], Meter]:
    """bench.short's ping-pong once the NIC holds the connection (the host counts more offloads than
    ``before``, taken before the client connected), its timed rounds under a meter."""
    meters: list[Meter] = []

    async def ready() -> None:
        await wait_offloaded(session, before)
        meters.append(Meter(nic_pid(session)))

    rtts = await ping_pong(proc, ready)
    return rtts, meters[0].stop()


async def kernel_rtts(rounds: int) -> list[float]:
    async with kernel_server() as topo, client(topo.ns_a, "rr", str(topo.ip_b), rounds) as c:
        return await ping_pong(c)


async def spin_run(setting: Setting, rounds: int, gap_us: float) -> Figures:
    spin, busy = setting
    variant = Variant(f"spin_{spin:g}_poll_{busy:g}", "process", spin_us=spin, busy_poll_us=busy)
    async with session_for(variant, "sn") as session:
        host = str(session.addr.ip)
        server = await session.runtime.start_server(answer, port=PORT)
        try:
            before = offloads(session)
            async with client(session.netns, "rr", host, rounds) as c:
                rtts, meter = await timed(c, session, before)
            trickle_rounds, before = max(1, rounds // 4), offloads(session)
            async with client(session.netns, "rr", host, trickle_rounds, gap_us) as c:
                trickle, slow = await timed(c, session, before)
        finally:
            server.close()
    return Figures(
        rtts,
        meter.nic / len(rtts) * 1e6,
        meter.host / len(rtts) * 1e6,
        trickle,
        slow.nic / slow.wall * 100,
    )


def spin_line(
    setting: Setting, mine: list[Figures], kernels: list[list[float]], gap_us: float
) -> dict[str, Any]:
    def over(what: Any) -> float:
        return round(median([what(f) for f in mine]), 1)

    spin, busy = setting
    return {
        "bench": "nic_spin",
        "spin_us": spin,
        "busy_poll_us": busy,
        "default": spin == DEFAULT_SPIN_US and busy == 0,
        "value": over(lambda f: median(f.rtts)),
        "unit": "us",
        "p99": over(lambda f: pct(f.rtts, 0.99)),
        "kernel": round(median([median(k) for k in kernels]), 1),
        "ratio_to_kernel": round(
            median([median(f.rtts) / median(k) for f, k in zip(mine, kernels, strict=True)]), 3
        ),
        "nic_cpu_us_per_rt": over(lambda f: f.nic_us),
        "host_cpu_us_per_rt": over(lambda f: f.host_us),
        "trickle_us": over(lambda f: median(f.trickle)),
        "trickle_nic_cpu_pct": over(lambda f: f.trickle_pct),
        "gap_us": gap_us,
        "runs_us": [round(median(f.rtts), 1) for f in mine],
        "rounds": len(mine[0].rtts),
    }


async def measure(settings: Sequence[Setting], rounds: int, gap_us: float, runs: int) -> Any:
    kernels: list[list[float]] = []
    figures: dict[Setting, list[Figures]] = {s: [] for s in settings}
    for _ in range(runs):  # the kernel and every setting once per run: neighbours in time
        kernels.append(await kernel_rtts(rounds))
        for setting in settings:
            figures[setting].append(await spin_run(setting, rounds, gap_us))
    return kernels, figures


def run(
    spins: Sequence[float] = SPINS,
    busy_polls: Sequence[float] = BUSY_POLLS,
    rounds: int = 2000,
    gap_us: float = GAP_US,
    runs: int = 1,
) -> Iterator[dict[str, Any]]:
    skip = skipped(NAMES)
    if skip is not None:
        yield from skip
        return
    settings = [(s, 0.0) for s in spins] + [(DEFAULT_SPIN_US, b) for b in busy_polls if b > 0]
    kernels, figures = asyncio.run(measure(settings, rounds, gap_us, runs))
    for setting in settings:
        yield spin_line(setting, figures[setting], kernels, gap_us)


def micros_arg(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x)
    except ValueError:
        raise argparse.ArgumentTypeError("a comma list of microseconds") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError("a comma list of microseconds, each >= 0")
    return values


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spins", type=micros_arg, default=SPINS, help="NIC spins in us (comma list)")
    parser.add_argument(
        "--busy-polls", type=micros_arg, default=BUSY_POLLS, help="host busy polls in us (comma list)"
    )
    parser.add_argument("--rounds", type=int, default=2000, help="back-to-back round trips per spin")
    parser.add_argument("--gap-us", type=float, default=GAP_US, help="client sleep between trickle trips")
    parser.add_argument("--runs", type=int, default=1, help="runs of every spin (medians are reported)")
    args = parser.parse_args(argv)
    for line in run(args.spins, args.busy_polls, args.rounds, args.gap_us, args.runs):
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
