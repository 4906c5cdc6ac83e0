"""The hosts file ``chimney proxy --hosts`` reads: /etc/hosts format, IPv4 only, bad lines named."""

from __future__ import annotations

from pathlib import Path

import pytest

from tcpchimney.cli.hostsfile import HostsFileError, load_hosts, parse_hosts, resolve


def test_entries_aliases_comments_and_ipv6_lines() -> None:
    names = parse_hosts(
        "# the peers\n198.18.0.1 peer.test  Peer  # the kernel\n\n"
        "::1 localhost6\n198.18.0.9 other PEER.test\n"
    )
    assert names == {"peer.test": "198.18.0.1", "peer": "198.18.0.1", "other": "198.18.0.9"}
    assert resolve(names, "PEER.TEST.") == "198.18.0.1"
    assert resolve(names, "198.18.0.7") == "198.18.0.7"  # a literal address needs no entry
    assert resolve(names, "missing.test") is None


@pytest.mark.parametrize(
    ("text", "words"),
    [("peer.test 198.18.0.1\n", "line 1: 'peer.test' is not an IP address"), ("\n198.18.0.1\n", "line 2")],
)
def test_a_bad_line_is_named(text: str, words: str) -> None:
    with pytest.raises(HostsFileError, match=words):
        parse_hosts(text, "hosts")


def test_a_missing_file_is_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(HostsFileError, match=r"cannot read the hosts file .*: No such file"):
        load_hosts(str(tmp_path / "nothing"))
