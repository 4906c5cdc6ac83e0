"""Termination signals unwind instead of killing; run records name what a process made (no root needed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from tcpchimney.link import leftovers, runs
from tcpchimney.link.runs import PATH, Resource, RunRecord
from tcpchimney.link.signals import Terminated, deferred_signals, terminate_on_signals, termination_signals

GUARDED = textwrap.dedent(
    """
    import sys, time
    from tcpchimney.link.signals import terminate_on_signals
    with terminate_on_signals():
        try:
            print("ready", flush=True)
            time.sleep(30)
        finally:
            with open(sys.argv[1], "w") as f:
                f.write("cleaned up")
    """
)


@pytest.mark.parametrize(
    "signum",
    [
        signal.SIGTERM,
        signal.SIGHUP,
        signal.SIGQUIT,
        signal.SIGUSR1,
        signal.SIGUSR2,
        signal.SIGALRM,
        signal.SIGRTMIN,
    ],
)
def test_each_termination_signal_runs_finally_and_exits_128_plus_n(signum: int, tmp_path: Any) -> None:
    marker = tmp_path / "marker"
    proc = subprocess.Popen(
        [sys.executable, "-c", GUARDED, str(marker)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=10)
    assert marker.read_text() == "cleaned up"
    assert proc.returncode == 128 + signum and b"Traceback" not in err  # like a shell's status, silently


def test_sigint_stays_keyboard_interrupt(tmp_path: Any) -> None:
    marker = tmp_path / "marker"
    proc = subprocess.Popen(
        [sys.executable, "-c", GUARDED, str(marker)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert marker.read_text() == "cleaned up" and b"KeyboardInterrupt" in err


def test_dispositions_come_back_afterwards() -> None:
    before = {s: signal.getsignal(s) for s in termination_signals()}
    with terminate_on_signals(), terminate_on_signals():  # nested: the outer block restores
        assert signal.getsignal(signal.SIGHUP) is not before[signal.SIGHUP]
    assert {s: signal.getsignal(s) for s in termination_signals()} == before


def test_a_signal_during_a_deferred_section_is_raised_when_it_ends() -> None:
    reached_end = False
    with terminate_on_signals(), pytest.raises(Terminated) as exc, deferred_signals():
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.05)  # the handler has run by now: it only noted the signal
        reached_end = True
    assert reached_end and exc.value.signum == signal.SIGUSR1 and exc.value.code == 128 + signal.SIGUSR1


def test_a_forked_child_dies_by_the_signal_instead_of_unwinding_the_parents_blocks() -> None:
    with terminate_on_signals():
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.write(ready_w, b"!")
                time.sleep(10)
            finally:
                os._exit(3)  # reached only if SIGTERM unwound this copy of the parent's stack
        os.read(ready_r, 1)
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
        os.close(ready_r)
        os.close(ready_w)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM


# ------------------------------------------------------------------------------------------ run records


@pytest.fixture
def run_dir(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    path = str(tmp_path / "runs")
    monkeypatch.setenv(runs.RUN_DIR_ENV, path)
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_resource_is_on_record_until_it_is_dropped(run_dir: str) -> None:
    res = Resource(PATH, "/tmp/chimney-x")
    runs.register(res)
    with open(os.path.join(run_dir, f"{os.getpid()}.json")) as f:
        body = json.load(f)
    assert body["resources"] == [res.as_dict()] and body["pid"] == os.getpid()
    assert RunRecord.load(os.path.join(run_dir, f"{os.getpid()}.json")).alive
    runs.unregister(res)
    assert not os.path.exists(os.path.join(run_dir, f"{os.getpid()}.json"))  # empty: the record goes


def test_a_reused_pid_is_not_the_owner(run_dir: str) -> None:
    start = runs.process_start(os.getpid())
    assert start is not None
    assert not RunRecord(os.getpid(), start + 1, ["x"], directory=run_dir).alive
    assert not RunRecord(_dead_pid(), start, ["x"], directory=run_dir).alive


def test_cleanup_removes_what_a_dead_run_left_and_only_that(run_dir: str, tmp_path: Any) -> None:
    left = tmp_path / "chimney-demo-1-ab"
    left.mkdir()
    (left / "payload").write_bytes(b"x" * 1000)
    foreign = tmp_path / "precious"
    foreign.mkdir()
    dead = RunRecord(
        _dead_pid(), 1, ["chimney", "demo"], [Resource(PATH, str(left)), Resource(PATH, str(foreign))]
    )
    dead.save()
    alive = RunRecord(
        os.getpid(),
        runs.process_start(os.getpid()),
        ["pytest"],
        [Resource(PATH, str(tmp_path / "chimney-live"))],
    )
    (tmp_path / "chimney-live").mkdir()
    alive.save()
    with open(os.path.join(run_dir, "junk.json"), "w") as f:
        f.write("{not json")

    said: list[str] = []
    assert leftovers.clean(True, said.append) == 2  # dry run: listed, nothing removed
    assert left.exists() and any("would remove" in s and str(left) in s for s in said)
    said.clear()
    leftovers.clean(False, said.append)
    assert not left.exists()
    assert foreign.exists() and (tmp_path / "chimney-live").exists()  # not ours by name; a live run's
    assert any("still running" in s for s in said) and any("junk.json" in s for s in said)
    assert any(s.startswith("removed ") and str(left) in s for s in said)
    assert os.path.exists(dead.path)  # it still names what could not be removed


def test_cleanup_kills_the_nic_process_a_dead_run_left_and_not_a_reused_pid(run_dir: str) -> None:
    nic = subprocess.Popen(["sleep", "60"])  # stands for a NIC that outlived its host
    try:
        mine = runs.process_resource(nic.pid)
        other = Resource(runs.PROCESS, f"{os.getpid()}@{(runs.process_start(os.getpid()) or 0) + 1}")
        RunRecord(_dead_pid(), 1, ["chimney", "serve"], [mine, other]).save()
        said: list[str] = []
        assert leftovers.clean(False, said.append) == 1  # a pid with another start time is not it
        assert nic.wait(timeout=5) == -signal.SIGKILL
        assert any(s.startswith(f"removed process {nic.pid}, left by run") for s in said), said
        assert runs.load_records()[0] == [], "the record went with the process"
    finally:
        if nic.poll() is None:
            nic.kill()
            nic.wait()
