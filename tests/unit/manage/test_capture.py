"""The capture's filter, its writer's bounded queue and the CLI's filter words (tcpchimney/manage/capture.py,
tcpchimney/cli/capture.py)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tcpchimney.cli.capture import parse_filter
from tcpchimney.cli.common import CommandError
from tcpchimney.manage import capture
from tcpchimney.manage.capture import CaptureFilter, CaptureWriter
from tcpchimney.manage.protocol import RequestError

ETH = b"\x02" * 6 + b"\x04" * 6


def ipv4(src: str, dst: str, proto: int, l4: bytes, frag: int = 0) -> bytes:
    total = 20 + len(l4)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, frag, 64, proto, 0, _ip(src), _ip(dst))
    return ETH + b"\x08\x00" + ip + l4


def _ip(text: str) -> bytes:
    return bytes(int(x) for x in text.split("."))


def tcp(src: str, dst: str, sport: int, dport: int, frag: int = 0) -> bytes:
    return ipv4(src, dst, 6, struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 0x50, 0x10, 100, 0, 0), frag)


def arp(sender: str, target: str) -> bytes:
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, b"\x02" * 6, _ip(sender), b"\0" * 6, _ip(target))
    return ETH + b"\x08\x06" + body


def test_host_and_port_match_either_end_and_both_must_match() -> None:
    f = CaptureFilter("198.18.0.2", 80)
    assert f.matches(tcp("198.18.0.1", "198.18.0.2", 40000, 80))
    assert f.matches(tcp("198.18.0.2", "198.18.0.1", 80, 40000))
    assert not f.matches(tcp("198.18.0.1", "198.18.0.2", 40000, 81))
    assert not f.matches(tcp("198.18.0.1", "198.18.0.3", 40000, 80))
    assert not f.matches(ipv4("198.18.0.1", "198.18.0.2", 1, b"\x08\0\0\0\0\0\0\0"))  # ICMP: no port
    assert not f.matches(tcp("198.18.0.1", "198.18.0.2", 40000, 80, frag=0x00B9))  # a later fragment
    assert not f.matches(arp("198.18.0.1", "198.18.0.2"))  # ARP has no port
    assert CaptureFilter("198.18.0.2").matches(arp("198.18.0.1", "198.18.0.2"))
    assert not CaptureFilter("198.18.0.9").matches(arp("198.18.0.1", "198.18.0.2"))
    assert not CaptureFilter() and CaptureFilter().matches(b"\0" * 60)
    assert f.matches_conn("198.18.0.2:80", "198.18.0.1:40000")
    assert not f.matches_conn("198.18.0.2:81", "198.18.0.1:40000")


def test_a_bad_filter_is_one_sentence() -> None:
    with pytest.raises(RequestError, match="not an IPv4 address"):
        CaptureFilter("web")
    with pytest.raises(RequestError, match="is not a port"):
        CaptureFilter(port=0)
    assert parse_filter(["host", "198.18.0.2", "and", "port", "80"]) == {"host": "198.18.0.2", "port": 80}
    for words in (["port"], ["port", "x"], ["host", "a", "host", "b"], ["net", "10.0.0.0"]):
        with pytest.raises(CommandError):
            parse_filter(words)


def test_the_writer_drops_and_counts_what_its_queue_cannot_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(capture, "QUEUE_BYTES", 0)  # nothing fits: every frame is a drop
    w = CaptureWriter(str(tmp_path / "x.pcap"), CaptureFilter(port=80))
    w.put(tcp("198.18.0.1", "198.18.0.2", 40000, 80))
    w.put(tcp("198.18.0.1", "198.18.0.2", 40000, 81))
    w.close()
    assert (w.frames, w.dropped, w.filtered) == (0, 1, 1)
    monkeypatch.setattr(capture, "QUEUE_BYTES", 1 << 20)
    w = CaptureWriter(str(tmp_path / "y.pcap"), CaptureFilter())
    frame = tcp("198.18.0.1", "198.18.0.2", 40000, 80)
    for _ in range(3):
        w.put(frame)
    w.close()
    assert (w.frames, w.bytes, w.dropped) == (3, 3 * len(frame), 0)
    assert (tmp_path / "y.pcap").stat().st_size == 24 + 3 * (16 + len(frame))


def test_a_file_that_cannot_be_written_is_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(RequestError, match="cannot write the capture file"):
        CaptureWriter(str(tmp_path / "no-such-dir" / "x.pcap"), CaptureFilter())
