"""TCP in the host stack, against a small stand-in engine: demux, listeners, SYN/accept queues, SYN cookies,
TIME-WAIT reuse, connect errors, timers and the transmit path (templates, checksum offload, TSO)."""

from __future__ import annotations

import pytest
from conftest import (
    OUR_IP,
    OUR_MAC,
    PEER_IP,
    PEER_MAC,
    eth_to_us,
    events,
    frame,
    learn_peer,
    make_stack,
    sent,
)
from fake_engine import FakeConnection
from scapy.layers.inet import ICMP, IP, TCP

from tcpchimney.host.errors import AddressInUse, InvalidAddress, InvalidPort, ListenerClosedError
from tcpchimney.host.events import ConnectionEvent, IncomingConnection, PathMtuChanged
from tcpchimney.host.stack import HostStack
from tcpchimney.host.syncookies import MSS_TABLE
from tcpchimney.tcp.events import Closed, Connected, DataReceived
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire.frame import DeviceFeatures, Frame

PORT = 80


def _stack(**kwargs: object) -> HostStack:
    s = make_stack(engine=FakeConnection, **kwargs)
    learn_peer(s)
    return s


@pytest.fixture
def host() -> HostStack:
    return _stack()


def _seg(sport: int = 5000, dport: int = PORT, payload: bytes = b"", **tcp: object) -> object:
    return eth_to_us(IP(src=PEER_IP, dst=OUR_IP) / TCP(sport=sport, dport=dport, **tcp) / payload)


def _tcp_out(stack: HostStack, now: float = 0.0) -> list[TCP]:
    return [p[TCP] for p in sent(stack, now) if TCP in p]


def _handshake(stack: HostStack, sport: int = 5000, isn: int = 1000) -> TCP:
    stack.handle_frame(frame(_seg(sport, flags="S", seq=isn, options=[("MSS", 1460)])), 0.0)
    (synack,) = _tcp_out(stack)
    stack.handle_frame(frame(_seg(sport, flags="A", seq=isn + 1, ack=synack.seq + 1)), 0.0)
    return synack


# --- listen / accept ----------------------------------------------------------------------------------


def test_listen_twice_and_bad_ports_raise(host: HostStack) -> None:
    host.listen(PORT)
    with pytest.raises(AddressInUse):
        host.listen(PORT)
    for bad in (0, 65536, -1):
        with pytest.raises(InvalidPort):
            host.listen(bad)


def test_handshake_then_accept_then_data(host: HostStack) -> None:
    listener = host.listen(PORT)
    synack = _handshake(host)
    assert synack.flags == "SA" and synack.ack == 1001 and synack.sport == PORT and synack.dport == 5000
    assert events(host) == [IncomingConnection(listener)]
    assert listener.pending == 1
    sock = listener.accept()
    assert sock is not None and sock.state is TcpState.ESTABLISHED and listener.accept() is None
    host.handle_frame(frame(_seg(flags="PA", seq=1001, ack=synack.seq + 1, payload=b"hello")), 0.1)
    assert events(host) == [ConnectionEvent(sock, DataReceived(5))]
    assert sock.readable == 5 and sock.receive(10) == b"hello" and sock.readable == 0
    (ack,) = _tcp_out(host, 0.1)
    assert ack.flags == "A" and ack.ack == 1006


def test_events_of_unaccepted_connections_are_not_reported(host: HostStack) -> None:
    listener = host.listen(PORT)
    synack = _handshake(host)
    host.handle_frame(frame(_seg(flags="PA", seq=1001, ack=synack.seq + 1, payload=b"early")), 0.1)
    assert events(host) == [IncomingConnection(listener)]
    sock = listener.accept()
    assert sock is not None and sock.readable == 5 and sock.receive(5) == b"early"


def test_rst_and_stray_segments_to_a_listener(host: HostStack) -> None:
    host.listen(PORT)
    host.handle_frame(frame(_seg(flags="R", seq=1)), 0.0)
    host.handle_frame(frame(_seg(flags="", seq=1)), 0.0)
    assert _tcp_out(host) == []
    host.handle_frame(frame(_seg(flags="A", seq=1, ack=4242)), 0.0)  # a bad ACK (no valid cookie)
    (rst,) = _tcp_out(host)
    assert rst.flags == "R" and rst.seq == 4242
    c = host.counters["tcp"]
    assert (
        c["drop_rst_to_listener"] == 1 and c["drop_no_syn_to_listener"] == 1 and c["syncookies_failed"] == 1
    )


