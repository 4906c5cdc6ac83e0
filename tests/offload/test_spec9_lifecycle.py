"""Chimney-spec 9.6 scenarios about a connection's life and the host's administration: peer FIN with
undelivered data, RST, FIN-WAIT-2 offloaded and its timeout, TIME-WAIT upload, upload-all with pause and
resume, partial offload when the target is full, hardware failure, automatic thresholds, policy exclusion."""

from __future__ import annotations

from dataclasses import replace

import pytest
from offload_harness import Net, Stream, exchange, make_net, payload, read_all

from tcpchimney.chimney.completions import SendCompletion, StateCompletion
from tcpchimney.chimney.indications import TargetCapabilities, TargetPaused, TargetResumed, UploadAllRequested
from tcpchimney.chimney.reason import Reason, ReasonGroup
from tcpchimney.chimney.requests import Send
from tcpchimney.chimney.status import Status
from tcpchimney.chimney.tree import walk
from tcpchimney.host.events import Offloaded, OffloadFault, OffloadRefused, Uploaded
from tcpchimney.host.offload import OffloadState
from tcpchimney.host.policy import OffloadPolicy, OffloadRule
from tcpchimney.host.sockets import TcpSocket
from tcpchimney.link.sim import Impairments
from tcpchimney.tcp.config import TcpConfig
from tcpchimney.tcp.errors import ConnectionResetByPeerError
from tcpchimney.tcp.events import Closed, ConnectionReset, DataReceived, PeerClosed
from tcpchimney.tcp.state import TcpState


def _reasons(net: Net, kind: type) -> list[Reason]:
    return [e.reason for e in net.events(kind)]  # type: ignore[attr-defined]


def _offloaded_pair(seed: int, **kw):  # type: ignore[no-untyped-def]
    net = make_net(seed, **kw)
    a, b = net.connect()
    net.wait_offloaded(a)
    return net, a, b


def test_peer_fin_waits_for_undelivered_data() -> None:
    """Spec 4.3: the FIN is indicated only after every byte before it was delivered; the target holds what the
    host could not take (its window closes) and the application reads every byte, then EOF."""
    net, a, b = _offloaded_pair(31, config=TcpConfig(rcv_buf=16 * 1024))
    data = payload(100_000, 31)
    exchange(net, [Stream(b, b, b"")])  # nothing: just settle
    sent = 0
    while sent < len(data):
        sent += b.send(data[sent:])
        net.run_for(0.05)
    b.shutdown()
    net.run_for(1.0)
    assert not net.has_event(a, PeerClosed), "the FIN may not overtake undelivered data"
    assert a.readable <= 16 * 1024
    got = bytearray()
    net.run_until(lambda: (got.extend(read_all(a)), net.has_event(a, PeerClosed))[1], 30.0)
    got += read_all(a)
    assert bytes(got) == data and a.receive(100) == b""
    events = net.tcp_events(a)
    assert max(i for i, e in enumerate(events) if isinstance(e, DataReceived)) < next(
        i for i, e in enumerate(events) if isinstance(e, PeerClosed)
    )


def test_peer_reset_aborts_outstanding_sends_and_the_host_frees_the_entry() -> None:
    net, a, b = _offloaded_pair(32, config_b=TcpConfig(rcv_buf=8 * 1024))
    a.send(payload(300_000, 32))  # outstanding Sends the peer will never ACK
    net.run_for(0.1)
    b.abort()
    net.run_until(lambda: net.has_event(a, ConnectionReset), 5.0)
    with pytest.raises(ConnectionResetByPeerError):
        a.send(b"more")
    net.run_until(lambda: len(net.nic.table) == 0, 5.0)
    assert net.nic.counters.snapshot()["lifecycle"]["peer_resets"] == 1
    assert net.a.internal_errors == []


