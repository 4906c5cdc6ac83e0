"""What applications and the target's indications do to an offloaded connection: the peer's FIN and RST,
closing and aborting, refusals, upload requests, I/O while the offload is in flight, and cached-state
updates (PMTU, neighbor MAC, socket options); chimney-spec 3.3, 3.6, 4.3, 9.6."""

from __future__ import annotations

import pytest
from offload_kit import A_IP, B_IP, B_MAC, Stream, exchange, make_offload_net, payload
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from tcpchimney.chimney.reason import Reason
from tcpchimney.host.events import NeighborChanged, Offloaded, OffloadRefused, PathMtuChanged, Uploaded
from tcpchimney.host.offload import OffloadState
from tcpchimney.host.policy import OffloadPolicy
from tcpchimney.tcp.config import TcpConfig
from tcpchimney.tcp.errors import ConnectionClosedError, ConnectionResetByPeerError
from tcpchimney.tcp.events import Closed, ConnectionReset, PeerClosed, SendSpace, StateChanged
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire.frame import Frame


def _offloaded_pair(seed: int = 1):  # type: ignore[no-untyped-def]
    net = make_offload_net(seed)
    a, b = net.connect()
    net.wait_offloaded(a)
    return net, a, b


def test_peer_fin_while_offloaded_then_close() -> None:
    net, a, b = _offloaded_pair()
    b.send(b"last words")
    b.shutdown()
    net.run_until(lambda: net.has_event(a, PeerClosed))
    assert a.state is TcpState.CLOSE_WAIT and a.offload_state is OffloadState.OFFLOADED
    assert a.receive(100) == b"last words" and a.receive(100) == b""
    a.send(b"reply")
    a.close()
    assert a.state is TcpState.LAST_ACK
    with pytest.raises(ConnectionClosedError):
        a.send(b"more")
    net.run_until(lambda: net.has_event(a, Closed) and b.state is TcpState.TIME_WAIT)
    assert b.receive(100) == b"reply"
    states = [e.new for e in net.tcp_events(a) if isinstance(e, StateChanged)]
    assert states[-3:] == [TcpState.CLOSE_WAIT, TcpState.LAST_ACK, TcpState.CLOSED]
    net.run_until(lambda: len(net.target.table) == 0)
    assert a not in net.a.connections()
    # Freeing the target's entry is an upload like any other: reported and counted, as the target counts it.
    (up,) = net.events(Uploaded)
    assert up.sock is a and up.reason is Reason.CLOSED  # type: ignore[attr-defined]
    assert net.a.counters["offload"]["uploaded"] == net.target.counters.lifecycle["uploads"] == 1


def test_active_close_while_offloaded_ends_in_host_time_wait() -> None:
    net, a, b = _offloaded_pair(2)
    exchange(net, [Stream(a, b, payload(200_000, 1))])
    a.shutdown()
    assert a.state is TcpState.FIN_WAIT_1
    net.run_until(lambda: a.state is TcpState.FIN_WAIT_2 and net.has_event(b, PeerClosed))
    b.close()
    net.run_until(lambda: a.offload_state is OffloadState.IN_HOST)
    assert a.conn.state is TcpState.TIME_WAIT and a.state is TcpState.TIME_WAIT
    (up,) = net.events(Uploaded)
    assert up.reason in (Reason.HOST_TIME_WAIT, Reason.TIME_WAIT)  # type: ignore[attr-defined]
    net.run_until(lambda: net.has_event(a, Closed), 120.0)  # 2*MSL on the host engine


def test_peer_reset_while_offloaded() -> None:
    net, a, b = _offloaded_pair(3)
    b.abort()
    net.run_until(lambda: net.has_event(a, Closed))
    events = [type(e) for e in net.tcp_events(a) if isinstance(e, ConnectionReset | Closed)]
    assert events == [ConnectionReset, Closed]
    assert a.state is TcpState.CLOSED
    with pytest.raises(ConnectionResetByPeerError):
        a.send(b"x")
    net.run_until(lambda: len(net.target.table) == 0)


