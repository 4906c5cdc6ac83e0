"""HTTP requests per second from real load tools: ``chimney serve http`` against the same application on the
kernel's sockets.

``python -m bench.http [--seconds S] [--concurrency C] [--runs R] [--tools ...] [--variants ...]`` prints one
JSON line per (tool, variant), ``bench`` ``http_requests_per_s``:

- ``tool``: ``ab_keepalive`` (``ab -k``, HTTP/1.0 with keep-alive: C connections kept), ``ab`` (a
  connection per request: the handshake, one request, the server's close) or ``wrk`` (HTTP/1.1, C kept
  connections, one thread); each loads ``GET /bytes/64`` for S whole seconds from the Linux side (the
  namespace), as bench/load_tools.py runs and reads them. A failed, unanswered or non-2xx request fails
  the run with the tool's own count; a server that counted fewer requests than the tool, or more errors
  than the connections a tool drops when its time is up, too.
- ``variant`` as bench/short.py: ``host`` (``--offload disabled``), ``process`` (``--offload enabled``, the
  NIC in its own process) and ``process_auto`` (``--offload automatic``, the command's default: connections
  move to the NIC once they carried 64 KiB). Each is the ``chimney serve http`` command itself, a fresh one
  per figure, in a fresh namespace; ``host_cpu_us_per_req`` is its CPU per request over the tool's run
  (``/proc/PID/stat``), ``nic_cpu_us_per_req`` the NIC process's, ``offloaded`` the connections it moved.
- ``kernel``: the same tool against ``cli.apps.HttpApp`` under ``asyncio.start_server`` (bench/http_kernel.py)
  in a second namespace over a veth pair, in the same run; ``kernel_server_cpu_us_per_req`` is that
  process's CPU (its user time and its system calls; the kernel's TCP work runs in softirqs partly
  charged elsewhere). ``ratio_to_kernel`` is the median over the runs of that run's ratio.

``value`` is the median over the runs of requests per second as the tool counted them. Namespaces, links
and processes are removed on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from bench.load_tools import TOOLS, WRK_SCRIPT, Load, command, missing, parse
from bench.nic import Variant, common_options, median, proc_cpu, skipped, variants
from bench.short import SHORT_VARIANTS
from bench.tap import LinuxProc, in_thread, peer
from tcpchimney.cli.apps import HTTP_PORT
from tcpchimney.link.netns import VethTopology, netns_exec, remove_netns, unique_name

NAMES = ("http_requests_per_s",)
PATH = "/bytes/64"
READY_S = 30.0  # for chimney serve's ready line
STOP_S = 20.0  # for its done line after SIGTERM
TOOL_SLACK_S = 30.0  # beyond the tool's own seconds before it is killed


@dataclass
class Figure:
    """One tool's run against one server."""

    load: Load
    served: int  # requests the server counted
    server_errors: int
    cpu_s: float  # the server process's
    nic_cpu_s: float | None = None
    offloaded: int | None = None

    def per_request_us(self, seconds: float | None) -> float | None:
        return None if seconds is None else round(seconds / self.load.requests * 1e6, 1)


