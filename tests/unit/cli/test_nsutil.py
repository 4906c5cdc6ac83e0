"""``socket_in_netns`` really creates the socket in the named namespace (needs root)."""

from __future__ import annotations

import errno
import os
import socket
import uuid

import pytest

from tcpchimney.cli.nsutil import in_netns, socket_in_netns

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creating a namespace needs root")


def test_socket_lives_in_the_named_namespace() -> None:
    from pyroute2 import NetNS, netns

    name = f"chimney-ut-{uuid.uuid4().hex[:8]}"
    only_there = "198.18.250.1"  # an address that exists only inside the namespace
    netns.create(name)
    try:
        with NetNS(name) as ns:
            lo = ns.link_lookup(ifname="lo")[0]
            ns.addr("add", index=lo, address=only_there, prefixlen=32)
        with socket_in_netns(name) as inside:
            inside.bind((only_there, 0))
        with socket.socket() as outside, pytest.raises(OSError) as exc:
            outside.bind((only_there, 0))  # the calling thread stayed in its own namespace
        assert exc.value.errno == errno.EADDRNOTAVAIL
    finally:
        netns.remove(name)


def test_missing_namespace_raises() -> None:
    with pytest.raises(FileNotFoundError):
        socket_in_netns(f"chimney-absent-{uuid.uuid4().hex[:8]}")


def test_in_netns_argv() -> None:
    assert in_netns("ns1", "curl", "-s") == ["ip", "netns", "exec", "ns1", "curl", "-s"]


@pytest.mark.parametrize("name", ["../x", "a/b", ""])
def test_hostile_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="is not a namespace name"):
        in_netns(name, "true")
    with pytest.raises(ValueError, match="is not a namespace name"):
        socket_in_netns(name)
