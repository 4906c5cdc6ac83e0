"""A target that lies about what it did is caught against the host's own accounting (the sequence numbers,
byte counts and handles it issued): the fault is reported (OffloadFault), the connection is recovered on the
host or reset, the target is made to drop its copy, and the application sees a connection that is either
exact or closed with a reset in every call (docs/offload-contract.md "What the host checks")."""

from __future__ import annotations

from dataclasses import replace

from offload_kit import (
    PORT,
    Stream,
    TamperingTarget,
    drop_first,
    ends_with_reset,
    exchange,
    faults_of,
    map_tcp_blocks,
    payload,
    tamper_first,
    tampering_net,
)

from tcpchimney.chimney.completions import SendCompletion, StateCompletion
from tcpchimney.chimney.indications import PeerDisconnect, ReceiveIndication
from tcpchimney.chimney.reason import Reason
from tcpchimney.chimney.requests import Request, Send
from tcpchimney.chimney.status import Status
from tcpchimney.chimney.target import Output
from tcpchimney.chimney.tcp_state import TcpDelegated
from tcpchimney.chimney.tree import BlockList, Layer, Role, walk
from tcpchimney.host.events import Uploaded
from tcpchimney.host.offload import SILENCE, STATE_CALL_TIMEOUT, OffloadState
from tcpchimney.host.policy import OffloadPolicy
from tcpchimney.tcp.events import Closed, ConnectionReset, PeerClosed
from tcpchimney.tcp.state import TcpState


def test_a_receive_indication_delivered_twice_is_a_fault_and_the_stream_stays_exact() -> None:
    net, tamperer = tampering_net(21)
    a, b = net.connect()
    net.wait_offloaded(a)
    doubled: list[int] = []

    def tamper(out: Output) -> list[Output]:
        if isinstance(out, ReceiveIndication) and len(doubled) < 3:
            doubled.append(out.indication_id)
            return [out, out]
        return [out]

    tamperer.tamper = tamper
    exchange(net, [Stream(b, a, payload(300_000, 21))])  # checks a got exactly what b sent
    assert doubled
    (fault,) = faults_of(net, a)  # one: the host uploaded at the first duplicate
    assert "duplicate" in fault.detail
    (up,) = net.events(Uploaded)
    assert up.sock is a and up.reason is Reason.HARDWARE_FAILURE  # type: ignore[attr-defined]


def test_a_receive_indication_that_skips_bytes_is_a_fault_and_nothing_is_lost() -> None:
    net, tamperer = tampering_net(22)
    a, b = net.connect()
    net.wait_offloaded(a)
    dropped: list[int] = []

    def tamper(out: Output) -> list[Output]:
        if isinstance(out, ReceiveIndication) and not dropped and len(out.data) > 10:
            dropped.append(out.indication_id)  # the host gets the second half only, said to start later
            return [replace(out, seq=out.seq + 10, data=out.data[10:])]
        return [out]

    tamperer.tamper = tamper
    exchange(net, [Stream(b, a, payload(200_000, 22))])
    assert dropped
    (fault,) = faults_of(net, a)
    assert "gap" in fault.detail


def test_a_peer_fin_indicated_on_another_connection_is_a_fault_never_an_early_end_of_stream() -> None:
    """The target indicates one connection's FIN under another's handle, before that one's peer sent a
    byte: the FIN does not sit at the next byte the host expects there, so no EOF reaches the application;
    the connection is uploaded and its stream arrives whole, its own FIN after it. The connection whose FIN
    went astray gets it from a query of its state."""
    net, tamperer = tampering_net(25)
    a1, b1 = net.connect()
    a2, b2 = net.connect(PORT + 1)
    net.wait_offloaded(a1)
    net.wait_offloaded(a2)
    assert a2.offload is not None
    moved: list[PeerDisconnect] = []

    def tamper(out: Output) -> list[Output]:
        if isinstance(out, PeerDisconnect) and not moved:
            moved.append(out)
            return [replace(out, host_handle=a2.offload.handle)]  # type: ignore[union-attr]
        return [out]

    tamperer.tamper = tamper
    b1.send(b"first")
    b1.shutdown()
    net.run_until(lambda: bool(moved))
    net.run_for(1.0)
    assert not net.has_event(a2, PeerClosed)  # before: EOF after 0 bytes
    (fault,) = faults_of(net, a2)
    assert "PeerDisconnect" in fault.detail and fault.reason is Reason.HARDWARE_FAILURE
    data = payload(100_000, 25)
    exchange(net, [Stream(b2, a2, data)])
    b2.shutdown()
    net.run_until(lambda: net.has_event(a2, PeerClosed))
    assert a2.receive(100) == b""
    assert [type(e) for e in net.tcp_events(a2)].count(PeerClosed) == 1
    net.run_until(lambda: net.has_event(a1, PeerClosed), 4 * SILENCE)
    assert a1.receive(100) == b"first"


