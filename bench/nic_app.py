"""An application bound by network processing, host-only and with its connections offloaded to the NIC
process: the seed's claim ("applications bound by network processing overhead scale better") as a figure.

``python -m bench.nic_app [--mb N] [--runs R] [--record-kb K] [--rounds H] [--conns C] [--depth D]``

The server runs on the stack (``runtime.start_server``), one asyncio task per connection, everything on the
host process's one thread, as a single-threaded server is: it reads each request of K KiB
(``readexactly``), hashes it H times in a chain (``d = sha256(d + request)``, so no round can be skipped
or run beside another) and answers the 32-byte digest. A Linux client in the namespace (a ``python3``
process of its own) keeps D requests in flight on each of C connections, checks every answer against the
digests it computed before the clock started, and reports its wall time from the first request to the last
answer. With the stack on the host the TCP work and the hashing share the host's CPU; offloaded to the NIC
process, the TCP data path runs on the NIC's.

One JSON line per figure:

- ``nic_app``: per ``variant`` (``host``, ``inline``, ``process``, ``process_pinned``: as bench/nic.py),
  ``value`` MB/s of requests answered, ``requests_per_s``, ``host_cpu_s_per_gb`` and ``nic_cpu_s_per_gb``
  (process variants), medians of ``runs`` runs (``runs_mb_s``).
- ``nic_app_speedup``: MB/s offloaded to the NIC process (not pinned) / host-only, the median over the runs of
  that run's ratio (every variant runs once per run, back to back); ``host_only_mb_s`` and
  ``offloaded_mb_s`` beside it, with ``inline_speedup`` and ``pinned_speedup``. The aim is 1.3x or more.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from bench.nic import (
    MB,
    VARIANTS,
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
from bench.tap import LinuxProc
from tcpchimney.link.netns import netns_exec

PORT_APP = 5003
DIGEST = 32
DISTINCT = 8  # different requests, sent in turn (precomputed by the client, so it does no hashing meanwhile)

# The Linux client: C connections, one thread each, D requests in flight per connection; prints one JSON line.
CLIENT = r"""
import hashlib, json, random, socket, sys, threading, time

host, port, size, count, conns, depth, rounds = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:8])
rng = random.Random(11)
requests = [rng.randbytes(size) for _ in range(8)]


def chain(data):
    d = b""
    for _ in range(rounds):
        d = hashlib.sha256(d + data).digest()
    return d


digests = [chain(r) for r in requests]


from bench.peer import connect


def answer(s):
    buf = b""
    while len(buf) < 32:
        chunk = s.recv(32 - len(buf))
        if not chunk:
            raise SystemExit("the server closed early")
        buf += chunk
    return buf


errors = []


def client(s, n):
    try:
        sent = got = 0
        while sent < min(depth, n):
            s.sendall(requests[sent % 8])
            sent += 1
        while got < n:
            if answer(s) != digests[got % 8]:
                raise SystemExit(f"wrong digest for request {got}")
            got += 1
            if sent < n:
                s.sendall(requests[sent % 8])
                sent += 1
        s.shutdown(socket.SHUT_WR)
        if s.recv(1) != b"":
            raise SystemExit("data after the last answer")
        s.close()
    except BaseException as exc:
        errors.append(repr(exc))


