"""What every frame device shares: reading frames with their virtio-net header, counters, capture, the fd.

``TapDevice`` and ``PacketDevice`` differ in how they open and how they write; the receive path, the
counters and the capture hook are the same and live here once.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable
from typing import Any, Self

from tcpchimney.wire.errors import WireError
from tcpchimney.wire.frame import Frame
from tcpchimney.wire.vnet import frame_from_read

READ_SIZE = 65_600  # > a 64 KB GSO frame plus headers, and under glibc's 128 KB mmap threshold
Capture = Any  # a callable(frame_bytes) or an object with write(frame_bytes, ts) (link.pcap.PcapWriter)


class FrameDevice:
    """Base of the devices: ``read``, ``counters``, ``capture``, ``fileno``, ``close``, context manager.

    A subclass sets ``_fd`` (non-blocking), ``vnet_hdr_size`` and ``_release()`` (how its fd is closed)."""

    _fd: int
    vnet_hdr_size: int

    def _init_device(self, capture: Capture | None) -> None:
        self.rx_frames = self.rx_bytes = self.tx_frames = self.tx_bytes = self.tx_eagain = 0
        self.drops: collections.Counter[str] = collections.Counter()
        self._capture: Callable[[bytes | memoryview], None] | None = None
        self.capture = capture

    def read(self) -> Frame | None:
        """The next received frame, or None when none is waiting. Bad virtio-net headers are counted
        (``drops[reason]``) and skipped."""
        size = self.vnet_hdr_size
        while True:
            try:
                buf = os.read(self._fd, READ_SIZE)
            except BlockingIOError:
                return None
            self.rx_frames += 1
            self.rx_bytes += len(buf) - size
            if self._capture is not None:
                self._capture(buf[size:])
            if not size:
                return Frame(buf)
            try:
                return frame_from_read(buf, size)
            except WireError as exc:
                self.drops[exc.reason] += 1

    def _sent(self, frame: Frame) -> None:
        self.tx_frames += 1
        self.tx_bytes += len(frame)
        if self._capture is not None:
            self._capture(frame.tobytes())

    @property
    def capture(self) -> Capture | None:
        return self._capture_target

    @capture.setter
    def capture(self, target: Capture | None) -> None:
        """A callable(frame_bytes) or a PcapWriter-like object (``write(frame_bytes, ts)``), or None; resolved
        here once, not per frame."""
        self._capture_target = target
        if target is None:
            self._capture = None
        elif hasattr(target, "write"):
            self._capture = lambda data: target.write(bytes(data), time.time())
        elif callable(target):
            self._capture = lambda data: target(bytes(data))
        else:
            raise TypeError("capture must be a callable or have write(frame_bytes, ts)")

    @property
    def counters(self) -> dict[str, int]:
        out = {
            "rx_frames": self.rx_frames,
            "rx_bytes": self.rx_bytes,
            "tx_frames": self.tx_frames,
            "tx_bytes": self.tx_bytes,
            "tx_eagain": self.tx_eagain,
        }
        out.update((f"drop_{reason}", n) for reason, n in sorted(self.drops.items()))
        return out

    def fileno(self) -> int:
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            self._release(fd)

    def _release(self, fd: int) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
