"""Offload policy: modes, thresholds, rules, per-socket opt-out, and what a change of policy uploads
(docs/offload-design.md "Policy", chimney-spec 5.1-5.4)."""

from __future__ import annotations

import pytest
from offload_kit import B_IP, PORT, Stream, exchange, make_offload_net, payload

from tcpchimney.chimney.reason import Reason
from tcpchimney.host.events import OffloadDeferred, Offloaded, OffloadRefused, Uploaded
from tcpchimney.host.offload import OffloadState
from tcpchimney.host.policy import (
    DEFAULT_MAX_RTT,
    DEFAULT_MIN_BYTES,
    ConnectionInfo,
    OffloadMode,
    OffloadPolicy,
    OffloadRule,
    RuleKind,
)
from tcpchimney.link.sim import Impairments
from tcpchimney.tcp.events import PeerClosed
from tcpchimney.tcp.state import TcpState

PEER = bytes([198, 18, 0, 2])


def _info(moved: int = 0, srtt: float | None = None, port: int = PORT) -> ConnectionInfo:
    return ConnectionInfo(PEER, port, 40000, moved, srtt)


# ---------------------------------------------------------------------------------------------- pure policy


def test_modes_decide() -> None:
    assert OffloadPolicy().decide(_info()) is Reason.MODE_DISABLED
    assert OffloadPolicy(mode="enabled").decide(_info()) is None
    auto = OffloadPolicy(mode=OffloadMode.AUTOMATIC)
    assert auto.min_bytes == DEFAULT_MIN_BYTES == 65536 and auto.max_rtt == DEFAULT_MAX_RTT == 0.05
    assert auto.decide(_info(65535, 0.001)) is Reason.MODE_AUTOMATIC_THRESHOLD
    assert auto.decide(_info(65536, None)) is Reason.MODE_AUTOMATIC_THRESHOLD  # no RTT sample yet
    assert auto.decide(_info(65536, 0.05)) is Reason.MODE_AUTOMATIC_THRESHOLD
    assert auto.decide(_info(65536, 0.049)) is None


def test_rules_first_match_decides() -> None:
    rules = (
        OffloadRule(RuleKind.FIREWALL, remote="198.18.0.0/24", remote_port=22),
        OffloadRule("capture", remote_port=80, allow_offload=True),
        OffloadRule(RuleKind.CAPTURE, remote="198.18.0.2"),
    )
    policy = OffloadPolicy(mode="enabled", rules=rules)
    assert policy.decide(_info(port=22)) is Reason.FIREWALL_RULE
    assert policy.decide(_info(port=80)) is None  # the capture rule lets the target carry it
    assert policy.decide(_info(port=443)) is Reason.CAPTURE_RULE
    other = ConnectionInfo(bytes([198, 19, 0, 1]), 443, 40000)
    assert policy.decide(other) is None
    assert OffloadPolicy(mode="enabled", rules=(OffloadRule(local_port=40000),)).decide(other) is (
        Reason.POLICY_RULE
    )
    with pytest.raises(ValueError):
        OffloadRule(remote_port=0)
    with pytest.raises(ValueError):
        OffloadPolicy(max_rtt=0)


# ---------------------------------------------------------------------------------------------- on the link


def test_disabled_mode_refuses_with_the_reason() -> None:
    net = make_offload_net(policy=OffloadPolicy())
    a, _ = net.connect()
    net.run_for(0.5)
    assert a.offload_state is OffloadState.IN_HOST and a.offload_reason is Reason.MODE_DISABLED
    (ev,) = net.events(OffloadRefused)
    assert ev.sock is a and ev.reason is Reason.MODE_DISABLED  # type: ignore[attr-defined]
    assert net.a.counters["offload"]["refused_mode_disabled"] == 1


def test_automatic_mode_waits_for_the_threshold() -> None:
    net = make_offload_net(policy=OffloadPolicy(mode="automatic", min_bytes=200_000))
    a, b = net.connect()
    net.run_for(0.5)
    assert a.offload_state is OffloadState.IN_HOST and a.offload_reason is Reason.MODE_AUTOMATIC_THRESHOLD
    small = Stream(a, b, payload(100_000, 1))
    exchange(net, [small])
    net.run_for(0.5)
    assert a.offload_state is OffloadState.IN_HOST
    rest = Stream(a, b, payload(300_000, 2))
    exchange(net, [rest])
    net.run_until(lambda: a.offload_state is OffloadState.OFFLOADED, 2.0)
    # Waiting for the threshold is not a refusal: one OffloadDeferred (not one per check), then the offload.
    assert net.events(OffloadRefused) == []
    (deferred,) = net.events(OffloadDeferred)
    assert deferred.sock is a and deferred.reason is Reason.MODE_AUTOMATIC_THRESHOLD  # type: ignore[attr-defined]
    counters = net.a.counters["offload"]
    assert counters == {"deferred_below_automatic_threshold": 1, "offloaded": 1}