def test_an_upload_returning_closed_without_a_fin_or_reset_is_a_fault_and_a_reset() -> None:
    net, tamperer = tampering_net(23)
    a, b = net.connect()
    net.wait_offloaded(a)
    exchange(net, [Stream(a, b, payload(20_000, 23)), Stream(b, a, payload(20_000, 24))])

    def closed(block: BlockList) -> BlockList:
        assert isinstance(block.state, TcpDelegated)
        return block.with_result(block.status, state=replace(block.state, state=TcpState.CLOSED))

    def tamper(out: Output) -> list[Output]:
        if isinstance(out, StateCompletion) and any(
            isinstance(b.state, TcpDelegated) for b in walk(out.tree)
        ):
            return [map_tcp_blocks(out, closed)]
        return [out]

    tamperer.tamper = tamper
    net.a.upload(a, Reason.ADMIN)
    net.run_until(lambda: net.has_event(a, Closed))
    ends_with_reset(net, a)
    (fault,) = faults_of(net, a)
    assert "CLOSED" in fault.detail and fault.reason is Reason.HARDWARE_FAILURE
    net.run_until(lambda: net.has_event(b, ConnectionReset))  # the peer is told too


def test_an_initiate_answered_with_a_handle_in_use_drops_the_targets_copy() -> None:
    net, tamperer = tampering_net(24, policy=OffloadPolicy(mode="disabled"))
    (a1, b1), (a2, b2) = net.connect(PORT), net.connect(PORT + 1)
    assert net.a.offload_now(a1) is None
    net.wait_offloaded(a1)
    assert a1.offload is not None and a1.offload.ctx is not None
    used = a1.offload.ctx

    def tamper(out: Output) -> list[Output]:
        if isinstance(out, StateCompletion):
            blocks = [blk for blk in walk(out.tree) if blk.layer is Layer.TCP and blk.role is Role.NEW]
            if blocks and blocks[0].target_handle != used:
                return [map_tcp_blocks(out, lambda blk: blk.with_result(blk.status, target_handle=used))]
        return [out]

    tamperer.tamper = tamper
    exchange(net, [Stream(b2, a2, payload(30_000, 24))])  # the peer has data in flight to the target's copy
    assert net.a.offload_now(a2) is None
    b2.send(payload(30_000, 25))
    net.run_until(lambda: net.has_event(a2, Closed))
    tamperer.tamper = None
    ends_with_reset(net, a2)
    (fault,) = faults_of(net, a2)
    assert "already in use" in fault.detail
    # The target's copy is gone: the peer's connection ends too, instead of being answered forever.
    net.run_until(lambda: net.has_event(b2, ConnectionReset), 10.0)
    net.run_until(lambda: len(net.target.table.conns) == 0 or net.offloaded(a1), 10.0)
    assert all(e.host_handle != a2.offload.handle for e in net.target.table.conns.values())  # type: ignore[union-attr]
    # The first connection, whose handle the target claimed twice, is intact (on the host or the target).
    exchange(net, [Stream(a1, b1, payload(50_000, 25)), Stream(b1, a1, payload(50_000, 26))])


def test_an_initiate_said_failed_whose_copy_the_target_kept_resets_the_idle_peer() -> None:
    """The target offloads a connection and answers FAILURE for it: the host resets its connection, but the
    copy on the target answers the peer's replies to the host's probes, so the host's RST never comes. The
    copy goes when its path is terminated (it hangs on the path of a connection that stays offloaded); the
    host probes again then, and the idle peer, which has nothing more to send, is reset."""
    net, tamperer = tampering_net(26, policy=OffloadPolicy(mode="disabled"))
    (a1, b1), (a2, b2) = net.connect(PORT), net.connect(PORT + 1)
    assert net.a.offload_now(a1) is None
    net.wait_offloaded(a1)

    held: list[Output] = []

    def tamper(out: Output) -> list[Output]:
        if isinstance(out, StateCompletion) and not held:
            held.append(map_tcp_blocks(out, lambda blk: blk.with_result(Status.FAILURE)))  # the handle stays
            return []
        return [out]

    tamperer.tamper = tamper
    a2.send(payload(30_000, 26))
    assert net.a.offload_now(a2) is None  # with the bytes: the copy sends them, past the host's numbers
    net.run_for(0.2)
    assert held
    tamperer.tamper = None
    tamperer.inject(held[0])  # a late answer: failed, says the target
    net.run_until(lambda: net.has_event(a2, Closed))
    ends_with_reset(net, a2)
    net.run_for(0.1)
    assert not net.has_event(b2, ConnectionReset)  # its copy on the target answered the probes
    assert any(e.host_handle == a2.offload.handle for e in net.target.table.conns.values())  # type: ignore[union-attr]
    net.a.upload(a1, Reason.ADMIN)  # the path's last connection leaves: the path is terminated
    net.run_until(lambda: net.has_event(b2, ConnectionReset), 10.0)
    assert not net.target.table.conns
    exchange(net, [Stream(a1, b1, payload(50_000, 27)), Stream(b1, a1, payload(50_000, 28))])


