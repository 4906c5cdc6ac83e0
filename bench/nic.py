"""What the NIC process frees on the host and what it moves: host-process CPU per GB and throughput with the
target in its own process (pinned to a CPU and not), next to host-only and to the target inside the host
process, each direction, on a TAP against the Linux kernel.

``python -m bench.nic [--mb N] [--runs R] [--nic-cpu C]`` prints one JSON line per figure:

- ``nic_bulk``: one line per (``variant``, ``direction``). ``variant`` is ``host`` (offload disabled),
  ``inline`` (offloaded, the SoftwareTarget called in the host process), ``process`` (offloaded to the NIC
  process, ``--nic process``, not pinned) or ``process_pinned`` (the same, ``--nic-cpu C``; ``nic_cpu``
  says which CPU); ``mode`` is the ``--nic`` value (``host`` for host-only). ``direction`` is
  ``linux_to_stack`` (a kernel socket in the namespace sends N MB to an asyncio server on the stack that
  counts what it reads) or ``stack_to_linux`` (the stack sends N MB to a kernel receiver that hashes it,
  SHA-256 checked). ``value``: MB/s by wall time; ``host_cpu_s_per_gb``: ``getrusage(RUSAGE_SELF)`` user +
  system of the host process over the transfer; ``nic_cpu_s_per_gb``: the NIC process's user + system time
  from ``/proc/PID/stat`` over the same span (process variants only). Each the median of ``runs`` runs
  (``runs_mb_s`` lists every run's MB/s).
- ``nic_host_cpu_ratio``: per direction, host CPU per GB offloaded to the NIC process (not pinned) /
  host-only (``value``), with both figures, the NIC's CPU per GB and the sum (``total_cpu_s_per_gb``), and the
  same ratio for the inline target (``inline_ratio``) and the pinned NIC (``pinned_ratio``). The aim of the
  NIC process is a host at most 0.3x.
- ``nic_throughput_ratio``: per direction, MB/s with the NIC process / host-only (``value``), with
  ``inline_ratio``, ``pinned_ratio`` (pinned NIC / host-only) and ``pinned_to_unpinned``, and every variant's
  MB/s.

Every ratio is the median over the runs of that run's ratio: one run measures every variant back to back
(each in a fresh session), so a ratio never compares figures taken minutes apart on a shared machine. The
receiving application does no per-byte work (it counts), so the host CPU is the stack's. The Linux programs
are those of bench/tap.py. Namespaces and links are removed on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from bench.tap import PORT_BULK, check, expected_sha256, linux, stack_send
from tcpchimney.link.netns import unavailable_reason, unique_name
from tcpchimney.nic.affinity import allowed_cpus

MB = 1_000_000
STACK_IF = ipaddress.IPv4Interface("198.18.0.2/24")
PEER_IF = ipaddress.IPv4Interface("198.18.0.1/24")
DIRECTIONS = ("linux_to_stack", "stack_to_linux")
_TICK = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


# ====================================================================== where the target runs


@dataclass(frozen=True)
class Variant:
    """One way of running the stack: host-only, the target inline, or the NIC process (pinned or not)."""

    name: str
    nic: str | None  # the --nic value; None: offload disabled
    cpu: int | None = None  # --nic-cpu
    offload: str = "enabled"  # the --offload mode when nic is set
    spin_us: float | None = None  # --nic-spin-us (None: the default)
    busy_poll_us: float = 0.0  # --busy-poll-us

    def options(self) -> Any:
        from tcpchimney.cli.offload import OffloadOptions

        if self.nic is None:
            return OffloadOptions("disabled")
        return OffloadOptions(
            self.offload,
            nic=self.nic,
            nic_cpu=self.cpu,
            nic_spin_us=self.spin_us,
            busy_poll_us=self.busy_poll_us,
        )

    @property
    def mode(self) -> str:
        return self.nic or "host"

    def fields(self) -> dict[str, Any]:
        offload = "disabled" if self.nic is None else self.offload
        return {"variant": self.name, "mode": self.mode, "offload": offload, "nic_cpu": self.cpu}


def default_nic_cpu() -> int:
    """The last CPU this process may use: the host's event loop and the Linux peer start on the first ones."""
    return max(allowed_cpus())


VARIANTS = ("host", "inline", "process", "process_pinned")
ALL_VARIANTS = (*VARIANTS, "process_auto")  # process_auto: --offload automatic, NIC in its own process


