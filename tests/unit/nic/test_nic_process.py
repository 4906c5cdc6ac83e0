"""The NIC process (``python -m tcpchimney.nic``) started by ``NicProcess``: a SOCK_SEQPACKET socketpair
stands in for the TAP (one frame per read and per write, as a TAP), so no privileges are needed. Every
process a test starts is killed and reaped however the test ends."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tcpchimney.chimney.completions import Completion
from tcpchimney.chimney.requests import ReachabilityReply
from tcpchimney.chimney.status import Status
from tcpchimney.nic.descriptors import H2N_SLEEP_OFF
from tcpchimney.nic.launch import NicProcess, NicStartError
from tcpchimney.nic.process import NicConfig
from tcpchimney.wire.vnet import plain_header

MAC = "02:00:00:00:00:01"
ARP_FRAME = bytes(6) + bytes([2, 0, 0, 0, 0, 9]) + b"\x08\x06" + bytes(28)


@contextmanager
def nic_process(
    config: NicConfig | None = None, **options: Any
) -> Iterator[tuple[NicProcess, socket.socket, list[Any]]]:
    """A started NIC, the test's end of its fake TAP, and the events it reported."""
    wire, tap = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    events: list[Any] = []
    config = config or NicConfig(mac=MAC)
    nic = NicProcess(config, tap.fileno(), on_event=lambda n, f: events.append((n, f)), **options)
    try:
        nic.start()
        tap.close()  # the NIC has its own descriptor now
        yield nic, wire, events
    finally:
        nic.close()
        wire.close()
        tap.close()  # a second close is a no-op


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_the_nic_runs_in_its_own_process_and_is_reaped_at_close() -> None:
    with nic_process() as (nic, _, events):
        assert nic.pid is not None and nic.pid != os.getpid() and not _gone(nic.pid)
        assert events == [("nic_started", {"pid": nic.pid, "epoch": 1})]
        pid = nic.pid
        assert nic.arena.nic_words()[:2] == (pid, 1), "it announced itself in the arena"
    assert _gone(pid)


def test_frames_it_does_not_claim_come_up_the_frames_ring_and_the_host_is_woken() -> None:
    with nic_process() as (nic, wire, _):
        target = nic.target
        assert target is not None
        wire.send(plain_header() + ARP_FRAME)
        readable, _, _ = select.select([target.fileno()], [], [], 5.0)
        assert readable, "the NIC rang the host's doorbell"
        frame = target.read()
        assert frame is not None and frame.tobytes() == ARP_FRAME
        assert nic.counters()["lifecycle"]["passed_up"] == 1


