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

import os
import socket
from typing import Any

from tcpchimney.link.device import FrameDevice
from tcpchimney.link.netns import run_in_netns
from tcpchimney.wire.errors import EmitError
from tcpchimney.wire.frame import DeviceFeatures, Frame
from tcpchimney.wire.vnet import VNET_HDR_LEN, tx_header

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
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


class PacketDevice(FrameDevice):
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
        self._init_device(capture)

    @classmethod
    def open(cls, ifname: str, **kwargs: Any) -> PacketDevice:
        return cls(ifname, **kwargs)

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
        self._sent(frame)
        return True

    def _release(self, fd: int) -> None:
        self._sock.close()


def _read_mtu(ifname: str) -> int:
    from tcpchimney.link.tap import configure_interface

    return configure_interface(ifname, None, None)
