"""``chimney demo``: the real ``curl`` and a Linux HTTP server against the stack, SHA-256 checked both ways.

As root with /dev/net/tun: a fresh namespace with the kernel at 198.18.0.1 and the stack at 198.18.0.2 on a
TAP device; the stack serves http; from the namespace ``curl`` downloads and uploads N MB; then the stack
downloads N MB from ``python3 -m http.server`` in the namespace. Elsewhere the same exchanges run between two
stacks over the simulated link. Every namespace, link, process and temporary file is removed on the way out,
also on any termination signal (at any moment: a set-up under way is finished, then taken down) or failure;
each is in the run record before it exists, so ``chimney cleanup`` finds them after a ``kill -9``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import ipaddress
import json
import os
import shlex
import shutil
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from tcpchimney.cli.apps import AppStats, HttpApp, deterministic_bytes, deterministic_sha256
from tcpchimney.cli.common import EXIT_UNAVAILABLE, CommandError, network_unavailable_reason, stop_on_signals
from tcpchimney.cli.nsutil import in_netns
from tcpchimney.cli.offload import OffloadControl, OffloadOptions, timeline_lines
from tcpchimney.cli.report import (
    ConnectionRow,
    DemoResult,
    Transfer,
    add_new_rows,
    connection_row,
    summary,
    timeline_table,
    with_final_states,
)
from tcpchimney.cli.wiring import Session, finish_in_thread, open_session
from tcpchimney.link.runs import recorded_directory, registered
from tcpchimney.link.signals import signal_name

MB = 1_000_000
STACK_ADDR = ipaddress.IPv4Interface("198.18.0.2/24")
PEER_ADDR = ipaddress.IPv4Interface("198.18.0.1/24")
HTTP_PORT = 80
LOG_WIDTH = 10_000  # columns when the output is not a terminal: wide enough that no line is ever wrapped
LINUX_HTTP_PORT = 8080
SEED_DOWN = 1
SEED_UP = 2
_SHA256_STDIN = (
    shlex.quote(sys.executable)
    + " -c "
    + shlex.quote(
        "import hashlib, sys\n"
        "h = hashlib.sha256()\n"
        "while b := sys.stdin.buffer.read1(1 << 20):\n"
        "    h.update(b)\n"
        "print(h.hexdigest())"
    )
)


class Meter:
    """Live progress of one transfer, and the connection table taken when half of its bytes moved."""

    def __init__(self, progress: Progress, name: str, total: int, sample: Callable[[], int]) -> None:
        self.progress = progress
        self.task = progress.add_task(name, total=total)
        self.total = total
        self.sample = sample
        self.rows: list[ConnectionRow] = []

    async def midway(
        self, rows: Callable[[], list[ConnectionRow]], action: Callable[[], object] | None
    ) -> None:
        """Once half the bytes moved (polled often: a transfer may last well under a second), the table as
        the transfer runs, then ``action()``: the table shows the state the data moved in, not a later one."""
        while self.sample() * 2 < self.total:
            await asyncio.sleep(0.002)
        self.rows = rows()
        if action is not None:
            action()

    async def run(self) -> None:
        while True:
            self.progress.update(self.task, completed=self.sample())
            await asyncio.sleep(0.1)

    def finish(self) -> None:
        self.progress.update(self.task, completed=self.sample())


@contextlib.asynccontextmanager
async def metered(
    progress: Progress,
    name: str,
    total: int,
    sample: Callable[[], int],
    rows: Callable[[], list[ConnectionRow]],
    midway: Callable[[], object] | None = None,
) -> AsyncIterator[Meter]:
    meter = Meter(progress, name, total, sample)
    tasks = [asyncio.create_task(meter.run()), asyncio.create_task(meter.midway(rows, midway))]
    try:
        yield meter
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        meter.finish()


class Clock:
    """Wall and CPU seconds of this process (the stack runs in it) over one transfer."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = time.process_time()

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


# ====================================================================== processes in the namespace


async def run_in_netns(netns: str, shell: str) -> str:
    """Run a shell pipeline in the namespace; its stdout, or CommandError with its stderr."""
    proc = await asyncio.create_subprocess_exec(
        *in_netns(netns, "sh", "-c", shell),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # the pipeline is one process group: killed whole on the way out
    )
    try:
        out, err = await proc.communicate()
    finally:
        _kill_group(proc)
        await proc.wait()
    if proc.returncode != 0:
        raise CommandError(f"`{shell}` in {netns} failed ({proc.returncode}): {err.decode().strip()}")
    return out.decode()


