"""What watching a running stack costs it: bulk throughput and connections per second with a Prometheus
scrape of ``/metrics`` and a ``chimney netstat`` every second running, against the same without.

``python -m bench.control [--mb N] [--seconds S] [--runs R] [--variants host,process]`` prints one JSON line
per (figure, variant):

- ``control_bulk``: one line per ``direction`` (``linux_to_stack``, ``stack_to_linux``: bench/nic.py's
  transfers of N MB). ``value``: MB/s while watched; ``unwatched``: MB/s without; ``ratio``: watched /
  unwatched (the aim: at least 0.95).
- ``control_connections_per_s``: bench/short.py's client (connect, one request, the answer, close) for S
  seconds, watched and not; the same fields in conn/s.

"Watched" is what an administrator's dashboard does: a thread of this process, outside the stack's event
loop, fetches ``http://ADDR/metrics`` (the stack's ``--metrics`` exporter) and runs ``chimney netstat -j``
(a separate ``python -m tcpchimney.cli.main`` process through the control socket) once a second from the
start of each measurement to its end; ``scrapes`` and ``netstats`` say how many it did in each run. Both the
scrape and the netstat are answered on the stack's own loop, so their cost lands on the stack; the netstat
client's own start-up runs on the machine's CPUs too (it shares them with the stack and the Linux peer, as on
a real host). Each run measures a variant in one session, watched and unwatched back to back (the order
alternates between runs), so a ratio compares neighbours in time; ``ratio`` is the median over the runs of
that run's ratio, ``value`` and ``unwatched`` the medians of each. Namespaces and links are removed on the
way out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.nic import (
    MB,
    PEER_IF,
    STACK_IF,
    Meter,
    Variant,
    median,
    nic_pid,
    receive,
    send,
    skipped,
    variants,
)
from bench.short import PORT as SHORT_PORT
from bench.short import client as short_client
from bench.short_app import answer
from bench.tap import expected_sha256
from tcpchimney.link.netns import unique_name

NAMES = ("control_bulk", "control_connections_per_s")
CONTROL_VARIANTS = ("host", "process")
INTERVAL = 1.0  # seconds between two looks, as a 1 s Prometheus scrape interval
CHIMNEY = [sys.executable, "-m", "tcpchimney.cli.main"]


class Watcher:
    """Once a second: a scrape of ``/metrics`` and a ``chimney netstat -j``, on a thread of its own (both
    are answered on the stack's loop, which must keep running meanwhile: ``stop`` is awaited)."""

    def __init__(self, metrics: str, name: str) -> None:
        self.url, self.name = f"http://{metrics}/metrics", name
        self.scrapes = self.netstats = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.to_thread(self._thread.join)
        if self.error is not None:
            raise RuntimeError(f"the watcher failed: {self.error}") from self.error

    def _loop(self) -> None:
        try:
            while True:  # one look at least, however short the measurement
                self._look()
                if self._stop.wait(INTERVAL):
                    return
        except Exception as exc:
            self.error = exc

    def _look(self) -> None:
        with urllib.request.urlopen(self.url, timeout=10) as reply:
            if reply.status != 200 or not reply.read():
                raise RuntimeError(f"{self.url} answered {reply.status}")
        self.scrapes += 1
        argv = [*CHIMNEY, "netstat", "-j", "--name", self.name]
        result = subprocess.run(argv, capture_output=True, timeout=30, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"chimney netstat failed: {result.stderr.decode().strip()}")
        self.netstats += 1


@dataclass
class Figures:
    """One variant's figures in one run: per figure name, (watched, unwatched) and the looks made."""

    values: dict[str, tuple[float, float]] = field(default_factory=dict)
    looks: dict[str, tuple[int, int]] = field(default_factory=dict)
    cost: tuple[float, float] = (0.0, 0.0)  # loop ms per scrape, per netstat


@contextlib.asynccontextmanager
async def watched_session(variant: Variant) -> AsyncIterator[Any]:
    from tcpchimney.cli.wiring import open_session

    name = unique_name("cb")
    async with open_session(
        name, STACK_IF, PEER_IF, offload=variant.options(), name=name, metrics=("127.0.0.1", 0)
    ) as session:
        yield session


@contextlib.asynccontextmanager
async def watching(session: Any, on: bool) -> AsyncIterator[Watcher | None]:
    if not on:
        yield None
        return
    watcher = Watcher(session.metrics, session.name)
    try:
        yield watcher
    finally:
        await watcher.stop()


async def bulk(session: Any, direction: str, nbytes: int, expected: str, on: bool) -> tuple[float, int, int]:
    pid = nic_pid(session)
    async with watching(session, on) as w:
        if direction == "linux_to_stack":
            meter: Meter = await receive(session, nbytes, pid)
        else:
            meter = await send(session, nbytes, pid, expected)
    return nbytes / MB / meter.wall, (w.scrapes if w else 0), (w.netstats if w else 0)


async def conns(session: Any, seconds: float, on: bool) -> tuple[float, int, int]:
    host = str(session.addr.ip)
    async with watching(session, on) as w, short_client(session.netns, "conns", host, seconds, 1) as c:
        result = await c.line()
    rate = float(result["count"]) / float(result["seconds"])
    return rate, (w.scrapes if w else 0), (w.netstats if w else 0)


async def loop_cost(session: Any, rounds: int = 20) -> tuple[float, float]:
    """Milliseconds of the stack's loop per scrape (collect + text format) and per ``netstat`` request
    (the control plane's answer, without the socket): what one look takes from the stack, whatever else
    runs on the machine. Medians of ``rounds``."""
    from tcpchimney.manage.protocol import Request

    exporter = session.exporter
    scrape, netstat = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        exporter.render()
        t1 = time.perf_counter()
        await exporter.plane.handle(Request("netstat", {"internals": False, "all": True}))
        t2 = time.perf_counter()
        scrape.append((t1 - t0) * 1000)
        netstat.append((t2 - t1) * 1000)
    return median(scrape), median(netstat)


async def measure_variant(v: Variant, nbytes: int, seconds: float, expected: str, first_on: bool) -> Figures:
    out = Figures()
    order = (True, False) if first_on else (False, True)
    async with watched_session(v) as session:
        for direction in ("linux_to_stack", "stack_to_linux"):
            got = {on: await bulk(session, direction, nbytes, expected, on) for on in order}
            out.values[direction] = (got[True][0], got[False][0])
            out.looks[direction] = got[True][1:]
        server = await session.runtime.start_server(answer, port=SHORT_PORT)
        try:
            got = {on: await conns(session, seconds, on) for on in order}
        finally:
            server.close()
        out.values["conns"] = (got[True][0], got[False][0])
        out.looks["conns"] = got[True][1:]
        out.cost = await loop_cost(session)
    return out


def lines(
    runs: list[dict[str, Figures]], chosen: list[Variant], nbytes: int, seconds: float
) -> Iterator[dict[str, Any]]:
    for v in chosen:
        mine = [run[v.name] for run in runs]
        for key in ("linux_to_stack", "stack_to_linux", "conns"):
            watched = [f.values[key][0] for f in mine]
            unwatched = [f.values[key][1] for f in mine]
            line: dict[str, Any] = {
                "bench": "control_connections_per_s" if key == "conns" else "control_bulk",
                **v.fields(),
                "value": round(median(watched), 1),
                "unit": "conn/s" if key == "conns" else "MB/s",
                "unwatched": round(median(unwatched), 1),
                "ratio": round(median([a / b for a, b in zip(watched, unwatched, strict=True)]), 3),
                "runs_watched": [round(x, 1) for x in watched],
                "runs_unwatched": [round(x, 1) for x in unwatched],
                "scrapes": [f.looks[key][0] for f in mine],
                "netstats": [f.looks[key][1] for f in mine],
            }
            scrape_ms, netstat_ms = median([f.cost[0] for f in mine]), median([f.cost[1] for f in mine])
            line.update(
                loop_ms_per_scrape=round(scrape_ms, 3),
                loop_ms_per_netstat=round(netstat_ms, 3),
                loop_share=round((scrape_ms + netstat_ms) / (INTERVAL * 1000), 5),
            )
            if key == "conns":
                line["seconds"] = seconds
            else:
                line.update(direction=key, mb=nbytes // MB)
            yield line


async def measure(chosen: list[Variant], nbytes: int, seconds: float, runs: int) -> list[dict[str, Figures]]:
    expected = expected_sha256(nbytes)
    results = []
    for i in range(runs):
        results.append(
            {v.name: await measure_variant(v, nbytes, seconds, expected, i % 2 == 0) for v in chosen}
        )
    return results


def run(
    nbytes: int = 1000 * MB, seconds: float = 5.0, runs: int = 3, names: Sequence[str] = CONTROL_VARIANTS
) -> Iterator[dict[str, Any]]:
    skip = skipped(NAMES)
    if skip is not None:
        yield from skip
        return
    chosen = variants(None, names)
    results = asyncio.run(measure(chosen, nbytes, seconds, runs))
    yield from lines(results, chosen, nbytes, seconds)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=1000, help="MB per bulk transfer")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each connection-rate run")
    parser.add_argument("--runs", type=int, default=3, help="runs (medians are reported)")
    parser.add_argument(
        "--variants",
        type=lambda t: tuple(n for n in t.split(",") if n),
        default=CONTROL_VARIANTS,
        help="host,process (default) or any of bench.nic's variants",
    )
    args = parser.parse_args(argv)
    for line in run(args.mb * MB, args.seconds, args.runs, args.variants):
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
