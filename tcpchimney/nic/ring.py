"""Single-producer / single-consumer rings over a region of the arena, with no lock anywhere.

A ring is a control block (the producer's line with ``head``, the consumer's line with ``tail``) and a data
area (descriptors.py). ``head`` and ``tail`` are free-running 64-bit counters: ``head - tail`` is what is
published and not yet consumed, and a position lives at ``counter % capacity``. The producer writes only
``head``, the consumer only ``tail``; each keeps its own word in a local variable and never reads it back from
the arena, so a peer that scribbles over it changes nothing here. The word of the other side is validated on
every read: a value that moves backwards or jumps beyond the ring is an ``ArenaError``, never an index.

Publishing: the producer writes the slot (or record), then stores ``head``. On x86-64 stores become visible in
program order, so a consumer that sees the new ``head`` sees the slot (doorbell.py states the assumptions).
The counters are items of a ``"Q"`` word view (one 8-byte access), never ``struct`` calls (descriptors.py).

Two kinds:

- ``DescriptorProducer`` / ``DescriptorConsumer``: fixed 32-byte descriptors (the data path); capacity in
  slots, a power of two.
- ``ByteProducer`` / ``ByteConsumer``: variable-length records (control messages in the codec, frames), each
  an 8-byte header (length, kind, flags) and the payload padded to 8 bytes. A record never wraps: when it does
  not fit before the end, the producer writes a PAD record over the rest and starts at 0. So that a record
  always fits an empty ring wherever its position, a record takes at most half the ring.

Batching: ``put`` writes without publishing, ``publish`` stores ``head`` once for the batch; ``take``
returns everything available (or up to a limit) with one read of ``head``, and ``release`` stores ``tail``
once the batch is handled. A consumer that dies between ``take`` and ``release`` leaves its batch in the ring.
"""

from __future__ import annotations

from typing import NamedTuple

from tcpchimney.nic.descriptors import (
    DESCRIPTOR,
    RECORD_ALIGN,
    RECORD_HEADER,
    RING_DATA_OFF,
    RING_HEAD_OFF,
    RING_TAIL_OFF,
    ArenaError,
    Descriptor,
    RecordKind,
    record_span,
    word_view,
)

_SLOT = DESCRIPTOR.size
_HDR = RECORD_HEADER.size
_PAD = int(RecordKind.PAD)
_PAYLOAD_KINDS = frozenset(int(k) for k in RecordKind if k is not RecordKind.PAD)


def ring_bytes(slot: int, capacity: int) -> int:
    """Bytes a ring's region takes: control block and data area (``slot``: 32 for descriptors, 1 for a byte
    ring)."""
    return RING_DATA_OFF + slot * capacity