def test_closed_listener_resets_queued_connections(host: HostStack) -> None:
    listener = host.listen(PORT)
    _handshake(host)
    sent(host)
    listener.close()
    (rst,) = _tcp_out(host)
    assert rst.flags == "R"
    with pytest.raises(ListenerClosedError):
        listener.accept()
    host.listen(PORT)  # the port is free again


# --- SYN queue full: cookies --------------------------------------------------------------------------


def test_syn_queue_full_answers_with_a_cookie_and_the_ack_completes(host: HostStack) -> None:
    listener = host.listen(PORT, backlog=8, syn_backlog=1)
    host.handle_frame(frame(_seg(4000, flags="S", seq=1)), 0.0)  # occupies the SYN queue
    _tcp_out(host)
    created = len(FakeConnection.created)
    opts = [("MSS", 1400), ("SAckOK", b""), ("Timestamp", (777, 0)), ("WScale", 9)]
    host.handle_frame(frame(_seg(5000, flags="S", seq=50_000, options=opts)), 0.0)
    (synack,) = _tcp_out(host)
    assert len(FakeConnection.created) == created + 1  # only the throwaway that shaped the SYN-ACK
    assert len(listener.syn_queue) == 1 and host.counters["tcp"]["syncookies_sent"] == 1
    assert synack.flags == "SA" and synack.ack == 50_001
    tsval = dict(synack.options)["Timestamp"][0]
    assert tsval & 0x0F == 9 and tsval & 0x10  # the peer's wscale and SACK ride in the TSval
    ack = _seg(5000, flags="A", seq=50_001, ack=synack.seq + 1, options=[("Timestamp", (778, tsval))])
    host.handle_frame(frame(ack), 1.0)
    assert host.counters["tcp"]["syncookies_ok"] == 1
    conn = FakeConnection.created[-1]
    assert conn.iss == synack.seq and conn.state is TcpState.ESTABLISHED
    assert conn.peer_syn is not None
    o = conn.peer_syn.options
    assert (o.mss, o.wscale, o.sack_permitted) == (MSS_TABLE[1], 9, True)  # 1300: the largest <= 1400
    assert events(host) == [IncomingConnection(listener)]
    assert listener.accept() is not None


def test_cookie_without_timestamps_drops_window_scale_and_sack(host: HostStack) -> None:
    listener = host.listen(PORT, syn_backlog=1)
    host.handle_frame(frame(_seg(4000, flags="S", seq=1)), 0.0)
    _tcp_out(host)
    opts = [("MSS", 1460), ("SAckOK", b""), ("WScale", 9)]
    host.handle_frame(frame(_seg(5000, flags="S", seq=70_000, options=opts)), 0.0)
    (synack,) = _tcp_out(host)
    names = [name for name, _ in synack.options]
    assert "WScale" not in names and "SAckOK" not in names and "MSS" in names
    host.handle_frame(frame(_seg(5000, flags="A", seq=70_001, ack=synack.seq + 1)), 0.5)
    o = FakeConnection.created[-1].peer_syn.options  # type: ignore[union-attr]
    assert (o.mss, o.wscale, o.sack_permitted, o.ts_val) == (1460, None, False, None)
    assert listener.pending == 1


def test_forged_cookie_ack_is_reset(host: HostStack) -> None:
    host.listen(PORT, syn_backlog=1)
    host.handle_frame(frame(_seg(5000, flags="A", seq=10, ack=123456)), 0.0)
    (rst,) = _tcp_out(host)
    assert rst.flags == "R" and rst.seq == 123456
    assert host.counters["tcp"]["syncookies_failed"] == 1


def test_without_cookies_a_full_syn_queue_drops(host: HostStack) -> None:
    stack = _stack(syncookies=False)
    stack.listen(PORT, syn_backlog=1)
    stack.handle_frame(frame(_seg(4000, flags="S", seq=1)), 0.0)
    stack.handle_frame(frame(_seg(4001, flags="S", seq=1)), 0.0)
    assert len(_tcp_out(stack)) == 1
    assert stack.counters["tcp"]["drop_syn_queue_full"] == 1


# --- accept queue full ----------------------------------------------------------------------------------


