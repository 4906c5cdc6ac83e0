"""Listeners under pressure (accept-queue overflow, a SYN flood answered with cookies) and RFC 5961 blind
in-window injection, with a third node on the simulated link that forges frames."""

from __future__ import annotations

import random

from scenario_kit import (
    A_IP,
    A_MAC,
    B_IP,
    B_MAC,
    EVIL_MAC,
    PORT,
    Attacker,
    Net,
    Pipe,
    make_net,
    parse_tcp_frames,
    segment,
    tcp_frame,
)

from tcpchimney.host.events import EchoReply
from tcpchimney.host.interface import ip_bytes, mac_bytes
from tcpchimney.host.reassembly import HIGH_THRESH
from tcpchimney.host.sockets import TcpSocket
from tcpchimney.link.sim import Impairments
from tcpchimney.tcp.events import ConnectionReset, PeerClosed
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire import ethernet
from tcpchimney.wire import icmp as icmp_wire
from tcpchimney.wire import ipv4 as ipv4_wire
from tcpchimney.wire.tcp import ACK, PSH, RST, SYN, TcpOptions

DELAY = Impairments(delay=0.001)
A_ADDR, B_ADDR = ip_bytes(A_IP), ip_bytes(B_IP)


def _with_attacker(seed: int) -> tuple[Net, Attacker]:
    net = make_net(seed, DELAY, DELAY)
    evil = Attacker()
    net.link.attach(evil, "evil", DELAY)
    return net, evil


# ---------------------------------------------------------------------------------------------- listeners


def test_accept_queue_overflow_holds_handshakes_until_the_application_accepts() -> None:
    """backlog=2 and nobody accepts: two connections wait in the accept queue; the other handshakes' final
    ACKs (and SYN-cookie ACKs) are dropped and counted (Linux tcp_abort_on_overflow=0), not reset. Each
    client speaks first, as an HTTP client does; its retransmissions (or the server's SYN-ACK ones) get it
    in once the application accepts. (A client that never sends stays half-open, as with Linux.)"""
    net = make_net(1, DELAY, DELAY)
    listener = net.b.listen(PORT, backlog=2)
    clients = [net.a.connect(B_IP, PORT, net.link.now) for _ in range(5)]
    net.run_until(lambda: all(c.state is TcpState.ESTABLISHED for c in clients), timeout=5.0)
    for c in clients:
        c.send(b"hi %d" % c.local_port)
    net.run_for(3.0)
    assert listener.pending == 2
    tcp = net.b.counters["tcp"]
    assert tcp.get("drop_syn_accept_queue_full", 0) + tcp.get("drop_accept_queue_full", 0) > 0, tcp
    accepted: list[TcpSocket] = []
    requests: dict[int, bytes] = {}

    def all_in() -> bool:
        while (sock := listener.accept()) is not None:
            accepted.append(sock)
        for s in accepted:
            requests[s.remote_port] = requests.get(s.remote_port, b"") + s.receive(100)
        return all(requests.get(c.local_port) == b"hi %d" % c.local_port for c in clients)

    net.run_until(all_in, timeout=60.0)
    assert requests == {c.local_port: b"hi %d" % c.local_port for c in clients}
    assert not any(net.has_event(s, ConnectionReset) for s in [*clients, *accepted])


def test_syn_flood_fills_the_syn_queue_and_a_real_client_gets_in_with_a_cookie() -> None:
    net, evil = _with_attacker(2)
    listener = net.b.listen(PORT, backlog=16, syn_backlog=32)
    rnd = random.Random(2)
    for i in range(200):  # spoofed sources on the segment that nobody owns: the SYN-ACKs go nowhere
        src = f"198.18.0.{100 + i % 100}"
        syn = segment(
            rnd.randrange(1024, 65536), PORT, rnd.getrandbits(32), 0, SYN, options=TcpOptions(mss=1460)
        )
        evil.send(tcp_frame(src, B_IP, syn, ident=i))
    net.run_for(0.01)
    assert len(listener.syn_queue) == 32
    tcp = net.b.counters["tcp"]
    assert tcp.get("syncookies_sent", 0) >= 200 - 32

    client = net.a.connect(B_IP, PORT, net.link.now)
    net.run_until(lambda: listener.pending > 0 and client.state is TcpState.ESTABLISHED, timeout=5.0)
    server = listener.accept()
    assert server is not None and server.remote_port == client.local_port
    tcp = net.b.counters["tcp"]
    assert tcp.get("syncookies_ok") == 1
    # The cookie kept the options in the timestamp: window scaling and SACK still work.
    assert server.conn.window_scaling and server.conn.sack_enabled and server.conn.ts_enabled
    data = random.Random(3).randbytes(300_000)
    pipe = Pipe(client, server, data)

    def done() -> bool:
        pipe.step()
        return net.has_event(server, PeerClosed) and server.readable == 0

    net.run_until(done, timeout=30.0)
    assert pipe.got == data


