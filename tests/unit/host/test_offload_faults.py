"""A target that answers outside the contract never crashes the host stack: the fault is counted and
reported (OffloadFault), the affected connection is uploaded, or aborted when its state cannot be trusted,
and every other connection keeps running (docs/offload-contract.md, ProtocolViolationError)."""

from __future__ import annotations

from dataclasses import replace

from offload_kit import (
    PORT,
    OffloadNet,
    Stream,
    TamperingTarget,
    ends_with_reset,
    exchange,
    make_offload_net,
    map_tcp_blocks,
    payload,
    tamper_first,
    tampering_net,
)

from tcpchimney.chimney.completions import Completion, ReceiveCompletion, SendCompletion, StateCompletion
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
from tcpchimney.chimney.requests import InitiateOffload, TerminateOffload
from tcpchimney.chimney.status import Status
from tcpchimney.chimney.target import Output
from tcpchimney.chimney.tcp_state import TcpDelegated
from tcpchimney.chimney.tree import BlockList, Layer, Role, walk
from tcpchimney.host.events import OffloadFault, OffloadRefused, Uploaded
from tcpchimney.host.offload import OffloadState
from tcpchimney.host.policy import OffloadPolicy
from tcpchimney.host.sockets import TcpSocket
from tcpchimney.tcp.config import TcpConfig
from tcpchimney.tcp.events import Closed, ConnectionReset
from tcpchimney.wire.seq import SeqNum


def _still_works(net: OffloadNet, port: int) -> None:
    a, b = net.connect(port)
    net.wait_offloaded(a)
    exchange(net, [Stream(a, b, payload(100_000, port)), Stream(b, a, payload(100_000, port + 1))])


def test_completion_for_a_request_never_made() -> None:
    net, tamperer = tampering_net(1)
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
    net, tamperer = tampering_net(2)
    a, b = net.connect()
    net.wait_offloaded(a)
    tamperer.inject(PeerReset(424242))
    tamperer.inject(ReceiveIndication(424243, 1, b"ghost", SeqNum(1)))
    net.pump()
    assert len(net.events(OffloadFault)) == 2
    assert a.offload_state is OffloadState.OFFLOADED and a.readable == 0
    exchange(net, [Stream(b, a, payload(50_000, 2))])


def test_wrong_completion_type_uploads_the_connection_byte_exact() -> None:
    net, tamperer = tampering_net(3)
    a, b = net.connect()
    net.wait_offloaded(a)
    spoiled: list[SendCompletion] = []
    # The first Send is answered without its byte count.
    tamperer.tamper = tamper_first(
        SendCompletion, lambda out: [Completion(out.request_id, out.status)], spoiled
    )
    exchange(net, [Stream(a, b, payload(400_000, 3)), Stream(b, a, payload(300_000, 4))])
    assert spoiled and net.events(OffloadFault)
    (up,) = net.events(Uploaded)
    assert up.sock is a and up.reason is Reason.HARDWARE_FAILURE  # type: ignore[attr-defined]
    assert a.offload_state is OffloadState.IN_HOST


def _shift_snd_una(block: BlockList, by: int) -> BlockList:
    d = block.state
    assert isinstance(d, TcpDelegated)
    una = d.snd_una + by
    return replace(block, state=replace(d, snd_una=una, snd_nxt=una, snd_max=una, snd_wl2=una, send_data=b""))


def test_impossible_sequence_numbers_on_upload_abort_the_connection() -> None:
    net, tamperer = tampering_net(4)
    a, b = net.connect()
    net.wait_offloaded(a)

    def tamper(out: Output) -> list[Output]:
        if isinstance(out, StateCompletion) and any(
            isinstance(x.state, TcpDelegated) for blk in out.tree for x in blk.walk()
        ):
            return [map_tcp_blocks(out, lambda blk: _shift_snd_una(blk, 70_000))]
        return [out]

    tamperer.tamper = tamper
    net.a.upload(a, Reason.ADMIN)
    net.run_until(lambda: net.has_event(a, Closed))
    ends_with_reset(net, a)
    (fault,) = net.events(OffloadFault)
    assert fault.sock is a and "send data ends" in fault.detail  # type: ignore[attr-defined]
    net.run_until(lambda: net.has_event(b, ConnectionReset))  # the host's abort reached the peer
    tamperer.tamper = None
    _still_works(net, PORT + 1)


