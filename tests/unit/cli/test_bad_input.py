"""Every bad input to ``chimney`` is one sentence on stderr and a non-zero exit, never a traceback; the API
refuses the same things with the same words."""

from __future__ import annotations

import ipaddress
import subprocess
import sys

import pytest

from tcpchimney.cli import demo, main
from tcpchimney.host.interface import InterfaceConfig, parse_interface
from tcpchimney.link.netns import TapTopology, check_address

SERVE = ["serve", "echo", "--netns", "chimney-unit"]
MISSING_DIR = "/nonexistent-chimney-dir/file"

BAD = {
    "addr outside 198.18/15": ([*SERVE, "--addr", "10.0.0.2/24", "--peer", "10.0.0.1/24"], "198.18.0.0/15"),
    "peer outside 198.18/15": ([*SERVE, "--peer", "192.0.2.1/24"], "198.18.0.0/15"),
    "addr without prefix": ([*SERVE, "--addr", "198.18.0.2"], "has no prefix length"),
    "addr not an address": ([*SERVE, "--addr", "stack"], "is not an IPv4 address"),
    "prefix out of range": ([*SERVE, "--addr", "198.18.0.2/40"], "no valid prefix length"),
    "addr equal to peer": ([*SERVE, "--addr", "198.18.0.1/24"], "is the peer's"),
    "addr on another subnet": ([*SERVE, "--addr", "198.18.1.2/24"], "not one subnet"),
    "network address": ([*SERVE, "--addr", "198.18.0.0/24"], "network address"),
    "broadcast address": ([*SERVE, "--addr", "198.18.0.255/24"], "broadcast address"),
    "port 0": ([*SERVE, "--port", "0"], "not a TCP port"),
    "port too big": ([*SERVE, "--port", "65536"], "not a TCP port"),
    "port not a number": ([*SERVE, "--port", "echo"], "not a TCP port"),
    "netns a/b": (["serve", "echo", "--netns", "a/b"], "contains '/'"),
    "netns ..": (["serve", "echo", "--netns", ".."], "names a directory"),
    "netns empty": (["serve", "echo", "--netns", ""], "is empty"),
    "netns NUL": (["serve", "echo", "--netns", "a\0b"], "NUL"),
    "netns too long": (["serve", "echo", "--netns", "n" * 300], "at most 255"),
    "events in a missing directory": ([*SERVE, "--events", MISSING_DIR], "does not exist"),
    "events is a directory": ([*SERVE, "--events", "/tmp"], "is a directory"),
    "pcap in a missing directory": ([*SERVE, "--pcap", MISSING_DIR], "does not exist"),
    "pcap empty": ([*SERVE, "--pcap", ""], "empty"),
    "nc without port": (["nc", "198.18.0.1", "--netns", "x"], "HOST PORT"),
    "nc bad host": (["nc", "example.com", "80", "--netns", "x"], "example.com"),
    "nc host off the subnet": (["nc", "198.19.0.1", "80", "--netns", "x"], "not on the stack's subnet"),
    "nc host is the stack": (["nc", "198.18.0.2", "80", "--netns", "x"], "the stack's own address"),
    "nc -l bad port": (["nc", "-l", "0", "--netns", "x"], "not a TCP port"),
    "demo size 0": (["demo", "--size", "0"], "must be positive"),
    "demo size not a number": (["demo", "--size", "lots"], "invalid int value"),
    "demo netns": (["demo", "--netns", "../x"], "contains '/'"),
    "churn without offload": ([*SERVE, "--offload", "disabled", "--churn", "1"], "--churn"),
    "no command": ([], "required"),
}


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main.main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code  # type: ignore[assignment]
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_sentence_and_a_failure(
    case: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Refused while the arguments are read: a command that got further would build namespaces as root.
    monkeypatch.setattr(main, "_run", lambda args: pytest.fail(f"{case}: accepted as {args}"))
    argv, words = BAD[case]
    code, out, err = _run(argv, capsys)
    assert code not in (0, None)
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert words in err and "Traceback" not in err


def test_missing_programs_are_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(demo, "network_unavailable_reason", lambda: None)  # as if root with /dev/net/tun
    monkeypatch.setattr(demo.shutil, "which", lambda name: None if name == "curl" else f"/usr/bin/{name}")
    monkeypatch.setattr(demo, "tap_demo", lambda *a: pytest.fail("the demo started without curl"))
    code, _, err = _run(["demo"], capsys)
    assert code != 0 and len(err.strip().splitlines()) == 1
    assert "`curl`" in err and "--sim" in err and "`ip`" not in err


def test_the_help_states_the_address_rule(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main.parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "198.18.0.0/15" in text and "chimney cleanup" in text


@pytest.mark.parametrize(
    "argv",
    [
        [*SERVE, "--addr", "10.0.0.2/24"],
        [*SERVE, "--events", MISSING_DIR],
        ["serve", "echo", "--netns", "../x"],
    ],
)
def test_as_a_program_too(argv: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tcpchimney.cli.main", *argv], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


# ------------------------------------------------------------------------------- the API, same words


def test_an_address_without_prefix_is_refused_by_the_api_as_by_the_cli(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(ValueError) as exc:
        InterfaceConfig.parse("02:00:00:00:00:01", "198.18.0.2")
    assert (
        str(exc.value)
        == "198.18.0.2 has no prefix length: write it as 198.18.0.2/PREFIX (like 198.18.0.2/24)"
    )
    for api in (lambda: TapTopology(stack="198.18.0.2"), lambda: check_address("198.18.0.2")):
        with pytest.raises(ValueError) as same:
            api()
        assert str(same.value) == str(exc.value)
    _, _, err = _run([*SERVE, "--addr", "198.18.0.2"], capsys)
    assert str(exc.value) in err


def test_the_same_address_twice_is_refused_by_the_api_as_by_the_cli(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(ValueError) as exc:
        TapTopology(peer="198.18.0.1/24", stack="198.18.0.1/24")
    _, _, err = _run([*SERVE, "--addr", "198.18.0.1/24"], capsys)
    assert str(exc.value) in err
    with pytest.raises(ValueError, match="not one subnet"):
        TapTopology(peer="198.18.0.1/24", stack="198.18.0.2/16")


def test_a_gateway_equal_to_the_interface_address_is_refused() -> None:
    with pytest.raises(ValueError, match="is the interface's own address"):
        InterfaceConfig.parse("02:00:00:00:00:01", "198.18.0.2/24", gateway="198.18.0.2")


def test_parse_interface_keeps_the_prefix() -> None:
    assert parse_interface("198.18.5.9/16") == ipaddress.IPv4Interface("198.18.5.9/16")
