"""What the NIC process frees on the host: host-process CPU per GB with the target in its own process, next to
host-only and to the target inside the host process, each direction, on a TAP against the Linux kernel.

``python -m bench.nic [--mb N] [--runs R]`` prints one JSON line per figure:

- ``nic_bulk``: one line per (``mode``, ``direction``): ``mode`` is ``host`` (offload disabled), ``inline``
  (offloaded, the SoftwareTarget called in the host process) or ``process`` (offloaded to the NIC process,
  ``--nic process``); ``direction`` is ``linux_to_stack`` (a kernel socket in the namespace sends N MB to an
  asyncio server on the stack that counts what it reads) or ``stack_to_linux`` (the stack sends N MB to a
  kernel receiver that hashes it, SHA-256 checked). ``value``: MB/s by wall time; ``host_cpu_s_per_gb``:
  ``getrusage(RUSAGE_SELF)`` user + system of the host process over the transfer; ``nic_cpu_s_per_gb``:
  the NIC process's user + system time from ``/proc/PID/stat`` over the same span (process mode only);
  the best (least host CPU) of ``runs`` runs.
- ``nic_host_cpu_ratio``: per direction, host CPU per GB offloaded to the NIC process / host-only
  (``value``), with both figures, the NIC's CPU per GB and the sum (``total_cpu_s_per_gb``), and the same
  ratio for the inline target (``inline_ratio``). The aim of the NIC process is a host at most 0.3x.

The receiving application does no per-byte work (it counts), so the host CPU is the stack's. The Linux
programs are those of bench/tap.py. Namespaces and links are removed on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bench.tap import PORT_BULK, check, expected_sha256, linux, stack_send
from tcpchimney.link.netns import unavailable_reason, unique_name

MB = 1_000_000
STACK_IF = ipaddress.IPv4Interface("198.18.0.2/24")
PEER_IF = ipaddress.IPv4Interface("198.18.0.1/24")
MODES = ("host", "inline", "process")
DIRECTIONS = ("linux_to_stack", "stack_to_linux")
_TICK = os.sysconf("SC_CLK_TCK")


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _proc_cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14, 15 of proc(5))


@dataclass
class Meter:
    """Wall time, host CPU and NIC CPU from creation to ``stop``."""

    nic_pid: int | None

    def __post_init__(self) -> None:
        self.wall0, self.host0, self.nic0 = time.perf_counter(), _self_cpu(), _proc_cpu(self.nic_pid)
        self.wall = self.host = self.nic = 0.0

    def stop(self) -> Meter:
        self.wall = time.perf_counter() - self.wall0
        self.host = _self_cpu() - self.host0
        self.nic = _proc_cpu(self.nic_pid) - self.nic0
        return self


async def receive(session: Any, nbytes: int, nic_pid: int | None) -> Meter:
    """Linux sends; the stack's server counts; the meter runs from accept to EOF."""
    done: asyncio.Future[tuple[Meter, int]] = asyncio.get_running_loop().create_future()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        meter, total = Meter(nic_pid), 0
        while data := await reader.read(1 << 20):
            total += len(data)
        meter.stop()
        writer.close()
        done.set_result((meter, total))

    server = await session.runtime.start_server(sink, port=PORT_BULK)
    try:
        async with linux(session.netns, "send", str(session.addr.ip), PORT_BULK, nbytes) as tx:
            meter, total = await asyncio.wait_for(done, 300)
            await tx.line()
    finally:
        server.close()
    if total != nbytes:
        raise RuntimeError(f"the stack received {total} bytes of {nbytes}")
    return meter


async def send(session: Any, nbytes: int, nic_pid: int | None, expected: str) -> Meter:
    """The stack sends to a Linux receiver that hashes; the meter runs from connect to its report."""
    meter, result = await stack_send(session, nbytes, lambda: Meter(nic_pid), timeout=300)
    check(result, nbytes, expected)
    return meter


async def measure_mode(mode: str, nbytes: int, runs: int, expected: str) -> dict[str, Meter]:
    from tcpchimney.cli.offload import OffloadOptions
    from tcpchimney.cli.wiring import open_session

    options = OffloadOptions("disabled") if mode == "host" else OffloadOptions("enabled", nic=mode)
    best: dict[str, Meter] = {}
    async with open_session(unique_name("nb"), STACK_IF, PEER_IF, offload=options) as session:
        nic_pid = session.nic.pid if session.nic is not None else None
        for _ in range(runs):
            for direction in DIRECTIONS:
                if direction == "linux_to_stack":
                    meter = await receive(session, nbytes, nic_pid)
                else:
                    meter = await send(session, nbytes, nic_pid, expected)
                if direction not in best or meter.host < best[direction].host:
                    best[direction] = meter
        offloads = session.offload_counters().get("host", {}).get("offloaded", 0)
    if mode != "host" and offloads < 2 * runs:
        raise RuntimeError(f"{mode}: only {offloads} of {2 * runs} transfers were offloaded")
    return best


def lines(results: dict[str, dict[str, Meter]], nbytes: int) -> Iterator[dict[str, Any]]:
    gb = nbytes / 1e9
    for mode, per in results.items():
        for direction, m in per.items():
            yield {
                "bench": "nic_bulk",
                "mode": mode,
                "direction": direction,
                "value": round(nbytes / m.wall / MB, 1),
                "unit": "MB/s",
                "host_cpu_s_per_gb": round(m.host / gb, 3),
                "nic_cpu_s_per_gb": round(m.nic / gb, 3) if mode == "process" else None,
                "bytes": nbytes,
            }
    for direction in DIRECTIONS:
        host, inline, proc = (results[mode][direction] for mode in MODES)
        yield {
            "bench": "nic_host_cpu_ratio",
            "direction": direction,
            "value": round(proc.host / host.host, 3),
            "unit": "ratio",
            "host_only_cpu_s_per_gb": round(host.host / gb, 3),
            "process_host_cpu_s_per_gb": round(proc.host / gb, 3),
            "process_nic_cpu_s_per_gb": round(proc.nic / gb, 3),
            "total_cpu_s_per_gb": round((proc.host + proc.nic) / gb, 3),
            "inline_ratio": round(inline.host / host.host, 3),
            "process_mb_s": round(nbytes / proc.wall / MB, 1),
            "host_only_mb_s": round(nbytes / host.wall / MB, 1),
        }


NAMES = ("nic_bulk", "nic_host_cpu_ratio")


def run(nbytes: int = 500 * MB, runs: int = 2) -> Iterator[dict[str, Any]]:
    reason = unavailable_reason()
    if reason is not None:
        for name in NAMES:
            yield {"bench": name, "skipped": reason}
        return
    expected = expected_sha256(nbytes)
    results = {mode: asyncio.run(measure_mode(mode, nbytes, runs, expected)) for mode in MODES}
    yield from lines(results, nbytes)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=500, help="MB per bulk transfer")
    parser.add_argument("--runs", type=int, default=2, help="runs per figure (the least host CPU is kept)")
    args = parser.parse_args(argv)
    for line in run(args.mb * MB, args.runs):
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
