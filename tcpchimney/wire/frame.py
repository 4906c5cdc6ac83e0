"""A frame as it crosses a device boundary, with the stateless-offload metadata of a virtio-net header.

On transmit, the stack produces ``headers`` (Ethernet + IP + TCP headers, built in Python) and ``payload``
(a buffer view, never copied), so a device can ``writev`` them. On receive, a device hands the whole frame in
``headers`` and leaves ``payload`` empty. The flags mirror ``virtio_net_hdr``:

- ``csum_partial`` (NEEDS_CSUM): the L4 checksum field holds only the pseudo-header sum; whoever sends the
  frame on must complete it. A receiver must not verify such a frame.
- ``csum_valid`` (DATA_VALID): the device already verified the L4 checksum.
- ``gso_size``: non-zero on a TCP super-segment whose payload exceeds the MSS; the device cuts it into
  ``gso_size`` pieces (TSO on transmit, GRO'd on receive).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Frame:
    headers: bytes | bytearray | memoryview
    payload: bytes | bytearray | memoryview = b""
    csum_partial: bool = False
    csum_valid: bool = False
    gso_size: int = 0

    def tobytes(self) -> bytes:
        """The whole frame as one ``bytes`` (copies; for capture, tests and devices without writev)."""
        if not self.payload:
            return bytes(self.headers)
        return bytes(self.headers) + bytes(self.payload)

    def __len__(self) -> int:
        return len(self.headers) + len(self.payload)


@dataclass(frozen=True, slots=True)
class DeviceFeatures:
    """Stateless offloads a device provides; the stack uses them to skip work (decision 4 of the design)."""

    tx_csum: bool = False  # device completes checksums of frames marked csum_partial
    rx_csum: bool = False  # device marks received frames csum_valid / csum_partial
    tso: bool = False  # device segments TCP super-segments (gso_size) on transmit
    gro: bool = False  # device may hand over coalesced TCP super-segments on receive
    tso_max: int = 65536 - 1  # largest IP datagram the device accepts for segmentation
