"""The hand-off across the process boundary: offload + upload round trips of a live connection, and short
connections per second, with the NIC process and with the target inline, on a TAP against the Linux kernel.

``python -m bench.nic_handoff [--rounds N] [--seconds S] [--runs R] [--nic-cpu C] [--variants ...]``

- ``nic_handoff_roundtrip_us``: the stack connects to a Linux receiver and the connection stays idle; then,
  ``rounds`` times, ``offload_now`` (the host's offload control call) until the ``Offloaded`` event, then
  ``upload`` until the ``Uploaded`` event, timed together (``perf_counter``) from the event loop: the initiate
  and terminate requests, the NIC's turns, the completions back through the rings and the host's doorbell.
  The policy is ``disabled`` (only these calls move the connection). Afterwards 1 MB goes over the
  connection, SHA-256 checked by the receiver: the round trips lost nothing. One line per variant
  (``inline``, ``process``, ``process_pinned``, as bench/nic.py): ``value`` is the median of every round trip
  of every run, ``p99`` beside it; ``offload_us`` / ``upload_us`` split the median. The aim with the NIC
  process is a median of 1 ms or less.
- ``nic_connections_per_s``: a kernel client connects, sends one byte, reads EOF, closes, one connection at a
  time for ``seconds``, against an asyncio server on the stack that reads the byte and closes first (the
  exchange of bench/tap.py), with ``--offload enabled`` so each connection is offloaded once established;
  one line per variant (``host`` too, for reference), median of the runs, ``host_cpu_us_per_conn``, and
  ``offloaded`` (connections the NIC took; a short connection may close before its offload completes).
  ``ratio_to_inline`` on the process lines (median over the runs of that run's ratio).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.nic import (
    Meter,
    Series,
    Variant,
    common_options,
    median,
    nic_pid,
    offloads,
    session_for,
    skipped,
    variants,
)
from bench.tap import PORT_BULK, PORT_CONN, block, check, linux
from tcpchimney.chimney.reason import Reason
from tcpchimney.host.events import HostEvent, Offloaded, OffloadRefused, Uploaded
from tcpchimney.host.policy import OffloadMode, OffloadPolicy

HANDOFF_VARIANTS = ("inline", "process", "process_pinned")
CONN_VARIANTS = ("host", "inline", "process", "process_pinned")
CHECK_BYTES = 1 << 20  # sent after the round trips, SHA-256 checked
STEP_TIMEOUT = 10.0


# ====================================================================== round trips


class Moves:
    """The host's offload events for one connection, as futures the bench awaits."""

    def __init__(self) -> None:
        self.sock: Any = None
        self.waiting: asyncio.Future[HostEvent] | None = None

    def on_event(self, ev: HostEvent) -> None:
        mine = isinstance(ev, Offloaded | Uploaded | OffloadRefused) and ev.sock is self.sock
        if mine and self.waiting is not None and not self.waiting.done():
            self.waiting.set_result(ev)

    async def next(self) -> HostEvent:
        self.waiting = asyncio.get_running_loop().create_future()
        return await asyncio.wait_for(self.waiting, STEP_TIMEOUT)


@dataclass
class Trips:
    offload: list[float] = field(default_factory=list)  # seconds, offload_now -> Offloaded
    upload: list[float] = field(default_factory=list)  # seconds, upload -> Uploaded

    @property
    def total(self) -> list[float]:
        return [a + b for a, b in zip(self.offload, self.upload, strict=True)]