def test_an_initiate_never_answered_on_a_path_whose_other_connections_left_frees_the_path() -> None:
    """The target takes a connection onto a path it holds and never answers; the path's other connection
    leaves meanwhile. Once the host gives up on the initiate (the connection reset, the target failed) the
    path has no connection left and is terminated, so the target drops the copy, and its idle peer is
    reset instead of staying connected to it."""
    net, tamperer = tampering_net(27, policy=OffloadPolicy(mode="disabled"))
    (a1, b1), (a2, b2) = net.connect(PORT), net.connect(PORT + 1)
    assert net.a.offload_now(a1) is None
    net.wait_offloaded(a1)
    dropped: list[StateCompletion] = []
    tamperer.tamper = drop_first(StateCompletion, dropped)
    a2.send(payload(30_000, 27))
    assert net.a.offload_now(a2) is None  # with the bytes: the copy sends them, past the host's numbers
    net.run_until(lambda: bool(dropped))
    tamperer.tamper = None
    net.a.upload(a1, Reason.ADMIN)
    net.wait_in_host(a1)
    net.run_until(lambda: net.has_event(a2, Closed), 2 * STATE_CALL_TIMEOUT)
    ends_with_reset(net, a2)
    net.run_until(lambda: net.has_event(b2, ConnectionReset), 10.0)
    assert not net.target.table.conns
    exchange(net, [Stream(a1, b1, payload(50_000, 28)), Stream(b1, a1, payload(50_000, 29))])


def test_a_connection_aborted_for_a_fault_is_closed_in_every_call() -> None:
    net, _ = tampering_net(25)
    a, _b = net.connect()
    net.wait_offloaded(a)
    assert a.offload is not None
    net.target.fail_hardware(lost={a.offload.handle})  # the target lost its state: the host aborts
    net.run_until(lambda: net.has_event(a, Closed))
    ends_with_reset(net, a)
    a.shutdown()  # idempotent on a reset connection, as on the host engine
    a.close()


class _RaisingTarget(TamperingTarget):
    """A target whose ``submit`` raises for the requests ``fails`` picks (a broken driver)."""

    def __init__(self, inner: TamperingTarget, fails: type[Request] | tuple[type[Request], ...]) -> None:
        super().__init__(inner.inner)
        self.fails = fails

    def submit(self, request: Request, now: float) -> None:
        if isinstance(request, self.fails):
            raise RuntimeError("driver crashed")
        self.inner.submit(request, now)


def test_a_submit_that_raises_never_reaches_the_application_and_the_connection_recovers() -> None:
    net, tamperer = tampering_net(26)
    raising = _RaisingTarget(tamperer, Send)
    net.a._offload_manager().target = raising  # type: ignore[assignment]
    a, b = net.connect()
    net.wait_offloaded(a)
    exchange(net, [Stream(a, b, payload(100_000, 26)), Stream(b, a, payload(100_000, 27))])
    assert faults_of(net, a) or faults_of(net, None)
    assert a.offload_state is OffloadState.IN_HOST
    assert net.a.counters["offload"]["target_faults"] >= 1


def test_a_target_whose_every_submit_raises_resets_its_connections_and_offloads_no_more() -> None:
    net, tamperer = tampering_net(27)
    a, _b = net.connect()
    net.wait_offloaded(a)
    net.a._offload_manager().target = _RaisingTarget(tamperer, Request)  # type: ignore[arg-type,assignment]
    assert a.send(b"x" * 1000) == 1000  # no exception escapes
    net.run_until(lambda: net.has_event(a, Closed))
    ends_with_reset(net, a)
    a2, _ = net.connect(PORT + 1)
    net.run_for(0.5)
    assert a2.offload_state is OffloadState.IN_HOST  # a failed target gets no more connections


# ---------------------------------------------------------------------------------------------- silence


