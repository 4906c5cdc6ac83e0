"""One forged segment must not start an endless exchange of ACKs between two stacks (RFC 5961 section 7; Linux
net.ipv4.tcp_invalid_ratelimit).

An in-window data segment "from the peer" (SEQ = the peer's SND.NXT, ACK = its RCV.NXT) is accepted; from then
on the two sides disagree about the sequence space: each answers the other's ACK as unacceptable (out of
window on one side, acknowledging data never sent on the other) with another ACK, for ever. A SYN, an
out-of-window segment or an ACK of data never sent, each answered with an ACK, can start the same. For every
synchronized state of ``a``, with ``a``'s connection on the host and offloaded to the software target (where
the state is offloadable), each forged segment must leave the link quiet a second later.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from offload_harness import A_IP_B, A_MAC, B_IP_B, B_MAC, PORT, Net, from_b, inject, make_net, tcp_frame

from tcpchimney.host.offload import OffloadState
from tcpchimney.host.sockets import TcpSocket
from tcpchimney.link.sim import Impairments
from tcpchimney.tcp.config import TcpConfig
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire.tcp import ACK, PSH, SYN, TcpSegment

DELAY = Impairments(delay=0.001)  # a storm is one exchange per round trip: 500 frames/s each way
B_CONFIG = TcpConfig(rcv_buf=16 * 1024)  # b's application reads nothing: a small window closes soon
BLOCKED = 64 * 1024  # more than b's window: a's FIN waits behind it (FIN-WAIT-1, CLOSING, LAST-ACK)
QUIET = 2  # frames allowed in the second after the first: one probe or retransmission, and its answer
HOST_ONLY = frozenset({TcpState.SYN_RECEIVED, TcpState.TIME_WAIT})  # never offloaded (spec 1.2)


def _connect(net: Net, a_client: bool = True) -> tuple[TcpSocket, TcpSocket]:
    a, b = net.connect(a_client=a_client)
    if net.target is not None:
        net.wait_offloaded(a)
    return a, b


def _run_to(net: Net, a: TcpSocket, state: TcpState) -> None:
    net.run_until(lambda: a.state is state, 10.0)


def _established(net: Net) -> tuple[TcpSocket, TcpSocket]:
    return _connect(net)


def _fin_wait_2(net: Net) -> tuple[TcpSocket, TcpSocket]:
    a, b = _connect(net)
    a.shutdown()
    _run_to(net, a, TcpState.FIN_WAIT_2)
    return a, b


def _close_wait(net: Net) -> tuple[TcpSocket, TcpSocket]:
    a, b = _connect(net)
    b.shutdown()
    _run_to(net, a, TcpState.CLOSE_WAIT)
    return a, b


def _time_wait(net: Net, a_client: bool = True, simultaneous: bool = False) -> tuple[TcpSocket, TcpSocket]:
    """a closes first (b ends CLOSED), or both at once (both end in TIME-WAIT). With a listening, a SYN
    beyond RCV.NXT opens a new incarnation (host/stack.py, RFC 9293 3.10.7.4 note): its SYN-ACK meets b's
    TIME-WAIT, whose answer is out of the new connection's window, and so on."""
    a, b = _connect(net, a_client)
    a.shutdown()
    if not simultaneous:
        _run_to(net, a, TcpState.FIN_WAIT_2)
    b.shutdown()
    _run_to(net, a, TcpState.TIME_WAIT)
    return a, b


def _blocked_fin(net: Net, a: TcpSocket, state: TcpState) -> None:
    """a's data fills b's window (b reads nothing) and a closes: its FIN waits behind the zero window.
    The persist timer's probes back off; after 15 s the next one is more than 10 s away."""
    assert a.send(b"z" * BLOCKED) == BLOCKED
    net.run_for(0.5)
    a.shutdown()
    _run_to(net, a, state)
    net.run_for(15.0)


def _fin_wait_1(net: Net) -> tuple[TcpSocket, TcpSocket]:
    a, b = _connect(net)
    _blocked_fin(net, a, TcpState.FIN_WAIT_1)
    return a, b


def _closing(net: Net) -> tuple[TcpSocket, TcpSocket]:
    a, b = _fin_wait_1(net)
    b.shutdown()
    _run_to(net, a, TcpState.CLOSING)
    return a, b


def _last_ack(net: Net) -> tuple[TcpSocket, TcpSocket]:
    a, b = _close_wait(net)
    _blocked_fin(net, a, TcpState.LAST_ACK)
    return a, b


