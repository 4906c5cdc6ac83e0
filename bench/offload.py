"""The Chimney hand-off's own cost: a host stack behind the software target, a plain host stack as the peer,
on the simulated link (virtual clock, no impairment, no device), so every figure is CPU time.

    SimLink --- SoftwareTarget -> HostStack a (198.18.0.1, offload policy "disabled": only explicit calls)
            \\-- HostStack b (198.18.0.2)

- ``offload_upload_roundtrip_us``: one established connection is offloaded (``offload_now``) and uploaded
  (``upload``), with 1, 100 or 10,000 connections open between the two stacks; the clock (perf_counter) runs
  around the two calls and the link steps at that instant that complete them (``SimLink.run_for(0)``: the
  host drains the target's completions at its entry points). ``others`` says where the other connections
  are: on the host engine, or offloaded too (then the target holds them all). Median and p99.
- ``offload_all_10k_s`` / ``upload_all_10k_s``: 10,000 established connections offloaded one
  ``offload_now`` each, then all brought back with one ``upload_all`` (one terminate tree), each with the
  link steps that complete them.
- ``offload_enable_10k_s``: the same 10,000, back on the host, offloaded by switching the policy to
  ``enabled`` (the host sends them all in one initiate tree).
- ``host_bulk_mb_s`` / ``offload_bulk_mb_s``: one bulk connection with the host engine moving the data and
  with the target moving it (payload MB per CPU second of the whole process: both stacks, the target and
  the link, as bench/core.py), in each direction seen from the offloading side; ``ratio_to_host`` on the
  offload line.
"""

from __future__ import annotations

import gc
import random
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from tcpchimney.chimney.reason import Reason
from tcpchimney.host.interface import InterfaceConfig, mac_bytes
from tcpchimney.host.offload import OffloadState
from tcpchimney.host.policy import OffloadMode, OffloadPolicy
from tcpchimney.host.sockets import TcpSocket
from tcpchimney.host.stack import HostStack
from tcpchimney.link.sim import SimLink
from tcpchimney.nic.target import SoftwareTarget
from tcpchimney.tcp.config import TcpConfig
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire.frame import DeviceFeatures

A_MAC, A_IP = "02:00:00:00:00:01", "198.18.0.1"
B_MAC, B_IP = "02:00:00:00:00:02", "198.18.0.2"
PORT = 9
FEATURES = DeviceFeatures(tx_csum=True, rx_csum=True, tso=True, gro=True)
ROUNDS = {1: 2000, 100: 2000, 10_000: 300}  # round trips per case (10,000 offloaded ones are slow)
MANY = 10_000
BULK = 128 << 20  # bytes per bulk transfer
CHUNK = 4 << 20
RECV_MAX = 256 << 10  # bytes per application read (see README: why not 4 MB)
BULK_RUNS = 3


@dataclass
class Net:
    link: SimLink
    a: HostStack  # behind the target
    b: HostStack
    socks: list[TcpSocket] = field(default_factory=list)  # a's ends
    peers: list[TcpSocket] = field(default_factory=list)  # b's ends

    def settle(self) -> None:
        """Run what is due at this instant: completions drained, frames they caused delivered."""
        self.link.run_for(0)

    def drain_events(self) -> None:
        for stack in (self.a, self.b):
            while stack.next_event() is not None:
                pass


def make_net(conns: int, config: TcpConfig | None = None) -> Net:
    link = SimLink(seed=1, offloads=True)
    target = SoftwareTarget(FEATURES, capacity=conns + 16, config=config, mac=mac_bytes(A_MAC))
    a = HostStack(
        InterfaceConfig.parse(A_MAC, f"{A_IP}/24", features=FEATURES),
        config,
        secret=b"bench-offload-a",
        rng=random.Random(1),
        target=target,
        offload=OffloadPolicy(mode=OffloadMode.DISABLED),
    )
    b = HostStack(
        InterfaceConfig.parse(B_MAC, f"{B_IP}/24", features=FEATURES),
        config,
        secret=b"bench-offload-b",
        rng=random.Random(2),
    )
    target.attach_host(a)
    link.attach(target, "a")
    link.attach(b, "b")
    net = Net(link, a, b)
    _connect(net, conns)
    return net


def _connect(net: Net, conns: int) -> None:
    listener = net.b.listen(PORT, backlog=conns + 8)
    net.socks = [net.a.connect(B_IP, PORT, net.link.now) for _ in range(conns)]

    def established() -> bool:
        while (peer := listener.accept()) is not None:
            net.peers.append(peer)
        return len(net.peers) == conns and all(s.state is TcpState.ESTABLISHED for s in net.socks)

    net.link.run_until(established, timeout=60)
    net.drain_events()


def _wait(net: Net, socks: list[TcpSocket], state: OffloadState) -> None:
    net.settle()
    stuck = [s for s in socks if s.offload_state is not state]
    if stuck:
        raise RuntimeError(f"{len(stuck)} connections not {state.value}: {stuck[0].offload_state}")


def offload_all(net: Net, socks: list[TcpSocket]) -> int:
    """Offload ``socks``: the first alone, so that the neighbor and path are on the target before the rest
    link to them (an offload_now deferred behind their initiate falls back to the policy, see README)."""
    for group in (socks[:1], socks[1:]):
        for sock in group:
            reason = net.a.offload_now(sock)
            if reason is not None:
                raise RuntimeError(f"offload refused: {reason.value}")
        _wait(net, group, OffloadState.OFFLOADED)
    return len(socks)


