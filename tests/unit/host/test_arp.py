"""ARP cache: RFC 826 resolution, queueing, timeouts, gratuitous updates."""

from __future__ import annotations

from conftest import (
    GATEWAY_IP,
    GATEWAY_MAC,
    OUR_IP,
    OUR_MAC,
    PEER_IP,
    PEER_MAC,
    arp_reply,
    eth_to_us,
    events,
    frame,
    learn_peer,
    make_stack,
    sent,
)
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.l2 import ARP, Ether

from tcpchimney.host.arp import NeighborState
from tcpchimney.host.events import ConnectionEvent, NeighborChanged, NeighborUnreachable
from tcpchimney.host.interface import ip_bytes, mac_bytes
from tcpchimney.host.stack import HostStack
from tcpchimney.tcp.events import Closed, ConnectionUnreachable, StateChanged
from tcpchimney.tcp.state import TcpState


def _request(psrc: str = PEER_IP, pdst: str = OUR_IP, hwsrc: str = PEER_MAC) -> Ether:
    return Ether(dst="ff:ff:ff:ff:ff:ff", src=hwsrc) / ARP(op=1, hwsrc=hwsrc, psrc=psrc, pdst=pdst)


def test_request_for_our_address_is_answered_and_sender_learnt(stack: HostStack) -> None:
    stack.handle_frame(frame(_request()), 0.0)
    (reply,) = sent(stack)
    assert reply.dst == PEER_MAC and reply.src == OUR_MAC
    arp = reply[ARP]
    assert (arp.op, arp.hwsrc, arp.psrc, arp.hwdst, arp.pdst) == (2, OUR_MAC, OUR_IP, PEER_MAC, PEER_IP)
    entry = stack.arp.entry(ip_bytes(PEER_IP))
    assert entry is not None and entry.mac == mac_bytes(PEER_MAC)
    assert entry.state is NeighborState.REACHABLE
    assert stack.counters["arp"]["tx_reply"] == 1


def test_request_for_another_address_is_ignored_and_not_learnt(stack: HostStack) -> None:
    stack.handle_frame(frame(_request(pdst="198.18.0.9")), 0.0)
    assert sent(stack) == []
    assert stack.arp.entry(ip_bytes(PEER_IP)) is None
    assert stack.counters["arp"]["drop_not_for_us"] == 1


def test_resolution_queues_packets_and_releases_them_on_reply(stack: HostStack) -> None:
    stack.ping(PEER_IP, 1, 1, b"a", 0.0)
    stack.ping(PEER_IP, 1, 2, b"b", 0.0)
    (req,) = sent(stack)
    assert req.dst == "ff:ff:ff:ff:ff:ff"
    assert (req[ARP].op, req[ARP].pdst, req[ARP].psrc, req[ARP].hwsrc) == (1, PEER_IP, OUR_IP, OUR_MAC)
    arp_reply(stack, now=0.1)
    out = sent(stack, 0.1)
    assert [p[ICMP].seq for p in out] == [1, 2]
    assert all(p.dst == PEER_MAC and p[IP].dst == PEER_IP for p in out)


def test_queue_is_bounded_and_overflow_counted() -> None:
    stack = make_stack()
    limit = stack.arp.params.queue_len
    for seq in range(limit + 5):
        stack.ping(PEER_IP, 1, seq, b"x", 0.0)
    assert stack.counters["arp"]["drop_queue_full"] == 5
    sent(stack)
    arp_reply(stack)
    out = sent(stack)
    assert [p[ICMP].seq for p in out] == list(range(5, limit + 5))  # the oldest were dropped


def test_resolution_retries_then_fails_and_drops_the_queue(stack: HostStack) -> None:
    stack.ping(PEER_IP, 1, 1, b"x", 0.0)
    stack.ping(PEER_IP, 1, 2, b"x", 0.0)
    requests = len(sent(stack))
    now = 0.0
    while (deadline := stack.next_deadline()) is not None:
        now = deadline
        stack.handle_timer(now)
        requests += sum(1 for p in sent(stack, now) if ARP in p)
    assert requests == stack.arp.params.max_probes
    assert now == stack.arp.params.max_probes * stack.arp.params.retrans_time
    c = stack.counters["arp"]
    assert c["resolution_failed"] == 1 and c["drop_unresolved"] == 2
    assert events(stack) == [NeighborUnreachable(ip_bytes(PEER_IP), 2)]
    assert stack.arp.entry(ip_bytes(PEER_IP)) is None


