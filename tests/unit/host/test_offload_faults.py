"""A target that answers outside the contract never crashes the host stack: the fault is counted and
reported (OffloadFault), the affected connection is uploaded, or aborted when its state cannot be trusted,
and every other connection keeps running (docs/offload-contract.md, ProtocolViolationError)."""

from __future__ import annotations

from dataclasses import replace

from offload_kit import PORT, OffloadNet, Stream, TamperingTarget, exchange, make_offload_net, payload

from tcpchimney.chimney.completions import Completion, SendCompletion, StateCompletion
from tcpchimney.chimney.indications import (
    LinkStatusChanged,
    NeighborReachabilityQuery,
    PeerReset,
    ReceiveIndication,
    TargetCapabilities,
    TargetPaused,
    TargetResumed,
    UploadAllRequested,
)
from tcpchimney.chimney.reason import Reason
from tcpchimney.chimney.status import Status
from tcpchimney.chimney.target import Output
from tcpchimney.chimney.tcp_state import TcpDelegated
from tcpchimney.chimney.tree import BlockList, Layer
from tcpchimney.host.events import OffloadFault, Uploaded
from tcpchimney.host.offload import OffloadState
from tcpchimney.host.policy import OffloadPolicy
from tcpchimney.tcp.events import Closed, ConnectionReset


def _net(seed: int) -> tuple[OffloadNet, TamperingTarget]:
    net = make_offload_net(seed, tamper=True)
    return net, net.tamperer  # type: ignore[attr-defined]


def _still_works(net: OffloadNet, port: int) -> None:
    a, b = net.connect(port)
    net.wait_offloaded(a)
    exchange(net, [Stream(a, b, payload(100_000, port)), Stream(b, a, payload(100_000, port + 1))])


def test_completion_for_a_request_never_made() -> None:
    net, tamperer = _net(1)
    a, b = net.connect()
    net.wait_offloaded(a)
    tamperer.inject(Completion(987_654, Status.SUCCESS))
    net.pump()
    (fault,) = net.events(OffloadFault)
    assert fault.sock is None and "never requested" in fault.detail  # type: ignore[attr-defined]
    assert a.offload_state is OffloadState.OFFLOADED
    exchange(net, [Stream(a, b, payload(50_000, 1))])
    assert net.a.counters["offload"]["target_faults"] == 1


def test_indications_for_unknown_handles() -> None:
    net, tamperer = _net(2)
    a, b = net.connect()
    net.wait_offloaded(a)
    tamperer.inject(PeerReset(424242))
    tamperer.inject(ReceiveIndication(424243, 1, b"ghost"))
    net.pump()
    assert len(net.events(OffloadFault)) == 2
    assert a.offload_state is OffloadState.OFFLOADED and a.readable == 0
    exchange(net, [Stream(b, a, payload(50_000, 2))])


def test_wrong_completion_type_uploads_the_connection_byte_exact() -> None:
    net, tamperer = _net(3)
    a, b = net.connect()
    net.wait_offloaded(a)
    spoiled: list[int] = []

    def tamper(out: Output) -> list[Output]:
        if isinstance(out, SendCompletion) and not spoiled:
            spoiled.append(out.request_id)
            return [Completion(out.request_id, out.status)]  # a Send answered without its byte count
        return [out]

    tamperer.tamper = tamper
    exchange(net, [Stream(a, b, payload(400_000, 3)), Stream(b, a, payload(300_000, 4))])
    assert spoiled and net.events(OffloadFault)
    (up,) = net.events(Uploaded)
    assert up.sock is a and up.reason is Reason.HARDWARE_FAILURE  # type: ignore[attr-defined]
    assert a.offload_state is OffloadState.IN_HOST


def _shift_snd_una(block: BlockList, by: int) -> BlockList:
    if block.layer is Layer.TCP and isinstance(block.state, TcpDelegated):
        d = block.state
        una = d.snd_una + by
        shifted = replace(d, snd_una=una, snd_nxt=una, snd_max=una, snd_wl2=una, send_data=b"")
        return replace(block, state=shifted)
    return replace(block, dependents=tuple(_shift_snd_una(x, by) for x in block.dependents))


def test_impossible_sequence_numbers_on_upload_abort_the_connection() -> None:
    net, tamperer = _net(4)
    a, b = net.connect()
    net.wait_offloaded(a)

    def tamper(out: Output) -> list[Output]:
        if isinstance(out, StateCompletion) and any(
            isinstance(x.state, TcpDelegated) for blk in out.tree for x in blk.walk()
        ):
            return [replace(out, tree=tuple(_shift_snd_una(blk, 70_000) for blk in out.tree))]
        return [out]

    tamperer.tamper = tamper
    net.a.upload(a, Reason.ADMIN)
    net.run_until(lambda: net.has_event(a, Closed))
    kinds = [type(e) for e in net.tcp_events(a) if isinstance(e, ConnectionReset | Closed)]
    assert kinds == [ConnectionReset, Closed]
    (fault,) = net.events(OffloadFault)
    assert fault.sock is a and "send data ends" in fault.detail  # type: ignore[attr-defined]
    net.run_until(lambda: net.has_event(b, ConnectionReset))  # the host's abort reached the peer
    tamperer.tamper = None
    _still_works(net, PORT + 1)