def reset_ring(words: memoryview, offset: int) -> None:
    """Empty a ring by zeroing both counters. Only while no other process is attached (after a fence)."""
    words[(offset + RING_HEAD_OFF) // 8] = 0
    words[(offset + RING_TAIL_OFF) // 8] = 0


def _check_slots(capacity: int, ring: str) -> None:
    if capacity & (capacity - 1):
        raise ArenaError("ring_capacity", f"{ring}: {capacity} slots is not a power of two")


def _check_bytes(capacity: int, ring: str) -> None:
    if capacity % RECORD_ALIGN or capacity < 4 * RECORD_ALIGN:
        raise ArenaError("ring_capacity", f"{ring}: {capacity} bytes is not a multiple of {RECORD_ALIGN}")


def _check_counters(head: int, tail: int, capacity: int, ring: str) -> None:
    if not 0 <= head - tail <= capacity:
        raise ArenaError("ring_index", f"{ring}: head {head}, tail {tail}, capacity {capacity}")


class _Endpoint:
    __slots__ = ("_cap", "_data", "_head_i", "_mem", "_tail_i", "_words", "name")

    def __init__(
        self, mem: memoryview, offset: int, capacity: int, slot: int, name: str, words: memoryview | None
    ) -> None:
        if capacity <= 0 or offset < 0 or offset % 8 or offset + ring_bytes(slot, capacity) > len(mem):
            raise ArenaError("ring_region", f"{name}: offset {offset}, capacity {capacity}")
        self._mem = mem
        self._words = word_view(mem) if words is None else words  # the counters: one 8-byte access each
        self._cap = capacity
        self._head_i = (offset + RING_HEAD_OFF) // 8
        self._tail_i = (offset + RING_TAIL_OFF) // 8
        self._data = offset + RING_DATA_OFF
        self.name = name

    def _load(self, index: int) -> int:
        value: int = self._words[index]
        return value


class _Producer(_Endpoint):
    __slots__ = ("_head", "_published", "_tail", "stalls")

    def __init__(
        self, mem: memoryview, offset: int, capacity: int, slot: int, name: str, words: memoryview | None
    ) -> None:
        super().__init__(mem, offset, capacity, slot, name, words)
        self._head = self._load(self._head_i)
        self._tail = self._load(self._tail_i)
        _check_counters(self._head, self._tail, capacity, name)
        self._published = self._head
        self.stalls = 0  # puts refused because the ring was full

    def _refresh_tail(self) -> None:
        tail = self._load(self._tail_i)
        # The consumer can only consume what was published, and never gives anything back.
        if not self._tail <= tail <= self._published:
            raise ArenaError(
                "ring_tail", f"{self.name}: tail {tail} outside [{self._tail}, {self._published}]"
            )
        self._tail = tail

    @property
    def head(self) -> int:
        """Slots (or bytes) put so far, published or not: this producer's own count."""
        return self._head

    def publish(self) -> bool:
        """Make every put so far visible to the consumer; False if there was nothing new."""
        if self._head == self._published:
            return False
        self._words[self._head_i] = self._head
        self._published = self._head
        return True

    def used(self) -> int:
        """Put and not yet known to be consumed (refreshes the consumer's tail)."""
        self._refresh_tail()
        return self._head - self._tail


class _Consumer(_Endpoint):
    __slots__ = ("_tail",)

    def __init__(
        self, mem: memoryview, offset: int, capacity: int, slot: int, name: str, words: memoryview | None
    ) -> None:
        super().__init__(mem, offset, capacity, slot, name, words)
        self._tail = self._load(self._tail_i)
        _check_counters(self._load(self._head_i), self._tail, capacity, name)

    @property
    def taken(self) -> int:
        """Slots (or bytes) taken so far: this consumer's own count (``tail`` once released)."""
        return self._tail

    @property
    def capacity(self) -> int:
        return self._cap

    def release(self) -> None:
        """Give the slots or space of everything taken back to the producer."""
        self._words[self._tail_i] = self._tail

    def moved(self) -> bool:
        """Whether the producer's head moved past what was taken: one load, not validated (``take`` and
        ``available`` validate), for the hot "anything new?" look."""
        return bool(self._words[self._head_i] != self._tail)


class DescriptorProducer(_Producer):
    __slots__ = ("_mask",)

    def __init__(
        self, mem: memoryview, offset: int, capacity: int, name: str = "ring", words: memoryview | None = None
    ) -> None:
        _check_slots(capacity, name)
        super().__init__(mem, offset, capacity, _SLOT, name, words)
        self._mask = capacity - 1

    def put(self, kind: int, flags: int, epoch: int, handle: int, a: int, b: int, c: int) -> bool:
        """Write one descriptor (not yet published); False, and a stall counted, when the ring is full."""
        if self._head - self._tail >= self._cap:
            self._refresh_tail()
            if self._head - self._tail >= self._cap:
                self.stalls += 1
                return False
        DESCRIPTOR.pack_into(
            self._mem, self._data + (self._head & self._mask) * _SLOT, kind, flags, epoch, handle, a, b, c
        )
        self._head += 1
        return True


class DescriptorConsumer(_Consumer):
    __slots__ = ("_mask",)

    def __init__(
        self, mem: memoryview, offset: int, capacity: int, name: str = "ring", words: memoryview | None = None
    ) -> None:
        _check_slots(capacity, name)
        super().__init__(mem, offset, capacity, _SLOT, name, words)
        self._mask = capacity - 1

    def available(self) -> int:
        """Descriptors published and not yet taken (one read of the producer's head, validated)."""
        head = self._load(self._head_i)
        _check_counters(head, self._tail, self._cap, self.name)
        return head - self._tail

    def take(self, limit: int | None = None) -> list[Descriptor]:
        """Every available descriptor (at most ``limit``), in order. Their slots stay reserved until
        ``release``."""
        n = self.available()
        if limit is not None:
            n = min(n, limit)
        if n == 0:
            return []
        first = self._tail & self._mask
        if n == 1:  # the common case of an unbatched exchange: no slice, no iterator
            self._tail += 1
            return [Descriptor._make(DESCRIPTOR.unpack_from(self._mem, self._data + first * _SLOT))]
        run = min(n, self._cap - first)  # up to the end of the data area, then from its start
        start = self._data + first * _SLOT
        out = list(map(Descriptor._make, DESCRIPTOR.iter_unpack(self._mem[start : start + run * _SLOT])))
        if run < n:
            rest = self._mem[self._data : self._data + (n - run) * _SLOT]
            out.extend(map(Descriptor._make, DESCRIPTOR.iter_unpack(rest)))
        self._tail += n
        return out


class Record(NamedTuple):
    kind: int
    flags: int
    data: bytes


class ByteProducer(_Producer):
    __slots__ = ("_max_payload",)

    def __init__(
        self, mem: memoryview, offset: int, capacity: int, name: str = "ring", words: memoryview | None = None
    ) -> None:
        _check_bytes(capacity, name)
        super().__init__(mem, offset, capacity, 1, name, words)
        self._max_payload = capacity // 2 // RECORD_ALIGN * RECORD_ALIGN - RECORD_HEADER.size

    @property
    def max_payload(self) -> int:
        """The largest payload one record may carry: the record takes at most half the ring."""
        return self._max_payload

    def put(self, kind: int, payload: bytes | bytearray | memoryview, flags: int = 0) -> bool:
        """Write one record (not yet published); False, and a stall counted, when it does not fit now."""
        data = memoryview(payload).cast("B")
        at = self._reserve(kind, len(data), flags)
        if at < 0:
            return False
        self._mem[at : at + len(data)] = data
        return True

    def put_parts(self, kind: int, parts: tuple[bytes | bytearray | memoryview, ...], flags: int = 0) -> bool:
        """``put`` of the concatenation of ``parts`` (e.g. a header and a frame), without joining them
        first: each part is copied once, straight into the ring."""
        views = [memoryview(p).cast("B") for p in parts]
        at = self._reserve(kind, sum(len(v) for v in views), flags)
        if at < 0:
            return False
        for view in views:
            self._mem[at : at + len(view)] = view
            at += len(view)
        return True

    def _reserve(self, kind: int, length: int, flags: int) -> int:
        """Write the header of a record of ``length`` payload bytes (and the PAD before it if it must
        start at 0), advance the local head; returns where the payload goes, or -1 (a stall) if it does not
        fit."""
        if length > self._max_payload:
            raise ValueError(f"{self.name}: a {length}-byte record exceeds {self._max_payload}")
        span = record_span(length)
        pos = self._head % self._cap
        to_end = self._cap - pos
        need = span if span <= to_end else to_end + span
        if self._head + need - self._tail > self._cap:
            self._refresh_tail()
            if self._head + need - self._tail > self._cap:
                self.stalls += 1
                return -1
        if span > to_end:
            RECORD_HEADER.pack_into(self._mem, self._data + pos, to_end - RECORD_HEADER.size, _PAD, 0)
            self._head += to_end
            pos = 0
        at = self._data + pos
        RECORD_HEADER.pack_into(self._mem, at, length, kind, flags)
        self._head += span
        return at + RECORD_HEADER.size


class ByteConsumer(_Consumer):
    __slots__ = ()

    def __init__(
        self, mem: memoryview, offset: int, capacity: int, name: str = "ring", words: memoryview | None = None
    ) -> None:
        _check_bytes(capacity, name)
        super().__init__(mem, offset, capacity, 1, name, words)

    def available(self) -> int:
        """Bytes published and not yet taken (records and padding)."""
        head = self._load(self._head_i)
        _check_counters(head, self._tail, self._cap, self.name)
        if head % RECORD_ALIGN:
            raise ArenaError("ring_index", f"{self.name}: head {head} is not {RECORD_ALIGN}-aligned")
        return head - self._tail

    def take(self, limit: int | None = None) -> list[Record]:
        """Every available record (at most ``limit``), in order, copied out. Their space stays reserved
        until ``release``."""
        head = self._tail + self.available()
        out: list[Record] = []
        while self._tail < head and (limit is None or len(out) < limit):
            pos = self._tail % self._cap
            to_end = self._cap - pos
            at = self._data + pos
            length, kind, flags = RECORD_HEADER.unpack_from(self._mem, at)
            if kind == _PAD:
                if length != to_end - RECORD_HEADER.size or self._tail + to_end > head:
                    raise ArenaError("ring_record", f"{self.name}: pad of {length} at {pos}")
                self._tail += to_end
                continue
            span = record_span(length)
            if kind not in _PAYLOAD_KINDS or span > to_end or self._tail + span > head:
                raise ArenaError("ring_record", f"{self.name}: kind {kind}, length {length} at {pos}")
            out.append(Record(kind, flags, bytes(self._mem[at + _HDR : at + _HDR + length])))
            self._tail += span
        return out
