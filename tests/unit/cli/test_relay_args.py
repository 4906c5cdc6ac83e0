"""The command lines of ``chimney proxy`` and ``chimney forward``: what they accept, and every bad input
refused with one sentence before anything is set up."""

from __future__ import annotations

from pathlib import Path

import pytest
from chimney_help import ADDRESS_RULE, help_text

from tcpchimney.cli import main

NS = ["--netns", "chimney-unit"]


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main.parse_args(argv)
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


BAD = {
    "proxy listen without port": (["proxy", *NS, "--listen", "127.0.0.1"], "is not HOST:PORT"),
    "proxy listen on a name": (["proxy", *NS, "--listen", "localhost:1080"], "is not an IPv4 address"),
    "proxy port too big": (["proxy", *NS, "--listen", "127.0.0.1:65536"], "not a TCP port (0-65535)"),
    "forward stack port 0": (["forward", *NS, "--listen", "0", "--to", "127.0.0.1:80"], "(1-65535)"),
    "proxy user without password": (["proxy", *NS, "--user", "alice"], "NAME:PASSWORD"),
    "proxy missing hosts file": (["proxy", *NS, "--hosts", "/nonexistent-chimney/hosts"], "cannot read"),
    "proxy timeout 0": (["proxy", *NS, "--connect-timeout", "0"], "positive number"),
    "proxy churn without offload": (["proxy", *NS, "--offload", "disabled", "--churn", "1"], "--churn"),
    "forward without target": (["forward", *NS, "--listen", "80"], "--to --connect"),
    "forward both targets": (
        ["forward", *NS, "--listen", "80", "--to", "127.0.0.1:80", "--connect", "198.18.0.1:80"],
        "not allowed with",
    ),
    "forward listen not a port": (["forward", *NS, "--listen", "http", "--to", "127.0.0.1:80"], "port"),
    "forward listen elsewhere": (
        ["forward", *NS, "--listen", "198.18.0.9:80", "--to", "127.0.0.1:80"],
        "its own address 198.18.0.2",
    ),
    "forward to without port": (["forward", *NS, "--listen", "80", "--to", "127.0.0.1"], "HOST:PORT"),
    "forward connect off the subnet": (
        ["forward", *NS, "--listen", "5432", "--connect", "198.19.0.1:5432"],
        "not on the stack's subnet",
    ),
    "forward connect to itself": (
        ["forward", *NS, "--listen", "5432", "--connect", "198.18.0.2:5432"],
        "the stack's own address",
    ),
    "forward reverse listen bad host": (
        ["forward", *NS, "--listen", "local:5432", "--connect", "198.18.0.1:5432"],
        "not an IPv4 address",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_sentence(case: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv, words = BAD[case]
    assert words in _refused(argv, capsys)


def test_a_bad_hosts_line_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("198.18.0.1 peer\npeer 198.18.0.1\n")
    assert f"{hosts} line 2" in _refused(["proxy", *NS, "--hosts", str(hosts)], capsys)


def test_proxy_defaults_and_users(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("198.18.0.1 peer.test\n")
    args = main.parse_args(["proxy", *NS, "--hosts", str(hosts), "--user", "a:b:c", "--user", "d:"])
    assert args.listen == ("127.0.0.1", 1080) and args.names == {"peer.test": "198.18.0.1"}
    assert args.users == {"a": "b:c", "d": ""} and args.offload == "automatic"


def test_forward_both_directions() -> None:
    args = main.parse_args(["forward", *NS, "--listen", "80", "--to", "127.0.0.1:8080"])
    assert args.listen == ("198.18.0.2", 80) and args.to == ("127.0.0.1", 8080) and args.connect is None
    args = main.parse_args(["forward", *NS, "--listen", "5432", "--connect", "198.18.0.1:5432"])
    assert args.listen == ("127.0.0.1", 5432) and args.connect == ("198.18.0.1", 5432)
    args = main.parse_args(["forward", *NS, "--listen", "0.0.0.0:5432", "--connect", "198.18.0.1:5432"])
    assert args.listen == ("0.0.0.0", 5432)


@pytest.mark.parametrize("command", ["proxy", "forward"])
def test_help_is_plain_and_states_the_address_rule(command: str) -> None:
    text = help_text(command)
    assert "``" not in text and ADDRESS_RULE in " ".join(text.split())
