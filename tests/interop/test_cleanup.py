"""Nothing outlives a command, however it ends.

``chimney serve`` and ``chimney demo`` are stopped by each catchable termination signal at several moments:
right at start, once the run record names the first resource (before it exists), once the namespace appears
(mid set-up), once the command is up (serve ready, demo transferring). Then nothing may be left: no
namespace, no link in a kept namespace, no run record, no temporary directory. A ``kill -9`` leaves its run
record, from which ``chimney cleanup`` removes everything; a ``serve`` after a ``kill -9`` in a kept namespace
removes the dead run's TAP and is reachable; a second ``serve`` on the same namespace refuses. The README's
asyncio program (TapTopology as a context manager) cleans up on signals as well.

Each test gives the commands a run directory of its own (``TCPCHIMNEY_RUN_DIR``), so ``chimney cleanup`` sees
only the runs the test made.
"""

from __future__ import annotations

import glob
import json
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

import pytest

from tcpchimney.cli.nsutil import socket_in_netns
from tcpchimney.link.netns import create_netns, netns_exists, netns_path
from tcpchimney.link.runs import RUN_DIR_ENV

# -X faulthandler: a command that hangs is sent SIGABRT by finish(), and its threads' tracebacks say where.
PYTHON = [sys.executable, "-X", "faulthandler"]
CHIMNEY = [*PYTHON, "-m", "tcpchimney.cli.main"]
TIMEOUT = 20.0
ALL_SIGNALS = [
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGALRM,
]


@pytest.fixture
def run_dir(tmp_path: Any, monkeypatch: pytest.MonkeyPatch, require_net: None) -> str:
    path = str(tmp_path / "runs")
    monkeypatch.setenv(RUN_DIR_ENV, path)  # the commands inherit it
    return path


def start(*argv: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*CHIMNEY, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True
    )


def poll(condition: Callable[[], bool], proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the command ended ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {TIMEOUT}s")
        time.sleep(0.0005)


def line_starting(proc: subprocess.Popen[bytes], prefix: bytes) -> bytes:
    """The first stdout line starting with ``prefix`` (the lines before it are dropped)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], deadline - time.monotonic())
        line = proc.stdout.readline() if ready else b""
        if not line:
            break
        if line.lstrip().startswith(prefix):
            return line
    pytest.fail(f"no line starting with {prefix!r} (exit {proc.poll()})")


def records(run_dir: str) -> list[str]:
    return sorted(glob.glob(os.path.join(run_dir, "*.json")))


def links_in(netns: str) -> list[str]:
    out = subprocess.run(["ip", "-n", netns, "-o", "link"], capture_output=True, text=True, check=True).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]


def left_behind(netns: str, run_dir: str, kept: bool = False, pid: int | None = None) -> list[str]:
    left = [f"record {path}" for path in records(run_dir)]
    if netns_exists(netns):
        if not kept:
            left.append(f"namespace {netns}")
        left += [f"link {name}" for name in links_in(netns) if name != "lo"]
    if pid is not None:
        left += glob.glob(f"/tmp/chimney-demo-{pid}-*")
    return left


def stop_at(proc: subprocess.Popen[bytes], moment: str, signum: int, netns: str, run_dir: str) -> None:
    if moment == "50 ms":
        time.sleep(0.05)
    elif moment == "record":  # the first resource is noted, and is about to be made
        poll(lambda: bool(records(run_dir)), proc, "run record")
    elif moment == "netns":  # the namespace exists: the TAP and its address are being made
        poll(lambda: os.path.exists(netns_path(netns)), proc, "namespace")
    elif moment == "ready":
        assert json.loads(line_starting(proc, b"{"))["event"] == "ready"
    elif moment == "transfer":  # the demo's session is up and curl is downloading
        line_starting(proc, b"TAP")
    proc.send_signal(signum)


def finish(proc: subprocess.Popen[bytes]) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # faulthandler prints each thread's traceback, then it ends
        try:
            _, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            err = b"(no traceback: the process did not end on SIGABRT either)"
        tail = err.decode(errors="replace")[-4000:]
        pytest.fail(f"the command did not end within {TIMEOUT}s; where it was:\n{tail}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return out.decode(errors="replace"), err.decode(errors="replace")


def ended_by(proc: subprocess.Popen[bytes], signum: int, graceful: set[int]) -> bool:
    """Exit statuses a command may end with after ``signum``: killed before Python ran our code (nothing made
    yet), Terminated (128 + N) or the command's own graceful status."""
    return proc.returncode in {-signum, 128 + signum, *graceful}


# ---------------------------------------------------------------------------------------- serve


SERVE_CASES = [(s, m) for s in ALL_SIGNALS for m in ("netns", "ready")] + [
    (s, m) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1) for m in ("at once", "50 ms", "record")
]