def test_fin_wait_2_offloaded_still_receives_then_time_wait_is_uploaded() -> None:
    """The connection stays offloaded in FIN-WAIT-2 (half-closed: it still receives); the peer's FIN takes
    it to TIME-WAIT, which the target hands back (spec 1.2) and the host runs to the end."""
    net, a, b = _offloaded_pair(33)
    a.shutdown()
    net.run_until(lambda: a.state is TcpState.FIN_WAIT_2, 5.0)
    assert a.offload_state is OffloadState.OFFLOADED
    exchange(net, [Stream(b, a, payload(80_000, 33))])
    b.close()
    net.run_until(lambda: a.offload_state is OffloadState.IN_HOST, 5.0)
    assert a.conn.state is TcpState.TIME_WAIT
    assert set(_reasons(net, Uploaded)) <= {Reason.HOST_TIME_WAIT, Reason.TIME_WAIT}
    net.run_until(lambda: net.has_event(a, Closed), 120.0)
    assert len(net.nic.table) == 0


def test_fin_wait_2_timeout_of_an_orphaned_connection_is_taken_by_the_host() -> None:
    """A Disconnect cannot tell the target the application closed: the host uploads the orphaned connection
    when it reaches FIN-WAIT-2, and its rebuilt engine gives up after the FIN-WAIT-2 timeout."""
    config = TcpConfig(fin_wait_2_timeout=2.0)
    net, a, _b = _offloaded_pair(34, config=config)
    a.close()  # orphaned: the peer never closes
    net.run_until(lambda: a.offload_state is OffloadState.IN_HOST, 1.0)
    assert a.conn.state is TcpState.FIN_WAIT_2 and _reasons(net, Uploaded) == [Reason.ORPHANED_FIN_WAIT_2]
    assert len(net.nic.table) == 0
    closed_at = net.now
    net.run_until(lambda: net.has_event(a, Closed), 5.0)
    assert 1.9 <= net.now - closed_at <= 2.5, "the host engine runs the FIN-WAIT-2 timeout"
    assert a not in net.a.connections()


def test_close_of_a_half_closed_connection_in_fin_wait_2_uploads_it() -> None:
    config = TcpConfig(fin_wait_2_timeout=2.0)
    net, a, _b = _offloaded_pair(35, config=config)
    a.shutdown()
    net.run_until(lambda: a.state is TcpState.FIN_WAIT_2, 1.0)
    assert a.offload_state is OffloadState.OFFLOADED  # half-closed: it still receives, offloaded
    a.close()
    net.run_until(lambda: net.has_event(a, Closed), 5.0)
    assert _reasons(net, Uploaded) == [Reason.ORPHANED_FIN_WAIT_2] and len(net.nic.table) == 0
    assert Reason.ORPHANED_FIN_WAIT_2.group is ReasonGroup.HOST_UPLOAD, "the host asked for it"


def test_upload_all_with_pause_and_resume_under_new_capabilities() -> None:
    net = make_net(36)
    pairs = [net.connect(port=7 + i) for i in range(3)]
    for a, _ in pairs:
        net.wait_offloaded(a)
    net.nic.indicate(TargetPaused())
    net.nic.indicate(UploadAllRequested())
    net.run_until(lambda: all(a.offload_state is OffloadState.IN_HOST for a, _ in pairs), 5.0)
    assert _reasons(net, Uploaded).count(Reason.UPLOAD_ALL) == 3
    late, late_b = net.connect(port=20)
    net.run_for(0.1)
    assert late.offload_state is OffloadState.IN_HOST and Reason.TARGET_PAUSED in _reasons(
        net, OffloadRefused
    )
    exchange(net, [Stream(a, b, payload(50_000, i)) for i, (a, b) in enumerate(pairs)])
    net.nic.indicate(TargetResumed(TargetCapabilities(ipv4=True, ipv6=False, sack=True, capacity=4)))
    net.wait_offloaded(late)  # the resume offers again what the pause refused, and the uploaded ones
    net.run_until(lambda: all(a.offload_state is OffloadState.OFFLOADED for a, _ in pairs), 5.0)
    assert net.a._offload is not None and net.a._offload.capabilities.capacity == 4
    exchange(net, [Stream(late, late_b, payload(60_000, 9)), Stream(late_b, late, payload(60_000, 10))])