def test_initiate_answer_breaking_the_rules_aborts_the_connection() -> None:
    net, tamperer = tampering_net(5, policy=OffloadPolicy())
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
    net, tamperer = tampering_net(6)
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
    net, tamperer = tampering_net(7)
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


# ---------------------------------------------------------------------------------------------- upload-all


class _Recording:
    """Records every request the host submits, in front of the tampering target."""

    def __init__(self, net: OffloadNet, tamperer: TamperingTarget) -> None:
        self.requests: list[object] = []
        submit = tamperer.submit

        def record(request, now):  # type: ignore[no-untyped-def]
            self.requests.append(request)
            submit(request, now)

        tamperer.submit = record  # type: ignore[method-assign]

    def terminates(self) -> list[TerminateOffload]:
        return [r for r in self.requests if isinstance(r, TerminateOffload)]


def _offloaded_pairs(net: OffloadNet, n: int) -> list[tuple[TcpSocket, TcpSocket]]:
    pairs = [net.connect(PORT + i) for i in range(n)]
    for a, _ in pairs:
        net.wait_offloaded(a)
    return pairs


def test_upload_all_takes_every_connection_and_their_path_in_one_terminate() -> None:
    net, tamperer = tampering_net(8)
    pairs = _offloaded_pairs(net, 5)
    recorder = _Recording(net, tamperer)
    assert net.a.upload_all(Reason.ADMIN) == 5
    net.run_until(lambda: all(a.offload_state is OffloadState.IN_HOST for a, _ in pairs))
    (request,) = recorder.terminates()
    blocks = list(walk(request.tree))
    assert [b.layer for b in blocks] == [Layer.NEIGHBOR, Layer.PATH] + [Layer.TCP] * 5
    assert all(b.role is Role.LINKER for b in blocks)  # the neighbor and path leave with their last users
    assert len(net.target.table) == 0
    assert [u.reason for u in net.events(Uploaded)] == [Reason.ADMIN] * 5  # type: ignore[attr-defined]
    streams = [Stream(a, b, payload(30_000, 80 + i)) for i, (a, b) in enumerate(pairs)]
    exchange(net, streams + [Stream(b, a, payload(30_000, 90 + i)) for i, (a, b) in enumerate(pairs)])


def test_upload_all_keeps_the_path_a_connection_still_uses() -> None:
    net, tamperer = tampering_net(9)
    pairs = _offloaded_pairs(net, 3)
    staying, _ = pairs[0]
    net.a.upload(staying, Reason.ADMIN)  # its terminate is in flight: upload_all leaves it alone
    recorder = _Recording(net, tamperer)
    assert net.a.upload_all(Reason.ADMIN) == 2
    net.run_until(lambda: all(a.offload_state is OffloadState.IN_HOST for a, _ in pairs))
    (request,) = recorder.terminates()[:1]
    layers = [b.layer for b in walk(request.tree) if b.role is Role.LINKER]
    assert layers == [Layer.TCP, Layer.TCP]  # the first connection still used the path: placeholders above
    net.run_until(lambda: len(net.target.table) == 0)  # the path and neighbor follow the last one out
    exchange(net, [Stream(a, b, payload(20_000, 70 + i)) for i, (a, b) in enumerate(pairs)])


def test_a_faulty_answer_to_upload_all_aborts_every_connection_it_named() -> None:
    net, tamperer = tampering_net(10)
    pairs = _offloaded_pairs(net, 3)

    def tamper(out: Output) -> list[Output]:
        if isinstance(out, StateCompletion) and len(list(walk(out.tree))) > 3:
            (neighbor,) = out.tree
            return [replace(out, tree=(replace(neighbor, dependents=()),))]  # every other block vanishes
        return [out]

    tamperer.tamper = tamper
    net.a.upload_all(Reason.ADMIN)
    net.run_until(lambda: all(net.has_event(a, Closed) for a, _ in pairs))
    for a, b in pairs:
        ends_with_reset(net, a)
        net.run_until(lambda b=b: net.has_event(b, ConnectionReset))  # type: ignore[misc]
    assert {f.sock for f in net.events(OffloadFault)} == {a for a, _ in pairs}  # type: ignore[attr-defined]
    tamperer.tamper = None
    _still_works(net, PORT + 20)