def variants(cpu: int | None, names: Sequence[str] = VARIANTS) -> list[Variant]:
    """The variants ``names``, the pinned one on ``cpu`` (None: ``default_nic_cpu``)."""
    cpu = default_nic_cpu() if cpu is None else cpu
    every = {
        "host": Variant("host", None),
        "inline": Variant("inline", "inline"),
        "process": Variant("process", "process"),
        "process_pinned": Variant("process_pinned", "process", cpu),
        "process_auto": Variant("process_auto", "process", offload="automatic"),
    }
    return [every[name] for name in names]


@contextlib.asynccontextmanager
async def session_for(variant: Variant, prefix: str = "nb") -> AsyncIterator[Any]:
    """A fresh namespace, TAP and stack run the way ``variant`` says; the NIC process, if any, is pinned."""
    from tcpchimney.cli.wiring import open_session

    async with open_session(unique_name(prefix), STACK_IF, PEER_IF, offload=variant.options()) as session:
        if variant.cpu is not None and os.sched_getaffinity(session.nic.pid) != {variant.cpu}:
            raise RuntimeError(f"the NIC process is not on CPU {variant.cpu} alone")
        yield session


def nic_pid(session: Any) -> int | None:
    return session.nic.pid if session.nic is not None else None


def offloads(session: Any) -> int:
    return int(session.offload_counters().get("host", {}).get("offloaded", 0))


# ====================================================================== meters


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def proc_cpu(pid: int | None) -> float:
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
        self.wall0, self.host0, self.nic0 = time.perf_counter(), self_cpu(), proc_cpu(self.nic_pid)
        self.wall = self.host = self.nic = 0.0

    def stop(self) -> Meter:
        self.wall = time.perf_counter() - self.wall0
        self.host = self_cpu() - self.host0
        self.nic = proc_cpu(self.nic_pid) - self.nic0
        return self


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


# ====================================================================== bulk transfers


async def receive(session: Any, nbytes: int, pid: int | None) -> Meter:
    """Linux sends; the stack's server counts; the meter runs from accept to EOF."""
    done: asyncio.Future[tuple[Meter, int]] = asyncio.get_running_loop().create_future()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        meter, total = Meter(pid), 0
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


async def send(session: Any, nbytes: int, pid: int | None, expected: str) -> Meter:
    """The stack sends to a Linux receiver that hashes; the meter runs from connect to its report."""
    meter, result = await stack_send(session, nbytes, lambda: Meter(pid), timeout=300)
    check(result, nbytes, expected)
    return meter


async def measure_variant(variant: Variant, nbytes: int, expected: str) -> dict[str, Meter]:
    """Both directions in one fresh session."""
    async with session_for(variant) as session:
        pid = nic_pid(session)
        meters = {
            "linux_to_stack": await receive(session, nbytes, pid),
            "stack_to_linux": await send(session, nbytes, pid, expected),
        }
        moved = offloads(session)
    if variant.nic is not None and moved < 2:
        raise RuntimeError(f"{variant.name}: only {moved} of 2 transfers were offloaded")
    return meters


Runs = list[dict[Variant, dict[str, Meter]]]  # per run: each variant's meters per direction


def bulk_lines(runs: Runs, nbytes: int) -> Iterator[dict[str, Any]]:
    gb = nbytes / 1e9
    for variant in runs[0]:
        for direction in DIRECTIONS:
            meters = [run[variant][direction] for run in runs]
            rates = [nbytes / m.wall / MB for m in meters]
            nic = round(median([m.nic for m in meters]) / gb, 3) if variant.nic == "process" else None
            yield {
                "bench": "nic_bulk",
                **variant.fields(),
                "direction": direction,
                "value": round(median(rates), 1),
                "unit": "MB/s",
                "host_cpu_s_per_gb": round(median([m.host for m in meters]) / gb, 3),
                "nic_cpu_s_per_gb": nic,
                "runs_mb_s": [round(rate, 1) for rate in rates],
                "bytes": nbytes,
            }


@dataclass
class Series(Generic[T]):
    """Measurements variant by variant and run by run (the same index is the same run)."""

    per: dict[Variant, list[T]]

    def ratio(self, a: Variant | None, b: Variant, what: Callable[[T], float]) -> float | None:
        """Median over the runs of ``what(a) / what(b)`` in that run; None without ``a``."""
        if a is None:
            return None
        pairs = zip(self.per[a], self.per[b], strict=True)
        return round(median([what(x) / what(y) for x, y in pairs]), 3)

    def figure(self, v: Variant, what: Callable[[T], float], scale: float = 1.0, digits: int = 3) -> float:
        return round(median([what(m) for m in self.per[v]]) / scale, digits)


