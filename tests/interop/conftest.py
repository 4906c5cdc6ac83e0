"""Interop fixtures: the Linux kernel as the peer in a fresh namespace, removed by name whatever happens.

Without root or /dev/net/tun these tests skip with the reason; with TCPCHIMNEY_REQUIRE_NET=1 (CI) they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tcpchimney.link.netns import TapTopology, VethTopology, delete_link, remove_netns, unavailable_reason


@pytest.fixture
def require_net() -> None:
    reason = unavailable_reason()
    if reason is not None:
        if os.environ.get("TCPCHIMNEY_REQUIRE_NET") == "1":
            pytest.fail(f"TCPCHIMNEY_REQUIRE_NET=1 but {reason}")
        pytest.skip(reason)


@pytest.fixture
def tap_topology(require_net: None) -> Iterator[TapTopology]:
    """Namespace + TAP (kernel side 198.18.0.1/24, stack 198.18.0.2/24), virtio-net header and offloads on."""
    topo = TapTopology()
    try:
        with topo:
            yield topo
    finally:  # the context manager already removed them; by name again in case its exit was cut short
        delete_link(None, topo.tap_name)
        remove_netns(topo.netns)


@pytest.fixture
def veth_topology(require_net: None) -> Iterator[VethTopology]:
    """Two namespaces and a veth pair; end a has the kernel at 198.18.1.1/24, end b has no address."""
    topo = VethTopology(ip_a="198.18.1.1/24", ip_b=None)
    try:
        with topo:
            yield topo
    finally:
        delete_link(None, topo.if_a)
        remove_netns(topo.ns_a)
        remove_netns(topo.ns_b)


def unique_netns() -> str:
    return f"chimney-it-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def netns_name(require_net: None) -> Iterator[str]:
    """A fresh namespace name; the namespace is removed by name afterwards whatever happened."""
    name = unique_netns()
    try:
        yield name
    finally:
        remove_netns(name)


@pytest.fixture
def commands() -> Iterator[list[Any]]:
    """``chimney`` subprocesses a test starts (anything with ``kill()``); killed afterwards."""
    started: list[Any] = []
    try:
        yield started
    finally:
        for command in started:
            command.kill()