def test_initiate_answer_breaking_the_rules_aborts_the_connection() -> None:
    net = make_offload_net(5, policy=OffloadPolicy(), tamper=True)
    tamperer: TamperingTarget = net.tamperer  # type: ignore[attr-defined]
    a, b = net.connect()

    def tamper(out: Output) -> list[Output]:
        if isinstance(out, StateCompletion):
            (neighbor,) = out.tree
            return [replace(out, tree=(replace(neighbor, dependents=()),))]  # the path and TCP blocks vanish
        return [out]

    tamperer.tamper = tamper
    assert net.a.offload_now(a) is None
    net.run_until(lambda: net.has_event(a, Closed))
    (fault,) = net.events(OffloadFault)
    assert fault.sock is a and "shape" in fault.detail  # type: ignore[attr-defined]
    net.run_until(lambda: net.has_event(b, ConnectionReset))
    assert net.a.counters["stack"]["internal_error"] >= 1
    tamperer.tamper = None
    net.a.set_offload_policy(OffloadPolicy(mode="enabled"))
    _still_works(net, PORT + 1)


# ---------------------------------------------------------------------------------------------- adapter-wide


def test_pause_resume_upload_all_and_link_down() -> None:
    net, tamperer = _net(6)
    a, b = net.connect()
    net.wait_offloaded(a)
    tamperer.inject(TargetPaused())
    net.pump()
    a2, _ = net.connect(PORT + 1)
    net.run_for(0.1)
    assert a2.offload_state is OffloadState.IN_HOST and a2.offload_reason is Reason.TARGET_PAUSED
    tamperer.inject(TargetResumed(TargetCapabilities(capacity=8)))
    net.pump()
    assert net.a.offload_now(a2) is None
    net.wait_offloaded(a2)
    tamperer.inject(UploadAllRequested())
    net.run_until(
        lambda: a.offload_state is OffloadState.IN_HOST and a2.offload_state is OffloadState.IN_HOST
    )
    assert {u.reason for u in net.events(Uploaded)} == {Reason.UPLOAD_ALL}  # type: ignore[attr-defined]
    assert net.a.offload_now(a) is None
    net.wait_offloaded(a)
    tamperer.inject(LinkStatusChanged(up=False))
    net.wait_in_host(a)
    assert net.events(Uploaded)[-1].reason is Reason.LINK_DOWN  # type: ignore[attr-defined]
    exchange(net, [Stream(a, b, payload(50_000, 6))])


def test_neighbor_reachability_query_is_answered() -> None:
    net, tamperer = _net(7)
    a, _ = net.connect()
    net.wait_offloaded(a)
    (neighbor,) = net.target.table.neighbors.values()
    net.run_for(5.0)
    a.send(b"tick")  # the stack learns the time at its next entry point with a clock
    net.run_for(0.01)
    tamperer.inject(NeighborReachabilityQuery(neighbor.host_handle, 1, 5.0))
    net.pump()
    assert not net.events(OffloadFault)
    assert 4.0 < neighbor.cached.host_reachability_delta < 6.0  # seconds since ARP last confirmed it
    assert net.a.counters["stack"]["internal_error"] == 0


def test_a_connection_whose_state_the_target_lost_resets_an_idle_peer() -> None:
    """Spec 3.2: the target aborts a connection whose state it lost and fails its terminate. The host's engine
    holds the sequence numbers of the offload, long passed: its RST alone would be out of the peer's window.
    The host's probe makes the idle peer answer, and the exact RST follows."""
    net = make_offload_net(9)
    a, b = net.connect()
    net.wait_offloaded(a)
    exchange(net, [Stream(a, b, payload(100_000, 9))])  # the target moved far past the offload's numbers
    net.run_for(1.0)  # every delayed ACK is out: the peer sends nothing by itself any more
    assert a.offload is not None
    net.target.fail_hardware(lost={a.offload.handle})
    net.run_until(lambda: net.has_event(b, ConnectionReset), 5.0)
    assert [type(e) for e in net.tcp_events(a) if isinstance(e, ConnectionReset | Closed)] == [
        ConnectionReset,
        Closed,
    ]
    (fault,) = net.events(OffloadFault)
    assert fault.sock is a and fault.reason is Reason.HARDWARE_FAILURE  # type: ignore[attr-defined]
    assert not net.events(Uploaded), "nothing came back to upload"