def test_a_request_crosses_to_the_sleeping_nic_and_its_completion_comes_back() -> None:
    """The NIC sleeps on its doorbell; the host's submit rings it; the completion wakes the host."""
    with nic_process() as (nic, _, _):
        target = nic.target
        assert target is not None
        deadline = time.monotonic() + 10  # the NIC starts (imports) and then says asleep in its sleep word
        while not target.arena.words[H2N_SLEEP_OFF // 8] & 1:
            assert time.monotonic() < deadline, "the NIC never went to sleep"
            time.sleep(0.005)
        target.submit(ReachabilityReply(5, 77, 1, 0.0), time.monotonic())
        assert select.select([target.fileno()], [], [], 5.0)[0]
        out = target.poll()
        assert out == Completion(5, Status.INVALID_STATE)  # no such neighbor there
        assert target.transport_counters()["doorbells_rung"] >= 1


def test_a_killed_nic_is_detected_reported_and_answered_for() -> None:
    async def body() -> None:
        with nic_process() as (nic, _, events):
            woken = asyncio.Event()
            failed: list[bool] = []
            nic.attach(asyncio.get_running_loop(), woken.set, lambda: failed.append(True))
            assert nic.pid is not None and nic.target is not None
            killed = time.time()
            os.kill(nic.pid, signal.SIGKILL)
            await asyncio.wait_for(woken.wait(), 5.0)
            name, fields = events[-1]
            assert name == "nic_failed" and fields["cause"] == "killed by SIGKILL" and failed == [True]
            assert fields["detected"] - killed < 1.0
            assert nic.target.failed == "killed by SIGKILL"
            nic.target.submit(ReachabilityReply(9, 1, 1, 0.0), time.monotonic())
            outputs = []
            while (out := nic.target.poll()) is not None:
                outputs.append(out)
            assert Completion(9, Status.REQUEST_ABORTED) in outputs, "answered for the dead NIC"

    asyncio.run(body())


HANG_BOUND = 0.5


def test_a_stopped_nic_is_found_hung_by_the_watchdog_killed_reaped_and_answered_for() -> None:
    """SIGSTOP: no death, no end of file, only a heartbeat that no longer moves."""

    async def body() -> None:
        with nic_process(hang_bound=HANG_BOUND) as (nic, _, events):
            woken = asyncio.Event()
            nic.attach(asyncio.get_running_loop(), woken.set)
            target, pid = nic.target, nic.pid
            assert pid is not None and target is not None
            deadline = time.monotonic() + 10  # it sleeps once started: a request left for it stays pending
            while not target.arena.words[H2N_SLEEP_OFF // 8] & 1:
                assert time.monotonic() < deadline, "the NIC never went to sleep"
                await asyncio.sleep(0.005)
            os.kill(pid, signal.SIGSTOP)
            stopped = time.time()
            target.submit(ReachabilityReply(7, 77, 1, 0.0), time.monotonic())
            await asyncio.wait_for(woken.wait(), 5.0)
            name, fields = events[-1]
            assert name == "nic_failed" and fields["detected_by"] == "heartbeat"
            assert fields["cause"].startswith("hung (no heartbeat for ")
            assert fields["cause"].endswith("then was killed by SIGKILL")
            # Not before a bound of silence (its last beat came at most one 50 ms sleep before the stop), and
            # within the bound and a margin for a loaded machine (the look comes every quarter bound).
            assert HANG_BOUND - 0.1 <= fields["detected"] - stopped < HANG_BOUND + 1.0
            assert target.failed == fields["cause"]
            assert _gone(pid), "fenced and reaped"
            outputs = []
            while (out := target.poll()) is not None:
                outputs.append(out)
            assert Completion(7, Status.REQUEST_ABORTED) in outputs, "the pending call is answered"

    asyncio.run(body())


def test_an_idle_nic_is_not_taken_for_a_hung_one() -> None:
    """An idle NIC sleeps, but wakes and beats every 50 ms: six bounds of idleness convict nothing."""

    async def body() -> None:
        with nic_process(hang_bound=HANG_BOUND) as (nic, _, events):
            nic.attach(asyncio.get_running_loop(), lambda: None)
            await asyncio.sleep(6 * HANG_BOUND)
            assert [name for name, _ in events] == ["nic_started"] and nic.alive
            assert nic.counters()["nic_process"]["heartbeat_looks"] >= 6 * 2, "the watchdog looked"

    asyncio.run(body())


def test_a_hang_bound_within_the_nics_sleep_bound_is_refused() -> None:
    with pytest.raises(ValueError, match="sleep bound"):
        NicProcess(NicConfig(mac=MAC), -1, hang_bound=0.05)


def test_a_nic_that_cannot_start_says_why_in_one_sentence() -> None:
    with pytest.raises(NicStartError, match="vnet_hdr 7"), nic_process(NicConfig(mac=MAC, vnet_hdr=7)):
        pass


def test_a_config_field_it_does_not_know_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown config fields: colour"):
        NicConfig.from_json('{"mac": "02:00:00:00:00:01", "colour": "red"}')


async def _next_event(events: list[Any], name: str, after: int, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = [f for n, f in events[after:] if n == name]
        if found:
            return found[0]  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"no {name} within {timeout} s: {events}"
        await asyncio.sleep(0.01)


def test_a_nic_killed_at_a_crash_point_is_followed_by_a_new_one_the_target_resumes_on() -> None:
    """``arm_crash``: the NIC kills itself at the named point; a new NIC (epoch 2, its own pid) starts
    after the hold-down and the same ProcessTarget announces TargetResumed."""
    from tcpchimney.chimney.indications import TargetResumed

    async def body() -> None:
        with nic_process() as (nic, _, events):
            nic.attach(asyncio.get_running_loop(), lambda: None)
            first, target = nic.pid, nic.target
            assert target is not None
            with pytest.raises(ValueError, match="unknown crash point"):
                nic.arm_crash("nowhere")
            nic.arm_crash("after_commit")  # passed at every turn of the loop
            failed = await _next_event(events, "nic_failed", 0)
            assert failed["cause"] == "killed by SIGKILL" and failed["pid"] == first
            started = await _next_event(events, "nic_started", 1)
            assert started["epoch"] == 2 and started["pid"] != first and started["restart"] is True
            outputs = []
            while (out := target.poll()) is not None:
                outputs.append(out)
            assert any(isinstance(o, TargetResumed) for o in outputs)
            assert nic.alive and nic.counters()["nic_process"]["restarts"] == 1

    asyncio.run(body())


def test_fault_knobs_reach_the_target_across_the_process_boundary() -> None:
    """``fault("pause")`` makes the NIC's target indicate TargetPaused to the host; a bad knob is refused
    with one sentence."""
    from tcpchimney.chimney.indications import TargetPaused

    with nic_process() as (nic, _, _events):
        target = nic.target
        assert target is not None
        with pytest.raises(ValueError, match="unknown fault"):
            nic.fault("melt")
        with pytest.raises(ValueError, match="missing or bad argument"):
            nic.fault("request_upload")
        nic.fault("pause")
        deadline = time.monotonic() + 10
        got: list[Any] = []
        while not any(isinstance(o, TargetPaused) for o in got):
            assert time.monotonic() < deadline, got
            select.select([target.fileno()], [], [], 0.05)
            target.read()
            while (out := target.poll()) is not None:
                got.append(out)
