"""Closing a connection between two host stacks over the simulated link (RFC 9293 3.6, 3.10.4-3.10.5):
active and passive close, simultaneous close, abort, half-close, TIME-WAIT reuse and its 2*MSL end."""

from __future__ import annotations

import random

from scenario_kit import B_IP, PORT, Net, make_net

from tcpchimney.host.sockets import TcpSocket
from tcpchimney.link.sim import Impairments
from tcpchimney.tcp.config import TcpConfig
from tcpchimney.tcp.events import Closed, ConnectionReset, PeerClosed, StateChanged
from tcpchimney.tcp.state import TcpState

MSL = 0.5  # seconds: TIME-WAIT lasts 1 s
DELAY = Impairments(delay=0.001)  # one-way delay, so that segments sent at one instant cross on the wire


def _states(net: Net, sock: TcpSocket) -> list[TcpState]:
    """The states ``sock`` went through after ESTABLISHED, in order."""
    return [ev.new for ev in net.tcp_events(sock) if isinstance(ev, StateChanged) and ev.old.synchronized]


def _net(seed: int = 1, **kwargs: object) -> Net:
    return make_net(seed, DELAY, DELAY, config=TcpConfig(msl=MSL), **kwargs)  # type: ignore[arg-type]


def test_active_closer_waits_in_time_wait_and_passive_closer_ends_closed() -> None:
    net = _net()
    client, server = net.connect()
    client.send(b"request")
    client.close()
    net.run_until(lambda: net.has_event(server, PeerClosed))
    assert server.receive(100) == b"request" and server.receive(100) == b""
    assert server.state is TcpState.CLOSE_WAIT
    server.close()
    net.run_until(lambda: server.state is TcpState.CLOSED and client.state is TcpState.TIME_WAIT)
    assert _states(net, client) == [TcpState.FIN_WAIT_1, TcpState.FIN_WAIT_2, TcpState.TIME_WAIT]
    assert _states(net, server) == [TcpState.CLOSE_WAIT, TcpState.LAST_ACK, TcpState.CLOSED]
    assert net.has_event(server, Closed) and server not in net.b.connections()
    assert client in net.a.connections()  # TIME-WAIT keeps the 4-tuple
    assert not net.has_event(client, ConnectionReset) and not net.has_event(server, ConnectionReset)


def test_simultaneous_close_goes_through_closing_on_both_sides() -> None:
    net = _net()
    client, server = net.connect()
    client.close()
    server.close()  # same instant: the FINs cross on the wire (RFC 9293 figure 13)
    net.run_until(lambda: client.state is TcpState.TIME_WAIT and server.state is TcpState.TIME_WAIT)
    for sock in (client, server):
        assert _states(net, sock) == [TcpState.FIN_WAIT_1, TcpState.CLOSING, TcpState.TIME_WAIT]
        assert net.has_event(sock, PeerClosed)
    net.run_until(lambda: not net.a.connections() and not net.b.connections(), timeout=3 * MSL)
    assert net.has_event(client, Closed) and net.has_event(server, Closed)


def test_abort_resets_and_the_peer_sees_connection_reset() -> None:
    net = _net()
    client, server = net.connect()
    server.send(b"x" * 5000)
    net.run_until(lambda: client.readable == 5000)
    client.abort()
    assert client.state is TcpState.CLOSED
    net.run_until(lambda: net.has_event(server, ConnectionReset))
    assert server.state is TcpState.CLOSED
    (reset,) = [ev for ev in net.tcp_events(server) if isinstance(ev, ConnectionReset)]
    assert reset.refused is False
    assert net.b.counters["tcp"].get("engine_drop_rst_challenge", 0) == 0  # exact seq: no challenge
    assert not net.a.connections() and not net.b.connections()


def test_half_close_lets_data_keep_flowing_the_other_way() -> None:
    net = _net()
    client, server = net.connect()
    client.send(b"upload done")
    client.shutdown()
    net.run_until(lambda: net.has_event(server, PeerClosed) and client.state is TcpState.FIN_WAIT_2)
    assert server.receive(100) == b"upload done"
    assert client.state is TcpState.FIN_WAIT_2 and server.state is TcpState.CLOSE_WAIT
    body = random.Random(7).randbytes(300_000)
    got = bytearray()
    sent = 0

    def drained() -> bool:
        nonlocal sent
        if sent < len(body):
            sent += server.send(body[sent:])
        got.extend(client.receive(1 << 20))
        return len(got) == len(body)

    net.run_until(drained)
    assert got == body
    assert client.state is TcpState.FIN_WAIT_2  # still receiving after its own FIN
    server.close()
    net.run_until(lambda: client.state is TcpState.TIME_WAIT and server.state is TcpState.CLOSED)


def test_new_syn_reuses_a_pair_in_time_wait() -> None:
    """The server closes first and holds TIME-WAIT; the client connects again from the same port later. The
    SYN carries a newer timestamp (RFC 6191), so the listener accepts it at once (Linux behaves the same)."""
    net = make_net(3, DELAY, DELAY, config=TcpConfig(msl=30.0))
    listener = net.b.listen(PORT)
    client, server = net.connect(listener=listener)
    port = client.local_port
    server.close()
    net.run_until(lambda: net.has_event(client, PeerClosed))
    client.close()
    net.run_until(lambda: server.state is TcpState.TIME_WAIT and client.state is TcpState.CLOSED)
    net.run_for(1.0)  # well inside 2*MSL: the pair is still in TIME-WAIT
    assert server.state is TcpState.TIME_WAIT
    again = net.a.connect(B_IP, PORT, net.link.now, local_port=port)
    net.run_until(lambda: listener.pending > 0 and again.state is TcpState.ESTABLISHED, timeout=5.0)
    fresh = listener.accept()
    assert fresh is not None and fresh is not server and fresh.remote_port == port
    assert net.b.counters["tcp"].get("time_wait_reuse") == 1
    assert net.has_event(server, Closed)  # the old incarnation is gone
    again.send(b"second life")
    net.run_until(lambda: fresh.readable == 11)
    assert fresh.receive(100) == b"second life"


def test_time_wait_ends_after_twice_the_msl() -> None:
    net = _net()
    client, server = net.connect()
    client.close()
    net.run_until(lambda: net.has_event(server, PeerClosed))
    server.close()
    net.run_until(lambda: client.state is TcpState.TIME_WAIT)
    entered = net.link.now
    net.run_for(2 * MSL - 0.01)
    assert client.state is TcpState.TIME_WAIT and client in net.a.connections()
    net.run_until(lambda: client.state is TcpState.CLOSED, timeout=0.02)
    assert 2 * MSL - 1e-9 <= net.link.now - entered <= 2 * MSL + 0.02
    assert client not in net.a.connections() and net.has_event(client, Closed)