def test_resume_with_changed_capabilities_is_honoured_by_the_host() -> None:
    """Spec 4.5 / 2.5: after a pause and upload-all the target resumes without SACK and with room for one
    connection. The host offers it no connection that negotiated SACK (OPTION_UNSUPPORTED) and no more than
    one connection (TARGET_FULL): the target never has to refuse. A later resume with full capabilities
    brings every connection back onto the target."""
    net = make_net(42)
    with_sack = [net.connect(port=7 + i) for i in range(2)]
    for a, _ in with_sack:
        net.wait_offloaded(a)
    net.nic.pause(upload_all=True)
    net.run_until(lambda: all(a.offload_state is OffloadState.IN_HOST for a, _ in with_sack), 5.0)
    net.b.tcp_config = replace(net.b.tcp_config, sack=False)  # b's next connections do not permit SACK
    without = [net.connect(port=20 + i) for i in range(2)]
    assert not any(a.conn.sack_enabled for a, _ in without) and all(a.conn.sack_enabled for a, _ in with_sack)
    net.nic.resume(TargetCapabilities(ipv4=True, ipv6=False, sack=False, capacity=1))
    net.run_for(0.1)
    assert [a.offload_reason for a, _ in with_sack] == [Reason.OPTION_UNSUPPORTED] * 2
    states = sorted(a.offload_state.value for a, _ in without)
    assert states == ["in_host", "offloaded"], states
    assert Reason.TARGET_FULL in [a.offload_reason for a, _ in without]
    assert net.nic.counters.refusals == {}, "the host honoured the capabilities: the target refused nothing"
    pairs = with_sack + without
    exchange(net, [Stream(a, b, payload(40_000, i)) for i, (a, b) in enumerate(pairs)])
    net.nic.resume(TargetCapabilities(ipv4=True, ipv6=False, sack=True, capacity=64))
    net.run_until(lambda: all(a.offload_state is OffloadState.OFFLOADED for a, _ in pairs), 5.0)
    exchange(net, [Stream(b, a, payload(40_000, 10 + i)) for i, (a, b) in enumerate(pairs)])


def test_partial_offload_when_the_target_has_fewer_entries_than_connections() -> None:
    """Spec 3.1 resource errors: the target announces room for 64 connections but has entries for two; five
    connections: two offloaded, three refused by the target (TARGET_FULL) and kept on the host; every
    transfer is byte-exact either way."""
    net = make_net(37)
    net.nic.table.capacity = 2
    pairs = [net.connect(port=7 + i) for i in range(5)]
    net.run_for(0.1)
    states = [a.offload_state for a, _ in pairs]
    assert states.count(OffloadState.OFFLOADED) == 2 and states.count(OffloadState.IN_HOST) == 3
    assert _reasons(net, OffloadRefused).count(Reason.TARGET_FULL) == 3
    streams = [Stream(a, b, payload(40_000, i)) for i, (a, b) in enumerate(pairs)]
    streams += [Stream(b, a, payload(40_000, 10 + i)) for i, (a, b) in enumerate(pairs)]
    exchange(net, streams)
    assert net.nic.counters.snapshot()["refusals"]["target_full"] == 3


def _transfers_under_way(net: Net) -> tuple[list[tuple[TcpSocket, TcpSocket]], list[Stream], list[object]]:
    """Three offloaded connections moving data both ways for 2 ms; the list records every request the host
    submits from now on."""
    pairs = [net.connect(port=7 + i) for i in range(3)]
    for a, _ in pairs:
        net.wait_offloaded(a)
    requests: list[object] = []
    submit = net.nic.submit
    net.nic.submit = lambda r, now: (requests.append(r), submit(r, now))[1]  # type: ignore[method-assign]
    streams = [Stream(a, b, payload(300_000, i)) for i, (a, b) in enumerate(pairs)]
    streams += [Stream(b, a, payload(200_000, 10 + i)) for i, (a, b) in enumerate(pairs)]
    for stream in streams:
        stream.step()
    net.run_for(0.002)
    return pairs, streams, requests