def test_abort_while_offloaded_resets_the_peer() -> None:
    net, a, b = _offloaded_pair(4)
    a.abort()
    assert a.state is TcpState.CLOSED
    net.run_until(lambda: net.has_event(b, ConnectionReset) and len(net.target.table) == 0)
    assert net.has_event(a, Closed)
    (up,) = net.events(Uploaded)  # the target's entry, handed back to be freed, is an upload too
    assert up.sock is a and up.reason is Reason.ABORTED  # type: ignore[attr-defined]
    assert net.a.counters["offload"]["uploaded_aborted"] == net.target.counters.lifecycle["uploads"] == 1


def test_close_with_unread_data_resets() -> None:
    net, a, b = _offloaded_pair(5)
    b.send(b"unread")
    net.run_until(lambda: a.readable == 6)
    a.close()
    net.run_until(lambda: net.has_event(b, ConnectionReset))


def test_refusal_keeps_the_connection_on_the_host() -> None:
    net = make_offload_net(6)
    net.target.refuse_next_offload(Reason.TARGET_FULL)
    a, b = net.connect()
    net.run_for(0.2)
    (ev,) = net.events(OffloadRefused)
    assert ev.reason is Reason.TARGET_FULL and a.offload_reason is Reason.TARGET_FULL  # type: ignore[attr-defined]
    assert a.offload_state is OffloadState.IN_HOST
    exchange(net, [Stream(a, b, payload(100_000, 2)), Stream(b, a, payload(100_000, 3))])
    assert net.a.offload_now(a) is None  # an administrator may try again
    net.wait_offloaded(a)


def test_io_while_the_offload_is_in_flight_is_queued() -> None:
    net = make_offload_net(7, policy=OffloadPolicy())
    a, b = net.connect()
    net.target.stall()  # the initiate's completion waits
    assert net.a.offload_now(a) is None
    assert a.offload_state is OffloadState.OFFLOADING
    first = payload(30_000, 4)
    assert a.send(first) == len(first)
    a.shutdown()
    assert a.state is TcpState.FIN_WAIT_1
    net.run_for(0.1)
    assert a.offload_state is OffloadState.OFFLOADING
    net.target.stall(False)
    stream = Stream(a, b, b"")
    net.run_until(lambda: (stream.step(), net.has_event(b, PeerClosed))[1])
    assert bytes(stream.got) == first and net.events(Offloaded)


def test_target_upload_request() -> None:
    net, a, b = _offloaded_pair(8)
    assert a.offload is not None
    net.target.request_upload(a.offload.handle, Reason.RESOURCE_PRESSURE)
    net.wait_in_host(a)
    (up,) = net.events(Uploaded)
    assert up.reason is Reason.RESOURCE_PRESSURE and a.offload_reason is Reason.RESOURCE_PRESSURE  # type: ignore[attr-defined]
    exchange(net, [Stream(a, b, payload(50_000, 5))])


def test_send_space_event_while_offloaded() -> None:
    net, a, b = _offloaded_pair(9)
    data = payload(a.conn.config.snd_buf * 2, 6)
    sent = a.send(data)
    assert sent == a.conn.config.snd_buf
    assert a.send(data[sent:]) == 0
    stream = Stream(b, b, b"")  # read b only
    net.run_until(lambda: (stream.step(), net.has_event(a, SendSpace))[1])


def _frag_needed(sport: int, dport: int, seq: int, mtu: int) -> Frame:
    """ICMP 'fragmentation needed' from a router, quoting one of a's segments (RFC 792, RFC 1191)."""
    quoted = bytes(IP(src=A_IP, dst=B_IP, flags="DF") / TCP(sport=sport, dport=dport, seq=seq))[:28]
    icmp = ICMP(type=3, code=4, nexthopmtu=mtu) / Raw(quoted)
    pkt = Ether(src=B_MAC, dst="02:00:00:00:00:01") / IP(src="198.18.0.254", dst=A_IP) / icmp
    return Frame(bytes(pkt))


