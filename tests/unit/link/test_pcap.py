"""The pcap writer, read back with two independent readers (scapy and dpkt)."""

from __future__ import annotations

import struct
from pathlib import Path

import dpkt
import pytest
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap

from tcpchimney.link.pcap import MAGIC_NANO, PcapWriter

FRAMES = [bytes(Ether(dst="02:00:00:00:00:02", type=0x88B5) / (bytes([i]) * 50)) for i in range(5)]
TIMES = [0.0, 0.000000001, 1.5, 1.5, 1234567.123456789]


def write_sample(path: Path, snaplen: int = 65535) -> None:
    with PcapWriter(path, snaplen=snaplen) as pcap:
        for frame, ts in zip(FRAMES, TIMES, strict=True):
            pcap.write(frame, ts)
        assert pcap.frames == 5
    assert pcap.closed


def test_header_is_classic_pcap_with_nanosecond_magic(tmp_path: Path) -> None:
    path = tmp_path / "a.pcap"
    write_sample(path)
    magic, major, minor, _zone, _sigfigs, snaplen, linktype = struct.unpack(
        "=IHHiIII", path.read_bytes()[:24]
    )
    assert (magic, major, minor, snaplen, linktype) == (MAGIC_NANO, 2, 4, 65535, 1)


def test_scapy_reads_frames_and_nanosecond_times(tmp_path: Path) -> None:
    path = tmp_path / "a.pcap"
    write_sample(path)
    pkts = rdpcap(str(path))
    assert [bytes(p) for p in pkts] == FRAMES
    assert [int(p.time * 10**9) for p in pkts] == [0, 1, 1_500_000_000, 1_500_000_000, 1234567123456789]


def test_dpkt_reads_frames_and_times(tmp_path: Path) -> None:
    path = tmp_path / "a.pcap"
    write_sample(path)
    with path.open("rb") as f:
        records = list(dpkt.pcap.Reader(f))
    assert [bytes(buf) for _, buf in records] == FRAMES
    assert [float(ts) for ts, _ in records] == pytest.approx(TIMES, abs=1e-9)


def test_snaplen_cuts_frames_and_keeps_their_length(tmp_path: Path) -> None:
    path = tmp_path / "cut.pcap"
    write_sample(path, snaplen=20)
    pkts = rdpcap(str(path))
    assert [bytes(p) for p in pkts] == [f[:20] for f in FRAMES]
    assert [p.wirelen for p in pkts] == [len(f) for f in FRAMES]


def test_bad_timestamps_and_writes_after_close_are_refused(tmp_path: Path) -> None:
    pcap = PcapWriter(tmp_path / "x.pcap")
    for bad in (-0.5, float("nan"), float("inf"), 2.0**33):
        with pytest.raises(ValueError, match="timestamp"):
            pcap.write(FRAMES[0], bad)
    pcap.close()
    with pytest.raises(ValueError, match="closed"):
        pcap.write(FRAMES[0], 1.0)
    assert len(rdpcap(str(tmp_path / "x.pcap"))) == 0


def test_snaplen_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="snaplen"):
        PcapWriter(tmp_path / "x.pcap", snaplen=0)