@contextlib.asynccontextmanager
async def linux_http_server(netns: str, directory: str, addr: str, port: int) -> AsyncIterator[None]:
    """``python3 -m http.server`` in the namespace, up once it says so; killed on the way out."""
    proc = await asyncio.create_subprocess_exec(
        *in_netns(netns, sys.executable, "-u", "-m", "http.server", str(port), "--bind", addr),
        cwd=directory,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 10)
        if not line.startswith(b"Serving HTTP"):
            raise CommandError(f"the Linux HTTP server did not start: {line.decode().strip()!r}")
        yield
    finally:
        _kill_group(proc)
        await proc.wait()


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """The process and whatever it started (a shell's pipeline), unless all of it has ended."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def write_payload(path: str, n: int, seed: int, abort: threading.Event | None = None) -> None:
    with open(path, "wb") as f:
        for block in deterministic_bytes(n, seed):
            if abort is not None and abort.is_set():
                return
            f.write(block)


def temporary_directory() -> contextlib.AbstractContextManager[str]:
    """A fresh directory in /tmp, in the run record before it exists, removed on the way out."""
    return recorded_directory("chimney-demo")


# ====================================================================== the three exchanges over TAP


class TapExchanges:
    """The demo's three transfers over one session; remembers each connection as it was mid-transfer."""

    def __init__(self, session: Session, progress: Progress, stats: AppStats, n: int, tmp: str) -> None:
        self.session = session
        self.progress = progress
        self.stats = stats
        self.n = n
        self.tmp = tmp
        self.rows: list[ConnectionRow] = []

    def _rows(self) -> list[ConnectionRow]:
        return [connection_row(sock) for sock in self.session.stack.connections()]

    def _upload_midway(self) -> None:
        """An administrator's upload halfway through: the connection comes back to the host mid-transfer
        and is offloaded again once there (the timeline shows both)."""
        if self.session.control is not None:
            self.session.control.upload_all()

    @contextlib.asynccontextmanager
    async def _metered(self, name: str, sample: Callable[[], int]) -> AsyncIterator[None]:
        midway = self._upload_midway if self.session.control is not None else None
        async with metered(self.progress, name, self.n, sample, self._rows, midway) as meter:
            yield
        add_new_rows(self.rows, meter.rows)

    async def curl_download(self) -> Transfer:
        n, stats = self.n, self.stats
        headers = os.path.join(self.tmp, "headers")
        url = f"http://{self.session.addr.ip}:{HTTP_PORT}/bytes/{n}?seed={SEED_DOWN}"
        # coreutils sha256sum hashes slower than the stack sends; Python's hashlib (OpenSSL) keeps up, so the
        # figure is the stack's and not the checker's.
        shell = f"curl -sS --fail -D {shlex.quote(headers)} {shlex.quote(url)} | {_SHA256_STDIN}"
        await asyncio.to_thread(deterministic_sha256, n, SEED_DOWN)  # the server's header digest, cached now
        start = stats.bytes_out
        async with self._metered("curl GET, stack -> Linux", lambda: stats.bytes_out - start):
            clock = Clock()
            out = await run_in_netns(self.session.netns, shell)
            wall, cpu = clock.stop()
        expected = deterministic_sha256(n, SEED_DOWN)
        header_digest = _header(headers, "x-content-sha256")
        # Both must hold: curl's bytes hash to the digest, and the header announced that same digest.
        got = out.split()[0] if header_digest == expected else f"header said {header_digest}"
        return Transfer("curl GET, stack -> Linux", n, wall, cpu, expected, got)

    async def curl_upload(self, payload: str) -> Transfer:
        n, stats = self.n, self.stats
        url = f"http://{self.session.addr.ip}:{HTTP_PORT}/sha256"
        # -T streams the file (with -d curl would load all of it first); curl sends Expect: 100-continue.
        content_type = "-H 'Content-Type: application/octet-stream'"
        shell = f"curl -sS --fail -X POST {content_type} -T {shlex.quote(payload)} {url}"
        start = stats.bytes_in
        async with self._metered("curl POST, Linux -> stack", lambda: stats.bytes_in - start):
            clock = Clock()
            out = await run_in_netns(self.session.netns, shell)
            wall, cpu = clock.stop()
        answer = json.loads(out)
        got = answer["sha256"] if answer.get("length") == n else f"length {answer.get('length')}"
        return Transfer("curl POST, Linux -> stack", n, wall, cpu, deterministic_sha256(n, SEED_UP), got)

    async def stack_download(self) -> Transfer:
        """The stack as the client of a Linux server: GET the payload file from ``python3 -m http.server``."""
        n, peer = self.n, str(self.session.peer.ip)
        received = [0]
        digest = hashlib.sha256()
        async with (
            linux_http_server(self.session.netns, self.tmp, peer, LINUX_HTTP_PORT),
            self._metered("stack GET, Linux -> stack", lambda: received[0]),
        ):
            clock = Clock()
            reader, writer = await self.session.runtime.open_connection(peer, LINUX_HTTP_PORT)
            writer.write(f"GET /payload HTTP/1.1\r\nHost: {peer}\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            length = _content_length(await reader.readuntil(b"\r\n\r\n"))
            while data := await reader.read(1 << 20):
                digest.update(data)
                received[0] += len(data)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
            wall, cpu = clock.stop()
        got = digest.hexdigest() if received[0] == length == n else f"length {received[0]} of {length}"
        expected = deterministic_sha256(n, SEED_UP)
        return Transfer("stack GET, Linux -> stack", n, wall, cpu, expected, got)


def _add_offload(result: DemoResult, control: OffloadControl | None, counters: dict[str, Any]) -> None:
    result.offload = counters
    if control is not None:
        result.timeline = timeline_lines(control.records)


def _header(path: str, name: str) -> str:
    with open(path, "rb") as f:
        for line in f.read().decode("latin-1").split("\r\n"):
            key, _, value = line.partition(":")
            if key.strip().lower() == name:
                return value.strip()
    return ""


def _content_length(head: bytes) -> int:
    for line in head.decode("latin-1").split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == "content-length":
            return int(value)
    raise CommandError("the Linux HTTP server sent no Content-Length")


async def tap_demo(args: argparse.Namespace, console: Console) -> DemoResult:
    n = args.size * MB
    netns = args.netns or f"chimney-demo-{os.getpid()}"
    stats = AppStats()
    with temporary_directory() as tmp:
        payload = os.path.join(tmp, "payload")  # uploaded by curl, then served by Linux to the stack
        abort = threading.Event()
        await finish_in_thread(write_payload, payload, n, SEED_UP, abort, on_cancel=abort.set)
        options = OffloadOptions.from_args(args)
        async with open_session(
            netns,
            STACK_ADDR,
            PEER_ADDR,
            offload=options,
            name=getattr(args, "name", None),
            metrics=getattr(args, "metrics", None),
        ) as session:
            server = await session.runtime.start_server(HttpApp(stats), port=HTTP_PORT)
            console.print(
                f"[bold]TAP[/] {session.tap}: stack {session.addr} <-> Linux {session.peer} in {netns}"
            )
            with _progress(console) as progress:
                run = TapExchanges(session, progress, stats, n, tmp)
                transfers = [
                    await run.curl_download(),
                    await run.curl_upload(payload),
                    await run.stack_download(),
                ]
            server.close()
            rows = with_final_states(run.rows, session.stack.connections())
            result = DemoResult("tap", transfers, rows, session.stack.counters)
            _add_offload(result, session.control, session.offload_counters())
            return result


async def _until_signal(work: Coroutine[Any, Any, DemoResult]) -> DemoResult | int:
    """``work``'s result, or the number of the termination signal that cancelled it (its clean-up has run
    to its end by then: the set-up steps finish before they are undone)."""
    stop = stop_on_signals(asyncio.get_running_loop())
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return stop.signum or signal.SIGINT


def _interrupted(console: Console, signum: int) -> int:
    """Says what is left, from this run's record (what was removed is no longer in it), then the exit
    status of a program ended by ``signum``."""
    left = registered()
    if left:
        what = ", ".join(r.describe() for r in left)
        console.print(
            f"[red]Interrupted by {signal_name(signum)}: could not remove {what}; `chimney cleanup` will.[/]"
        )
    else:
        console.print(
            f"[yellow]Interrupted by {signal_name(signum)}: nothing the demo set up is left "
            "(namespace, TAP device, processes and temporary files removed).[/]"
        )
    return 128 + signum


def _check_programs() -> None:
    """The demo runs Linux programs in the namespace: missing ones are one sentence before anything exists."""
    missing = [f"`{name}`" for name in ("ip", "curl") if shutil.which(name) is None]
    if missing:
        raise CommandError(
            f"chimney demo needs {' and '.join(missing)} on PATH to run Linux programs in its namespace: "
            "install iproute2 and curl, or run `chimney demo --sim`.",
            EXIT_UNAVAILABLE,
        )


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
    )


