"""A datagram from a source we have no route back to (off-link, and no default route) is dropped on input
and counted, before it can create state or ask for an answer: a SYN to a listener, a segment to a closed
port, an echo request. A connection whose route goes away keeps its state and drops what it cannot send."""

from __future__ import annotations

from conftest import OUR_IP, PEER_IP, echo_request, eth_to_us, events, frame, learn_peer, make_stack, sent
from scapy.layers.inet import IP, TCP

from tcpchimney.host.stack import HostStack
from tcpchimney.tcp.state import TcpState

OFF_LINK = "198.19.7.7"  # outside 198.18.0.0/24, inside the benchmarking range


def _syn(src: str, dport: int = 80, sport: int = 40000) -> object:
    return eth_to_us(IP(src=src, dst=OUR_IP) / TCP(sport=sport, dport=dport, flags="S", seq=1000))


def _no_route_drops(stack: HostStack) -> int:
    return stack.counters["ipv4"].get("drop_no_route_to_source", 0)


def test_a_syn_without_a_route_back_creates_no_connection() -> None:
    stack = make_stack(gateway=None)
    listener = stack.listen(80)
    stack.handle_frame(frame(_syn(OFF_LINK)), 0.0)
    assert sent(stack) == [] and stack.connections() == [] and not listener.syn_queue
    assert stack.counters["stack"]["internal_error"] == 0, stack.internal_errors
    assert _no_route_drops(stack) == 1 and stack.counters["tcp"]["rx"] == 0
    stack.handle_timer(5.0)  # nothing was armed for it either
    assert sent(stack, 5.0) == [] and stack.next_deadline() is None


def test_the_same_syn_on_link_or_through_a_gateway_is_answered() -> None:
    for gateway, src in ((None, PEER_IP), ("198.18.0.254", OFF_LINK)):
        stack = make_stack(gateway=gateway)
        learn_peer(stack, ip=gateway or PEER_IP)
        stack.listen(80)
        stack.handle_frame(frame(_syn(src)), 0.0)
        (synack,) = sent(stack)
        assert synack[TCP].flags == "SA" and synack[IP].dst == src
        assert _no_route_drops(stack) == 0


def test_no_reset_and_no_echo_reply_without_a_route_back() -> None:
    stack = make_stack(gateway=None)
    stack.handle_frame(frame(_syn(OFF_LINK, dport=81)), 0.0)  # closed port: would be answered with a RST
    stack.handle_frame(frame(echo_request(src=OFF_LINK)), 0.0)
    assert sent(stack) == [] and _no_route_drops(stack) == 2
    assert stack.counters["stack"]["internal_error"] == 0 and "closed_port" not in stack.counters["tcp"]
    assert stack.counters["icmp"]["rx"] == 0


def test_a_connection_whose_route_goes_away_drops_its_segments_and_recovers_with_the_route() -> None:
    stack = make_stack()
    learn_peer(stack, ip="198.18.0.254", mac="02:00:00:00:00:fe")
    sock = stack.connect(OFF_LINK, 80, 0.0)
    (syn,) = sent(stack)
    stack.set_gateway(None, 0.1)
    stack.handle_timer(1.5)  # the SYN's retransmission has no next hop
    assert sent(stack, 1.5) == []
    assert stack.counters["ipv4"].get("drop_no_route") == 1
    assert stack.counters["stack"]["internal_error"] == 0, stack.internal_errors
    assert sock.state is TcpState.SYN_SENT and stack.connections() == [sock]
    stack.set_gateway("198.18.0.254", 2.0)
    stack.handle_timer(3.5)
    (again,) = sent(stack, 3.5)
    assert again[TCP].flags == "S" and again[TCP].seq == syn[TCP].seq
    assert not [e for e in events(stack) if "Closed" in type(e).__name__]