def test_hardware_failure_brings_every_connection_back_and_transfers_continue() -> None:
    net = make_net(38)
    pairs, streams, _ = _transfers_under_way(net)
    net.nic.fail_hardware()
    exchange(net, streams)
    assert all(a.offload_state is OffloadState.IN_HOST for a, _ in pairs)
    assert _reasons(net, Uploaded).count(Reason.TARGET_HARDWARE_FAILURE) == 3
    assert len(net.nic.table.conns) == 0
    late, _ = net.connect(port=30)
    net.run_for(0.1)
    assert late.offload_state is OffloadState.IN_HOST, "a failed target takes no new connection"


def test_corrupt_hardware_sequence_aborts_what_was_lost_and_the_rest_continues() -> None:
    """Spec 3.2 corrupt-hardware protocol (9.6: FAILURE -> Retrieve(HardwareFailure) -> Abort -> Terminate):
    the target asks for every upload; for the one connection whose state it lost it also aborts it,
    completes its outstanding sends with REQUEST_ABORTED and its terminate with FAILURE. The host reports the
    fault, the application sees the connection reset and the peer is reset too; every other connection is
    uploaded with its state and finishes byte-exact."""
    slow = Impairments(delay=0.002)
    net = make_net(43, imp_a=slow, imp_b=slow)
    pairs, streams, requests = _transfers_under_way(net)
    outputs: list[object] = []
    for name in ("indicate", "complete"):
        original = getattr(net.nic, name)
        setattr(net.nic, name, lambda out, original=original: (outputs.append(out), original(out))[1])
    lost_a, lost_b = pairs[1]
    assert lost_a.offload is not None and lost_a.offload.ctx is not None
    handle, ctx = lost_a.offload.handle, lost_a.offload.ctx
    net.nic.fail_hardware(lost={handle})
    kept = [s for s in streams if lost_a not in (s.src, s.dst)]
    exchange(net, kept)
    assert all(a.offload_state is OffloadState.IN_HOST for a, _ in pairs) and len(net.nic.table) == 0
    assert _reasons(net, Uploaded) == [Reason.TARGET_HARDWARE_FAILURE] * 2
    ours = [o for o in outputs if getattr(o, "host_handle", None) == handle]
    assert [type(o).__name__ for o in ours] == ["UploadRequest", "PeerReset"]
    assert ours[0].reason is Reason.TARGET_HARDWARE_FAILURE  # type: ignore[attr-defined]
    sends = {r.request_id for r in requests if isinstance(r, Send) and r.ctx == ctx}
    aborted = [o for o in outputs if isinstance(o, SendCompletion) and o.request_id in sends]
    assert aborted and {o.status for o in aborted} == {Status.REQUEST_ABORTED}
    completed = [o for o in outputs if isinstance(o, StateCompletion)]
    failed = [b for o in completed for b in walk(o.tree) if b.host_handle == handle]
    assert [b.status for b in failed] == [Status.FAILURE]
    (fault,) = net.events(OffloadFault)
    assert fault.sock is lost_a and fault.reason is Reason.HARDWARE_FAILURE  # type: ignore[attr-defined]
    assert [type(e) for e in net.tcp_events(lost_a) if isinstance(e, ConnectionReset | Closed)] == [
        ConnectionReset,
        Closed,
    ]
    net.run_until(lambda: net.has_event(lost_b, ConnectionReset), 5.0)  # the peer learns it too
    assert len(net.a.internal_errors) == 1 and "lost the connection's state" in net.a.internal_errors[0]