# ====================================================================== entry point


def _console() -> Console:
    """A terminal's width on a terminal; elsewhere (a pipe, a log file) no width at all: rich would wrap at
    80 columns and split table cells over several lines, which a log reader or a grep cannot put together."""
    console = Console()
    if console.is_terminal:
        return console
    return Console(width=LOG_WIDTH)


def run(args: argparse.Namespace) -> int:
    console = _console()
    reason = "--sim was given" if args.sim else network_unavailable_reason()
    if reason is None:
        _check_programs()
        result = asyncio.run(_until_signal(tap_demo(args, console)))
        if isinstance(result, int):
            return _interrupted(console, result)
    else:
        console.print(
            f"[yellow]No TAP device ({reason}): running the same exchanges over the simulated link.[/]"
        )
        from tcpchimney.cli.simdemo import sim_demo

        result = sim_demo(args.sim_size * MB, console, OffloadOptions.from_args(args))
    console.print(summary(result.transfers, result.rows, result.counters))
    if result.timeline:
        console.print(timeline_table(result.timeline))
    ok = bool(result.transfers) and all(t.ok for t in result.transfers)
    console.print("[bold green]SHA-256 checks OK[/]" if ok else "[bold red]SHA-256 MISMATCH[/]")
    transfers = [t.as_dict() for t in result.transfers]
    done = {"event": "done", "link": result.link, "ok": ok, "transfers": transfers, "offload": result.offload}
    print(json.dumps(done), flush=True)
    return 0 if ok else 1