# ---------------------------------------------------------------------------------------------- fragments


def _junk_first_fragment(ident: int, src: int) -> bytes:
    """An 8-byte first fragment (MF set) of a UDP datagram whose rest never comes."""
    eth = ethernet.emit_ethernet(mac_bytes(B_MAC), mac_bytes(EVIL_MAC), ethernet.ETHERTYPE_IPV4)
    src_ip = bytes([198, 18, 0, src])
    ip = ipv4_wire.emit_ipv4(src_ip, B_ADDR, ipv4_wire.PROTO_UDP, 8, ident, flags_frag=ipv4_wire.FLAG_MF)
    return eth + ip + b"J" * 8


def test_a_flood_of_junk_first_fragments_does_not_stop_fragmented_pings() -> None:
    """Thousands of first fragments that never complete, from many sources, interleaved with fragmented
    pings: reassembly is bounded by memory and evicts the oldest, so every ping is still reassembled and
    answered, and the memory held never passes the high threshold."""
    net, evil = _with_attacker(5)
    payload = random.Random(5).randbytes(3000)  # three fragments each way at MTU 1500
    peak = 0
    for seq in range(100):
        for i in range(200):
            n = seq * 200 + i
            evil.send(_junk_first_fragment(n & 0xFFFF, 100 + n % 100))
        net.a.ping(B_IP, 77, seq, payload, net.link.now)
        net.run_for(0.001)
        peak = max(peak, net.b.reassembler.memory)
    replies = lambda: {e.seq for e in net.log["a"] if isinstance(e, EchoReply)}  # noqa: E731
    net.run_until(lambda: len(replies()) == 100, timeout=5.0)
    assert all(e.payload == payload for e in net.log["a"] if isinstance(e, EchoReply))
    ipv4 = net.b.counters["ipv4"]
    assert ipv4["frag_rx"] >= 20_000 and ipv4["reassembled"] == 100
    assert ipv4["drop_frag_evicted"] > 10_000, "the flood passed the high threshold many times"
    assert peak <= net.b.reassembler.high_thresh and net.b.reassembler.memory <= HIGH_THRESH
    assert net.b.counters["stack"]["internal_error"] == 0


def test_overlapping_fragments_discard_the_datagram_and_are_counted() -> None:
    """RFC 5722 style, for IPv4 as Linux does: a fragment that overlaps another (a Teardrop-like rewrite of
    bytes already received) discards the whole datagram and the rest of it; a clean copy then gets through."""
    net, evil = _with_attacker(6)
    icmp = icmp_wire.emit_echo_request(9, 1, b"x" * 64)
    eth = ethernet.emit_ethernet(mac_bytes(B_MAC), mac_bytes(A_MAC), ethernet.ETHERTYPE_IPV4)

    def fragment(ident: int, offset: int, data: bytes, more: bool) -> bytes:
        flags = (ipv4_wire.FLAG_MF if more else 0) | offset >> 3
        ip = ipv4_wire.emit_ipv4(A_ADDR, B_ADDR, ipv4_wire.PROTO_ICMP, len(data), ident, flags_frag=flags)
        return eth + ip + data

    evil.send(fragment(1, 0, icmp[:48], True))
    evil.send(fragment(1, 40, b"\0" * 8 + icmp[48:], False))  # rewrites bytes 40..47: an overlap
    evil.send(fragment(1, 48, icmp[48:], False))  # what would have completed it is discarded too
    net.run_for(0.01)
    ipv4 = net.b.counters["ipv4"]
    assert ipv4["drop_frag_overlap"] == 1 and ipv4["drop_frag_discarded"] == 1
    assert "reassembled" not in ipv4 and net.b.counters["icmp"]["rx"] == 0
    evil.send(fragment(2, 0, icmp[:48], True))
    evil.send(fragment(2, 48, icmp[48:], False))
    net.run_for(0.01)
    assert net.b.counters["ipv4"]["reassembled"] == 1 and net.b.counters["icmp"]["rx"] == 1


