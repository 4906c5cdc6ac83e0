"""``MemoryDevicePair``: two in-memory Ethernet devices wired back to back, with the ``TapDevice`` interface.

What one device writes, the other reads, inside one process and without root: two runtimes (two stacks)
then talk over real frames. Each device has a doorbell (one end of a ``socket.socketpair``) that is
readable while frames wait, so ``loop.add_reader(device.fileno(), ...)`` works as it does for a TAP. The
devices may be driven from different threads (the blocking socket API runs its runtime on a thread).

By default the pair behaves like two virtio-net devices with checksum offload and TSO/GRO: frames cross as
they are (``csum_partial`` and ``gso_size`` included) and nothing is summed in Python. ``wire_ready=True``
instead offers no offloads and completes any partial checksum, so every frame that crosses is exactly what a
plain wire would carry.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections import deque
from collections.abc import Iterator

from tcpchimney.wire.checksum import internet_checksum
from tcpchimney.wire.frame import DeviceFeatures, Frame

DEFAULT_CAPACITY = 4096  # frames waiting per direction, like a TAP's txqueuelen; beyond it write() is False
_ETH_LEN = 14
_TCP_CSUM_OFFSET = 16
_UDP_CSUM_OFFSET = 6
_ETHERTYPE_IPV4 = 0x0800


class MemoryDevice:
    """One end of a ``MemoryDevicePair``: ``read() -> Frame | None``, ``write(frame) -> bool``, ``fileno``."""

    def __init__(
        self, name: str, mtu: int, features: DeviceFeatures, capacity: int, wire_ready: bool
    ) -> None:
        self.name = name
        self.mtu = mtu
        self.features = features
        self.capacity = capacity
        self.wire_ready = wire_ready
        self.peer: MemoryDevice | None = None
        self._rx: deque[Frame] = deque()
        self._lock = threading.Lock()
        self._bell_rx, self._bell_tx = socket.socketpair()
        self._bell_rx.setblocking(False)
        self._bell_tx.setblocking(False)
        self._rung = False  # a doorbell byte is waiting in the socket pair: set iff frames may be waiting
        self._closed = False
        self.rx_frames = self.rx_bytes = self.tx_frames = self.tx_bytes = 0
        self.tx_full = 0  # writes refused because the peer's queue was full
        self.tx_no_peer = 0  # frames written while the other end was closed (lost, as on an unplugged cable)

    def __repr__(self) -> str:
        return f"<MemoryDevice {self.name} mtu={self.mtu} queued={len(self._rx)}>"

    def fileno(self) -> int:
        return self._bell_rx.fileno()

    def read(self) -> Frame | None:
        """The next frame the peer wrote, or None when none is waiting (then the doorbell is quiet)."""
        with self._lock:
            if self._rx:
                frame = self._rx.popleft()
                self.rx_frames += 1
                self.rx_bytes += len(frame)
                return frame
            if self._rung:
                self._rung = False
                try:
                    while self._bell_rx.recv(4096):
                        pass
                except BlockingIOError:
                    pass
            return None

    def write(self, frame: Frame) -> bool:
        """Hand a frame to the peer; False when the peer's queue is full (retry later, nothing was taken)."""
        if self._closed:
            raise OSError(9, "Bad file descriptor: the memory device is closed")
        peer = self.peer
        if peer is None or peer._closed:
            self.tx_no_peer += 1
            return True
        out = _complete_checksum(frame) if self.wire_ready else _as_received(frame)
        if not peer._deliver(out):
            self.tx_full += 1
            return False
        self.tx_frames += 1
        self.tx_bytes += len(frame)
        return True

    def _deliver(self, frame: Frame) -> bool:
        with self._lock:
            if self._closed or len(self._rx) >= self.capacity:
                return self._closed  # a closed receiver swallows frames; a full one refuses them
            self._rx.append(frame)
            if not self._rung:
                self._rung = True
                self._bell_tx.send(b"\0")
        return True

    @property
    def counters(self) -> dict[str, int]:
        return {
            "rx_frames": self.rx_frames,
            "rx_bytes": self.rx_bytes,
            "tx_frames": self.tx_frames,
            "tx_bytes": self.tx_bytes,
            "tx_full": self.tx_full,
            "tx_no_peer": self.tx_no_peer,
        }

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._rx.clear()
        self._bell_rx.close()
        self._bell_tx.close()

    def __enter__(self) -> MemoryDevice:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class MemoryDevicePair:
    """``a, b = MemoryDevicePair()``: two devices, each delivering to the other.

    ``mtu`` is the MTU of both ends; ``capacity`` the frames each direction may queue; ``wire_ready`` turns
    the offloads off and makes every crossing frame a complete wire frame (see the module docstring).
    """

    def __init__(
        self, mtu: int = 1500, *, capacity: int = DEFAULT_CAPACITY, wire_ready: bool = False
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least one frame")
        if wire_ready:
            features = DeviceFeatures()
        else:
            features = DeviceFeatures(tx_csum=True, rx_csum=True, tso=True, gro=True)
        self.a = MemoryDevice("mem0", mtu, features, capacity, wire_ready)
        self.b = MemoryDevice("mem1", mtu, features, capacity, wire_ready)
        self.a.peer, self.b.peer = self.b, self.a

    def __iter__(self) -> Iterator[MemoryDevice]:
        return iter((self.a, self.b))

    def close(self) -> None:
        self.a.close()
        self.b.close()

    def __enter__(self) -> MemoryDevicePair:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _as_received(frame: Frame) -> Frame:
    """The frame as the receiving virtio device reports it: same buffers, same offload flags.

    Buffers are shared, not copied: the stack hands out immutable headers and payload views that stay valid.
    A receiver must not verify a ``csum_partial`` frame (virtio NEEDS_CSUM), so the flag travels with it.
    """
    return Frame(frame.headers, frame.payload, frame.csum_partial, False, frame.gso_size)


def _complete_checksum(frame: Frame) -> Frame:
    """One complete wire frame: a partial TCP/UDP checksum is finished here, as a NIC would."""
    if frame.gso_size:
        raise ValueError("a wire_ready memory device offers no TSO: the stack must not send super-segments")
    data = bytearray(frame.tobytes())
    if frame.csum_partial:
        _finish_l4_checksum(data)
    return Frame(bytes(data))


def _finish_l4_checksum(data: bytearray) -> None:
    if len(data) < _ETH_LEN + 20 or struct.unpack_from("!H", data, 12)[0] != _ETHERTYPE_IPV4:
        return
    ihl = (data[_ETH_LEN] & 0x0F) * 4
    proto = data[_ETH_LEN + 9]
    start = _ETH_LEN + ihl
    offset = _TCP_CSUM_OFFSET if proto == 6 else _UDP_CSUM_OFFSET if proto == 17 else None
    if offset is None or len(data) < start + offset + 2:
        return
    # NEEDS_CSUM: the field already holds the pseudo-header sum; sum from csum_start to the end, complement.
    struct.pack_into("!H", data, start + offset, internet_checksum(memoryview(data)[start:]))
