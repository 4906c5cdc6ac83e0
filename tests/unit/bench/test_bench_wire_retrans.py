"""bench/wire_retrans.py: bytes sent again, counted from a capture, per flow and between kills."""

from __future__ import annotations

import struct
from pathlib import Path

from bench.wire_retrans import resent_bytes, segments
from tcpchimney.link.pcap import PcapWriter

A, B = 41000, 80  # ports of the two ends


def _frame(sport: int, dport: int, seq: int, length: int) -> bytes:
    """Ethernet + IPv4 + TCP (20-byte header) + ``length`` bytes; only the fields the reader uses matter."""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, 0, 5 << 4, 0x10, 1024, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + length, 0, 0, 64, 6, 0, bytes(4), bytes(4))
    return bytes(14) + ip + tcp + bytes(length)


def _pcap(path: Path, frames: list[tuple[float, bytes]]) -> Path:
    with PcapWriter(path, snaplen=128) as w:  # headers only, as the bench captures
        for t, frame in frames:
            w.write(frame, t)
    return path


def test_segments_reads_each_data_segment_with_its_full_length(tmp_path: Path) -> None:
    pcap = _pcap(tmp_path / "a.pcap", [(1.0, _frame(A, B, 7, 65000)), (1.5, _frame(B, A, 1, 0))])
    (seg,) = segments(pcap)  # the pure ACK carries no data
    assert (seg.sport, seg.dport, seg.seq, seg.length) == (A, B, 7, 65000)
    assert abs(seg.time - 1.0) < 1e-6


def test_bytes_below_the_highest_sent_count_once_in_their_interval(tmp_path: Path) -> None:
    base = (1 << 32) - 1000  # the flow wraps its sequence space on the way
    frames = [
        (1.0, _frame(A, B, base, 1000)),
        (1.1, _frame(A, B, base + 1000, 3000)),  # wraps: 0..3000 after the wrap
        (2.5, _frame(A, B, base + 1000, 1000)),  # sent again, after the kill at 2.0: 1000 bytes
        (2.6, _frame(A, B, base + 3500, 1000)),  # half old (500 bytes), half new
        (3.5, _frame(A, B, base + 4500, 100)),  # new
        (3.6, _frame(B, A, 5, 200)),  # the other direction: its own flow
        (3.7, _frame(B, A, 5, 200)),  # sent again after the kill at 3.0
    ]
    pcap = _pcap(tmp_path / "b.pcap", frames)
    got = resent_bytes(pcap, {"up": (A, B), "down": (B, A)}, [2.0, 3.0])
    assert got == {"up": [0, 1500, 0], "down": [0, 0, 200]}