# ---------------------------------------------------------------------------------------------- RFC 5961


def _challenge_acks(evil: Attacker, since: float) -> list[int]:
    """ACK numbers of the pure ACKs b sent to a after ``since`` (the attacker sees the whole segment)."""
    return [
        int(seg.ack)
        for t, src, dst, seg in parse_tcp_frames(evil.seen)
        if t >= since and src == B_ADDR and dst == A_ADDR and seg.flags == ACK and not seg.payload
    ]


def _forge(evil: Attacker, client: TcpSocket, seq: int, ack: int, flags: int, payload: bytes = b"") -> None:
    """A segment that claims to come from the client (its address, ports) towards the server."""
    seg = segment(client.local_port, PORT, seq, ack, flags, payload)
    evil.send(tcp_frame(A_IP, B_IP, seg))


def test_rst_in_window_but_not_exact_gets_a_challenge_ack_and_the_connection_survives() -> None:
    net, evil = _with_attacker(4)
    client, server = net.connect()
    nxt = int(server.conn.rcv_nxt)
    before = net.link.now
    _forge(evil, client, nxt + 5000, 0, RST)
    net.run_for(0.1)
    assert server.state is TcpState.ESTABLISHED and not net.has_event(server, ConnectionReset)
    assert net.b.counters["tcp"].get("engine_drop_rst_challenge") == 1
    assert nxt in _challenge_acks(evil, before)  # RFC 5961 3.2: <SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK>
    client.send(b"still here")
    net.run_until(lambda: server.readable == 10)
    assert server.receive(100) == b"still here"


def test_syn_in_window_gets_a_challenge_ack_and_the_connection_survives() -> None:
    net, evil = _with_attacker(5)
    client, server = net.connect()
    nxt = int(server.conn.rcv_nxt)
    before = net.link.now
    _forge(evil, client, nxt + 100, 0, SYN)
    net.run_for(0.1)
    assert server.state is TcpState.ESTABLISHED and not net.has_event(server, ConnectionReset)
    assert net.b.counters["tcp"].get("engine_drop_syn_in_window") == 1
    assert nxt in _challenge_acks(evil, before)  # RFC 5961 4.2
    server.send(b"fine")
    net.run_until(lambda: client.readable == 4)
    assert client.receive(100) == b"fine" and client.state is TcpState.ESTABLISHED


def test_data_with_an_unacceptable_ack_is_dropped_and_the_stream_stays_exact() -> None:
    """Mid-transfer the attacker injects data at exactly RCV.NXT, once with an ACK far older than
    SND.UNA - MAX.SND.WND and once acknowledging data never sent (RFC 5961 5.2): both are dropped, so the
    bytes the application reads are the client's only."""
    net, evil = _with_attacker(6)
    client, server = net.connect()
    data = random.Random(6).randbytes(400_000)
    pipe = Pipe(client, server, data)

    def half_way() -> bool:
        pipe.step()
        return len(pipe.got) >= 100_000

    net.run_until(half_way, timeout=10.0)
    conn = server.conn
    too_old = int(conn.snd_una) - conn.max_snd_wnd - 10_000
    unsent = int(conn.snd_max) + 10_000
    _forge(evil, client, int(conn.rcv_nxt), too_old, ACK | PSH, b"EVIL" * 100)
    _forge(evil, client, int(conn.rcv_nxt), unsent, ACK | PSH, b"EVIL" * 100)

    def done() -> bool:
        pipe.step()
        return net.has_event(server, PeerClosed) and server.readable == 0

    net.run_until(done, timeout=30.0)
    assert pipe.got == data
    tcp = net.b.counters["tcp"]
    assert tcp.get("engine_drop_ack_too_old") == 1 and tcp.get("engine_drop_ack_unsent") == 1, tcp


def test_rst_with_the_exact_sequence_number_resets() -> None:
    net, evil = _with_attacker(7)
    client, server = net.connect()
    _forge(evil, client, int(server.conn.rcv_nxt), 0, RST)
    net.run_until(lambda: net.has_event(server, ConnectionReset), timeout=1.0)
    assert server.state is TcpState.CLOSED and server not in net.b.connections()
    assert net.b.counters["tcp"].get("engine_drop_rst_challenge", 0) == 0