def ratio_lines(runs: Runs, nbytes: int) -> Iterator[dict[str, Any]]:
    gb = nbytes / 1e9
    names = {v.name: v for v in runs[0]}
    host, proc = names.get("host"), names.get("process")
    inline, pinned = names.get("inline"), names.get("process_pinned")
    if host is None or proc is None:
        return

    def rate(m: Meter) -> float:
        return nbytes / m.wall / MB

    def host_cpu(m: Meter) -> float:
        return m.host

    for d in DIRECTIONS:
        s: Series[Meter] = Series({v: [run[v][d] for run in runs] for v in runs[0]})
        yield {
            "bench": "nic_host_cpu_ratio",
            "direction": d,
            "value": s.ratio(proc, host, host_cpu),
            "unit": "ratio",
            "host_only_cpu_s_per_gb": s.figure(host, host_cpu, gb),
            "process_host_cpu_s_per_gb": s.figure(proc, host_cpu, gb),
            "process_nic_cpu_s_per_gb": s.figure(proc, lambda m: m.nic, gb),
            "total_cpu_s_per_gb": s.figure(proc, lambda m: m.host + m.nic, gb),
            "inline_ratio": s.ratio(inline, host, host_cpu),
            "pinned_ratio": s.ratio(pinned, host, host_cpu),
            "runs": len(runs),
        }
        yield {
            "bench": "nic_throughput_ratio",
            "direction": d,
            "value": s.ratio(proc, host, rate),
            "unit": "ratio",
            "inline_ratio": s.ratio(inline, host, rate),
            "pinned_ratio": s.ratio(pinned, host, rate),
            "pinned_to_unpinned": s.ratio(pinned, proc, rate),
            "nic_cpu": pinned.cpu if pinned else None,
            **{f"{v.name}_mb_s": s.figure(v, rate, digits=1) for v in s.per},
            "runs": len(runs),
        }


NAMES = ("nic_bulk", "nic_host_cpu_ratio", "nic_throughput_ratio")


async def measure(chosen: list[Variant], nbytes: int, runs: int) -> Runs:
    expected = expected_sha256(nbytes)
    results: Runs = []
    for _ in range(runs):  # every variant once per run, so each run's ratios compare neighbours in time
        results.append({v: await measure_variant(v, nbytes, expected) for v in chosen})
    return results


def skipped(names: Sequence[str]) -> list[dict[str, Any]] | None:
    """Skip lines for every figure when root or the TAP is missing, else None."""
    reason = unavailable_reason()
    return None if reason is None else [{"bench": name, "skipped": reason} for name in names]


def run(
    nbytes: int = 500 * MB, runs: int = 3, cpu: int | None = None, names: Sequence[str] = VARIANTS
) -> Iterator[dict[str, Any]]:
    skip = skipped(NAMES)
    if skip is not None:
        yield from skip
        return
    chosen = variants(cpu, names)
    results = asyncio.run(measure(chosen, nbytes, runs))
    yield from bulk_lines(results, nbytes)
    yield from ratio_lines(results, nbytes)


def cpu_arg(text: str) -> int:
    """``--nic-cpu`` as the chimney command checks it."""
    from tcpchimney.nic.affinity import check_cpu

    try:
        return check_cpu(int(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def variants_arg(text: str) -> tuple[str, ...]:
    names = tuple(n for n in text.split(",") if n)
    unknown = [n for n in names if n not in ALL_VARIANTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"variants are a comma list of {', '.join(ALL_VARIANTS)}")
    return names


def common_options(parser: argparse.ArgumentParser) -> None:
    """--runs, --nic-cpu and --variants, as every bench.nic* module takes them."""
    parser.add_argument("--runs", type=int, default=3, help="runs of every variant (medians are reported)")
    parser.add_argument("--nic-cpu", type=cpu_arg, help="CPU of the pinned NIC (default: the last allowed)")
    parser.add_argument(
        "--variants", type=variants_arg, default=VARIANTS, help=f"which to run (default {','.join(VARIANTS)})"
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=500, help="MB per bulk transfer")
    common_options(parser)
    args = parser.parse_args(argv)
    for line in run(args.mb * MB, args.runs, args.nic_cpu, args.variants):
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
