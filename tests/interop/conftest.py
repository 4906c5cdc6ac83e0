"""Interop fixtures: the Linux kernel as the peer in a fresh namespace, removed by name whatever happens.

Without root or /dev/net/tun these tests skip with the reason; with TCPCHIMNEY_REQUIRE_NET=1 (CI) they fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

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