def test_accept_queue_full_drops_the_final_ack_until_there_is_room(host: HostStack) -> None:
    listener = host.listen(PORT, backlog=1, syn_backlog=4)
    host.handle_frame(frame(_seg(4000, flags="S", seq=1)), 0.0)
    host.handle_frame(frame(_seg(4001, flags="S", seq=1)), 0.0)
    a, b = sorted(_tcp_out(host), key=lambda t: t.dport)
    host.handle_frame(frame(_seg(4000, flags="A", seq=2, ack=a.seq + 1)), 0.0)
    host.handle_frame(frame(_seg(4001, flags="A", seq=2, ack=b.seq + 1)), 0.0)
    assert listener.pending == 1 and len(listener.syn_queue) == 1
    assert host.counters["tcp"]["drop_accept_queue_full"] == 1
    host.handle_frame(frame(_seg(4002, flags="S", seq=1)), 0.0)  # a new SYN is dropped too (Linux)
    assert _tcp_out(host) == [] and host.counters["tcp"]["drop_syn_accept_queue_full"] == 1
    first = listener.accept()
    assert first is not None and first.remote_port == 4000
    host.handle_frame(frame(_seg(4001, flags="A", seq=2, ack=b.seq + 1)), 0.5)  # the peer's retransmission
    second = listener.accept()
    assert second is not None and second.remote_port == 4001 and second.state is TcpState.ESTABLISHED


# --- TIME-WAIT reuse -------------------------------------------------------------------------------------


def _time_wait_conn(host: HostStack) -> FakeConnection:
    listener = host.listen(PORT)
    _handshake(host, isn=1000)
    sock = listener.accept()
    assert sock is not None
    conn = sock.conn
    assert isinstance(conn, FakeConnection)
    conn.state = TcpState.TIME_WAIT
    conn.rcv_nxt = conn.rcv_nxt + 500
    events(host)
    sent(host)
    return conn


def test_time_wait_reuse_with_a_higher_sequence_number(host: HostStack) -> None:
    old = _time_wait_conn(host)
    host.handle_frame(frame(_seg(flags="S", seq=1000 + 10_000)), 1.0)
    (synack,) = _tcp_out(host, 1.0)
    assert synack.flags == "SA" and synack.ack == 11_001
    assert host.counters["tcp"]["time_wait_reuse"] == 1
    new = FakeConnection.created[-1]
    assert new is not old and new.state is TcpState.SYN_RECEIVED
    assert old.received == [r for r in old.received if not r.flags & 0x02]  # the old one never saw it
    closed = [e for e in events(host) if isinstance(e, ConnectionEvent) and e.tcp_event == Closed()]
    assert [e.sock.conn for e in closed] == [old]


def test_time_wait_keeps_an_old_sequence_number_syn(host: HostStack) -> None:
    old = _time_wait_conn(host)
    host.handle_frame(frame(_seg(flags="S", seq=1000)), 1.0)
    assert old.received[-1].flags & 0x02  # handed to the TIME-WAIT connection (it re-ACKs, RFC 9293)
    assert "time_wait_reuse" not in host.counters["tcp"]


def test_time_wait_reuse_by_timestamp() -> None:
    host = _stack()
    old = _time_wait_conn(host)
    old.ts_recent = 5000
    host.handle_frame(frame(_seg(flags="S", seq=10, options=[("Timestamp", (4000, 0))])), 1.0)
    assert old.received[-1].flags & 0x02  # older timestamp: not a new incarnation
    host.handle_frame(frame(_seg(flags="S", seq=10, options=[("Timestamp", (6000, 0))])), 1.0)
    assert host.counters["tcp"]["time_wait_reuse"] == 1


# --- connect ---------------------------------------------------------------------------------------------


def test_connect_sends_a_syn_from_an_ephemeral_port_after_arp() -> None:
    host = make_stack(engine=FakeConnection)
    sock = host.connect(PEER_IP, 8080, 0.0)
    assert 32768 <= sock.local_port <= 60999
    out = sent(host)
    assert len(out) == 1 and out[0].dst == "ff:ff:ff:ff:ff:ff"  # ARP first; the SYN waits
    from conftest import arp_reply

    arp_reply(host, now=0.01)
    (syn,) = [p for p in sent(host, 0.01) if TCP in p]
    assert syn.dst == PEER_MAC and syn.src == OUR_MAC
    assert syn[TCP].flags == "S" and syn[TCP].sport == sock.local_port and syn[TCP].dport == 8080
    host.handle_frame(frame(_seg(8080, sock.local_port, flags="SA", seq=9, ack=syn[TCP].seq + 1)), 0.02)
    assert ConnectionEvent(sock, Connected()) in events(host)


