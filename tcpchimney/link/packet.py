"""An AF_PACKET device: the stack's frames on an existing interface (one end of a veth pair, say).

With ``vnet_hdr=True`` (PACKET_VNET_HDR) every frame read or written carries the same virtio-net header as
a TAP, so the checksum and segmentation state of the kernel's buffers crosses intact: a Linux TCP sender on
the other end of a veth hands over 64 KB super-segments marked NEEDS_CSUM, and ours are segmented by the
kernel.

Without it (plain mode) frames are read as the kernel holds them. Linux peers on a veth then still send TCP as
unchecksummed super-segments unless their TSO and checksum offloads are turned off (``ethtool -K``), so plain
mode suits only peers configured that way; ``features`` says no offloads.

Frames this socket sends are not read back, and PACKET_IGNORE_OUTGOING hides frames the namespace's own kernel
sends on the interface: the device sees what arrives on the wire.
"""

from __future__ import annotations

import collections
import os
import socket
import time
from typing import Any

from tcpchimney.link.netns import run_in_netns
from tcpchimney.link.vnet import VNET_HDR_LEN, frame_from_read, tx_header
from tcpchimney.wire.errors import EmitError, WireError
from tcpchimney.wire.frame import DeviceFeatures, Frame

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
READ_SIZE = 65_600
TSO_MAX = 65535


def _open_socket(ifname: str, vnet_hdr: bool) -> tuple[socket.socket, int]:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        if vnet_hdr:
            sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)  # before bind: refused on a ring-mapped socket
        sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        sock.bind((ifname, ETH_P_ALL))
        sock.setblocking(False)
        return sock, socket.if_nametoindex(ifname)
    except BaseException:
        sock.close()
        raise


class PacketDevice:
    """``PacketDevice(ifname, netns=None, vnet_hdr=True)`` or ``PacketDevice.open(...)``: the same
    ``read``/``write``/``features``/``counters`` as ``TapDevice``."""

    def __init__(
        self, ifname: str, netns: str | None = None, vnet_hdr: bool = True, capture: Any = None
    ) -> None:
        self.name = ifname
        self.netns = netns
        self._sock, self.ifindex = run_in_netns(netns, _open_socket, ifname, vnet_hdr)
        self._fd = self._sock.fileno()
        self.vnet_hdr_size = VNET_HDR_LEN if vnet_hdr else 0
        self.features = DeviceFeatures(
            tx_csum=vnet_hdr, rx_csum=vnet_hdr, tso=vnet_hdr, gro=vnet_hdr, tso_max=TSO_MAX
        )
        self.mtu = run_in_netns(netns, _read_mtu, ifname)
        self.capture = capture
        self.rx_frames = self.rx_bytes = self.tx_frames = self.tx_bytes = self.tx_eagain = 0
        self.drops: collections.Counter[str] = collections.Counter()

    @classmethod
    def open(cls, ifname: str, **kwargs: Any) -> PacketDevice:
        return cls(ifname, **kwargs)

    def read(self) -> Frame | None:
        """The next received frame, or None; frames with a bad virtio-net header are counted and skipped."""
        size = self.vnet_hdr_size
        while True:
            try:
                buf = os.read(self._fd, READ_SIZE)
            except BlockingIOError:
                return None
            self.rx_frames += 1
            self.rx_bytes += len(buf) - size
            if self.capture is not None:
                _capture(self.capture, buf[size:])
            if not size:
                return Frame(buf)
            try:
                return frame_from_read(buf, size)
            except WireError as exc:
                self.drops[exc.reason] += 1

    def write(self, frame: Frame) -> bool:
        """Send one frame; False if the socket buffer was full (``tx_eagain``) or the kernel refused it."""
        payload = frame.payload
        if self.vnet_hdr_size:
            parts = [tx_header(frame, self.vnet_hdr_size), frame.headers]
        elif frame.csum_partial or frame.gso_size:
            raise EmitError("packet_no_offloads: this device has no virtio-net header: send complete frames")
        else:
            parts = [frame.headers]
        if payload:
            parts.append(payload)
        try:
            os.writev(self._fd, parts)
        except BlockingIOError:
            self.tx_eagain += 1
            return False
        except OSError as exc:  # e.g. EINVAL for a header the kernel refuses, EMSGSIZE above the MTU
            self.drops[f"tx_errno_{exc.errno}"] += 1
            return False
        self.tx_frames += 1
        self.tx_bytes += len(frame)
        if self.capture is not None:
            _capture(self.capture, frame.tobytes())
        return True

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
            self._fd = -1
            self._sock.close()

    def __enter__(self) -> PacketDevice:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _read_mtu(ifname: str) -> int:
    from tcpchimney.link.tap import configure_interface

    return configure_interface(ifname, None, None)


def _capture(target: Any, data: bytes) -> None:
    """A PcapWriter-like ``write(frame_bytes, ts)`` or a plain callable(frame_bytes)."""
    if hasattr(target, "write"):
        target.write(bytes(data), time.time())
    else:
        target(bytes(data))