def enable_all(net: Net) -> int:
    """Switch the policy to ``enabled``: every connection on the host engine is offloaded, the host sends
    them in one initiate (spec 3.1)."""
    net.a.set_offload_policy(OffloadPolicy(mode=OffloadMode.ENABLED))
    _wait(net, net.socks, OffloadState.OFFLOADED)
    return len(net.socks)


def upload_all(net: Net) -> int:
    count = net.a.upload_all(Reason.UPLOAD_ALL)
    _wait(net, net.socks, OffloadState.IN_HOST)
    return count


def round_trips(net: Net, sock: TcpSocket, rounds: int) -> list[float]:
    """Seconds per offload + upload of ``sock`` (on the host engine before and after)."""
    a, clock, times = net.a, time.perf_counter, []
    for _ in range(rounds):
        t0 = clock()
        a.offload_now(sock)
        net.settle()
        offloaded = sock.offload_state is OffloadState.OFFLOADED
        a.upload(sock, Reason.ADMIN)
        net.settle()
        t1 = clock()
        if not offloaded or sock.offload_state is not OffloadState.IN_HOST:
            raise RuntimeError(f"round trip did not complete: {sock.offload_state}")
        times.append(t1 - t0)
        net.drain_events()
    return times


def _roundtrip_line(conns: int, others: str, times: list[float]) -> dict[str, object]:
    times = sorted(times)
    return {
        "bench": "offload_upload_roundtrip_us",
        "value": round(statistics.median(times) * 1e6, 1),
        "unit": "us",
        "p99": round(times[int(len(times) * 0.99)] * 1e6, 1),
        "connections": conns,
        "others": others,
        "rounds": len(times),
    }


def _timed(fn: Callable[[], int]) -> tuple[float, int]:
    gc.collect()
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def run_small(conns: int) -> Iterator[dict[str, object]]:
    net = make_net(conns)
    first, others = net.socks[0], net.socks[1:]
    if others:
        yield _roundtrip_line(conns, "in_host", round_trips(net, first, ROUNDS[conns]))
        offload_all(net, others)
    yield _roundtrip_line(conns, "offloaded" if others else "none", round_trips(net, first, ROUNDS[conns]))


def run_many() -> Iterator[dict[str, object]]:
    net = make_net(MANY)
    first, rounds = net.socks[0], ROUNDS[MANY]
    yield _roundtrip_line(MANY, "in_host", round_trips(net, first, rounds))
    spent, _ = _timed(lambda: offload_all(net, net.socks))
    yield _all_line("offload_all_10k_s", spent)
    net.a.upload(first, Reason.ADMIN)
    _wait(net, [first], OffloadState.IN_HOST)
    net.drain_events()
    yield _roundtrip_line(MANY, "offloaded", round_trips(net, first, rounds))
    net.a.offload_now(first)
    _wait(net, [first], OffloadState.OFFLOADED)
    net.drain_events()
    spent, count = _timed(lambda: upload_all(net))
    if count != MANY:
        raise RuntimeError(f"upload_all started {count} terminates, not {MANY}")
    yield _all_line("upload_all_10k_s", spent)
    spent, _ = _timed(lambda: enable_all(net))
    yield _all_line("offload_enable_10k_s", spent)


def _all_line(name: str, spent: float) -> dict[str, object]:
    return {
        "bench": name,
        "value": round(spent, 3),
        "unit": "s",
        "connections": MANY,
        "us_per_connection": round(spent / MANY * 1e6, 1),
    }


def bulk(offloaded: bool, send: bool, total: int = BULK) -> float:
    """Payload MB per process CPU second of one connection; ``send``: a (the offloading side) sends."""
    net = make_net(1, TcpConfig(rcv_buf=4 << 20, snd_buf=4 << 20))
    if offloaded:
        offload_all(net, net.socks)
    src, dst = (net.socks[0], net.peers[0]) if send else (net.peers[0], net.socks[0])
    view = memoryview(random.Random(3).randbytes(CHUNK))
    state = {"sent": 0, "received": 0}

    def done() -> bool:
        if state["sent"] < total:
            state["sent"] += src.send(view[state["sent"] % CHUNK :])
        while dst.readable:
            state["received"] += len(dst.receive(RECV_MAX))
        return state["received"] >= total

    gc.collect()
    cpu0 = time.process_time()
    net.link.run_until(done, timeout=3600)
    cpu = time.process_time() - cpu0
    want = OffloadState.OFFLOADED if offloaded else OffloadState.IN_HOST
    if net.socks[0].offload_state is not want:
        raise RuntimeError(f"bulk connection ended {net.socks[0].offload_state}, expected {want}")
    return state["received"] / cpu / 1e6


def run_bulk() -> Iterator[dict[str, object]]:
    for send in (True, False):
        common = {"unit": "MB/s", "direction": "send" if send else "receive", "bytes": BULK}
        host = sorted(bulk(False, send) for _ in range(BULK_RUNS))
        off = sorted(bulk(True, send) for _ in range(BULK_RUNS))
        host_mb, off_mb = statistics.median(host), statistics.median(off)
        yield {"bench": "host_bulk_mb_s", "value": round(host_mb, 1), "runs": _rounded(host), **common}
        yield {
            "bench": "offload_bulk_mb_s",
            "value": round(off_mb, 1),
            "ratio_to_host": round(off_mb / host_mb, 2),
            "runs": _rounded(off),
            **common,
        }


def _rounded(values: list[float]) -> list[float]:
    return [round(v, 1) for v in values]


def run() -> Iterator[dict[str, object]]:
    yield from run_small(1)
    yield from run_small(100)
    yield from run_many()
    yield from run_bulk()


if __name__ == "__main__":
    import json

    for line in run():
        print(json.dumps(line), flush=True)