def test_a_connection_that_closes_before_the_first_check_costs_no_decision() -> None:
    """A short connection (the common case of a busy server) is not judged at its handshake: it waits for
    the first re-examination, and one that is gone by then leaves no deferral, no refusal, no event."""
    net = make_offload_net(policy=OffloadPolicy(mode="automatic", min_bytes=200_000, check_interval=30.0))
    a, b = net.connect()
    exchange(net, [Stream(a, b, payload(20_000, 1))])
    a.close()
    net.run_until(lambda: net.has_event(b, PeerClosed))
    b.close()
    net.run_for(1.0)
    assert net.events(OffloadRefused) == [] and net.events(OffloadDeferred) == []
    assert net.a.counters["offload"] == {}
    assert a.offload_state is OffloadState.IN_HOST


def test_a_connection_that_closes_while_waiting_for_the_threshold_is_not_refused() -> None:
    net = make_offload_net(policy=OffloadPolicy(mode="automatic", min_bytes=200_000))
    a, b = net.connect()
    exchange(net, [Stream(a, b, payload(20_000, 1))])
    net.run_for(0.35)  # a few checks: it waits, deferred once
    a.close()  # over before it qualified
    net.run_until(lambda: net.has_event(b, PeerClosed))
    b.close()
    net.run_for(1.0)  # several automatic checks while a closes
    assert net.events(OffloadRefused) == []
    assert net.a.counters["offload"] == {"deferred_below_automatic_threshold": 1}


def test_automatic_mode_keeps_long_rtt_connections_on_the_host() -> None:
    slow = Impairments(delay=0.04)  # 80 ms round trip
    net = make_offload_net(policy=OffloadPolicy(mode="automatic", min_bytes=10_000), imp_a=slow, imp_b=slow)
    a, b = net.connect()
    exchange(net, [Stream(a, b, payload(300_000, 3))])
    net.run_for(1.0)
    assert a.conn.srtt is not None and a.conn.srtt > 0.05
    assert a.offload_state is OffloadState.IN_HOST and a.offload_reason is Reason.MODE_AUTOMATIC_THRESHOLD


def test_a_target_not_in_front_of_the_device_refuses_with_no_target_until_it_is() -> None:
    net = make_offload_net()
    net.a.set_target_attached(False)  # what a runtime says when the device talks to the stack directly
    a, _ = net.connect()
    net.run_for(0.5)
    assert a.offload_state is OffloadState.IN_HOST and a.offload_reason is Reason.NO_TARGET
    assert [e.reason for e in net.events(OffloadRefused)] == [Reason.NO_TARGET]  # type: ignore[attr-defined]
    assert net.target.counters.lifecycle["offload_refusals"] == 0  # nothing was offered to it
    net.a.set_target_attached(True)
    net.wait_offloaded(a)


def test_socket_opt_out() -> None:
    net = make_offload_net(policy=OffloadPolicy())
    a, b = net.connect()
    a.offload_allowed = False
    assert net.a.offload_now(a) is Reason.SOCKET_OPT_OUT
    net.a.set_offload_policy(OffloadPolicy(mode="enabled"))
    net.run_for(0.2)
    assert a.offload_state is OffloadState.IN_HOST and a.offload_reason is Reason.SOCKET_OPT_OUT
    a.offload_allowed = True
    assert net.a.offload_now(a) is None
    net.wait_offloaded(a)
    a.offload_allowed = False  # opting out of an offloaded socket uploads it at the next policy change
    net.a.set_offload_policy(OffloadPolicy(mode="enabled"))
    net.wait_in_host(a)
    assert [u.reason for u in net.events(Uploaded)] == [Reason.POLICY_CHANGE]  # type: ignore[attr-defined]
    exchange(net, [Stream(a, b, payload(50_000, 4)), Stream(b, a, payload(50_000, 5))])


def test_rule_excludes_a_port_and_a_new_rule_uploads() -> None:
    rules = (OffloadRule(RuleKind.FIREWALL, remote=B_IP, remote_port=PORT + 1),)
    net = make_offload_net(policy=OffloadPolicy(mode="enabled", rules=rules))
    a, b = net.connect(PORT)
    a2, b2 = net.connect(PORT + 1)
    net.wait_offloaded(a)
    assert a2.offload_state is OffloadState.IN_HOST and a2.offload_reason is Reason.FIREWALL_RULE
    assert net.a.offload_now(a2) is Reason.FIREWALL_RULE  # an administrator's offload obeys the rules too
    capture = OffloadRule(RuleKind.CAPTURE, remote=B_IP)
    net.a.set_offload_policy(OffloadPolicy(mode="enabled", rules=(*rules, capture)))
    net.wait_in_host(a)
    (up,) = net.events(Uploaded)
    assert up.sock is a and up.reason is Reason.POLICY_CHANGE  # type: ignore[attr-defined]
    exchange(net, [Stream(a, b, payload(80_000, 6)), Stream(b2, a2, payload(80_000, 7))])