def test_automatic_mode_offloads_only_past_the_byte_and_rtt_thresholds() -> None:
    policy = OffloadPolicy(mode="automatic", min_bytes=100_000, max_rtt=0.05)
    net = make_net(39, policy, imp_a=Impairments(delay=0.001), imp_b=Impairments(delay=0.001))
    a, b = net.connect()
    exchange(net, [Stream(a, b, payload(20_000, 1))])
    net.run_for(0.5)
    assert a.offload_state is OffloadState.IN_HOST and a.offload_reason is Reason.MODE_AUTOMATIC_THRESHOLD
    exchange(net, [Stream(a, b, payload(150_000, 2))])
    net.run_until(lambda: a.offload_state is OffloadState.OFFLOADED, 2.0)
    far = make_net(40, policy, imp_a=Impairments(delay=0.04), imp_b=Impairments(delay=0.04))
    fa, fb = far.connect()
    exchange(far, [Stream(fa, fb, payload(300_000, 3))])
    far.run_for(1.0)
    assert fa.offload_state is OffloadState.IN_HOST, "an 80 ms RTT stays on the host"


def test_policy_exclusion_and_a_rule_added_later_uploads() -> None:
    rules = (
        OffloadRule(kind="policy", local_port=None, remote_port=8),
        OffloadRule(kind="firewall", remote_port=9),
        OffloadRule(kind="capture", remote_port=10, allow_offload=True),
    )
    net = make_net(41, OffloadPolicy(mode="enabled", rules=rules))
    socks = {port: net.connect(port=port) for port in (7, 8, 9, 10)}
    net.run_for(0.1)
    got = {port: (a.offload_state, a.offload_reason) for port, (a, _) in socks.items()}
    assert got[7][0] is OffloadState.OFFLOADED and got[10][0] is OffloadState.OFFLOADED
    assert got[8] == (OffloadState.IN_HOST, Reason.POLICY_RULE)
    assert got[9] == (OffloadState.IN_HOST, Reason.FIREWALL_RULE)
    net.a.set_offload_policy(OffloadPolicy(mode="enabled", rules=(OffloadRule(remote_port=7),)))
    net.run_for(0.1)
    a7 = socks[7][0]
    assert a7.offload_state is OffloadState.IN_HOST and a7.offload_reason is Reason.POLICY_CHANGE
    exchange(net, [Stream(a, b, payload(30_000, p)) for p, (a, b) in socks.items()])
    assert net.events(Offloaded)


def test_shutdown_while_the_peer_fin_waits_behind_undelivered_data_still_ends_in_closed() -> None:
    """The target has the peer's FIN but holds it behind data the host could not take (spec 4.3); the
    application shuts down: on the target that is CLOSE-WAIT -> LAST-ACK -> CLOSED, while the host, told of
    the FIN only later, tracks FIN-WAIT-1 -> CLOSING -> TIME-WAIT and uploads. The returned connection is
    CLOSED: the application must still see every byte, EOF, then Closed, and the host must forget it."""
    net, a, b = _offloaded_pair(42, config=TcpConfig(rcv_buf=16 * 1024), config_b=TcpConfig())
    data = payload(24_000, 42)
    assert b.send(data) == len(data)
    b.shutdown()
    net.run_until(lambda: next(iter(net.nic.table.conns.values())).peer_fin, 5.0)
    assert not net.has_event(a, PeerClosed)
    a.shutdown()
    got = bytearray()
    net.run_until(lambda: (got.extend(read_all(a)), net.has_event(a, Closed))[1], 120.0)
    got += read_all(a)
    assert bytes(got) == data
    assert net.has_event(a, PeerClosed) and a.state is TcpState.CLOSED
    assert a not in net.a.connections() and len(net.nic.table) == 0


def test_a_connection_that_was_reset_is_not_offloaded_again() -> None:
    """After a peer reset the connection is finished and uploaded; its host engine is the stale copy frozen
    at the offload (ESTABLISHED). offload_now must judge the connection, not that copy: a refusal, and no
    entry left on the target that nobody would ever terminate."""
    net, a, b = _offloaded_pair(43)
    b.abort()
    net.run_until(lambda: net.has_event(a, Closed) and a.offload_state is OffloadState.IN_HOST, 5.0)
    assert a.state is TcpState.CLOSED
    assert net.a.offload_now(a) is Reason.STATE_NOT_OFFLOADABLE
    net.run_for(0.1)
    assert len(net.nic.table) == 0 and a.offload_state is OffloadState.IN_HOST
