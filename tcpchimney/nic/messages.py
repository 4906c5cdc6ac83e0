"""What the byte rings carry between a host and its NIC process: contract messages and frames.

- **Control** (H2N_CONTROL, N2H_CONTROL): one ``chimney/codec.py`` message per record. A message longer than
  a record may be (half the ring) is cut into consecutive records, each but the last flagged
  ``RECORD_MORE``; the reader joins them before decoding. ``ControlWriter`` keeps what does not fit the ring
  now in a local backlog, in order, and retries it first on the next call; nothing is ever dropped.
  Besides messages: BIND records (H2N only: a connection's arena slot, ahead of its initiate) and DATA_MARK
  records (how many descriptors of the direction's data ring come first: ``nic/ordering.py``).
- **Frames** (N2H_FRAMES): one frame per record, the virtio-net header first (the layout a TAP read
  returns), so a NIC written in C can pass a TAP read up unchanged. ``put_frame`` builds the header from the
  ``Frame``'s offload fields; ``frame_of_record`` is the TAP's own receive parser.

Nothing here decides what a bad record means: readers raise (``ArenaError`` for the ring's structure,
``CodecError`` from the codec, ``WireError`` for a frame), and the side that reads says what it does.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from tcpchimney.chimney import codec
from tcpchimney.nic.descriptors import BIND_RECORD, DATA_MARK_RECORD, RECORD_MORE, ArenaError, RecordKind
from tcpchimney.nic.ring import ByteConsumer, ByteProducer
from tcpchimney.wire.errors import EmitError
from tcpchimney.wire.frame import Frame
from tcpchimney.wire.vnet import (
    DATA_VALID,
    ETH_HLEN,
    NEEDS_CSUM,
    VNET_HDR_LEN,
    VnetHeader,
    emit_vnet,
    frame_from_read,
    tx_header,
)

_CONTROL = int(RecordKind.CONTROL)
_FRAME = int(RecordKind.FRAME)
_BIND = int(RecordKind.BIND)
_MARK = int(RecordKind.DATA_MARK)
MAX_MESSAGE = 256 << 20  # a joined message longer than this is a broken producer, not a big state


class ControlWriter:
    """Encodes messages into a control ring (cut into records when long), with a backlog for a full ring."""

    def __init__(self, ring: ByteProducer) -> None:
        self._ring = ring
        self._backlog: deque[tuple[memoryview, int, int]] = deque()  # payload, flags, record kind
        self.messages = 0
        self.records = 0
        self.octets = 0
        self.backlogged = 0  # records that waited for room in the ring

    def send(self, message: Any) -> None:
        """Queue one message (``codec.encode`` raises CodecError for what is not a contract message)."""
        self.send_encoded(codec.encode(message))

    def send_encoded(self, data: bytes) -> None:
        view = memoryview(data)
        limit = self._ring.max_payload
        self.messages += 1
        self.octets += len(view)
        if not self._backlog and len(view) <= limit and self._ring.put(_CONTROL, view):
            self.records += 1
            return
        for start in range(0, len(view), limit):
            end = start + limit
            self._backlog.append((view[start:end], RECORD_MORE if end < len(view) else 0, _CONTROL))
        self.flush()

    def send_bind(self, host_handle: int, slot: int, conn_id: int) -> None:
        """Queue a BIND record: it reaches the NIC before the message sent after it (the initiate)."""
        self._send_small(_BIND, BIND_RECORD.pack(host_handle, slot, conn_id))

    def send_mark(self, count: int) -> None:
        """Queue a DATA_MARK record: the first ``count`` descriptors of the data ring come before what
        follows it (nic/ordering.py)."""
        self._send_small(_MARK, DATA_MARK_RECORD.pack(count))

    def _send_small(self, kind: int, payload: bytes) -> None:
        data = memoryview(payload)
        if not self._backlog and self._ring.put(kind, data):
            self.records += 1
            return
        self._backlog.append((data, 0, kind))
        self.flush()

    def flush(self) -> bool:
        """Move the backlog into the ring as far as it fits; True when nothing waits any more."""
        backlog, ring = self._backlog, self._ring
        while backlog:
            data, flags, kind = backlog[0]
            if not ring.put(kind, data, flags):
                self.backlogged += 1
                return False
            backlog.popleft()
            self.records += 1
        return True

    @property
    def blocked(self) -> bool:
        """Records wait for room in the ring."""
        return bool(self._backlog)

    def publish(self) -> bool:
        return self._ring.publish()

    @property
    def stalls(self) -> int:
        return self._ring.stalls


class ControlReader:
    """Joins the records of a control ring into whole encoded messages (decoding is the caller's); a
    DATA_MARK record comes out as its count (an ``int``) in its place among them."""

    def __init__(self, ring: ByteConsumer, accept_binds: bool = False) -> None:
        """``accept_binds``: BIND records may come (the NIC's reader of H2N_CONTROL); they are collected
        in ``binds``, in order, for the caller to apply before the messages of the same take."""
        self._ring = ring
        self.accept_binds = accept_binds
        self._partial: list[bytes] = []
        self._partial_len = 0
        self.messages = 0
        self.binds: list[tuple[int, int, int]] = []  # BIND records taken (host_handle, slot, conn_id)

    def available(self) -> bool:
        return self._ring.available() > 0

    def moved(self) -> bool:
        """Anything published since the last take (unvalidated: ``take`` validates)."""
        return self._ring.moved()

    def take(self) -> list[bytes | int]:
        """Every whole message published so far, in order, and the data marks among them (``int``); a
        message whose last record is not published yet stays partial until the next call. Call ``release``
        once they are handled."""
        out: list[bytes | int] = []
        for record in self._ring.take():
            if record.kind == _BIND and self.accept_binds and not self._partial:
                if len(record.data) != BIND_RECORD.size:
                    raise ArenaError("ring_record", f"a BIND record of {len(record.data)} bytes")
                self.binds.append(BIND_RECORD.unpack(record.data))
                continue
            if record.kind == _MARK and not self._partial:
                if len(record.data) != DATA_MARK_RECORD.size:
                    raise ArenaError("ring_record", f"a DATA_MARK record of {len(record.data)} bytes")
                out.append(DATA_MARK_RECORD.unpack(record.data)[0])
                continue
            if record.kind != _CONTROL:
                raise ArenaError("ring_record", f"a record of kind {record.kind} on a control ring")
            if not record.flags & RECORD_MORE and not self._partial:
                out.append(record.data)
                continue
            self._partial.append(record.data)
            self._partial_len += len(record.data)
            if self._partial_len > MAX_MESSAGE:
                raise ArenaError("ring_record", f"a message of more than {MAX_MESSAGE} bytes")
            if not record.flags & RECORD_MORE:
                out.append(b"".join(self._partial))
                self._partial, self._partial_len = [], 0
        self.messages += sum(1 for item in out if type(item) is bytes)
        return out

    def release(self) -> None:
        self._ring.release()


def frame_header(frame: Frame) -> bytes:
    """The virtio-net header a TAP would have put before ``frame`` when it received it: NEEDS_CSUM for a
    frame whose checksum is partial (with GSO when it carries more than one segment), DATA_VALID for one
    the device checked, none otherwise."""
    try:
        return tx_header(frame)  # the same fields, derived from the frame's own headers
    except EmitError:
        # Offload flags on a frame the transmit rules refuse (not IPv4, GSO without a partial checksum):
        # keep what the receiver uses, the checksum state; a GSO hint that cannot be described is dropped.
        if frame.csum_partial:
            return emit_vnet(VnetHeader(NEEDS_CSUM, csum_start=ETH_HLEN, csum_offset=0))
        return emit_vnet(VnetHeader(DATA_VALID if frame.csum_valid else 0))


def put_frame(ring: ByteProducer, frame: Frame, flags: int = 0) -> bool:
    """One frame into the frames ring (not yet published); False when the ring has no room for it.
    ``flags``: 0, or FRAME_MIRROR_IN/OUT for a capture's copy (descriptors.py)."""
    header = frame_header(frame)
    parts = (header, frame.headers, frame.payload) if frame.payload else (header, frame.headers)
    return ring.put_parts(_FRAME, parts, flags)


def frame_of_record(kind: int, data: bytes) -> Frame:
    """The frame of one frames-ring record; raises ArenaError for a record of another kind and WireError
    (with a ``reason``) for a virtio-net header that makes no sense."""
    if kind != _FRAME:
        raise ArenaError("ring_record", f"a record of kind {kind} on the frames ring")
    return frame_from_read(data, VNET_HDR_LEN)