def test_connect_errors(host: HostStack) -> None:
    host.connect(PEER_IP, 80, 0.0, local_port=40000)
    with pytest.raises(AddressInUse):
        host.connect(PEER_IP, 80, 0.0, local_port=40000)
    host.connect(PEER_IP, 81, 0.0, local_port=40000)  # another 4-tuple is fine
    for bad in (OUR_IP, "198.18.0.255", "255.255.255.255", "224.0.0.1", "0.0.0.0", "not-an-ip", b"\x01"):
        with pytest.raises(InvalidAddress):
            host.connect(bad, 80, 0.0)
    with pytest.raises(InvalidPort):
        host.connect(PEER_IP, 0, 0.0)
    no_gw = make_stack(gateway=None, engine=FakeConnection)
    with pytest.raises(InvalidAddress):
        no_gw.connect("203.0.113.1", 80, 0.0)


def test_ephemeral_ports_skip_listening_ports() -> None:
    host = make_stack(engine=FakeConnection)
    from tcpchimney.host.ports import EphemeralPorts

    host._ports = EphemeralPorts(b"k", low=40000, high=40002)
    host.listen(40000)
    host.listen(40001)
    assert host.connect(PEER_IP, 80, 0.0).local_port == 40002
    from tcpchimney.host.errors import NoEphemeralPort

    with pytest.raises(NoEphemeralPort):
        host.connect(PEER_IP, 80, 0.0)


def test_ephemeral_ports_differ_between_destinations(host: HostStack) -> None:
    ports = {host.connect(f"198.18.0.{i}", 80, 0.0).local_port for i in range(2, 40)}
    assert len(ports) > 30


def test_closed_connection_is_forgotten_and_later_segments_get_a_reset(host: HostStack) -> None:
    listener = host.listen(PORT)
    synack = _handshake(host)
    sock = listener.accept()
    assert sock is not None
    events(host)
    host.handle_frame(frame(_seg(flags="R", seq=1001)), 0.1)
    assert events(host)[-1] == ConnectionEvent(sock, Closed())
    assert host.connections() == []
    host.handle_frame(frame(_seg(flags="A", seq=1001, ack=synack.seq + 1)), 0.2)
    assert [s.flags for s in _tcp_out(host, 0.2)] == ["R"]


# --- timers ---------------------------------------------------------------------------------------------


def test_connection_deadlines_drive_handle_timer(host: HostStack) -> None:
    host.listen(PORT)
    host.handle_frame(frame(_seg(flags="S", seq=1)), 2.0)
    sent(host, 2.0)
    assert host.next_deadline() == pytest.approx(3.0)  # the stand-in engine's SYN-ACK timer
    host.handle_timer(2.5)
    conn = FakeConnection.created[-1]
    assert conn.timer_calls == []
    host.handle_timer(3.0)
    assert conn.timer_calls == [3.0]


# --- transmit path ----------------------------------------------------------------------------------------


def _established(stack: HostStack) -> tuple[object, TCP]:
    listener = stack.listen(PORT)
    synack = _handshake(stack)
    sock = listener.accept()
    sent(stack)
    return sock, synack


def test_software_checksums_are_correct(host: HostStack) -> None:
    sock, _ = _established(host)
    sock.send(b"x" * 1001)  # type: ignore[attr-defined]
    (f,) = host.frames_to_send(0.0)
    assert not f.csum_partial and f.gso_size == 0 and bytes(f.payload) == b"x" * 1001
    pkt = IP(f.tobytes()[14:])
    ip_chk, tcp_chk = pkt.chksum, pkt[TCP].chksum
    del pkt.chksum
    del pkt[TCP].chksum
    again = IP(bytes(pkt))
    assert (again.chksum, again[TCP].chksum) == (ip_chk, tcp_chk)
    assert pkt.flags == "DF" and pkt.ttl == 64


def test_checksum_offload_leaves_the_pseudo_header_sum() -> None:
    host = _stack(features=DeviceFeatures(tx_csum=True))
    sock, _ = _established(host)
    sock.send(b"y" * 100)  # type: ignore[attr-defined]
    (f,) = host.frames_to_send(0.0)
    assert f.csum_partial and f.gso_size == 0
    raw = f.tobytes()
    tcp_len = len(raw) - 34
    words = [198 << 8 | 18, 1, 198 << 8 | 18, 2, 6, tcp_len]
    s = sum(words)
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    assert int.from_bytes(raw[50:52], "big") == s