def test_disabling_uploads_everything_and_enabling_offloads_again() -> None:
    net = make_offload_net()
    conns = [net.connect(PORT + i) for i in range(3)]
    for a, _ in conns:
        net.wait_offloaded(a)
    assert len(net.target.table.conns) == 3 and len(net.target.table.paths) == 1
    net.a.set_offload_policy(OffloadPolicy(mode="disabled"))
    net.run_until(lambda: all(a.offload_state is OffloadState.IN_HOST for a, _ in conns))
    uploads = net.events(Uploaded)
    assert len(uploads) == 3 and {u.reason for u in uploads} == {Reason.MODE_CHANGE}  # type: ignore[attr-defined]
    assert len(net.target.table) == 0  # the last connection took its path and neighbor along
    net.a.set_offload_policy(OffloadPolicy(mode="enabled"))
    net.run_until(lambda: all(a.offload_state is OffloadState.OFFLOADED for a, _ in conns))
    assert len(net.events(Offloaded)) == 6
    exchange(net, [Stream(a, b, payload(30_000, 10 + i)) for i, (a, b) in enumerate(conns)])
    assert all(a.state is TcpState.ESTABLISHED for a, _ in conns)


def test_upload_all() -> None:
    net = make_offload_net()
    conns = [net.connect(PORT + i) for i in range(2)]
    for a, _ in conns:
        net.wait_offloaded(a)
    assert net.a.upload_all(Reason.ADMIN) == 2
    net.run_until(lambda: all(a.offload_state is OffloadState.IN_HOST for a, _ in conns))
    assert {u.reason for u in net.events(Uploaded)} == {Reason.ADMIN}  # type: ignore[attr-defined]


def test_automatic_mode_counts_the_bytes_moved_before_the_offload_after_an_upload() -> None:
    """Bytes the host engine moved before the offload still count once the connection is back: an upload
    does not reset automatic mode's progress."""
    net = make_offload_net(policy=OffloadPolicy(mode="automatic", min_bytes=100_000))
    a, b = net.connect()
    exchange(net, [Stream(a, b, payload(150_000, 8))])
    net.run_until(lambda: a.offload_state is OffloadState.OFFLOADED, 2.0)
    assert net.a.upload(a, Reason.ADMIN)
    net.wait_in_host(a)
    manager = net.a._offload
    assert manager is not None and manager._info(a).bytes_moved >= 150_000
    net.run_until(lambda: a.offload_state is OffloadState.OFFLOADED, 2.0)  # still past the threshold


def test_offload_now_waiting_for_the_first_offload_to_the_peer_is_not_judged_by_the_mode() -> None:
    """The second connection to a peer waits for the neighbor and path the first one is offloading; the
    explicit request still holds then (mode disabled), only rules and opt-out apply."""
    net = make_offload_net(policy=OffloadPolicy())
    a1, _ = net.connect(PORT)
    a2, b2 = net.connect(PORT + 1)
    refusals = len(net.events(OffloadRefused))  # mode_disabled at establishment
    net.target.stall()  # the first initiate (neighbor and path with it) stays in flight
    assert net.a.offload_now(a1) is None
    assert net.a.offload_now(a2) is None
    assert a2.offload_state is OffloadState.IN_HOST
    net.target.stall(False)
    net.run_until(lambda: net.offloaded(a1) and net.offloaded(a2), 2.0)
    assert len(net.events(OffloadRefused)) == refusals
    exchange(net, [Stream(a2, b2, payload(50_000, 9))])


def test_timers_keep_firing_after_a_switch_to_automatic_from_inside_a_timer() -> None:
    """The switch schedules the first automatic check for the very instant the stack's timer fired at: a
    deadline equal to the one just fired is a new timer. The simulated link once took it for a stale one and
    skipped it, and with it every later timer of that node (they all sit behind it), until some other node's
    event moved the clock: here a's retransmissions, which nothing else would wake."""
    net = make_offload_net(policy=OffloadPolicy())
    a, b = net.connect()
    exchange(net, [Stream(a, b, payload(20_000, 8))])  # an RTT sample for the automatic rules
    net.run_for(1.0)  # idle: the next timers are the neighbors' reachability, tens of seconds away
    switched: list[float] = []
    inner = net.a.handle_timer

    def handle_timer(now: float) -> None:
        inner(now)
        if not switched:
            switched.append(now)
            net.a.set_offload_policy(OffloadPolicy(mode="automatic", min_bytes=0))
            net.link.set_impairments("a", Impairments(loss=1.0))  # a's segments need its RTO from now on

    net.a.handle_timer = handle_timer  # type: ignore[method-assign]
    net.run_until(lambda: bool(switched), 120.0)
    sent = net.link.counters["a"]["tx_frames"]
    assert a.send(payload(3000, 9)) == 3000
    net.run_for(2.0)
    assert net.link.counters["a"]["tx_frames"] - sent >= 4, "the first transmission and its retransmissions"
    net.link.set_impairments("a", Impairments())
    got = bytearray()

    def arrived() -> bool:
        got.extend(b.receive(1 << 20))
        return len(got) == 3000

    net.run_until(arrived, 10.0)
    assert bytes(got) == payload(3000, 9)