@pytest.mark.parametrize(
    ("signum", "moment"), SERVE_CASES, ids=[f"{signal.Signals(s).name}-{m}" for s, m in SERVE_CASES]
)
def test_serve_stopped_by_a_signal_leaves_nothing(
    netns_name: str, run_dir: str, signum: int, moment: str
) -> None:
    proc = start("serve", "echo", "--netns", netns_name)
    stop_at(proc, moment, signum, netns_name, run_dir)
    _, err = finish(proc)
    assert "Traceback" not in err
    assert ended_by(proc, signum, {0}), (proc.returncode, err)
    assert left_behind(netns_name, run_dir) == []


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR2])
@pytest.mark.parametrize("moment", ["record", "ready"])
def test_serve_in_a_kept_namespace_removes_its_tap(
    netns_name: str, run_dir: str, signum: int, moment: str
) -> None:
    create_netns(netns_name)
    proc = start("serve", "discard", "--netns", netns_name)
    stop_at(proc, moment, signum, netns_name, run_dir)
    _, err = finish(proc)
    assert "Traceback" not in err and ended_by(proc, signum, {0})
    assert netns_exists(netns_name)  # not serve's to remove
    assert left_behind(netns_name, run_dir, kept=True) == []


def test_sigpipe_is_ignored_and_the_command_keeps_serving(netns_name: str, run_dir: str) -> None:
    proc = start("serve", "echo", "--netns", netns_name)
    stop_at(proc, "ready", signal.SIGPIPE, netns_name, run_dir)
    assert echo(netns_name, b"still here") == b"still here"
    proc.send_signal(signal.SIGTERM)
    finish(proc)
    assert proc.returncode == 0 and left_behind(netns_name, run_dir) == []


def echo(netns: str, data: bytes, port: int = 7) -> bytes:
    with socket_in_netns(netns) as s:
        s.settimeout(10)
        s.connect(("198.18.0.2", port))
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    return got


# ---------------------------------------------------------------------------------------- kill -9