async def run_tool(netns: str, tool: str, url: str, seconds: int, concurrency: int, script: str) -> Load:
    argv = netns_exec(netns, *command(tool, url, seconds, concurrency, script))
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), seconds + TOOL_SLACK_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return parse(tool, proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


def checked(figure: Figure, concurrency: int, where: str) -> Figure:
    """The server's own counts must agree with the tool's: a tool that dropped answers, or a server that
    failed more connections than the tool had open when its time was up, is a failed run."""
    load = figure.load
    if figure.served < load.requests:
        raise RuntimeError(
            f"{where}: {load.tool} counted {load.requests} requests, the server {figure.served}"
        )
    if figure.server_errors > concurrency + 1:  # wrk opens one more connection than -c
        raise RuntimeError(f"{where}: the server counted {figure.server_errors} errors under {load.tool}")
    return figure


# ====================================================================== the kernel


@contextlib.asynccontextmanager
async def kernel_server() -> AsyncIterator[tuple[VethTopology, LinuxProc]]:
    async with (
        in_thread(VethTopology()) as topo,
        peer(topo.ns_b, "-m", "bench.http_kernel", topo.ip_b, HTTP_PORT) as server,
    ):
        await server.line()
        yield topo, server


async def kernel_figures(
    tools: Sequence[str], seconds: int, concurrency: int, script: str
) -> dict[str, Figure]:
    figures = {}
    async with kernel_server() as (topo, server):
        url = f"http://{topo.ip_b}:{HTTP_PORT}{PATH}"
        assert server.proc.stdin is not None
        for tool in tools:
            cpu0 = proc_cpu(server.proc.pid)
            load = await run_tool(topo.ns_a, tool, url, seconds, concurrency, script)
            cpu = proc_cpu(server.proc.pid) - cpu0
            server.proc.stdin.write(b"stats\n")
            stats = await server.line()
            figure = Figure(load, stats["requests"], stats["errors"], cpu)
            figures[tool] = checked(figure, concurrency, "kernel")
    return figures


# ====================================================================== chimney serve http


def serve_argv(variant: Variant, netns: str) -> list[str]:
    argv = [sys.executable, "-m", "tcpchimney.cli.main", "serve", "http", "--netns", netns]
    if variant.nic is None:
        return [*argv, "--offload", "disabled"]
    argv += ["--offload", variant.offload, "--nic", variant.nic]
    return argv + ([] if variant.cpu is None else ["--nic-cpu", str(variant.cpu)])


async def event(proc: asyncio.subprocess.Process, name: str, timeout: float) -> dict[str, Any]:
    """The next JSON line of ``proc`` whose ``event`` is ``name``."""
    assert proc.stdout is not None
    while True:
        raw = await asyncio.wait_for(proc.stdout.readline(), timeout)
        if not raw:
            assert proc.stderr is not None
            err = (await proc.stderr.read()).decode().strip()
            raise RuntimeError(f"chimney serve http ended before its {name} line: {err}")
        line = json.loads(raw)
        if line.get("event") == name:
            return dict(line)


@contextlib.asynccontextmanager
async def chimney_serve(variant: Variant) -> AsyncIterator[tuple[dict[str, Any], dict[str, Any]]]:
    """``chimney serve http`` run as ``variant`` says: its ready line, then (filled once it stopped on
    SIGTERM when the block ends) its done line."""
    netns = unique_name("hb")
    proc = await asyncio.create_subprocess_exec(
        *serve_argv(variant, netns),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    done: dict[str, Any] = {}
    try:
        ready = await event(proc, "ready", READY_S)
        yield ready, done
        proc.send_signal(signal.SIGTERM)
        done.update(await event(proc, "done", STOP_S))
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)  # its clean-up removes the namespace and the TAP
            try:
                await asyncio.wait_for(proc.wait(), STOP_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await asyncio.to_thread(remove_netns, netns)  # by name too, however it ended


async def stack_figure(variant: Variant, tool: str, seconds: int, concurrency: int, script: str) -> Figure:
    async with chimney_serve(variant) as (ready, done):
        pid, nic = int(ready["pid"]), ready.get("nic_pid")
        url = f"http://{ready['addr']}:{HTTP_PORT}{PATH}"
        cpu0, nic0 = proc_cpu(pid), proc_cpu(nic)
        load = await run_tool(ready["netns"], tool, url, seconds, concurrency, script)
        cpu, nic_cpu = proc_cpu(pid) - cpu0, proc_cpu(nic) - nic0
    app = done["app_counters"]
    offloaded = done["offload"].get("host", {}).get("offloaded", 0) if variant.nic is not None else None
    figure = Figure(load, app["requests"], app["errors"], cpu, nic_cpu if nic else None, offloaded)
    if variant.offload == "enabled" and variant.nic is not None and not offloaded:
        raise RuntimeError(f"{variant.name}: no connection of {tool} was offloaded")
    return checked(figure, concurrency, variant.name)


# ====================================================================== the lines


Runs = list[dict[str, dict[str, Figure]]]  # per run: "kernel" and each variant's name -> per tool


def line(runs: Runs, v: Variant, tool: str, seconds: int, concurrency: int) -> dict[str, Any]:
    mine, kernel = [run[v.name][tool] for run in runs], [run["kernel"][tool] for run in runs]
    pairs = zip(mine, kernel, strict=True)  # the same run's

    def us(figures: list[Figure], what: str) -> float | None:
        values = [f.per_request_us(getattr(f, what)) for f in figures]
        return None if None in values else round(median([x for x in values if x is not None]), 1)

    out = {
        "bench": "http_requests_per_s",
        **v.fields(),
        "tool": tool,
        "keep_alive": tool != "ab",
        "value": round(median([f.load.rate for f in mine])),
        "unit": "req/s",
        "kernel": round(median([f.load.rate for f in kernel])),
        "ratio_to_kernel": round(median([a.load.rate / b.load.rate for a, b in pairs]), 3),
        "host_cpu_us_per_req": us(mine, "cpu_s"),
        "nic_cpu_us_per_req": us(mine, "nic_cpu_s"),
        "kernel_server_cpu_us_per_req": us(kernel, "cpu_s"),
        "offloaded": [f.offloaded for f in mine],
        "requests": [f.load.requests for f in mine],
        "kernel_requests": [f.load.requests for f in kernel],
        "runs_req_s": [round(f.load.rate) for f in mine],
        "kernel_runs_req_s": [round(f.load.rate) for f in kernel],
        "server_errors": [f.server_errors for f in mine],
        "path": PATH,
        "concurrency": concurrency,
        "seconds": seconds,
    }
    if tool == "wrk":  # wrk's latency percentiles, medians over the runs
        for p in ("p50", "p99"):
            out[f"latency_{p}_us"] = median([f.load.latency_us[p] for f in mine])
            out[f"kernel_latency_{p}_us"] = median([f.load.latency_us[p] for f in kernel])
    return out


async def measure(
    chosen: list[Variant], tools: Sequence[str], seconds: int, concurrency: int, runs: int
) -> Runs:
    results: Runs = []
    with tempfile.NamedTemporaryFile("w", prefix="chimney-wrk-", suffix=".lua") as script:
        script.write(WRK_SCRIPT)
        script.flush()
        for _ in range(runs):  # the kernel and every variant once per run: neighbours in time
            run = {"kernel": await kernel_figures(tools, seconds, concurrency, script.name)}
            for v in chosen:
                run[v.name] = {t: await stack_figure(v, t, seconds, concurrency, script.name) for t in tools}
            results.append(run)
    return results


def run(
    seconds: int = 2,
    concurrency: int = 4,
    runs: int = 3,
    cpu: int | None = None,
    names: Sequence[str] = SHORT_VARIANTS,
    tools: Sequence[str] = TOOLS,
) -> Iterator[dict[str, Any]]:
    skip = skipped(NAMES)
    if skip is None and (absent := missing()):
        skip = [{"bench": name, "skipped": f"needs {' and '.join(absent)} (make tools)"} for name in NAMES]
    if skip is not None:
        yield from skip
        return
    chosen = variants(cpu, names)
    results = asyncio.run(measure(chosen, tools, seconds, concurrency, runs))
    for tool in tools:
        for v in chosen:
            yield line(results, v, tool, seconds, concurrency)


def tools_arg(text: str) -> tuple[str, ...]:
    names = tuple(n for n in text.split(",") if n)
    if not names or any(n not in TOOLS for n in names):
        raise argparse.ArgumentTypeError(f"tools are a comma list of {', '.join(TOOLS)}")
    return names


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_options(parser)
    parser.set_defaults(variants=SHORT_VARIANTS)
    parser.add_argument("--seconds", type=int, default=2, help="whole seconds of each tool's run")
    parser.add_argument("--concurrency", type=int, default=4, help="connections each tool keeps busy")
    parser.add_argument("--tools", type=tools_arg, default=TOOLS, help=f"default {','.join(TOOLS)}")
    args = parser.parse_args(argv)
    lines = run(args.seconds, args.concurrency, args.runs, args.nic_cpu, args.variants, args.tools)
    for out in lines:
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