async def round_trips(session: Any, rounds: int) -> Trips:
    stack, runtime, moves, trips = session.stack, session.runtime, Moves(), Trips()
    stack.set_offload_policy(OffloadPolicy(mode=OffloadMode.DISABLED))  # only our calls move it
    runtime.add_event_handler(moves.on_event)
    async with linux(session.netns, "recv", str(session.peer.ip), PORT_BULK) as rx:
        await rx.line()
        reader, writer = await runtime.open_connection(str(session.peer.ip), PORT_BULK)
        moves.sock = writer.get_extra_info("tcp_socket")
        clock = time.perf_counter
        for _ in range(rounds):
            t0 = clock()
            if (why := stack.offload_now(moves.sock)) is not None:
                raise RuntimeError(f"offload refused: {why.value}")
            runtime.flush_soon()
            ev = await moves.next()
            t1 = clock()
            if not isinstance(ev, Offloaded):
                raise RuntimeError(f"offload did not complete: {ev}")
            stack.upload(moves.sock, Reason.UPLOAD_ALL)  # a reason the session's control does not re-offload
            runtime.flush_soon()
            ev = await moves.next()
            t2 = clock()
            if not isinstance(ev, Uploaded):
                raise RuntimeError(f"upload did not complete: {ev}")
            trips.offload.append(t1 - t0)
            trips.upload.append(t2 - t1)
        writer.write(block()[:CHECK_BYTES])
        writer.write_eof()
        result = await rx.line()
        await reader.read()
        writer.close()
    check(result, CHECK_BYTES, hashlib.sha256(block()[:CHECK_BYTES]).hexdigest())
    return trips


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def roundtrip_lines(results: dict[Variant, list[Trips]]) -> Iterator[dict[str, Any]]:
    for v, runs in results.items():
        total = [t for trips in runs for t in trips.total]
        yield {
            "bench": "nic_handoff_roundtrip_us",
            **v.fields(),
            "value": round(median(total) * 1e6, 1),
            "unit": "us",
            "p99": round(pct(total, 0.99) * 1e6, 1),
            "offload_us": round(median([t for r in runs for t in r.offload]) * 1e6, 1),
            "upload_us": round(median([t for r in runs for t in r.upload]) * 1e6, 1),
            "runs_median_us": [round(median(r.total) * 1e6, 1) for r in runs],
            "rounds": len(total),
        }


# ====================================================================== connections per second


@dataclass
class ConnRun:
    rate: float  # connections per second, the client's count over its time
    host_us: float  # host CPU per connection
    offloaded: int


async def conns(session: Any, seconds: float) -> ConnRun:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.close()

    before = offloads(session)
    server = await session.runtime.start_server(handle, port=PORT_CONN)
    try:
        async with linux(session.netns, "conns", str(session.addr.ip), PORT_CONN, seconds) as client:
            meter = Meter(nic_pid(session))
            result = await client.line()
            meter.stop()
    finally:
        server.close()
    count = int(result["count"])
    return ConnRun(count / float(result["seconds"]), meter.host / count * 1e6, offloads(session) - before)


def conn_lines(results: dict[Variant, list[ConnRun]], seconds: float) -> Iterator[dict[str, Any]]:
    names = {v.name: v for v in results}
    s: Series[ConnRun] = Series(results)
    inline = names.get("inline")
    for v, runs in results.items():
        to_inline = s.ratio(v, inline, lambda r: r.rate) if inline and v.nic == "process" else None
        yield {
            "bench": "nic_connections_per_s",
            **v.fields(),
            "value": round(median([r.rate for r in runs])),
            "unit": "conn/s",
            "ratio_to_inline": to_inline,
            "host_cpu_us_per_conn": round(median([r.host_us for r in runs]), 1),
            "offloaded": [r.offloaded for r in runs],
            "runs_conn_s": [round(r.rate) for r in runs],
            "seconds": seconds,
        }


# ====================================================================== the run


async def measure(
    chosen: list[Variant], rounds: int, seconds: float, runs: int
) -> tuple[dict[Variant, list[Trips]], dict[Variant, list[ConnRun]]]:
    trips: dict[Variant, list[Trips]] = {v: [] for v in chosen if v.name in HANDOFF_VARIANTS}
    rates: dict[Variant, list[ConnRun]] = {v: [] for v in chosen if v.name in CONN_VARIANTS}
    for _ in range(runs):  # every variant once per run: neighbours in time on a shared machine
        for v in chosen:
            if v in trips:
                async with session_for(v, "nh") as session:
                    trips[v].append(await round_trips(session, rounds))
            if v in rates:
                async with session_for(v, "nc") as session:
                    rates[v].append(await conns(session, seconds))
    return trips, rates


NAMES = ("nic_handoff_roundtrip_us", "nic_connections_per_s")


def run(
    rounds: int = 300,
    seconds: float = 2.0,
    runs: int = 3,
    cpu: int | None = None,
    names: Sequence[str] = CONN_VARIANTS,
) -> Iterator[dict[str, Any]]:
    skip = skipped(NAMES)
    if skip is not None:
        yield from skip
        return
    chosen = variants(cpu, names)
    trips, rates = asyncio.run(measure(chosen, rounds, seconds, runs))
    yield from roundtrip_lines(trips)
    yield from conn_lines(rates, seconds)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_options(parser)
    parser.add_argument("--rounds", type=int, default=300, help="offload + upload round trips per run")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each connection-rate run")
    args = parser.parse_args(argv)
    for line in run(args.rounds, args.seconds, args.runs, args.nic_cpu, args.variants):
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
