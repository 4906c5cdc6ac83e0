"""A classic libpcap capture file writer (the format tcpdump, Wireshark, scapy and dpkt all read).

Records carry nanosecond timestamps (magic ``0xA1B23C4D``): the simulated link's virtual clock places frames
on a 10 Gb/s wire about a microsecond apart, and microsecond stamps would make them tie or reorder in the
viewer. The header is written in the machine's byte order, as libpcap itself does; readers detect it from
the magic number. The file is written through an ordinary buffered file; ``close`` (or leaving the ``with``
block) flushes it.
"""

from __future__ import annotations

import math
import os
import struct
from typing import Final

Buffer = bytes | bytearray | memoryview

MAGIC_NANO: Final = 0xA1B23C4D  # nanosecond-resolution classic pcap
VERSION: Final = (2, 4)
LINKTYPE_ETHERNET: Final = 1

_GLOBAL = struct.Struct("=IHHiIII")  # magic, major, minor, thiszone, sigfigs, snaplen, network
_RECORD = struct.Struct("=IIII")  # ts_sec, ts_nsec, incl_len, orig_len
_NS: Final = 1_000_000_000


class PcapWriter:
    """Writes frames to ``path`` (created or truncated) with a nanosecond timestamp each.

    ``write(frame_bytes, ts)`` matches what ``TapDevice.capture`` and ``PacketDevice.capture`` call; ``ts`` is
    seconds on any clock (wall or virtual) and must not be negative. Frames longer than ``snaplen`` are cut,
    the record keeping the original length.
    """

    def __init__(
        self, path: str | os.PathLike[str], snaplen: int = 65535, linktype: int = LINKTYPE_ETHERNET
    ) -> None:
        if not 0 < snaplen <= 0x3FFFFFFF:
            raise ValueError(f"snaplen {snaplen} out of range")
        self.path = os.fspath(path)
        self.snaplen = snaplen
        self.linktype = linktype
        self.frames = 0
        self._file = open(self.path, "wb")  # noqa: SIM115 -- kept open until close()
        self._file.write(_GLOBAL.pack(MAGIC_NANO, *VERSION, 0, 0, snaplen, linktype))

    @property
    def closed(self) -> bool:
        return self._file.closed

    def write(self, frame_bytes: Buffer, ts: float) -> None:
        if self._file.closed:
            raise ValueError(f"pcap {self.path} is closed")
        if not (math.isfinite(ts) and ts >= 0):
            raise ValueError(f"pcap timestamp must be a finite, non-negative number of seconds, not {ts!r}")
        sec, nsec = divmod(round(ts * _NS), _NS)
        if sec > 0xFFFFFFFF:
            raise ValueError(f"pcap timestamp {ts!r} does not fit 32-bit seconds")
        orig = len(frame_bytes)
        incl = min(orig, self.snaplen)
        self._file.write(_RECORD.pack(sec, nsec, incl, orig))
        self._file.write(frame_bytes if incl == orig else memoryview(frame_bytes)[:incl])
        self.frames += 1

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PcapWriter({self.path!r}, frames={self.frames})"
