"""The sans-I/O core's own cost: two host stacks on the simulated link, no impairment, no device.

The link runs on its virtual clock with no delay, so the figures are pure protocol CPU (codecs, TCP engine,
host stack, plus the link's own bookkeeping) with nothing else in the loop. Per segment size:

- ``core_bulk_64k`` / ``core_bulk_1460``: MB/s of one bulk connection (payload bytes / process CPU seconds);
- ``core_us_per_segment_*``: CPU microseconds per data segment, counting the sender emitting it, the receiver
  processing it and producing ACKs, and the sender processing those ACKs.

The 64 KB case models devices with checksum offload, TSO and GRO (a TAP with the virtio-net header, frames
passed as they are: ``SimLink(offloads=True)``); the 1460-byte case devices with checksum offload only. In
both cases checksums cost nothing, as on the real device.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

from tcpchimney.host.interface import InterfaceConfig
from tcpchimney.host.stack import HostStack
from tcpchimney.link.sim import SimLink
from tcpchimney.tcp.config import TcpConfig
from tcpchimney.wire.frame import DeviceFeatures, Frame

TOTAL = 256 << 20  # bytes moved by the 64 KB measurement (the 1460-byte one moves an eighth)
CHUNK = 4 << 20


def _stack(n: int, features: DeviceFeatures) -> HostStack:
    cfg = TcpConfig(rcv_buf=4 << 20, snd_buf=4 << 20)
    iface = InterfaceConfig.parse(f"02:00:00:00:00:0{n}", f"198.18.0.{n}/24", features=features)
    return HostStack(iface, cfg, secret=f"bench-{n}".encode(), rng=random.Random(n))


def _transfer(features: DeviceFeatures, total: int) -> dict[str, float]:
    a, b = _stack(1, features), _stack(2, features)
    link = SimLink(seed=1, offloads=True)
    link.attach(a, "a")
    link.attach(b, "b")
    listener = b.listen(9)
    client = a.connect("198.18.0.2", 9, link.now)
    link.run_until(lambda: listener.pending > 0, timeout=5)
    server = listener.accept()
    assert server is not None
    chunk = random.Random(3).randbytes(CHUNK)
    state = {"sent": 0, "received": 0}
    view = memoryview(chunk)

    def done() -> bool:
        if state["sent"] < total:
            state["sent"] += client.send(view[state["sent"] % CHUNK :])
        while server.readable:
            state["received"] += len(server.receive(1 << 22))
        return state["received"] >= total

    frames0 = link.counters["a"]["tx_frames"]
    cpu0 = time.process_time()
    link.run_until(done, timeout=3600)
    cpu = time.process_time() - cpu0
    frames = link.counters["a"]["tx_frames"] - frames0
    return {"cpu": cpu, "frames": frames, "bytes": state["received"]}


def _stack_cost(features: DeviceFeatures, total: int) -> dict[str, float]:
    """CPU microseconds per data segment inside the two stacks only: frames are handed across directly
    (no link, no application copies), each side's calls timed on their own."""
    a, b = _stack(1, features), _stack(2, features)
    listener = b.listen(9)
    client = a.connect("198.18.0.2", 9, 0.0)
    now = 0.0
    for _ in range(4):
        _hand(a, b, now)
        _hand(b, a, now)
    server = listener.accept()
    assert server is not None
    chunk = random.Random(3).randbytes(CHUNK)
    spent = {"sender": 0.0, "receiver": 0.0}
    segments = received = 0
    clock = time.process_time
    while received < total:
        client.send(chunk)
        t0 = clock()
        frames = a.frames_to_send(now)
        t1 = clock()
        wire = [Frame(f.tobytes(), b"", f.csum_partial, False, f.gso_size) for f in frames]
        t2 = clock()
        for f in wire:
            b.handle_frame(f, now)
        acks = b.frames_to_send(now)
        t3 = clock()
        while server.readable:
            received += len(server.receive(1 << 22))
        wire = [Frame(f.tobytes(), b"", f.csum_partial, False, f.gso_size) for f in acks]
        t4 = clock()
        for f in wire:
            a.handle_frame(f, now)
        t5 = clock()
        spent["sender"] += (t1 - t0) + (t5 - t4)
        spent["receiver"] += t3 - t2
        segments += len(frames)
        now += 0.0001
        a.handle_timer(now)
        b.handle_timer(now)
    return {k: v / segments * 1e6 for k, v in spent.items()}


def _hand(src: HostStack, dst: HostStack, now: float) -> None:
    for f in src.frames_to_send(now):
        dst.handle_frame(Frame(f.tobytes(), b"", f.csum_partial, False, f.gso_size), now)


def run() -> Iterator[dict[str, object]]:
    cases = [
        ("64k", DeviceFeatures(tx_csum=True, rx_csum=True, tso=True, gro=True), TOTAL),
        ("1460", DeviceFeatures(tx_csum=True, rx_csum=True), TOTAL // 8),
    ]
    for name, features, total in cases:
        r = _transfer(features, total)
        mbps = r["bytes"] / r["cpu"] / 1e6
        yield {"bench": f"core_bulk_{name}", "value": round(mbps, 1), "unit": "MB/s", "bytes": r["bytes"]}
        yield {
            "bench": f"core_us_per_segment_{name}",
            "value": round(r["cpu"] / r["frames"] * 1e6, 2),
            "unit": "us",
            "segments": int(r["frames"]),
            "avg_payload": round(r["bytes"] / r["frames"]),
        }
        cost = _stack_cost(features, total // 4)
        yield {
            "bench": f"core_stack_us_per_segment_{name}",
            "value": round(cost["sender"] + cost["receiver"], 2),
            "unit": "us",
            "sender_us": round(cost["sender"], 2),
            "receiver_us": round(cost["receiver"], 2),
            "note": "stack calls only: emit + receive + ACK + ACK processing, no link or application copies",
        }