def test_kill_9_then_cleanup_leaves_nothing(netns_name: str, run_dir: str) -> None:
    proc = start("serve", "echo", "--netns", netns_name)
    stop_at(proc, "ready", signal.SIGKILL, netns_name, run_dir)
    finish(proc)
    assert netns_exists(netns_name) and records(run_dir)  # what an uncatchable end leaves

    dry = subprocess.run([*CHIMNEY, "cleanup", "--dry-run"], capture_output=True, text=True, timeout=TIMEOUT)
    assert dry.returncode == 0, dry.stderr
    assert f"would remove namespace {netns_name}" in dry.stdout and "would remove link chimtap" in dry.stdout
    assert netns_exists(netns_name) and records(run_dir)  # a dry run removes nothing

    done = subprocess.run([*CHIMNEY, "cleanup"], capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert f"removed namespace {netns_name}" in done.stdout
    assert left_behind(netns_name, run_dir) == []
    again = subprocess.run([*CHIMNEY, "cleanup"], capture_output=True, text=True, timeout=TIMEOUT)
    assert again.stdout.startswith("nothing to clean up")


def test_serve_after_kill_9_in_a_kept_namespace_works(netns_name: str, run_dir: str) -> None:
    create_netns(netns_name)
    first = start("serve", "echo", "--netns", netns_name)
    stop_at(first, "ready", signal.SIGKILL, netns_name, run_dir)
    finish(first)
    (stale,) = [name for name in links_in(netns_name) if name != "lo"]  # the dead run's TAP, still routed to

    second = start("serve", "echo", "--netns", netns_name)
    try:
        assert json.loads(line_starting(second, b"{"))["event"] == "ready"
        assert echo(netns_name, b"through the new TAP") == b"through the new TAP"
        assert stale not in links_in(netns_name)
    finally:
        second.send_signal(signal.SIGTERM)
        _, err = finish(second)
    assert f"removed TAP {stale} in namespace {netns_name}" in err
    assert second.returncode == 0
    assert left_behind(netns_name, run_dir, kept=True) == []  # the dead run's record went with its TAP


def test_a_second_serve_on_the_same_namespace_refuses(netns_name: str, run_dir: str) -> None:
    first = start("serve", "echo", "--netns", netns_name)
    try:
        stop_at(first, "ready", 0, netns_name, run_dir)  # signal 0: only waits for ready
        second = start("serve", "echo", "--netns", netns_name)
        _, err = finish(second)
        assert second.returncode not in (0, None)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert f"namespace {netns_name} already has 198.18.0.1/24" in err and "still running" in err
        assert echo(netns_name, b"first one") == b"first one"  # the second one took nothing from it
    finally:
        first.send_signal(signal.SIGTERM)
        finish(first)
    assert first.returncode == 0 and left_behind(netns_name, run_dir) == []


# ---------------------------------------------------------------------------------------- demo

DEMO_CASES = [
    (signal.SIGINT, "at once"),
    (signal.SIGTERM, "50 ms"),
    (signal.SIGHUP, "record"),
    (signal.SIGQUIT, "record"),
    (signal.SIGTERM, "netns"),
    (signal.SIGUSR1, "netns"),
    (signal.SIGINT, "netns"),
    (signal.SIGHUP, "transfer"),
    (signal.SIGUSR2, "transfer"),
    (signal.SIGALRM, "transfer"),
]


@pytest.mark.parametrize(
    ("signum", "moment"), DEMO_CASES, ids=[f"{signal.Signals(s).name}-{m}" for s, m in DEMO_CASES]
)
def test_demo_stopped_by_a_signal_leaves_nothing_and_says_so(
    netns_name: str, run_dir: str, signum: int, moment: str
) -> None:
    proc = start("demo", "--size", "50", "--netns", netns_name)
    stop_at(proc, moment, signum, netns_name, run_dir)
    out, err = finish(proc)
    assert "Traceback" not in err and ended_by(proc, signum, {0}), (proc.returncode, err)
    assert left_behind(netns_name, run_dir, pid=proc.pid) == []
    if proc.returncode == 128 + signum:  # it says what happened, once it is true
        said = " ".join(out.split())
        assert f"Interrupted by {signal.Signals(signum).name}: nothing the demo set up is left" in said


def test_demo_kill_9_then_cleanup(netns_name: str, run_dir: str) -> None:
    proc = start("demo", "--size", "200", "--netns", netns_name)
    stop_at(proc, "transfer", signal.SIGKILL, netns_name, run_dir)
    finish(proc)
    assert glob.glob(f"/tmp/chimney-demo-{proc.pid}-*")  # its payload, among what it left
    done = subprocess.run([*CHIMNEY, "cleanup"], capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert left_behind(netns_name, run_dir, pid=proc.pid) == []


def test_demo_without_curl_says_so_before_making_anything(netns_name: str, run_dir: str) -> None:
    env = {**os.environ, "PATH": "/nonexistent"}
    proc = start("demo", "--netns", netns_name, env=env)
    out, err = finish(proc)
    assert proc.returncode != 0 and out == ""
    assert len(err.strip().splitlines()) == 1 and "`ip` and `curl`" in err and "Traceback" not in err
    assert left_behind(netns_name, run_dir) == []


# ---------------------------------------------------------------------------------------- the API

README_PROGRAM = textwrap.dedent(
    """
    import asyncio, os, random, sys
    from tcpchimney.api.runtime import Runtime
    from tcpchimney.host.stack import HostStack, InterfaceConfig
    from tcpchimney.link.netns import TapTopology
    from tcpchimney.link.tap import TapDevice

    async def main(device):
        iface = InterfaceConfig.parse("02:00:00:00:00:02", "198.18.0.2/24", features=device.features)
        stack = HostStack(iface, secret=os.urandom(16), rng=random.Random())
        async with Runtime(stack, device) as runtime:
            server = await runtime.start_server(lambda r, w: w.close(), port=7)
            print("ready", flush=True)
            await asyncio.sleep(60)
            server.close()

    with TapTopology(netns=sys.argv[1], peer="198.18.0.1/24", stack="198.18.0.2/24") as topo:
        device = TapDevice(topo.tap_name)
        try:
            asyncio.run(main(device))
        finally:
            device.close()
    """
)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGINT])
def test_the_readme_asyncio_program_cleans_up_on_signals(netns_name: str, run_dir: str, signum: int) -> None:
    proc = subprocess.Popen(
        [*PYTHON, "-c", README_PROGRAM, netns_name], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    line_starting(proc, b"ready")
    proc.send_signal(signum)
    _, err = finish(proc)
    assert left_behind(netns_name, run_dir) == []
    if signum == signal.SIGINT:
        assert "KeyboardInterrupt" in err
    else:
        assert proc.returncode == 128 + signum and "Traceback" not in err


def test_the_namespace_outlives_its_creator_while_another_stack_uses_it(
    netns_name: str, run_dir: str
) -> None:
    first = start("serve", "echo", "--netns", netns_name)
    stop_at(first, "ready", 0, netns_name, run_dir)
    other_subnet = ["--addr", "198.18.5.2/24", "--peer", "198.18.5.1/24"]
    second = start("serve", "echo", "--netns", netns_name, "--port", "7", *other_subnet)
    try:
        stop_at(second, "ready", 0, netns_name, run_dir)
        first.send_signal(signal.SIGTERM)
        finish(first)
        assert netns_exists(netns_name)  # its creator ended, but a live stack still uses it
        with socket_in_netns(netns_name) as s:
            s.settimeout(10)
            s.connect(("198.18.5.2", 7))
    finally:
        second.send_signal(signal.SIGTERM)
        finish(second)
    assert first.returncode == 0 and second.returncode == 0
    assert left_behind(netns_name, run_dir) == []  # the last one out removed it
