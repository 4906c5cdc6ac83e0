"""Chimney-spec 4.3 / 4.6 indications the target makes on its own: SendBacklogChanged (the host lets the
application keep the target's preferred backlog outstanding) and NeighborReachabilityQuery (the host answers
from its ARP cache and verifies a stale neighbor). A host stack behind the SoftwareTarget on a simulated
link."""

from __future__ import annotations

from offload_harness import Stream, exchange, make_net, payload

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
