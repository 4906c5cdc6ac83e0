"""Hostile namespace and link names are refused before anything touches the system.

A name that reaches a path unchecked (``a/b``, ``../x``) made pyroute2 bind-mount a namespace relative to the
current directory, or a directory onto itself. Every entry point that takes a name raises ValueError with the
reason first; the mount table, /var/run/netns and the current directory stay as they were.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tcpchimney.cli import main
from tcpchimney.link import netns
from tcpchimney.link.netns import NETNS_RUN_DIR, TapTopology, check_ifname, check_netns_name
from tcpchimney.link.tap import TapDevice, create_persistent_tap

HOSTILE_NETNS = ["a/b", "../x", "", "n" * 256, "a\0b", ".", "..", "/tmp/chimney-x", "a\nb"]
HOSTILE_LINKS = [*HOSTILE_NETNS, "t" * 16, "a b", "a:b", "tap%d"]


def _snapshot(cwd: str) -> tuple[str, list[str], list[str]]:
    with open("/proc/self/mountinfo") as f:
        mounts = f.read()
    run = sorted(os.listdir(NETNS_RUN_DIR)) if os.path.isdir(NETNS_RUN_DIR) else []
    return mounts, run, sorted(os.listdir(cwd))


@pytest.fixture
def untouched(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The test runs in an empty directory (where a relative mount would land); nothing may change."""
    monkeypatch.chdir(tmp_path)
    before = _snapshot(str(tmp_path))
    yield
    assert _snapshot(str(tmp_path)) == before


NETNS_ENTRY_POINTS: dict[str, Callable[[str], object]] = {
    "TapTopology": lambda name: TapTopology(netns=name),
    "create_netns": netns.create_netns,
    "remove_netns": netns.remove_netns,
    "setns": lambda name: netns.setns(name).__enter__(),
    "run_in_netns": lambda name: netns.run_in_netns(name, os.getpid),
    "netns_exec": lambda name: netns.netns_exec(name, "true"),
    "harden_netns": netns.harden_netns,
    "link_index": lambda name: netns.link_index(name, "lo"),
    "delete_link": lambda name: netns.delete_link(name, "lo"),
    "move_link": lambda name: netns.move_link("lo", name),
    "create_persistent_tap": lambda name: create_persistent_tap("chimtap0", name),
}

LINK_ENTRY_POINTS: dict[str, Callable[[str], object]] = {
    "TapTopology": lambda name: TapTopology(tap_name=name),
    "TapDevice": TapDevice,
    "create_persistent_tap": create_persistent_tap,
    "link_index": lambda name: netns.link_index(None, name),
    "delete_link": lambda name: netns.delete_link(None, name),
}


@pytest.mark.parametrize("name", HOSTILE_NETNS)
@pytest.mark.parametrize("entry", sorted(NETNS_ENTRY_POINTS))
def test_hostile_namespace_names_are_refused_first(entry: str, name: str, untouched: None) -> None:
    with pytest.raises(ValueError, match="is not a namespace name: it "):
        NETNS_ENTRY_POINTS[entry](name)


@pytest.mark.parametrize("name", HOSTILE_LINKS)
@pytest.mark.parametrize("entry", sorted(LINK_ENTRY_POINTS))
def test_hostile_link_names_are_refused_first(entry: str, name: str, untouched: None) -> None:
    with pytest.raises(ValueError, match="is not a link name: it "):
        LINK_ENTRY_POINTS[entry](name)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("a/b", "it contains '/'"),
        ("..", "it names a directory"),
        ("", "it is empty"),
        ("a\0b", "NUL"),
        ("n" * 256, "256 bytes long, and a namespace name is at most 255"),
    ],
)
def test_the_reason_is_precise(name: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        check_netns_name(name)


def test_ordinary_names_pass() -> None:
    assert check_netns_name("chimney-demo-42") == "chimney-demo-42"
    assert check_netns_name("n" * 255) == "n" * 255
    assert check_ifname("chimtap01234567") == "chimtap01234567"  # 15 bytes: the longest Linux takes


def test_none_still_means_a_fresh_unique_name() -> None:
    topo = TapTopology()
    assert topo.netns.startswith("chimns") and topo.tap_name.startswith("chimtap")


@pytest.mark.parametrize("name", ["a/b", "..", "n" * 256])
def test_the_command_line_says_what_the_api_says(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError) as api:
        TapTopology(netns=name)
    with pytest.raises(SystemExit):
        main.parse_args(["serve", "echo", "--netns", name])
    assert str(api.value) in capsys.readouterr().err
