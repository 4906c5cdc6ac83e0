"""Flow control, keepalive, ICMP echo and IPv4 fragmentation between two host stacks over the simulated link,
and a capture of one exchange read back with scapy."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.utils import rdpcap
from scenario_kit import B_IP, MB, Attacker, Net, Pipe, make_net, parse_tcp_frames

from tcpchimney.host.events import EchoReply
from tcpchimney.host.interface import ip_bytes
from tcpchimney.link.sim import Impairments
from tcpchimney.tcp.config import TcpConfig
from tcpchimney.tcp.events import Closed, ConnectionTimedOut, ConnectionUnreachable, PeerClosed
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire.tcp import ACK, FIN, RST, SYN

DELAY = Impairments(delay=0.001)
A_ADDR, B_ADDR = ip_bytes("198.18.0.1"), ip_bytes(B_IP)


def _sniff(net: Net) -> Attacker:
    """A silent node on the segment that records every frame (the link delivers each frame to all nodes)."""
    sniffer = Attacker()
    net.link.attach(sniffer, "sniffer")
    return sniffer


# ---------------------------------------------------------------------------------------------- flow control


def test_zero_window_is_probed_and_the_transfer_resumes_byte_exact() -> None:
    """The receiver stops reading: its window closes, the sender's persist timer probes it (RFC 9293
    3.8.6.1) with growing intervals and the probes are answered; once the application reads again the
    transfer completes byte-exact."""
    net = make_net(1, DELAY, DELAY, config_b=TcpConfig(rcv_buf=64 * 1024))
    sniffer = _sniff(net)
    client, server = net.connect()
    data = random.Random(1).randbytes(1 * MB)
    pipe = Pipe(client, server, data)
    # Fill the window without reading: send only. The last bytes of a nearly closed window wait for the
    # persist timer (sender SWS avoidance, RFC 9293 3.8.6.2.1); then the window is zero.
    net.run_until(lambda: _feed(pipe) or (client.conn.persisting and client.conn.snd_wnd == 0), timeout=10.0)
    filled = server.readable  # the whole buffer, less what the window scale cannot express
    assert 64 * 1024 - (1 << server.conn.rcv_wscale) <= filled <= 64 * 1024
    stalled_at = net.link.now
    net.run_for(5.0)
    probes = _probes(net, sniffer, stalled_at)
    assert len(probes) >= 3, probes
    gaps = [b - a for a, b in itertools.pairwise(probes)]
    assert all(later >= earlier - 1e-9 for earlier, later in itertools.pairwise(gaps)), gaps
    assert server.readable == filled  # nothing got through the closed window
    assert client.state is TcpState.ESTABLISHED

    def done() -> bool:
        pipe.step()
        return net.has_event(server, PeerClosed) and server.readable == 0

    net.run_until(done, timeout=60.0)
    assert pipe.got == data


def _feed(pipe: Pipe) -> bool:
    """Write without reading."""
    while pipe.sent < len(pipe.data):
        n = pipe.src.send(pipe.data[pipe.sent : pipe.sent + 65536])
        if n == 0:
            break
        pipe.sent += n
    return False


def _probes(net: Net, sniffer: Attacker, since: float) -> list[float]:
    """Times of the client's zero-window probes: no data, an ACK below SND.UNA (Linux style) or one byte."""
    una = net.a.connections()[0].conn.snd_una
    return [
        t
        for t, src, _, seg in parse_tcp_frames(sniffer.seen)
        if t >= since
        and src == A_ADDR
        and seg.flags & ACK
        and ((not seg.payload and seg.seq == una - 1) or (len(seg.payload) == 1 and seg.seq == una))
    ]


# ---------------------------------------------------------------------------------------------- keepalive

KEEPALIVE = TcpConfig(keepalive=True, keepalive_idle=1.0, keepalive_interval=0.5, keepalive_probes=3)