def test_reachable_goes_stale_and_next_use_probes_unicast(stack: HostStack) -> None:
    learn_peer(stack)
    reachable = stack.arp.params.reachable_time
    assert stack.next_deadline() == reachable
    stack.handle_timer(reachable)
    assert stack.arp.entry(ip_bytes(PEER_IP)).state is NeighborState.STALE  # type: ignore[union-attr]
    stack.ping(PEER_IP, 1, 1, b"x", reachable + 1)
    out = sent(stack, reachable + 1)
    probes = [p for p in out if ARP in p]
    echoes = [p for p in out if ICMP in p]
    assert len(probes) == 1 and probes[0].dst == PEER_MAC  # unicast probe to the known MAC
    assert len(echoes) == 1 and echoes[0].dst == PEER_MAC  # the stale MAC is still used meanwhile
    arp_reply(stack, now=reachable + 1.5)
    assert stack.arp.entry(ip_bytes(PEER_IP)).state is NeighborState.REACHABLE  # type: ignore[union-attr]


def test_unused_stale_entry_is_forgotten(stack: HostStack) -> None:
    learn_peer(stack)
    p = stack.arp.params
    stack.handle_timer(p.reachable_time)
    stack.handle_timer(p.reachable_time + p.stale_time)
    assert stack.arp.entry(ip_bytes(PEER_IP)) is None


def test_gratuitous_arp_updates_an_existing_entry_and_reports_it(stack: HostStack) -> None:
    learn_peer(stack)
    new_mac = "02:00:00:00:00:99"
    garp = Ether(dst="ff:ff:ff:ff:ff:ff", src=new_mac) / ARP(op=1, hwsrc=new_mac, psrc=PEER_IP, pdst=PEER_IP)
    stack.handle_frame(frame(garp), 1.0)
    assert events(stack) == [NeighborChanged(ip_bytes(PEER_IP), mac_bytes(PEER_MAC), mac_bytes(new_mac))]
    stack.ping(PEER_IP, 1, 1, b"x", 1.0)
    echoes = [p for p in sent(stack, 1.0) if ICMP in p]
    assert echoes[0].dst == new_mac


def test_gratuitous_arp_for_unknown_address_creates_nothing(stack: HostStack) -> None:
    garp = Ether(dst="ff:ff:ff:ff:ff:ff", src=PEER_MAC) / ARP(
        op=1, hwsrc=PEER_MAC, psrc=PEER_IP, pdst=PEER_IP
    )
    stack.handle_frame(frame(garp), 0.0)
    assert stack.arp.entry(ip_bytes(PEER_IP)) is None
    assert events(stack) == []


def test_off_link_destination_resolves_the_gateway(stack: HostStack) -> None:
    stack.ping("203.0.113.5", 1, 1, b"x", 0.0)
    (req,) = sent(stack)
    assert req[ARP].pdst == GATEWAY_IP
    arp_reply(stack, GATEWAY_IP, GATEWAY_MAC)
    (echo,) = sent(stack)
    assert echo.dst == GATEWAY_MAC and echo[IP].dst == "203.0.113.5"


def test_conflicting_claim_of_our_address_is_counted(stack: HostStack) -> None:
    stack.handle_frame(frame(_request(psrc=OUR_IP, pdst=OUR_IP)), 0.0)
    assert stack.counters["arp"]["drop_address_conflict"] == 1
    assert sent(stack) == []