def test_a_dropped_receive_indication_is_found_by_a_query_and_nothing_is_lost() -> None:
    """The target waits for an answer to an indication the host never got: nothing moves on the
    connection. The host queries it after SILENCE, sees bytes it was never offered, and uploads it."""
    net, tamperer = tampering_net(31)
    a, b = net.connect()
    net.wait_offloaded(a)
    dropped: list[ReceiveIndication] = []
    tamperer.tamper = drop_first(ReceiveIndication, dropped)
    exchange(net, [Stream(b, a, payload(100_000, 31))])
    assert dropped
    (fault,) = faults_of(net, a)
    assert "never indicated" in fault.detail
    assert a.offload_state is OffloadState.IN_HOST


def test_a_dropped_send_completion_is_found_by_a_query_and_the_transfer_completes() -> None:
    net, tamperer = tampering_net(32)
    a, b = net.connect()
    net.wait_offloaded(a)
    dropped: list[SendCompletion] = []
    tamperer.tamper = drop_first(SendCompletion, dropped)
    exchange(net, [Stream(a, b, payload(300_000, 32))])
    assert dropped
    # The Send the peer acknowledged still counts against the socket's send space: once the connection
    # is quiet the host queries it and finds the completion owed.
    net.run_until(lambda: bool(faults_of(net, a)), 3 * SILENCE)
    (fault,) = faults_of(net, a)
    assert "never completed" in fault.detail
    net.wait_in_host(a)
    exchange(net, [Stream(a, b, payload(100_000, 33))])


def test_a_state_call_never_answered_resets_its_connection_and_fails_the_target() -> None:
    net, tamperer = tampering_net(33)
    (a, b), (a2, b2) = net.connect(PORT), net.connect(PORT + 1)
    net.wait_offloaded(a)
    net.wait_offloaded(a2)
    dropped: list[StateCompletion] = []
    tamperer.tamper = drop_first(StateCompletion, dropped)
    net.a.upload(a, Reason.ADMIN)
    net.run_until(lambda: net.has_event(a, Closed), STATE_CALL_TIMEOUT + 2.0)
    ends_with_reset(net, a)
    assert any("never answered" in f.detail for f in faults_of(net, a))
    net.run_until(lambda: net.has_event(b, ConnectionReset), 5.0)
    # The target is failed: the other connection comes back intact, and nothing is offloaded any more.
    net.wait_in_host(a2)
    exchange(net, [Stream(a2, b2, payload(50_000, 33)), Stream(b2, a2, payload(50_000, 34))])
    assert a2.offload_reason is Reason.HARDWARE_FAILURE
    a3, _ = net.connect(PORT + 2)
    net.run_for(0.5)
    assert a3.offload_state is OffloadState.IN_HOST and a3.offload_reason is Reason.TARGET_FAILED


def test_a_connection_closed_on_the_target_comes_back_without_bytes_the_host_already_has() -> None:
    """The target rejects the answer to an indication whose bytes the host took (the liar renamed it), so
    it keeps them as undelivered; both sides close, the target's copy ends CLOSED with those bytes still
    buffered. The upload hands them back: the host has them already and must not deliver them twice."""
    net, tamperer = tampering_net(34)
    a, b = net.connect()
    net.wait_offloaded(a)
    renamed: list[ReceiveIndication] = []
    tamperer.tamper = tamper_first(
        ReceiveIndication, lambda out: [replace(out, indication_id=out.indication_id + 100_000)], renamed
    )
    data = payload(5_000, 34)
    assert b.send(data) == len(data)
    b.shutdown()
    net.run_for(0.1)
    got = a.receive(1 << 20)
    a.shutdown()
    net.run_until(lambda: net.has_event(a, Closed), 3 * SILENCE)
    got += a.receive(1 << 20)
    assert renamed and got == data
    assert [type(e) for e in net.tcp_events(a) if isinstance(e, ConnectionReset | PeerClosed)] == [PeerClosed]


def test_a_rejected_answer_to_a_query_settles_it_and_the_connection_comes_back() -> None:
    """Left in flight, a query the registry could not accept would block the connection's terminate for
    ever (the registry waits for it): the host settles it as failed and uploads the connection."""
    net, tamperer = tampering_net(35)
    a, b = net.connect()
    net.wait_offloaded(a)
    spoiled: list[StateCompletion] = []
    tamperer.tamper = tamper_first(
        StateCompletion,
        lambda out: [map_tcp_blocks(out, lambda blk: blk.with_result(blk.status, target_handle=999))],
        spoiled,
    )
    net.run_for(SILENCE + 2 * 1.0)  # quiet: the host queries the connection
    assert spoiled, "no query was made"
    net.wait_in_host(a, 5.0)
    assert faults_of(net, a)
    exchange(net, [Stream(a, b, payload(50_000, 35)), Stream(b, a, payload(50_000, 36))])
