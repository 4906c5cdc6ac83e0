"""Chimney-spec 4.3 / 4.6 indications the target makes on its own: SendBacklogChanged (the host lets the
application keep the target's preferred backlog outstanding) and NeighborReachabilityQuery (the host answers
from its ARP cache and verifies a stale neighbor). A host stack behind the SoftwareTarget on a simulated
link."""

from __future__ import annotations

import itertools

import pytest
from offload_harness import B_IP, B_MAC, Stream, exchange, make_net, payload

from tcpchimney.chimney.indications import NeighborReachabilityQuery
from tcpchimney.chimney.reason import Reason
from tcpchimney.chimney.requests import ReachabilityReply
from tcpchimney.host.arp import ArpParams
from tcpchimney.host.events import Uploaded
from tcpchimney.host.interface import ip_bytes, mac_bytes
from tcpchimney.host.offload import OffloadState
from tcpchimney.link.sim import Impairments
from tcpchimney.tcp.config import TcpConfig

SMALL_SNDBUF = TcpConfig(snd_buf=32 * 1024)
FAR = Impairments(delay=0.01)  # 20 ms RTT: a window of 32 KiB moves 1.6 MB/s


def _transfer_time(offload: bool) -> tuple[float, int]:
    """Seconds a 1.5 MB transfer takes, and the most bytes the socket had given away at once."""
    net = make_net(51, offload=offload, config=SMALL_SNDBUF, imp_a=FAR, imp_b=FAR)
    a, b = net.connect()
    if offload:
        net.wait_offloaded(a)
    most = 0

    def watch() -> None:
        nonlocal most
        off = a.offload
        if off is not None and offload:
            most = max(most, off.outstanding + len(off.queued))

    start = net.now
    exchange(net, [Stream(a, b, payload(1_500_000, 51))], during=watch)
    if offload:
        (entry,) = net.nic.table.conns.values()
        assert a.offload is not None and a.offload.backlog == entry.backlog_indicated > 0
        assert net.nic.counters.lifecycle["send_backlog_changes"] >= 2
        assert most <= max(SMALL_SNDBUF.snd_buf, a.offload.backlog) * 2
    return net.now - start, most


def test_send_backlog_lets_the_application_keep_a_long_path_full() -> None:
    """The target indicates 2 x min(cwnd, MaxSndWnd) as it grows; the host lets the socket keep that much
    at the target beyond its 32 KiB SO_SNDBUF, so the transfer is no longer bounded by one buffer per RTT."""
    host_time, _ = _transfer_time(offload=False)
    offload_time, most = _transfer_time(offload=True)
    assert most > SMALL_SNDBUF.snd_buf, "more than SO_SNDBUF outstanding at the target"
    assert offload_time < host_time * 0.6, (offload_time, host_time)


def _silent_peer(seed: int, **kw):  # type: ignore[no-untyped-def]
    """An offloaded transfer whose peer goes silent (every frame it sends is lost) mid-way; the target's
    indications are recorded with their time."""
    slow = Impairments(delay=0.002)
    net = make_net(seed, nce_stale=1.0, imp_a=slow, imp_b=slow, **kw)
    a, b = net.connect()
    net.wait_offloaded(a)
    seen: list[tuple[float, object]] = []
    indicate = net.nic.indicate
    net.nic.indicate = lambda ind: (seen.append((net.now, ind)), indicate(ind))[1]  # type: ignore[method-assign]
    stream = Stream(a, b, payload(400_000, seed))
    stream.step()
    net.run_for(0.01)
    net.link.set_impairments("b", Impairments(loss=1.0))
    return net, a, stream, seen


def _queries(seen: list[tuple[float, object]]) -> list[tuple[float, NeighborReachabilityQuery]]:
    return [(t, i) for t, i in seen if isinstance(i, NeighborReachabilityQuery)]


def test_reachability_query_when_the_peer_goes_quiet_and_the_answer_is_used() -> None:
    """Spec 4.6: the target keeps retransmitting to a neighbor with no forward progress; past NceStaleTicks
    (1 s) it asks the host, which answers from its ARP cache (REACHABLE: the HRD since the last ARP
    confirmation); the target takes HRT = now - HRD and asks no more for NceStaleTicks. Once the peer is
    back, progress resumes and the transfer ends byte-exact, still offloaded."""
    net, a, stream, seen = _silent_peer(55)
    net.run_for(4.0)
    queries = _queries(seen)
    assert queries, "the target asked about the silent neighbor"
    assert all(q.nic_reachability_delta > 1.0 for _, q in queries)
    assert all(t2 - t1 >= 1.0 for (t1, _), (t2, _) in itertools.pairwise(queries)), "one per NceStaleTicks"
    (neighbor,) = net.nic.table.neighbors.values()
    confirmed = net.a.arp.entry(ip_bytes(B_IP))
    assert confirmed is not None and neighbor.host_confirmed == pytest.approx(confirmed.confirmed)
    assert neighbor.query is None, "answered"
    net.link.set_impairments("b", Impairments(delay=0.002))
    exchange(net, [stream])
    assert a.offload_state is OffloadState.OFFLOADED and not net.events(Uploaded)


def test_a_stale_neighbor_that_does_not_answer_arp_is_invalidated() -> None:
    """The host's ARP entry is STALE when the target asks (reachable time 0.5 s): it answers "stale" (HRD 0)
    and probes the neighbor by unicast ARP. The silent peer never answers: the host invalidates the target's
    neighbor, the target asks for the upload (INVALID_STATE) and the host engine carries the connection; when
    the peer is back the transfer ends byte-exact."""
    net, a, stream, seen = _silent_peer(56, arp_params=ArpParams(reachable_time=0.5))
    replies: list[float] = []
    submit = net.nic.submit
    net.nic.submit = lambda r, now: (  # type: ignore[method-assign]
        replies.extend([r.host_reachability_delta] if isinstance(r, ReachabilityReply) else []),
        submit(r, now),
    )[1]
    net.run_until(lambda: a.offload_state is OffloadState.IN_HOST, 10.0)
    assert _queries(seen) and replies and set(replies) == {0.0}, "asked, answered stale"
    probes = [f for _, f in net.wire.frames if f[12:14] == b"\x08\x06" and f[:6] == mac_bytes(B_MAC)]
    assert probes, "a unicast ARP probe to the peer's MAC"
    assert [e.reason for e in net.events(Uploaded)] == [Reason.INVALID_STATE]
    assert net.a.counters["offload"]["neighbors_invalidated"] == 1
    net.link.set_impairments("b", Impairments(delay=0.002))
    exchange(net, [stream])
