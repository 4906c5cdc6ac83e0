"""Pinning the NIC process to a CPU (``NicProcess(cpu=N)``, nic/affinity.py): the CPU is checked against the
CPUs this process may use, the child runs on that CPU only, and a pin that fails leaves no process behind.
A SOCK_SEQPACKET socketpair stands in for the TAP, so no privileges are needed."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tcpchimney.nic import affinity, launch
from tcpchimney.nic.launch import NicProcess, NicStartError
from tcpchimney.nic.process import NicConfig

MAC = "02:00:00:00:00:01"


@contextmanager
def started(**options: Any) -> Iterator[NicProcess]:
    wire, tap = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    nic = NicProcess(NicConfig(mac=MAC), tap.fileno(), **options)
    try:
        nic.start()
        yield nic
    finally:
        nic.close()
        wire.close()
        tap.close()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize(
    ("text", "cpus"), [("0", {0}), ("0-3", {0, 1, 2, 3}), ("0-1,4,6-7\n", {0, 1, 4, 6, 7}), ("5", {5})]
)
def test_cpu_lists_parse_and_format_as_the_kernel_writes_them(text: str, cpus: set[int]) -> None:
    assert affinity.parse_cpu_list(text) == cpus
    assert affinity.format_cpu_list(cpus) == text.strip()


def test_an_allowed_cpu_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 3})
    assert affinity.check_cpu(2) == 2


def test_a_cpu_the_machine_does_not_have_is_refused_in_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(affinity, "present_cpus", lambda: frozenset({0, 1}))
    for cpu in (2, -1):
        with pytest.raises(ValueError) as info:
            affinity.check_cpu(cpu)
        assert str(info.value) == f"CPU {cpu} does not exist: this machine has CPUs 0-1"


def test_a_cpu_outside_this_process_s_set_is_refused_in_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    monkeypatch.setattr(affinity, "present_cpus", lambda: frozenset({0, 1, 2, 3}))
    with pytest.raises(ValueError) as info:
        affinity.check_cpu(3)
    assert str(info.value) == "CPU 3 is not allowed for this process: it may run on CPU 0"


def test_the_machine_s_cpus_come_from_sysfs() -> None:
    assert affinity.allowed_cpus() <= affinity.present_cpus()


def test_a_pinned_nic_runs_on_that_cpu_only() -> None:
    cpu = max(affinity.allowed_cpus())
    with started(cpu=cpu) as nic:
        assert nic.pid is not None
        assert os.sched_getaffinity(nic.pid) == {cpu}
        threads = os.listdir(f"/proc/{nic.pid}/task")
        assert all(os.sched_getaffinity(int(tid)) == {cpu} for tid in threads), "every thread too"
        assert nic.target is not None and nic.target.failed is None


def test_an_unpinned_nic_may_run_where_its_host_may() -> None:
    with started() as nic:
        assert nic.pid is not None and nic.cpu is None
        assert os.sched_getaffinity(nic.pid) == os.sched_getaffinity(0)


def test_a_cpu_it_may_not_use_is_refused_before_anything_is_made(monkeypatch: pytest.MonkeyPatch) -> None:
    spawned: list[int] = []
    monkeypatch.setattr(launch.Arena, "create", lambda config: pytest.fail("an arena was made"))
    with pytest.raises(ValueError, match=r"^CPU 4096 does not exist: this machine has CPU"):
        NicProcess(NicConfig(mac=MAC), -1, cpu=4096, on_spawned=spawned.append)
    assert spawned == []


def test_a_pin_that_fails_after_the_spawn_kills_and_reaps_the_nic(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU went offline (or left the cpuset) between the check and the spawn."""

    def offline(pid: int, cpu: int) -> None:
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(launch, "pin", offline)
    spawned: list[int] = []
    reaped: list[int] = []
    cpu = min(affinity.allowed_cpus())
    wire, tap = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    nic = NicProcess(
        NicConfig(mac=MAC), tap.fileno(), cpu=cpu, on_spawned=spawned.append, on_reaped=reaped.append
    )
    try:
        with pytest.raises(NicStartError) as info:
            nic.start()
        assert str(info.value) == f"cannot pin it to CPU {cpu}: Invalid argument"
        assert len(spawned) == 1 and reaped == spawned and _gone(spawned[0])
    finally:
        nic.close()
        wire.close()
        tap.close()