def test_malformed_arp_is_counted(stack: HostStack) -> None:
    truncated = bytes(_request())[: 14 + 20]
    stack.handle_frame(frame(truncated), 0.0)
    bad_hw = Ether(dst=OUR_MAC, src=PEER_MAC) / ARP(hwtype=6, op=1, hwsrc=PEER_MAC, psrc=PEER_IP, pdst=OUR_IP)
    stack.handle_frame(frame(bad_hw), 0.0)
    c = stack.counters["arp"]
    assert c["drop_truncated"] == 1 and c["drop_unsupported_format"] == 1


def _run_timers(stack: HostStack, until: float) -> None:
    """Fire every deadline up to ``until`` (virtual time), sending what each produces."""
    while (deadline := stack.next_deadline()) is not None and deadline <= until:
        stack.handle_timer(deadline)
        sent(stack, deadline)


def test_connect_to_a_silent_neighbor_fails_host_unreachable_after_the_arp_retries(stack: HostStack) -> None:
    # Linux: neighbor resolution gives up after mcast_solicit (3) probes retrans_time (1 s) apart; the SYN
    # queued on it is dropped and connect() fails with EHOSTUNREACH (tcp_v4_err on the local ICMP host
    # unreachable of ipv4_link_failure), not after the SYN retries (~2 minutes).
    sock = stack.connect(PEER_IP, 80, 0.0)
    (request,) = sent(stack)
    assert ARP in request
    _run_timers(stack, 10.0)
    got = [e for e in events(stack) if isinstance(e, ConnectionEvent) and e.sock is sock]
    kinds = [type(e.tcp_event) for e in got if not isinstance(e.tcp_event, StateChanged)]
    assert kinds == [ConnectionUnreachable, Closed]
    assert sock.state is TcpState.CLOSED and stack.connections() == []
    c = stack.counters["arp"]
    assert c["resolution_failed"] == 1 and c["drop_unresolved"] >= 1  # the SYN (and its retry) dropped
    assert c["tx_request"] == stack.arp.params.max_probes


def test_neighbor_failure_fails_the_handshake_at_the_third_probe_timeout(stack: HostStack) -> None:
    sock = stack.connect(PEER_IP, 80, 0.0)
    sent(stack)
    limit = stack.arp.params.max_probes * stack.arp.params.retrans_time
    _run_timers(stack, limit - 0.001)
    assert sock.state is TcpState.SYN_SENT
    _run_timers(stack, limit)
    assert sock.state is TcpState.CLOSED


def test_neighbor_failure_leaves_connections_through_other_neighbors(stack: HostStack) -> None:
    learn_peer(stack, GATEWAY_IP, GATEWAY_MAC)
    other = stack.connect("203.0.113.9", 80, 0.0)  # through the gateway, which answers
    silent = stack.connect(PEER_IP, 80, 0.0)
    sent(stack)
    _run_timers(stack, 4.0)
    assert silent.state is TcpState.CLOSED and other.state is TcpState.SYN_SENT


def test_an_established_connection_survives_its_neighbor_failing(stack: HostStack) -> None:
    # RFC 1122 4.2.3.9: host unreachable is a soft error for a synchronized connection (Linux keeps
    # retransmitting); only the handshake fails with it.
    learn_peer(stack)
    sock = stack.connect(PEER_IP, 80, 0.0)
    (syn,) = sent(stack)
    synack = eth_to_us(
        IP(src=PEER_IP, dst=OUR_IP)
        / TCP(sport=80, dport=syn[TCP].sport, flags="SA", seq=1000, ack=syn[TCP].seq + 1)
    )
    stack.handle_frame(frame(synack), 0.01)
    sent(stack, 0.01)
    assert sock.state is TcpState.ESTABLISHED
    params = stack.arp.params
    forgotten = params.reachable_time + params.stale_time  # unused: REACHABLE -> STALE -> forgotten
    _run_timers(stack, forgotten)
    assert stack.arp.entry(ip_bytes(PEER_IP)) is None
    sock.send(b"x")  # resolves again, and nobody answers any more
    sent(stack, forgotten)
    _run_timers(stack, forgotten + 5.0)
    assert stack.counters["arp"]["resolution_failed"] == 1
    assert sock.state is TcpState.ESTABLISHED