def test_keepalive_probes_are_answered_and_keep_an_idle_connection() -> None:
    net = make_net(2, DELAY, DELAY, config=KEEPALIVE)
    sniffer = _sniff(net)
    client, server = net.connect()
    start = net.link.now
    net.run_for(10.0)
    assert client.state is TcpState.ESTABLISHED and server.state is TcpState.ESTABLISHED
    segs = [(t, src, seg) for t, src, _, seg in parse_tcp_frames(sniffer.seen) if t > start]
    # RFC 1122 4.2.3.6: a probe is SEG.SEQ = SND.NXT - 1 with no data; the peer answers with an ACK.
    probes = [t for t, src, seg in segs if not seg.payload and seg.seq == _snd_nxt(net, src) - 1]
    answers = [t for t, src, seg in segs if not seg.payload and seg.seq == _snd_nxt(net, src)]
    assert len(probes) >= 8, len(probes)  # both sides probe about once per idle second
    assert len(answers) >= len(probes)
    assert not net.has_event(client, ConnectionTimedOut) and not net.has_event(server, ConnectionTimedOut)


def _snd_nxt(net: Net, src: bytes) -> int:
    stack = net.a if src == A_ADDR else net.b
    return int(stack.connections()[0].conn.snd_nxt)


def test_keepalive_times_out_a_peer_that_disappeared() -> None:
    net = make_net(3, DELAY, DELAY, config=KEEPALIVE)
    client, _ = net.connect()
    net.run_for(3.0)
    assert client.state is TcpState.ESTABLISHED
    net.link.set_impairments("b", Impairments(loss=1.0))  # b's frames vanish: the peer is gone
    gone = net.link.now
    net.run_until(lambda: net.has_event(client, ConnectionTimedOut), timeout=10.0)
    assert client.conn.state is TcpState.CLOSED and client not in net.a.connections()
    # idle, then keepalive_probes unanswered probes at keepalive_interval: about 1 + 3 * 0.5 s
    assert net.link.now - gone <= KEEPALIVE.keepalive_idle + (KEEPALIVE.keepalive_probes + 1) * 0.5 + 0.01


def test_connect_to_a_silent_on_link_address_fails_host_unreachable_in_three_seconds() -> None:
    """Nobody on the segment has 198.18.0.99: a's ARP requests (broadcast, seen by b, which ignores them)
    go unanswered; after Linux's 3 probes 1 s apart the handshake fails with ConnectionUnreachable
    (EHOSTUNREACH at the API), the SYNs queued on the neighbor are dropped and counted, and a's
    connection to b, which answers, is untouched."""
    net = make_net(5, DELAY, DELAY)
    client, _ = net.connect()
    start = net.link.now
    silent = net.a.connect("198.18.0.99", 80, start)
    net.run_until(lambda: net.has_event(silent, ConnectionUnreachable), timeout=5.0)
    elapsed = net.link.now - start
    params = net.a.arp.params
    assert elapsed == pytest.approx(params.max_probes * params.retrans_time, abs=0.01)
    assert net.has_event(silent, Closed) and not net.has_event(silent, ConnectionTimedOut)
    assert silent not in net.a.connections() and client.state is TcpState.ESTABLISHED
    arp = net.a.counters["arp"]
    assert arp["resolution_failed"] == 1 and arp["drop_unresolved"] == 2  # the SYN and its retry at 1 s
    net.run_for(1.0)
    assert net.a.counters["arp"]["tx_request"] == arp["tx_request"]  # nothing retries after the failure


# ---------------------------------------------------------------------------------------------- ICMP


def _echo_replies(net: Net) -> list[EchoReply]:
    return [ev for ev in net.log["a"] if isinstance(ev, EchoReply)]


def test_ping_over_the_link() -> None:
    net = make_net(4, DELAY, DELAY)
    net.a.ping(B_IP, 77, 1, b"hello", net.link.now)
    net.run_until(lambda: bool(_echo_replies(net)), timeout=2.0)
    (reply,) = _echo_replies(net)
    assert (reply.src_ip, reply.ident, reply.seq, reply.payload) == (B_ADDR, 77, 1, b"hello")
    assert reply.rtt is not None and 0.002 <= reply.rtt < 0.01  # one ARP exchange is not in the RTT


def test_ping_through_loss_succeeds_by_retrying() -> None:
    """30 % loss each way: the caller retries with new sequence numbers, as ping does, until every one of
    ten sequence numbers got a reply; some attempts were lost on the way."""
    lossy = Impairments(loss=0.3, delay=0.001)
    net = make_net(5, lossy, lossy)
    answered: set[int] = set()
    attempts = 0
    seq = 0
    while len(answered) < 10 and attempts < 200:
        seq += 1
        attempts += 1
        net.a.ping(B_IP, 5, seq, seq.to_bytes(4, "big"), net.link.now)
        net.run_for(0.5)
        for r in _echo_replies(net):
            assert r.payload == r.seq.to_bytes(4, "big")
            answered.add(r.seq)
    assert len(answered) == 10
    assert attempts > 10  # some requests or replies were lost
    assert net.link.counters["a"]["dropped_loss"] + net.link.counters["b"]["dropped_loss"] > 0


