"""Bytes sent again on the wire, counted from a capture: ``tcpdump`` on the stack's TAP in the namespace
(headers only), then every data segment of a flow that starts below the highest sequence number that flow
has already sent is a retransmission, and its bytes below that point are bytes sent again.

The TAP carries frames as the kernel and the stack hand them over (TSO/GSO super-segments of up to 64 KiB),
so a capture of ~100-byte snaps sees every byte range. The timestamps are the capture's wall clock
(``time.time`` in every process), so bytes can be put in the interval of the kill that preceded them.
"""

from __future__ import annotations

import bisect
import contextlib
import re
import select
import shutil
import signal
import struct
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tcpchimney.link.netns import netns_exec

SNAPLEN = 128
LINKTYPE_ETHERNET = 1
LINKTYPE_LINUX_SLL2 = 276
_LINK_HEADER = {LINKTYPE_ETHERNET: 14, LINKTYPE_LINUX_SLL2: 20}


def available() -> str | None:
    """Why no capture can be made here (None: it can)."""
    return None if shutil.which("tcpdump") else "tcpdump is not installed"


class Capture:
    """``tcpdump`` of the TCP frames on ``iface`` in ``netns``, written to ``path``."""

    def __init__(self, netns: str, iface: str, path: Path) -> None:
        argv = ["tcpdump", "-i", iface, "-s", str(SNAPLEN), "-B", "32768", "-w", str(path), "tcp"]
        self.proc = subprocess.Popen(
            netns_exec(netns, *argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.path = path
        assert self.proc.stderr is not None
        said = b""
        deadline = time.monotonic() + 10
        while b"listening on" not in said:  # its first line on stderr: the capture runs
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stderr], [], [], left)[0]:
                self.kill()
                raise RuntimeError("tcpdump did not start listening within 10 s")
            line = self.proc.stderr.readline()
            if not line:
                self.kill()
                raise RuntimeError(f"tcpdump did not start: {said.decode().strip()}")
            said += line

    def stop(self) -> int:
        """Stop it; the frames the kernel dropped (its own report)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        err = self.proc.stderr.read().decode() if self.proc.stderr else ""
        found = re.search(r"(\d+) packets? dropped by kernel", err)
        return int(found.group(1)) if found else 0

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


@dataclass(frozen=True)
class Segment:
    time: float
    sport: int
    dport: int
    seq: int
    length: int


def segments(path: Path) -> Iterator[Segment]:
    """Every IPv4 TCP segment with data in a pcap file (microsecond or nanosecond timestamps)."""
    data = path.read_bytes()
    magic = struct.unpack_from("<I", data, 0)[0]
    if magic not in (0xA1B2C3D4, 0xA1B23C4D):
        raise ValueError(f"{path}: not a little-endian pcap file")
    scale = 1e-6 if magic == 0xA1B2C3D4 else 1e-9
    link = _LINK_HEADER[struct.unpack_from("<I", data, 20)[0]]
    pos = 24
    while pos + 16 <= len(data):
        sec, frac, caplen, _ = struct.unpack_from("<IIII", data, pos)
        frame = data[pos + 16 : pos + 16 + caplen]
        pos += 16 + caplen
        ip = frame[link:]
        if len(ip) < 40 or ip[0] >> 4 != 4 or ip[9] != 6:
            continue
        ihl = (ip[0] & 0xF) * 4
        total = struct.unpack_from("!H", ip, 2)[0]
        sport, dport, seq = struct.unpack_from("!HHI", ip, ihl)
        length = total - ihl - (ip[ihl + 12] >> 4) * 4
        if length > 0:
            yield Segment(sec + frac * scale, sport, dport, seq, length)


@dataclass
class Flow:
    """One direction of one connection: the highest byte sent so far, in an unwrapped sequence space."""

    base: int | None = None
    high: int = 0
    resent: list[tuple[float, int]] = field(default_factory=list)  # (time, bytes sent again)

    def segment(self, seg: Segment) -> None:
        if self.base is None:
            self.base = seg.seq
        diff = (seg.seq - self.base - self.high) % (1 << 32)  # from the highest byte, modulo 2^32
        start = self.high + (diff - (1 << 32) if diff >= 1 << 31 else diff)  # nearest: unwrapped
        end = start + seg.length
        again = max(0, min(end, self.high) - start)
        if again:
            self.resent.append((seg.time, again))
        self.high = max(self.high, end)


def resent_bytes(
    path: Path, flows: dict[str, tuple[int, int]], cuts: Sequence[float]
) -> dict[str, list[int]]:
    """Per named flow (``(sport, dport)``), the bytes sent again in each interval: before ``cuts[0]``, then
    from each cut to the next (the last to the end of the capture)."""
    state = {name: Flow() for name in flows}
    by_ports = {ports: state[name] for name, ports in flows.items()}
    for seg in segments(path):
        flow = by_ports.get((seg.sport, seg.dport))
        if flow is not None:
            flow.segment(seg)
    out: dict[str, list[int]] = {}
    for name, flow in state.items():
        sums = [0] * (len(cuts) + 1)
        for t, n in flow.resent:
            sums[bisect.bisect_right(cuts, t)] += n
        out[name] = sums
    return out
