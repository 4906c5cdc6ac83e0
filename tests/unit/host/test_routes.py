"""The host's route entry point (HostStack.set_gateway): checked like the interface's own gateway, and a
connection whose next hop does not change is left alone, on the host or offloaded."""

from __future__ import annotations

import pytest
from offload_kit import B_IP, Stream, exchange, make_offload_net, payload

from tcpchimney.chimney.requests import Request
from tcpchimney.host.events import Uploaded
from tcpchimney.host.interface import ip_bytes
from tcpchimney.host.offload import OffloadState


def test_a_gateway_off_the_subnet_is_refused_and_the_route_kept() -> None:
    net = make_offload_net(61)
    before = net.a.iface
    with pytest.raises(ValueError, match="subnet"):
        net.a.set_gateway("198.19.0.1", net.link.now)
    assert net.a.iface is before


def test_an_on_link_connection_keeps_its_neighbor_when_the_gateway_changes() -> None:
    net = make_offload_net(62)
    a, b = net.connect()
    net.wait_offloaded(a)
    calls: list[Request] = []
    submit = net.target.submit
    net.target.submit = lambda request, now: (calls.append(request), submit(request, now))[1]  # type: ignore[method-assign]
    net.a.set_gateway("198.18.0.254", net.link.now)
    assert net.a.iface.next_hop(ip_bytes("198.18.9.9")) == ip_bytes("198.18.0.254"), "the new default route"
    exchange(net, [Stream(a, b, payload(60_000, 62)), Stream(b, a, payload(60_000, 63))])
    assert not [r for r in calls if type(r).__name__.endswith("Offload")], "no state call: nothing moved"
    assert a.offload_state is OffloadState.OFFLOADED and not net.events(Uploaded)
    assert net.a.iface.next_hop(a.remote_ip) == ip_bytes(B_IP), "b stays on-link"
