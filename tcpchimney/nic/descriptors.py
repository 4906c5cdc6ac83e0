"""Every byte format of the NIC arena, in one place (docs/nic-process.md describes the same formats field by
field for a NIC written in another language).

All integers are little-endian. Every word that the other process reads while this one may be writing it is
an aligned 8-byte word (u64), stored and loaded through ``word_view`` (a ``memoryview`` cast to ``"Q"``):
item access is one 8-byte memcpy, which is one move on x86-64, so the word is never seen half-written (see
doorbell.py for the ordering assumptions). Not through ``struct.pack_into``: it zeroes its destination before
writing the fields, so a reader in the other process can see 0 in between (measured: a consumer saw the
producer's head go to 0 about once per 100,000 publishes). Multi-field structures are written with
``struct`` only where nobody reads them meanwhile: a slot before it is published, a record slot before its
commit word names it.

Nothing here does I/O. ``ArenaError`` is what any reader raises when a value written by the other side is out
of range: the host turns it into "NIC broken" and never reads outside the arena because of it.
"""

from __future__ import annotations

import struct
import sys
from enum import IntEnum
from typing import Final, NamedTuple


class ArenaError(Exception):
    """A value read from the arena is out of range or inconsistent. ``reason`` is a stable counter key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


CACHE_LINE: Final = 64  # words written by different processes never share a line (no false sharing)
PAGE: Final = 4096  # sections start on a page

# --- the header page ---------------------------------------------------------------------------------------

MAGIC: Final = b"TCPCHIM\x00"
VERSION: Final = 1
HEADER_SIZE: Final = PAGE

# Host-written once at creation, read-only afterwards.
HEADER: Final = struct.Struct("<8sIIQIIIIIIQQQQ")
# magic, version, header_size, arena_size, max_conns, ring_count, ring_table_off, binding_size, record_size,
# chunk_size, bindings_off, records_off, pool_off, pool_size

# The live words: one cache line per writer.
HOST_LINE: Final = 128  # host-written: epoch, host pid, host's sleep word (consumer of the N2H rings)
EPOCH_OFF: Final = HOST_LINE + 0
HOST_PID_OFF: Final = HOST_LINE + 8
N2H_SLEEP_OFF: Final = HOST_LINE + 16
NIC_LINE: Final = 192  # NIC-written: pid, epoch it runs in, heartbeat, NIC's sleep word (consumer of H2N)
NIC_PID_OFF: Final = NIC_LINE + 0
NIC_EPOCH_OFF: Final = NIC_LINE + 8
HEARTBEAT_OFF: Final = NIC_LINE + 16
H2N_SLEEP_OFF: Final = NIC_LINE + 24

RING_TABLE_OFF: Final = 256
MAX_RINGS: Final = 16
RING_ENTRY: Final = struct.Struct("<HBBIQQ8x")  # ring_id, kind, producer, slot_size, offset, capacity
assert RING_ENTRY.size == 32
assert RING_TABLE_OFF + MAX_RINGS * RING_ENTRY.size <= HEADER_SIZE

U64: Final = struct.Struct("<Q")  # for fields of structures; never for a live word (see above)


def word_view(mem: memoryview) -> memoryview:
    """The arena as u64 words: ``words[off // 8]`` loads or stores the aligned word at byte ``off`` in one
    8-byte access. Native order, so little-endian machines only (as are the formats)."""
    if sys.byteorder != "little":
        raise RuntimeError("the arena formats are little-endian and its words are accessed natively")
    return mem.cast("B").cast("Q")


class Side(IntEnum):
    """Who writes a word (or produces into a ring)."""

    HOST = 0
    NIC = 1


class RingKind(IntEnum):
    DESCRIPTOR = 0  # fixed 32-byte slots (DESCRIPTOR below)
    BYTES = 1  # variable-length records (RECORD_HEADER below), 8-byte aligned


class RingId(IntEnum):
    """The rings of an arena. Never renumber, only append."""

    H2N_CONTROL = 1  # BYTES, host -> NIC: codec-encoded requests (initiate, update, invalidate, query, ...)
    N2H_CONTROL = 2  # BYTES, NIC -> host: codec-encoded completions and indications
    H2N_DATA = 3  # DESCRIPTOR, host -> NIC: SEND, RX_CONSUMED
    N2H_DATA = 4  # DESCRIPTOR, NIC -> host: SEND_DONE, RECEIVE_PLACED, SEND_BACKLOG
    N2H_FRAMES = 5  # BYTES, NIC -> host: frames the NIC does not claim, vnet header kept


# Ring control block: the producer's line, then the consumer's line, then the data area.
RING_HEAD_OFF: Final = 0  # producer-written: records/slots/bytes ever published (free-running u64)
RING_TAIL_OFF: Final = CACHE_LINE  # consumer-written: records/slots/bytes ever consumed (free-running u64)
RING_DATA_OFF: Final = 2 * CACHE_LINE

# --- data descriptors (DESCRIPTOR rings) -------------------------------------------------------------------

DESCRIPTOR: Final = struct.Struct("<BBHIQQQ")  # kind, flags, epoch16, handle, a, b, c
assert DESCRIPTOR.size == 32


class DescKind(IntEnum):
    """What a descriptor says; the meaning of a, b, c per kind. Kind 0 is never valid, so a zeroed slot is
    caught. Positions are 64-bit stream positions in the connection's buffer (byte ``p`` lives at
    ``p % size`` of it); sequence values are 64-bit extended sequence numbers (the 32-bit TCP value with its
    wraps counted, anchored by the host at offload)."""

    SEND = 1  # H2N: a Send of bytes [a, a+b) of the TX stream; c = its request id
    RX_CONSUMED = 2  # H2N: the host consumed the RX stream up to position a (reserved: not produced yet)
    SEND_DONE = 3  # N2H: the Send c completed (SUCCESS), b bytes acknowledged, its TX bytes ended at a
    RECEIVE_PLACED = 4  # N2H: a ReceiveIndication of bytes [a, a+b) of the RX stream; c = its indication id
    SEND_BACKLOG = 5  # N2H: the NIC would like a bytes queued (reserved: not produced yet)


class DescFlag(IntEnum):
    PUSH = 0x01  # SEND: the application pushed (no more data is coming right now)
    FIN = 0x02  # RECEIVE_PLACED: the peer's FIN follows the placed bytes (counted in c)


class Descriptor(NamedTuple):
    kind: int
    flags: int
    epoch: int  # low 16 bits of the arena epoch the producer runs in
    handle: int  # connection slot, < max_conns
    a: int
    b: int
    c: int


H2N_KINDS: Final = frozenset({DescKind.SEND, DescKind.RX_CONSUMED})
N2H_KINDS: Final = frozenset({DescKind.SEND_DONE, DescKind.RECEIVE_PLACED, DescKind.SEND_BACKLOG})
# What a consumer accepts today: the kinds that are produced (the reserved ones are a broken producer).
H2N_BUILT: Final = frozenset({DescKind.SEND})
N2H_BUILT: Final = frozenset({DescKind.SEND_DONE, DescKind.RECEIVE_PLACED})


def check_descriptor(desc: Descriptor, kinds: frozenset[DescKind], epoch: int, max_conns: int) -> None:
    """Check the fields every descriptor has; spans are checked against the connection's buffer by the
    arena (``Arena.check_span``), which alone knows its size."""
    if desc.kind not in kinds:
        raise ArenaError("descriptor_kind", f"kind {desc.kind} on this ring")
    if desc.epoch != epoch & 0xFFFF:
        raise ArenaError("descriptor_epoch", f"epoch {desc.epoch}, arena runs {epoch & 0xFFFF}")
    if desc.handle >= max_conns:
        raise ArenaError("descriptor_handle", f"handle {desc.handle} >= {max_conns}")


# --- variable-length records (BYTES rings) -----------------------------------------------------------------

RECORD_HEADER: Final = struct.Struct("<IHH")  # length of the payload, kind, flags
RECORD_ALIGN: Final = 8
assert RECORD_HEADER.size == RECORD_ALIGN


class RecordKind(IntEnum):
    """Kind 0 is never valid (a zeroed area is caught)."""

    PAD = 1  # the rest of the ring up to its end is skipped; the next record starts at offset 0
    CONTROL = 2  # payload: one message of chimney/codec.py
    FRAME = 3  # payload: one frame as read from the TAP (virtio-net header first)
    BIND = 4  # H2N_CONTROL only, payload BIND_RECORD: the arena slot of a connection the next initiate names
    DATA_MARK = 5  # both control rings, payload DATA_MARK_RECORD: descriptors up to N of the data ring first


# Record flags of a CONTROL record: a message longer than one record (at most half the ring) is cut into
# consecutive records, each but the last flagged MORE; the consumer joins them before decoding.
RECORD_MORE: Final = 0x1

# Record flags of a FRAME record on the frames ring: a copy of a frame of an offloaded connection, mirrored
# to the host while a capture runs (``chimney capture``): IN as the NIC received it, OUT as it sent it. The
# host writes it to the capture and nowhere else.
FRAME_MIRROR_IN: Final = 0x2
FRAME_MIRROR_OUT: Final = 0x4
FRAME_MIRROR: Final = FRAME_MIRROR_IN | FRAME_MIRROR_OUT


# A BIND record comes before the CONTROL record of the InitiateOffload that names the connection: the host's
# handle of its TCP block, the arena slot (binding and record) the host gave it, and its conn_id.
BIND_RECORD: Final = struct.Struct("<QII")  # host_handle, slot, conn_id


# A DATA_MARK record: the count N of descriptors the producer had put on the data ring of its direction
# (free-running, as the ring's head) when it wrote the record. Every descriptor below N comes before the
# records that follow the mark; every descriptor from N on comes after them (nic/ordering.py).
DATA_MARK_RECORD: Final = struct.Struct("<Q")


def record_span(length: int) -> int:
    """Bytes a record with a payload of ``length`` takes in the ring: header plus payload, 8-byte aligned."""
    return RECORD_HEADER.size + (length + RECORD_ALIGN - 1) // RECORD_ALIGN * RECORD_ALIGN


# --- per-connection binding (host-written) and record (NIC-written) --------------------------------------

BINDING: Final = struct.Struct("<IIQQQQ24x")  # conn_id, flags, tx_off, tx_size, rx_off, rx_size
assert BINDING.size == CACHE_LINE
BINDING_ACTIVE: Final = 0x1


class Binding(NamedTuple):
    """Where a connection's buffers are. ``conn_id`` is the host's incarnation number of the connection, so
    a reused handle is never confused with its previous owner. Offsets are from the start of the arena."""

    conn_id: int
    flags: int
    tx_off: int
    tx_size: int
    rx_off: int
    rx_size: int


# A record: one commit word on its own line, then two slots. Commit k writes slot k % 2 (with gen = k)
# and then stores the commit word k, so a writer that dies mid-commit leaves commit k-1 intact in the other
# slot.
RECORD_COMMIT_OFF: Final = 0
RECORD_SLOT_OFF: Final = CACHE_LINE
RECORD_SLOT: Final = struct.Struct("<QIIQQQIIIIII")
# gen, conn_id, flags, rcv_nxt, rcv_adv, snd_una, ts_recent, rto_ms, srtt_us, rttvar_us, cwnd, ssthresh
assert RECORD_SLOT.size == CACHE_LINE
RECORD_SIZE: Final = CACHE_LINE + 2 * RECORD_SLOT.size


class RecordFlag(IntEnum):
    FIN_RECEIVED = 0x1  # the peer's FIN is accepted (and counted in rcv_nxt)
    FIN_SENT = 0x2  # the NIC sent the FIN of a Disconnect


class ConnRecord(NamedTuple):
    """What the NIC commits per connection before any ACK or window that covers it leaves (the hard state
    of docs/nic-process.md, plus a snapshot of soft state the host may reuse). Sequence values are 64-bit
    extended sequence numbers."""

    conn_id: int
    flags: int
    rcv_nxt: int  # hard: every ACK sent is <= this; the FIN counts one
    rcv_adv: int  # hard: right edge advertised; never shrinks
    snd_una: int  # soft: stale means redundant retransmission only
    ts_recent: int = 0  # soft
    rto_ms: int = 0  # soft snapshot (0: none)
    srtt_us: int = 0
    rttvar_us: int = 0
    cwnd: int = 0
    ssthresh: int = 0
