"""A Linux TAP device (``/dev/net/tun``, IFF_TAP | IFF_NO_PI) that reads and writes ``Frame``s.

With the virtio-net header (IFF_VNET_HDR) and TUN_F_CSUM | TUN_F_TSO4 negotiated, the kernel hands over TCP
super-segments of up to 64 KB marked NEEDS_CSUM, and accepts the same from us: checksums and segmentation then
cost no Python (reference/tap-offloads.md). Without the header (plain mode) every frame is an ordinary one and
``features`` says so.

One frame per syscall: ``read`` is one ``os.read``, ``write`` one ``os.writev`` of (virtio-net header, frame
headers, payload view), so the payload is never copied in Python. The fd is non-blocking: ``read`` returns
None when nothing is waiting, ``write`` returns False (and counts ``tx_eagain``) when the kernel
queue is full.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
from typing import Any

from tcpchimney.link.device import Capture, FrameDevice
from tcpchimney.link.netns import (
    DEFAULT_TXQUEUELEN,
    TUN_PATH,
    NetworkUnavailable,
    check_ifname,
    netns_of_tap,
    run_in_netns,
)
from tcpchimney.wire.errors import EmitError
from tcpchimney.wire.frame import DeviceFeatures, Frame
from tcpchimney.wire.vnet import VNET_HDR_LEN, VNET_HDR_MRG_LEN, tx_header

# <linux/if_tun.h>, x86-64 values (reference/tap-offloads.md)
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOFFLOAD = 0x400454D0  # takes the flag word by value
TUNSETVNETHDRSZ = 0x400454D8  # takes a pointer to an int
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
# <linux/sockios.h>
SIOCGIFMTU = 0x8921
SIOCSIFMTU = 0x8922
SIOCSIFTXQLEN = 0x8943

_IFREQ_FLAGS = struct.Struct("16sH22x")  # struct ifreq: name, then ifr_flags
_IFREQ_INT = struct.Struct("16si20x")  # struct ifreq: name, then an int (ifr_mtu, ifr_qlen)
MAX_FRAME = 65521 + 14 + 8  # the TAP's largest MTU, Ethernet header and two VLAN tags
TSO_MAX = 65535  # tso_max_size is 65536, and the IPv4 total length caps a super-segment anyway


def _ifreq_int(fd: int, request: int, name: bytes, value: int = 0) -> int:
    buf = bytearray(_IFREQ_INT.pack(name, value))
    fcntl.ioctl(fd, request, buf)
    return int(_IFREQ_INT.unpack(buf)[1])


def _open_tun(name: str, flags: int) -> tuple[int, str]:
    fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        ifr = bytearray(_IFREQ_FLAGS.pack(name.encode(), flags))
        fcntl.ioctl(fd, TUNSETIFF, ifr)
    except BaseException:
        os.close(fd)
        raise
    return fd, ifr[:16].rstrip(b"\0").decode()


def configure_interface(name: str, mtu: int | None, txqueuelen: int | None) -> int:
    """Set MTU and ring length through an ioctl socket of the caller's namespace; returns the MTU."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        raw = name.encode()
        if mtu is not None:
            _ifreq_int(s.fileno(), SIOCSIFMTU, raw, mtu)
        if txqueuelen is not None:
            _ifreq_int(s.fileno(), SIOCSIFTXQLEN, raw, txqueuelen)
        return _ifreq_int(s.fileno(), SIOCGIFMTU, raw)