def test_tso_super_segments_carry_gso_size() -> None:
    host = _stack(features=DeviceFeatures(tx_csum=True, tso=True))
    assert host.tcp_config.max_segment_payload == 65535 - 20 - 60
    sock, _ = _established(host)
    sock.send(b"z" * 20_000)  # type: ignore[attr-defined]
    (f,) = host.frames_to_send(0.0)
    assert f.csum_partial and f.gso_size == 1460 and len(f.payload) == 20_000
    assert int.from_bytes(bytes(f.headers)[16:18], "big") == 20 + 20 + 20_000  # the real IP total length


def test_path_mtu_lowers_the_segment_size_of_connections_to_that_host() -> None:
    host = _stack(features=DeviceFeatures(tx_csum=True, tso=True))
    sock, _ = _established(host)
    conn = sock.conn  # type: ignore[attr-defined]
    conn.snd_una, conn.snd_nxt = conn.snd_nxt, conn.snd_nxt + 3000  # data in flight
    wrong = bytes(IP(src=OUR_IP, dst=PEER_IP) / TCP(sport=PORT, dport=5000, seq=conn.snd_una - 10_000))[:28]
    msg = IP(src="198.18.0.254", dst=OUR_IP) / ICMP(type=3, code=4, nexthopmtu=1280) / wrong
    host.handle_frame(frame(eth_to_us(msg)), 0.0)
    assert host.path_mtu(PEER_IP) == 1500  # a sequence number not in flight: ignored (RFC 5927)
    quote = bytes(IP(src=OUR_IP, dst=PEER_IP) / TCP(sport=PORT, dport=5000, seq=conn.snd_una + 5))[:28]
    msg = IP(src="198.18.0.254", dst=OUR_IP) / ICMP(type=3, code=4, nexthopmtu=1280) / quote
    host.handle_frame(frame(eth_to_us(msg)), 0.0)
    assert PathMtuChanged(bytes([198, 18, 0, 2]), 1280) in events(host)
    assert sock.conn.path_mss == 1240  # type: ignore[attr-defined]
    sock.send(b"z" * 5000)  # type: ignore[attr-defined]
    (f,) = host.frames_to_send(0.0)
    assert f.gso_size == 1240


def test_internal_errors_are_contained(host: HostStack, monkeypatch: pytest.MonkeyPatch) -> None:
    host.listen(PORT)

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("engine bug")

    monkeypatch.setattr(FakeConnection, "accept_syn", boom)
    host.handle_frame(frame(_seg(flags="S", seq=1)), 0.0)
    assert host.counters["stack"]["internal_error"] == 1
    assert host.internal_errors == ["RuntimeError: engine bug"]


def test_an_engine_failing_on_output_is_dropped_not_fatal(host: HostStack) -> None:
    sock, _ = _established(host)
    events(host)

    def boom(now: float) -> list[object]:
        raise RuntimeError("output bug")

    sock.conn.segments_to_send = boom  # type: ignore[attr-defined]
    sock.send(b"x")  # type: ignore[attr-defined]
    assert host.frames_to_send(0.0) == []
    assert host.counters["stack"]["internal_error"] == 1 and host.connections() == []
    assert events(host) == [ConnectionEvent(sock, Closed())]  # type: ignore[arg-type]
    assert host.frames_to_send(0.0) == []  # and it stays quiet


def test_frames_received_with_a_separate_payload_are_handled(host: HostStack) -> None:
    host.listen(PORT)
    raw = bytes(_seg(flags="S", seq=1))  # type: ignore[call-overload]
    host.handle_frame(Frame(raw[:40], raw[40:]), 0.0)
    assert [s.flags for s in _tcp_out(host)] == ["SA"]


def test_without_tso_no_frame_is_marked_for_segmentation() -> None:
    host = _stack(features=DeviceFeatures(tx_csum=True))
    assert host.tcp_config.max_segment_payload == 0 and host.tcp_config.mss == 1460
    sock, _ = _established(host)
    sock.send(b"z" * 3000)  # type: ignore[attr-defined]  # the stand-in ignores the MSS: the host must not
    (f,) = host.frames_to_send(0.0)
    assert f.gso_size == 0
