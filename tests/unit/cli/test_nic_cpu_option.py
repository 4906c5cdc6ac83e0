"""``--nic-cpu N`` on serve, nc and demo: off by default, checked at parse time with one sentence, only with
the NIC process, and handed to ``NicProcess`` as its ``cpu``."""

from __future__ import annotations

import os

import pytest

from tcpchimney.cli import common, main, wiring
from tcpchimney.cli.offload import OffloadOptions
from tcpchimney.host.interface import InterfaceConfig
from tcpchimney.nic import affinity, launch
from tcpchimney.wire.frame import DeviceFeatures

IFACE = InterfaceConfig.parse("02:00:00:00:00:01", "198.18.0.2/24")


class Device:
    """What the session reads of its TAP device."""

    features = DeviceFeatures()
    vnet_hdr_size = 10

    def fileno(self) -> int:
        return 0


COMMANDS = [["serve", "echo", "--netns", "t1"], ["nc", "-l", "9", "--netns", "t1"], ["demo"]]


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main.parse_args(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, "one line"
    return err


@pytest.mark.parametrize("command", COMMANDS)
def test_the_nic_is_not_pinned_unless_asked(command: list[str]) -> None:
    args = main.parse_args([*command, "--nic", "process"])
    assert args.nic_cpu is None and OffloadOptions.from_args(args).nic_cpu is None


@pytest.mark.parametrize("command", COMMANDS)
def test_nic_cpu_reaches_the_offload_options(command: list[str]) -> None:
    cpu = max(affinity.allowed_cpus())
    args = main.parse_args([*command, "--nic", "process", "--nic-cpu", str(cpu)])
    assert args.nic_cpu == cpu
    assert OffloadOptions.from_args(args) == OffloadOptions("automatic", nic="process", nic_cpu=cpu)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_cpu_that_does_not_exist_is_one_sentence(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    present = affinity.format_cpu_list(affinity.present_cpus())
    err = _refused([*command, "--nic", "process", "--nic-cpu", "4096"], capsys)
    assert "argument --nic-cpu: CPU 4096 does not exist: this machine has CPU" in err
    assert present in err


def test_a_cpu_this_process_may_not_use_is_one_sentence(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    monkeypatch.setattr(affinity, "present_cpus", lambda: frozenset({0, 1}))
    err = _refused(["serve", "echo", "--netns", "t1", "--nic", "process", "--nic-cpu", "1"], capsys)
    assert "argument --nic-cpu: CPU 1 is not allowed for this process: it may run on CPU 0 " in err


def test_a_cpu_that_is_not_a_number_is_one_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    err = _refused(["demo", "--nic", "process", "--nic-cpu", "one"], capsys)
    assert "argument --nic-cpu: not a CPU number: 'one'" in err


@pytest.mark.parametrize(
    "extra", [["--nic", "inline"], ["--nic", "process", "--offload", "disabled"]], ids=str
)
def test_nic_cpu_needs_the_nic_process(extra: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    cpu = str(max(affinity.allowed_cpus()))
    err = _refused(["serve", "echo", "--netns", "t1", *extra, "--nic-cpu", cpu], capsys)
    assert "--nic-cpu pins the NIC process: it needs --nic process and --offload enabled or automatic" in err


def test_the_session_hands_the_cpu_to_the_nic_process(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int | None] = []

    def record(self: launch.NicProcess, timeout: float = 0.0) -> None:
        seen.append(self.cpu)
        raise launch.NicStartError("stopped by the test")

    monkeypatch.setattr(launch.NicProcess, "start", record)
    cpu = max(affinity.allowed_cpus())
    for asked in (cpu, None):
        with pytest.raises(common.CommandError):
            wiring._stack_behind_nic(IFACE, OffloadOptions("enabled", nic="process", nic_cpu=asked), Device())
    assert seen == [cpu, None]


def test_a_cpu_gone_since_the_command_line_fails_the_session_in_one_sentence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    monkeypatch.setattr(affinity, "present_cpus", lambda: frozenset({0, 1}))
    with pytest.raises(common.CommandError) as info:
        wiring._stack_behind_nic(IFACE, OffloadOptions("enabled", nic="process", nic_cpu=1), Device())
    assert str(info.value) == (
        "cannot start the NIC process: CPU 1 is not allowed for this process: it may run on CPU 0."
    )