def test_pmtu_update_reaches_the_offloaded_path() -> None:
    net, a, b = _offloaded_pair(10)
    off = a.offload
    assert off is not None
    blind = _frag_needed(a.local_port, a.remote_port, int(off.base_una) + 1_000_000, 1000)
    net.target.handle_frame(blind, net.link.now)  # a sequence number never sent: ignored (RFC 5927)
    net.target.handle_frame(_frag_needed(a.local_port, a.remote_port, int(off.base_una), 1200), net.link.now)
    net.pump()
    assert [e.mtu for e in net.events(PathMtuChanged)] == [1200]  # type: ignore[attr-defined]
    assert net.a.counters["icmp"]["drop_frag_needed_unmatched"] == 1
    net.run_until(lambda: all(p.cached.path_mtu == 1200 for p in net.target.table.paths.values()))
    exchange(net, [Stream(a, b, payload(100_000, 7))])
    assert net.a.upload(a, Reason.ADMIN)
    net.wait_in_host(a)
    assert a.conn.eff_mss <= 1160
    exchange(net, [Stream(a, b, payload(100_000, 8))])


def _gratuitous_arp(mac: str) -> Frame:
    pkt = Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=1, hwsrc=mac, psrc=B_IP, hwdst="00:00:00:00:00:00", pdst=B_IP
    )
    return Frame(bytes(pkt))


def test_neighbor_mac_change_updates_the_target() -> None:
    net, a, b = _offloaded_pair(11)
    net.target.handle_frame(_gratuitous_arp("02:00:00:00:00:99"), net.link.now)
    net.pump()
    assert net.events(NeighborChanged)
    (neighbor,) = net.target.table.neighbors.values()
    assert neighbor.cached.dest_mac == bytes.fromhex("020000000099")
    net.target.handle_frame(_gratuitous_arp(B_MAC), net.link.now)
    net.pump()
    assert neighbor.cached.dest_mac == bytes.fromhex("020000000002")
    exchange(net, [Stream(a, b, payload(100_000, 9))])
    assert a.offload_state is OffloadState.OFFLOADED


def test_socket_options_update_the_cached_state() -> None:
    net, a, _ = _offloaded_pair(12)
    a.configure(nodelay=True, keepalive=True, keepalive_idle=30.0)
    net.pump()
    (entry,) = net.target.table.conns.values()
    assert entry.cached.nodelay and entry.cached.keepalive and entry.cached.keepalive_idle == 30.0
    a.configure(rcv_buf=1 << 21)
    net.pump()
    assert entry.cached.initial_rcv_wnd == 1 << 21
    net.a.upload(a, Reason.ADMIN)
    net.wait_in_host(a)
    assert a.conn.config.nodelay and a.conn.config.keepalive and a.conn.config.rcv_buf == 1 << 21


def test_sends_after_a_refused_offload_queue_behind_what_the_engine_could_not_take() -> None:
    """The engine is full when the refusal hands it the sends queued during the offload: the rest goes out
    first, later sends wait behind it (nothing lost, nothing reordered)."""
    net = make_offload_net(9, policy=OffloadPolicy(), config=TcpConfig(snd_buf=32 * 1024, rcv_buf=16 * 1024))
    a, b = net.connect()
    data = payload(300_000, 9)
    sent = 0
    while (n := a.send(data[sent : sent + 4096])) > 0:
        sent += n  # b reads nothing: the engine's send buffer fills
    net.run_for(0.2)
    while (n := a.send(data[sent : sent + 4096])) > 0:
        sent += n
    net.target.stall()
    net.target.refuse_next_offload(Reason.TARGET_FULL)
    assert net.a.offload_now(a) is None
    while (n := a.send(data[sent : sent + 4096])) > 0:
        sent += n  # queued on the socket while the initiate is in flight
    net.target.stall(False)
    net.run_until(lambda: a.offload_state is OffloadState.IN_HOST)
    stream = Stream(a, b, data)
    stream.sent = sent
    exchange(net, [stream])
    assert net.events(OffloadRefused) and a.offload_state is OffloadState.IN_HOST
