"""``chimney`` argument handling, the availability check and the report tables (no network needed)."""

from __future__ import annotations

import io
import ipaddress
import json
import os

import pytest
from rich.console import Console

from tcpchimney.cli import common, main
from tcpchimney.cli.report import ConnectionRow, Transfer, connections_table, counters_table, transfers_table


@pytest.mark.parametrize(("app", "port"), [("echo", 7), ("discard", 9), ("http", 80)])
def test_serve_default_ports_and_addresses(app: str, port: int) -> None:
    args = main.parse_args(["serve", app, "--netns", "t1"])
    assert args.port == port
    assert args.addr == ipaddress.IPv4Interface("198.18.0.2/24")
    assert args.peer == ipaddress.IPv4Interface("198.18.0.1/24")
    assert args.netns == "t1" and args.pcap is None


def test_serve_explicit_options() -> None:
    args = main.parse_args(
        [
            "serve",
            "http",
            "--netns",
            "x",
            "--port",
            "8080",
            "--addr",
            "198.18.5.9/16",
            "--peer",
            "198.18.0.1/16",
        ]
    )
    assert (args.port, str(args.addr), str(args.peer)) == (8080, "198.18.5.9/16", "198.18.0.1/16")


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "http"],  # --netns is required
        ["serve", "ftp", "--netns", "x"],
        ["serve", "echo", "--netns", "x", "--port", "0"],
        ["serve", "echo", "--netns", "x", "--port", "70000"],
        ["serve", "echo", "--netns", "x", "--port", "seven"],
        ["serve", "echo", "--netns", "a/b"],
        ["serve", "echo", "--netns", "x", "--addr", "198.18.0.1/24"],  # same as the peer
        ["serve", "echo", "--netns", "x", "--addr", "198.19.0.2/24"],  # not the peer's subnet
        ["serve", "echo", "--netns", "x", "--addr", "not-an-ip"],
        ["nc", "198.18.0.1", "--netns", "x"],
        ["nc", "-l", "7", "8", "--netns", "x"],
        ["nc", "-l", "0", "--netns", "x"],
        ["nc", "example.com", "80", "--netns", "x"],
        ["demo", "--size", "0"],
        [],
    ],
)
def test_bad_arguments_exit_with_usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main.parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "--help" in err  # one sentence, and where to read more


def test_nc_connect_and_listen_forms() -> None:
    args = main.parse_args(["nc", "198.18.0.1", "5000", "--netns", "n"])
    assert (args.listen, str(args.host), args.port) == (False, "198.18.0.1", 5000)
    args = main.parse_args(["nc", "-l", "5001", "--netns", "n", "--pcap", "/tmp/x.pcap"])
    assert (args.listen, args.host, args.port, args.pcap) == (True, None, 5001, "/tmp/x.pcap")


def test_demo_defaults() -> None:
    args = main.parse_args(["demo"])
    assert (args.size, args.sim_size, args.sim, args.netns) == (200, 20, False, None)


def test_without_network_one_sentence_and_non_zero(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(main, "network_unavailable_reason", lambda: "this command needs root")
    for argv in (["serve", "echo", "--netns", "x"], ["nc", "-l", "7", "--netns", "x"]):
        assert main.main(argv) == common.EXIT_UNAVAILABLE
        captured = capsys.readouterr()
        assert captured.out == ""
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and "needs root" in lines[0]


def test_unavailable_reason_names_the_missing_device(tmp_path: object) -> None:
    missing = os.path.join(str(tmp_path), "no-tun")
    reason = common.network_unavailable_reason(missing)
    assert reason is not None
    if os.geteuid() == 0:
        assert missing in reason
    else:
        assert "root" in reason


def test_emit_writes_one_json_line() -> None:
    out = io.StringIO()
    common.emit("ready", out, port=80, addr="198.18.0.2")
    line = out.getvalue()
    assert line.endswith("\n") and line.count("\n") == 1
    assert json.loads(line) == {"event": "ready", "port": 80, "addr": "198.18.0.2"}


def render(renderable: object) -> str:
    console = Console(file=io.StringIO(), width=200, record=True)
    console.print(renderable)
    return console.export_text()


def test_counters_table_shows_non_zero_counters_only() -> None:
    text = render(counters_table({"tcp": {"rx": 12, "drop_bad": 0}, "arp": {"rx": 0}}))
    assert "rx=12" in text
    assert "drop_bad" not in text and "arp" not in text


def test_transfer_verdict_and_rate() -> None:
    good = Transfer("down", 200_000_000, 2.0, 1.5, "ab", "ab")
    bad = Transfer("up", 1_000_000, 0.5, 0.1, "ab", "cd")
    assert good.ok and not bad.ok
    assert good.mb_per_s == pytest.approx(100.0)
    text = render(transfers_table([good, bad]))
    assert "OK" in text and "MISMATCH" in text and "100.0" in text
    assert good.as_dict()["sha256_ok"] is True


def test_connections_table_lists_rows_or_says_none() -> None:
    assert "none seen" in render(connections_table([]))
    text = render(connections_table([ConnectionRow("198.18.0.2:80", "198.18.0.1:40000", "ESTABLISHED")]))
    assert "198.18.0.1:40000" in text and "ESTABLISHED" in text


@pytest.mark.parametrize(
    "command", [["serve", "echo", "--netns", "t1"], ["nc", "-l", "9", "--netns", "t1"], ["demo"]]
)
def test_the_nic_runs_in_its_own_process_unless_asked_inline(command: list[str]) -> None:
    assert main.parse_args(command).nic == "process"
    assert main.parse_args([*command, "--nic", "inline"]).nic == "inline"


def test_a_nic_that_cannot_start_fails_the_command_in_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    from tcpchimney.cli import wiring
    from tcpchimney.cli.offload import OffloadOptions
    from tcpchimney.host.interface import InterfaceConfig
    from tcpchimney.nic import launch
    from tcpchimney.wire.frame import DeviceFeatures

    class Device:
        features = DeviceFeatures()
        vnet_hdr_size = 10

        def fileno(self) -> int:
            return 0

    def refuse(self: launch.NicProcess, timeout: float = 0.0) -> None:
        raise launch.NicStartError("it exited with status 2 before it was ready")

    monkeypatch.setattr(launch.NicProcess, "start", refuse)
    iface = InterfaceConfig.parse("02:00:00:00:00:01", "198.18.0.2/24")
    with pytest.raises(common.CommandError) as info:
        wiring._stack_behind_nic(iface, OffloadOptions("enabled"), Device())
    assert str(info.value) == "cannot start the NIC process: it exited with status 2 before it was ready."


def test_with_a_capture_the_nic_runs_inline(capsys: pytest.CaptureFixture[str]) -> None:
    """A capture of the host's TAP descriptor would miss the NIC process's frames."""
    assert main.parse_args(["serve", "echo", "--netns", "t1", "--pcap", "/tmp/x.pcap"]).nic == "inline"
    with pytest.raises(SystemExit):
        main.parse_args(["serve", "echo", "--netns", "t1", "--pcap", "/tmp/x.pcap", "--nic", "process"])
    assert "--nic inline" in capsys.readouterr().err
