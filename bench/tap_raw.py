"""Raw TAP receive throughput: a Linux UDP flood from the namespace, the stack side only reading frames.

``python -m bench.tap_raw [--seconds S] [--mtu M] [--size N] [--plain]`` prints one JSON line
``{"bench": "tap_raw_rx", "value": X, "unit": "MB/s", ...}`` (frame bytes read per second, and frames/s).
No checksum or protocol work is done: this is the ceiling of one ``os.read`` per frame through ``TapDevice``.
"""

from __future__ import annotations

import argparse
import json
import select
import sys
import time
from collections.abc import Iterator
from typing import Any

from tcpchimney.link.netns import TapTopology, add_neighbor, popen, unavailable_reason
from tcpchimney.link.tap import TapDevice

SENDER = """
import socket, sys, time
size, seconds, dst = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
data, addr, end = b"u" * size, (dst, 9), time.monotonic() + seconds
while time.monotonic() < end:
    for _ in range(256):
        try:
            s.sendto(data, addr)
        except OSError:
            pass
"""


def _drain(dev: TapDevice, end: float) -> tuple[float, float]:
    """Read until ``end``; returns the times of the first and of the last frame read."""
    read, first, last = dev.read, 0.0, 0.0
    fds = [dev]
    while (now := time.monotonic()) < end:
        if not select.select(fds, [], [], end - now)[0]:
            continue
        if not first:
            first = time.monotonic()
        while read() is not None:
            pass
        last = time.monotonic()
    return first, last


def measure(seconds: float = 3.0, mtu: int = 1500, size: int = 1472, plain: bool = False) -> dict[str, Any]:
    with TapTopology(mtu=mtu, vnet_hdr=not plain, offloads=not plain) as topo:
        dev = topo.device
        add_neighbor(topo.netns, topo.tap_name, topo.stack_ip, topo.stack_mac)
        sender = popen(topo.netns, sys.executable, "-c", SENDER, str(size), str(seconds), topo.stack_ip)
        try:
            first, last = _drain(dev, time.monotonic() + seconds + 2.0)
        finally:
            sender.wait(timeout=seconds + 10)
        elapsed = max(last - first, 1e-9)
        frames, nbytes = dev.rx_frames, dev.rx_bytes
    return {
        "bench": "tap_raw_rx",
        "value": round(nbytes / elapsed / 1e6, 1),
        "unit": "MB/s",
        "frames_per_s": round(frames / elapsed),
        "frame_bytes": round(nbytes / max(frames, 1)),
        "mtu": mtu,
        "vnet_hdr": not plain,
    }


def run() -> Iterator[dict[str, Any]]:
    """For ``python -m bench``: MTU-sized and 64 KB frames."""
    reason = unavailable_reason()
    if reason is not None:
        yield {"bench": "tap_raw_rx", "skipped": reason}
        return
    yield measure()
    yield measure(mtu=65521, size=65000)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--mtu", type=int, default=1500)
    parser.add_argument("--size", type=int, default=1472, help="UDP payload bytes per datagram")
    parser.add_argument("--plain", action="store_true", help="no virtio-net header")
    args = parser.parse_args(argv)
    if (reason := unavailable_reason()) is not None:
        print(json.dumps({"bench": "tap_raw_rx", "skipped": reason}))
        return 0
    print(json.dumps(measure(args.seconds, args.mtu, args.size, args.plain)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