socks = [connect(host, port) for _ in range(conns)]
share = [count // conns + (i < count % conns) for i in range(conns)]
threads = [threading.Thread(target=client, args=(s, n)) for s, n in zip(socks, share)]
t0 = time.perf_counter()
for t in threads:
    t.start()
for t in threads:
    t.join()
seconds = time.perf_counter() - t0
print(json.dumps({"requests": count, "seconds": seconds, "errors": errors}), flush=True)
"""


@dataclass(frozen=True)
class Load:
    """What the client asks: ``count`` requests of ``size`` bytes, hashed ``rounds`` times each."""

    size: int
    count: int
    rounds: int
    conns: int
    depth: int

    @property
    def nbytes(self) -> int:
        return self.size * self.count


def chain(data: bytes, rounds: int) -> bytes:
    """The server's work per request: ``rounds`` SHA-256 over the whole request, each over the last digest
    and the request, so no round can be skipped."""
    d = b""
    for _ in range(rounds):
        h = hashlib.sha256(d)
        h.update(data)
        d = h.digest()
    return d


async def serve_and_measure(session: Any, load: Load, pid: int | None) -> tuple[Meter, float]:
    """The server on the stack, the client in the namespace; host and NIC CPU over the client's run, and
    the client's own seconds."""
    served = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        try:
            while True:
                request = await reader.readexactly(load.size)
                writer.write(chain(request, load.rounds))
                served += 1
                await writer.drain()
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
        finally:
            writer.close()

    server = await session.runtime.start_server(handle, port=PORT_APP)
    try:
        result, meter = await _client(session, load, pid)
    finally:
        server.close()
    if result["errors"] or served != load.count:
        raise RuntimeError(f"served {served} of {load.count}: {result['errors']}")
    return meter, float(result["seconds"])


async def _client(session: Any, load: Load, pid: int | None) -> tuple[dict[str, Any], Meter]:
    args = (session.addr.ip, PORT_APP, load.size, load.count, load.conns, load.depth, load.rounds)
    argv = netns_exec(session.netns, sys.executable, "-c", CLIENT, *map(str, args))
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        meter = Meter(pid)  # from the client's start: its set-up (a few ms of hashing) is counted too
        result = await LinuxProc(proc).line(timeout=600)
        meter.stop()
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
    return result, meter


@dataclass
class AppRun:
    meter: Meter
    seconds: float  # the client's, first request to last answer


async def measure_variant(variant: Variant, load: Load) -> AppRun:
    async with session_for(variant, "na") as session:
        meter, seconds = await serve_and_measure(session, load, nic_pid(session))
        moved = offloads(session)
    if variant.nic is not None and moved < load.conns:
        raise RuntimeError(f"{variant.name}: only {moved} of {load.conns} connections were offloaded")
    return AppRun(meter, seconds)


async def measure(chosen: list[Variant], load: Load, runs: int) -> list[dict[Variant, AppRun]]:
    results = []
    for _ in range(runs):
        results.append({v: await measure_variant(v, load) for v in chosen})
    return results


def lines(results: list[dict[Variant, AppRun]], load: Load) -> Iterator[dict[str, Any]]:
    gb = load.nbytes / 1e9
    shape = {"record_bytes": load.size, "rounds": load.rounds, "conns": load.conns, "depth": load.depth}
    for v in results[0]:
        done = [run[v] for run in results]
        rates = [load.nbytes / r.seconds / MB for r in done]
        nic = median([r.meter.nic for r in done]) / gb if v.nic == "process" else None
        yield {
            "bench": "nic_app",
            **v.fields(),
            "value": round(median(rates), 1),
            "unit": "MB/s",
            "requests_per_s": round(median([load.count / r.seconds for r in done])),
            "host_cpu_s_per_gb": round(median([r.meter.host for r in done]) / gb, 3),
            "nic_cpu_s_per_gb": None if nic is None else round(nic, 3),
            "runs_mb_s": [round(rate, 1) for rate in rates],
            **shape,
            "bytes": load.nbytes,
        }
    yield from speedup_line(results, load, shape)


def speedup_line(
    results: list[dict[Variant, AppRun]], load: Load, shape: dict[str, int]
) -> Iterator[dict[str, Any]]:
    names = {v.name: v for v in results[0]}
    host, proc = names.get("host"), names.get("process")
    if host is None or proc is None:
        return
    s: Series[AppRun] = Series({v: [run[v] for run in results] for v in results[0]})

    def rate(r: AppRun) -> float:
        return load.nbytes / r.seconds / MB

    yield {
        "bench": "nic_app_speedup",
        "value": s.ratio(proc, host, rate),
        "unit": "ratio",
        "host_only_mb_s": s.figure(host, rate, digits=1),
        "offloaded_mb_s": s.figure(proc, rate, digits=1),
        "inline_speedup": s.ratio(names.get("inline"), host, rate),
        "pinned_speedup": s.ratio(names.get("process_pinned"), host, rate),
        "nic_cpu": names["process_pinned"].cpu if "process_pinned" in names else None,
        **shape,
        "runs": len(results),
    }


NAMES = ("nic_app", "nic_app_speedup")


def run(
    nbytes: int = 200 * MB,
    runs: int = 3,
    cpu: int | None = None,
    record: int = 64 << 10,
    rounds: int = 4,
    conns: int = 4,
    depth: int = 4,
    names: Sequence[str] = VARIANTS,
) -> Iterator[dict[str, Any]]:
    skip = skipped(NAMES)
    if skip is not None:
        yield from skip
        return
    load = Load(record, max(conns, nbytes // record), rounds, conns, depth)
    chosen = variants(cpu, names)
    yield from lines(asyncio.run(measure(chosen, load, runs)), load)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200, help="MB of requests per run")
    common_options(parser)
    parser.add_argument("--record-kb", type=int, default=64, help="KiB per request")
    parser.add_argument("--rounds", type=int, default=4, help="SHA-256 rounds over each request")
    parser.add_argument("--conns", type=int, default=4, help="client connections")
    parser.add_argument("--depth", type=int, default=4, help="requests in flight per connection")
    args = parser.parse_args(argv)
    shape = (args.record_kb << 10, args.rounds, args.conns, args.depth)
    for line in run(args.mb * MB, args.runs, args.nic_cpu, *shape, names=args.variants):
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