def test_receive_completion_beyond_the_posted_buffer_is_not_delivered() -> None:
    """The host posts zero-byte receives (they re-enable indications once the application read): an answer
    carrying data is a faulty target; the junk never reaches the application, the stream stays exact."""
    net, tamperer = tampering_net(11, config=TcpConfig(rcv_buf=32 * 1024, snd_buf=32 * 1024))
    a, b = net.connect()
    net.wait_offloaded(a)
    spoiled: list[ReceiveCompletion] = []
    tamperer.tamper = tamper_first(
        ReceiveCompletion, lambda out: [ReceiveCompletion(out.request_id, out.status, b"junk")], spoiled
    )
    data = payload(300_000, 11)
    sent = 0
    for _ in range(50):  # a reads nothing: its socket queue fills and the target keeps the rest back
        sent += b.send(data[sent:])
        net.run_for(0.01)
    assert a.offload is not None and a.offload.target_holds
    got = a.receive(1 << 20)  # the read frees the queue: the host posts a receive to have the rest offered

    def rest_arrived() -> bool:
        nonlocal sent, got
        sent += b.send(data[sent:])
        got += a.receive(1 << 20)
        return len(got) >= len(data)

    net.run_until(rest_arrived)
    assert got == data
    assert spoiled, "the host never posted a receive: nothing was tested"
    (fault,) = net.events(OffloadFault)
    assert fault.sock is a and "over the 0-byte buffer" in fault.detail  # type: ignore[attr-defined]
    assert net.events(Uploaded)[0].reason is Reason.HARDWARE_FAILURE  # type: ignore[attr-defined]


def test_enabling_offload_sends_every_waiting_connection_in_one_initiate() -> None:
    net, tamperer = tampering_net(12, policy=OffloadPolicy(mode="disabled"))
    net.target.table.capacity = 4  # it announced 64: the host offers all six, the target refuses two
    pairs = [net.connect(PORT + i) for i in range(6)]
    recorder = _Recording(net, tamperer)
    net.a.set_offload_policy(OffloadPolicy(mode="enabled"))
    net.run_for(0.05)
    initiates = [r for r in recorder.requests if isinstance(r, InitiateOffload)]
    assert len(initiates) == 1  # the neighbor and the path once, the six connections below them
    blocks = list(walk(initiates[0].tree))
    assert [b.layer for b in blocks] == [Layer.NEIGHBOR, Layer.PATH] + [Layer.TCP] * 6
    states = [a.offload_state for a, _ in pairs]
    assert states.count(OffloadState.OFFLOADED) == 4  # the target holds four: partial success
    refused = [a for a, _ in pairs if a.offload_state is OffloadState.IN_HOST]
    assert all(a.offload_reason is Reason.TARGET_FULL for a in refused)
    streams = [Stream(a, b, payload(20_000, 60 + i)) for i, (a, b) in enumerate(pairs)]
    exchange(net, streams + [Stream(b, a, payload(20_000, 70 + i)) for i, (a, b) in enumerate(pairs)])


def test_offload_now_waiting_for_its_path_still_goes_under_mode_disabled() -> None:
    """The second offload_now finds the neighbor and path still being offloaded by the first: it waits for
    them, and is then offloaded as asked, not refused by the disabled mode the policy would apply."""
    net = make_offload_net(13, policy=OffloadPolicy(mode="disabled"))
    (a1, _), (a2, _) = net.connect(PORT), net.connect(PORT + 1)
    before = len(net.events(OffloadRefused))  # both were refused by the mode once established
    assert net.a.offload_now(a1) is None
    assert net.a.offload_now(a2) is None
    assert a2.offload_state is OffloadState.IN_HOST  # parked until the path is on the target
    net.run_until(lambda: a1.offload_state is a2.offload_state is OffloadState.OFFLOADED)
    assert a2.offload_reason is None and len(net.events(OffloadRefused)) == before


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
    ends_with_reset(net, a)
    (fault,) = net.events(OffloadFault)
    assert fault.sock is a and fault.reason is Reason.HARDWARE_FAILURE  # type: ignore[attr-defined]
    assert not net.events(Uploaded), "nothing came back to upload"
