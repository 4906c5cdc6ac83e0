"""Two HostStacks on an in-test link: ARP, ICMP and TCP end to end, with the stand-in engine and, once it
is available, the real one."""

from __future__ import annotations

import pytest
from conftest import events, make_stack
from fake_engine import FakeConnection
from shuttle import Shuttle

from tcpchimney.host.events import ConnectionEvent, EchoReply, IncomingConnection
from tcpchimney.host.stack import HostStack
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire.frame import DeviceFeatures


def _engines() -> list[object]:
    engines: list[object] = [FakeConnection]
    try:
        from tcpchimney.tcp.connection import TcpConnection
    except ImportError:
        engines.append(pytest.param(None, marks=pytest.mark.skip(reason="tcp.connection not available yet")))
    else:
        engines.append(TcpConnection)
    return engines


def _pair(engine: object, features: DeviceFeatures | None = None) -> tuple[HostStack, HostStack, Shuttle]:
    a = make_stack("02:00:00:00:00:0a", "198.18.0.10/24", features=features, seed=1, engine=engine)
    b = make_stack("02:00:00:00:00:0b", "198.18.0.11/24", features=features, seed=2, engine=engine)
    return a, b, Shuttle([a, b])


def test_ping_between_stacks() -> None:
    a, b, link = _pair(FakeConnection)
    a.ping("198.18.0.11", 9, 1, b"x" * 3000, 0.0)  # resolved by ARP, fragmented both ways
    link.flush()
    (reply,) = events(a)
    assert isinstance(reply, EchoReply) and reply.payload == b"x" * 3000 and reply.rtt == 0.0
    assert b.counters["ipv4"]["reassembled"] == 1 and a.counters["ipv4"]["reassembled"] == 1


@pytest.mark.parametrize("engine", _engines())
@pytest.mark.parametrize("features", [DeviceFeatures(), DeviceFeatures(tx_csum=True, rx_csum=True)])
def test_connect_accept_and_exchange_data(engine: object, features: DeviceFeatures) -> None:
    a, b, link = _pair(engine, features)
    listener = b.listen(7)
    client = a.connect("198.18.0.11", 7, link.now)
    link.run_until(lambda: listener.pending > 0)
    server = listener.accept()
    assert server is not None and server.remote_port == client.local_port
    assert client.state is TcpState.ESTABLISHED and server.state is TcpState.ESTABLISHED
    assert any(isinstance(e, IncomingConnection) for e in events(b))
    client.send(b"hello")
    link.run_until(lambda: server.readable >= 5)
    assert server.receive(5) == b"hello"
    server.send(b"world!")
    link.run_until(lambda: client.readable >= 6)
    assert client.receive(100) == b"world!"
    assert any(isinstance(e, ConnectionEvent) and e.sock is client for e in events(a))
    for s in (a, b):
        c = s.counters
        assert c["tcp"].get("drop_bad_checksum", 0) == 0 and c["stack"]["internal_error"] == 0
        assert not any(k.startswith("drop") for k in c["ipv4"])


@pytest.mark.parametrize("engine", _engines())
def test_abort_rst_leaves_even_when_the_closed_event_is_read_first(engine: object) -> None:
    a, b, link = _pair(engine)
    listener = b.listen(7)
    client = a.connect("198.18.0.11", 7, link.now)
    link.run_until(lambda: listener.pending > 0)
    server = listener.accept()
    assert server is not None
    events(a)
    client.abort()
    while a.next_event() is not None:  # the application sees Closed before the stack's output is taken
        pass
    link.flush()
    assert server.state is TcpState.CLOSED
    assert any(isinstance(e, ConnectionEvent) and e.sock is server for e in events(b))