def _syn_received(net: Net) -> tuple[TcpSocket, TcpSocket]:
    """b connects to a; b's ACKs of the SYN-ACK (and of its retransmissions at 1 s and 3 s) are lost. The
    next retransmission is 4 s away."""
    listener = net.a.listen(PORT)
    b = net.b.connect("198.18.0.1", PORT, net.now)
    net.run_until(lambda: bool(listener.syn_queue), 5.0)
    net.link.set_impairments("b", Impairments(delay=0.001, loss=1.0))
    net.run_for(3.2)
    net.link.set_impairments("b", DELAY)
    (a,) = listener.syn_queue.values()
    assert a.state is TcpState.SYN_RECEIVED and b.state is TcpState.ESTABLISHED
    return a, b


SETUPS: dict[str, Callable[[Net], tuple[TcpSocket, TcpSocket]]] = {
    "syn_received": _syn_received,
    "established": _established,
    "fin_wait_1": _fin_wait_1,
    "fin_wait_2": _fin_wait_2,
    "close_wait": _close_wait,
    "closing": _closing,
    "last_ack": _last_ack,
    "time_wait": _time_wait,
    "time_wait_listening": lambda net: _time_wait(net, a_client=False),
    "time_wait_both": lambda net: _time_wait(net, a_client=False, simultaneous=True),
}


def _forged(kind: str, b: TcpSocket) -> TcpSegment:
    """A segment with b's addresses, ports and window (what b last advertised), from b's sequence space."""
    if kind == "in_window_data":
        seg = from_b(b, ACK | PSH, b"x" * 10)
    elif kind == "syn":
        seg = from_b(b, SYN, seq_offset=1000)
    elif kind == "out_of_window":
        seg = from_b(b, ACK, seq_offset=10 << 20)
    else:  # "bad_ack": acknowledges far more than a ever sent
        seg = from_b(b, ACK)
        seg = dataclasses.replace(seg, ack=seg.ack + 100_000)
    conn = b.conn
    window = max(0, conn.rcv_adv.dist(conn.rcv_nxt)) >> conn.rcv_wscale
    return dataclasses.replace(seg, window=window)


def _frames(net: Net) -> int:
    return sum(net.link.counters[name]["tx_frames"] for name in ("a", "b"))


@pytest.mark.parametrize("kind", ["in_window_data", "syn", "out_of_window", "bad_ack"])
@pytest.mark.parametrize("setup", list(SETUPS))
@pytest.mark.parametrize("home", ["host", "offload"])
def test_one_forged_segment_leaves_the_link_quiet_within_a_second(home: str, setup: str, kind: str) -> None:
    net = make_net(11, offload=home == "offload", imp_a=DELAY, imp_b=DELAY, config_b=B_CONFIG)
    a, b = SETUPS[setup](net)
    state = a.state
    if home == "offload":
        assert (a.offload_state is OffloadState.OFFLOADED) is (state not in HOST_ONLY), a.offload_state
    inject(net, net.injector, tcp_frame(_forged(kind, b)))
    net.run_for(1.0)
    before = _frames(net)
    net.run_for(1.0)
    sent = _frames(net) - before
    assert sent <= QUIET, f"{sent} frames in the second after the first ({state.name}, {kind})"


@pytest.mark.parametrize("home", ["host", "offload"])
def test_the_suppressed_acks_are_counted_where_the_engine_runs(home: str) -> None:
    """The in-window data segment, this time "from a" to b: b accepts it, and a's engine (the host's, or the
    target's when offloaded) answers b's ACK of data never sent, then holds back its second such answer and
    counts it."""
    net = make_net(12, offload=home == "offload", imp_a=DELAY, imp_b=DELAY)
    a, b = _connect(net)
    conn = b.conn
    seg = TcpSegment(b.remote_port, b.local_port, conn.rcv_nxt, conn.snd_nxt, ACK | PSH, 65535, b"x" * 10)
    inject(net, net.injector, tcp_frame(seg, src_ip=A_IP_B, dst_ip=B_IP_B, src_mac=A_MAC, dst_mac=B_MAC))
    net.run_for(1.0)
    if home == "offload":
        assert a.offload_state is OffloadState.OFFLOADED
        limited = net.nic.counters.snapshot()["engine_drops"].get("ack_rate_limited", 0)
    else:
        limited = net.a.counters["tcp"].get("engine_drop_ack_rate_limited", 0)
    assert limited == 1
    assert b.readable == 10  # what the forger wrote is b's now: it knew both sequence numbers