def create_persistent_tap(name: str, netns: str | None = None) -> None:
    """A TAP that outlives its file descriptor, created inside ``netns``; delete it with netns.delete_link."""
    check_ifname(name)

    def body() -> None:
        fd, _ = _open_tun(name, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
        try:
            fcntl.ioctl(fd, TUNSETPERSIST, 1)
        finally:
            os.close(fd)

    run_in_netns(netns, body)


class TapDevice(FrameDevice):
    """One queue of a TAP device. ``TapDevice(name, ...)`` or ``TapDevice.open(name, ...)``.

    ``netns``: the namespace the TAP lives in (None: the caller's, or the namespace a live ``TapTopology`` of
    this process put it in). A name that does not exist there creates a TAP that vanishes when the device
    closes. ``mtu`` sets the MTU (None: keep it); ``txqueuelen`` the kernel ring (None: keep it).
    """

    def __init__(
        self,
        name: str,
        vnet_hdr: bool = True,
        offloads: bool = True,
        mtu: int | None = None,
        netns: str | None = None,
        txqueuelen: int | None = DEFAULT_TXQUEUELEN,
        capture: Capture | None = None,
        vnet_hdr_size: int = VNET_HDR_LEN,
    ) -> None:
        check_ifname(name)  # the kernel would cut a long name to 15 bytes, or fill a '%d' in
        if vnet_hdr_size not in (VNET_HDR_LEN, VNET_HDR_MRG_LEN):
            raise ValueError(f"a virtio-net header is 10 or 12 bytes, not {vnet_hdr_size}")
        if not os.path.exists(TUN_PATH):
            raise NetworkUnavailable(f"{TUN_PATH} does not exist, so no TAP device can be opened")
        self.netns = netns if netns is not None else netns_of_tap(name)
        self.vnet_hdr_size = vnet_hdr_size if vnet_hdr else 0
        offload_flags = TUN_F_CSUM | TUN_F_TSO4 if vnet_hdr and offloads else 0
        self._fd, self.name, self.mtu = run_in_netns(
            self.netns, self._open, name, vnet_hdr, offload_flags, mtu, txqueuelen
        )
        on = bool(offload_flags)
        self.features = DeviceFeatures(tx_csum=on, rx_csum=on, tso=on, gro=on, tso_max=TSO_MAX)
        self._init_device(capture)

    def _open(
        self, name: str, vnet_hdr: bool, offload_flags: int, mtu: int | None, txqueuelen: int | None
    ) -> tuple[int, str, int]:
        try:
            fd, real_name = _open_tun(name, IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0))
        except PermissionError as exc:
            raise NetworkUnavailable(f"opening a TAP device needs CAP_NET_ADMIN ({exc.strerror})") from exc
        try:
            if vnet_hdr:
                fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", self.vnet_hdr_size))
            # Always set (also to 0): a persistent TAP keeps the offloads a previous owner negotiated.
            fcntl.ioctl(fd, TUNSETOFFLOAD, offload_flags)
            return fd, real_name, configure_interface(real_name, mtu, txqueuelen)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def open(cls, name: str, **kwargs: Any) -> TapDevice:
        return cls(name, **kwargs)

    # ------------------------------------------------------------------------------------------ hot paths

    def write(self, frame: Frame) -> bool:
        """Send one frame (its offload fields become the virtio-net header); False if the queue was full.

        Raises ``EmitError`` for offload fields the device cannot carry (wrong use: see ``features``).
        """
        payload = frame.payload
        if self.vnet_hdr_size:
            parts = (
                [tx_header(frame, self.vnet_hdr_size), frame.headers, payload]
                if payload
                else [tx_header(frame, self.vnet_hdr_size), frame.headers]
            )
        elif frame.csum_partial or frame.gso_size:
            raise EmitError("tap_no_offloads: this TAP has no virtio-net header: send complete frames")
        else:
            parts = [frame.headers, payload] if payload else [frame.headers]
        try:
            os.writev(self._fd, parts)
        except BlockingIOError:
            self.tx_eagain += 1
            return False
        except (
            OSError
        ) as exc:  # e.g. EINVAL: the kernel refused the header; the frame is lost, not the device
            self.drops[f"tx_{exc.__class__.__name__}_{exc.errno}"] += 1
            return False
        self._sent(frame)
        return True

    def _release(self, fd: int) -> None:
        os.close(fd)

    def __repr__(self) -> str:
        where = f" in {self.netns}" if self.netns else ""
        return f"<TapDevice {self.name}{where} vnet_hdr={self.vnet_hdr_size} features={self.features}>"