def test_ping_larger_than_the_mtu_is_fragmented_and_reassembled() -> None:
    net = make_net(6, DELAY, DELAY)
    payload = random.Random(6).randbytes(8000)
    net.a.ping(B_IP, 9, 1, payload, net.link.now)
    net.run_until(lambda: bool(_echo_replies(net)), timeout=2.0)
    assert _echo_replies(net)[0].payload == payload
    for stack in (net.a, net.b):  # the request and the reply were both cut and put together again
        assert stack.counters["ipv4"].get("tx_fragmented") == 1
        assert stack.counters["ipv4"].get("reassembled") == 1


def test_fragments_reordered_by_the_link_are_reassembled() -> None:
    shuffled = Impairments(reorder=0.5, reorder_delay=0.0003, delay=0.001)
    net = make_net(7, shuffled, shuffled)
    payloads = [random.Random(i).randbytes(6000) for i in range(5)]
    for i, p in enumerate(payloads):
        net.a.ping(B_IP, 10, i, p, net.link.now)
        net.run_for(0.01)
    net.run_until(lambda: len(_echo_replies(net)) == 5, timeout=2.0)
    assert sorted((r.seq, r.payload) for r in _echo_replies(net)) == list(enumerate(payloads))
    assert net.link.counters["a"]["reordered"] > 0 and net.link.counters["b"]["reordered"] > 0
    assert net.b.counters["ipv4"].get("reassembled") == 5


def test_small_mtu_segment_carries_fragmented_pings_and_tcp() -> None:
    """A segment with a 576-byte MTU (the IPv4 minimum every host must reassemble): pings are cut to fit,
    TCP announces MSS 536, and no frame is too large for the wire."""
    net = make_net(8, DELAY, DELAY, mtu=576)
    payload = random.Random(8).randbytes(3000)
    net.a.ping(B_IP, 11, 1, payload, net.link.now)
    net.run_until(lambda: bool(_echo_replies(net)), timeout=2.0)
    assert _echo_replies(net)[0].payload == payload
    client, server = net.connect()
    data = random.Random(9).randbytes(200_000)
    pipe = Pipe(client, server, data)

    def done() -> bool:
        pipe.step()
        return net.has_event(server, PeerClosed) and server.readable == 0

    net.run_until(done, timeout=30.0)
    assert pipe.got == data
    assert client.conn.peer_mss == 536 and server.conn.peer_mss == 536
    assert net.link.counters["a"]["dropped_invalid"] == 0 and net.link.counters["b"]["dropped_invalid"] == 0


# ---------------------------------------------------------------------------------------------- capture


def test_capture_shows_the_handshake_in_order_with_valid_checksums(tmp_path: Path) -> None:
    path = tmp_path / "scenario.pcap"
    net = make_net(9, DELAY, DELAY, pcap=path)
    client, server = net.connect()
    client.send(b"captured")
    net.run_until(lambda: server.readable == 8)
    client.close()
    net.run_until(lambda: net.has_event(server, PeerClosed))
    server.close()
    net.run_until(lambda: not net.b.connections())
    net.link.close()

    packets = rdpcap(str(path))
    tcp = [p for p in packets if p.haslayer(TCP)]
    flags = [int(p[TCP].flags) & (SYN | ACK | FIN | RST) for p in tcp]
    assert flags[:3] == [SYN, SYN | ACK, ACK]
    assert tcp[0][IP].src == "198.18.0.1" and tcp[1][IP].src == B_IP
    assert tcp[1][TCP].ack == tcp[0][TCP].seq + 1 and tcp[2][TCP].ack == tcp[1][TCP].seq + 1
    assert any(bytes(p[TCP].payload) == b"captured" for p in tcp)
    assert any(int(p[TCP].flags) & FIN for p in tcp)
    for p in tcp:
        ip = p[IP]
        fresh = IP(bytes(ip))
        del fresh.chksum
        del fresh[TCP].chksum
        rebuilt = IP(bytes(fresh))  # scapy recomputes both checksums over the captured bytes
        assert rebuilt.chksum == ip.chksum and rebuilt[TCP].chksum == ip[TCP].chksum, p.summary()
