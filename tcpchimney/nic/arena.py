"""One arena per NIC: the shared memory between the host and its NIC process.

The host creates it as an anonymous memfd, sizes it, seals it against resizing (a NIC that could shrink it
would make the host's next access a SIGBUS) and maps it; the NIC receives the fd over a socketpair
(``send_arena`` / ``receive_arena``) and maps the same pages. No name, no resource tracker (unlike
``multiprocessing.shared_memory`` on 3.11), and the memory lives as long as the host keeps the fd, so a
killed NIC frees nothing and its writes stay visible to the host.

Layout (descriptors.py has the formats, docs/nic-process.md the whole picture)::

    header page     magic, version, sizes and offsets (host, written once); host line; NIC line; ring table
    rings           each: head line (producer), tail line (consumer), data
    bindings        per connection, host-written: where its TX and RX buffers are
    records         per connection, NIC-written: the committed receive state (two slots + commit word)
    pool            the connections' TX and RX buffers (allocated by the host, pool.py)

One writer per word, no locks. Each side trusts only its own copy of anything it wrote: the host keeps the
layout and the bindings in its own memory and never reads them back; what the other side wrote is validated
on every read, and a value out of range raises ``ArenaError`` instead of becoming an index.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from tcpchimney.nic.descriptors import (
    BINDING,
    BINDING_ACTIVE,
    EPOCH_OFF,
    HEADER,
    HEADER_SIZE,
    HEARTBEAT_OFF,
    HOST_PID_OFF,
    MAGIC,
    MAX_RINGS,
    NIC_EPOCH_OFF,
    NIC_PID_OFF,
    PAGE,
    RECORD_COMMIT_OFF,
    RECORD_SIZE,
    RECORD_SLOT,
    RECORD_SLOT_OFF,
    RING_ENTRY,
    RING_TABLE_OFF,
    VERSION,
    ArenaError,
    Binding,
    ConnRecord,
    RingId,
    RingKind,
    Side,
    word_view,
)
from tcpchimney.nic.ring import (
    ByteConsumer,
    ByteProducer,
    DescriptorConsumer,
    DescriptorProducer,
    reset_ring,
    ring_bytes,
)

SEALS = fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL
_HANDOFF = b"tcpchimney-arena-1"


@dataclass(frozen=True)
class RingSpec:
    ring_id: RingId
    kind: RingKind
    producer: Side
    capacity: int  # slots (DESCRIPTOR, a power of two) or bytes (BYTES, a multiple of 8)

    @property
    def slot(self) -> int:
        return 32 if self.kind is RingKind.DESCRIPTOR else 1

    @property
    def nbytes(self) -> int:
        return ring_bytes(self.slot, self.capacity)


def nic_rings(control: int, descriptors: int, frames: int) -> tuple[RingSpec, ...]:
    """The rings of a NIC arena: a control byte ring each way of ``control`` bytes, a data descriptor ring
    each way of ``descriptors`` slots, and the NIC's frames byte ring of ``frames`` bytes."""
    return (
        RingSpec(RingId.H2N_CONTROL, RingKind.BYTES, Side.HOST, control),
        RingSpec(RingId.N2H_CONTROL, RingKind.BYTES, Side.NIC, control),
        RingSpec(RingId.H2N_DATA, RingKind.DESCRIPTOR, Side.HOST, descriptors),
        RingSpec(RingId.N2H_DATA, RingKind.DESCRIPTOR, Side.NIC, descriptors),
        RingSpec(RingId.N2H_FRAMES, RingKind.BYTES, Side.NIC, frames),
    )


DEFAULT_RINGS = nic_rings(256 << 10, 4096, 16 << 20)  # frames: >= 128 GSO frames, records <= half


@dataclass(frozen=True)
class ArenaConfig:
    max_conns: int = 1024
    pool_size: int = 64 << 20
    chunk_size: int = 16 << 10
    rings: tuple[RingSpec, ...] = DEFAULT_RINGS


def _page_up(n: int) -> int:
    return -(-n // PAGE) * PAGE


@dataclass(frozen=True)
class Layout:
    size: int
    max_conns: int
    rings: dict[RingId, tuple[RingSpec, int]]  # spec and the offset of its control block
    bindings_off: int
    records_off: int
    pool_off: int
    pool_size: int
    chunk_size: int

    @classmethod
    def plan(cls, config: ArenaConfig) -> Layout:
        if len(config.rings) > MAX_RINGS or len({s.ring_id for s in config.rings}) != len(config.rings):
            raise ValueError("at most 16 rings, each id once")
        if config.chunk_size <= 0 or config.pool_size % config.chunk_size or config.max_conns <= 0:
            raise ValueError("pool_size must be a multiple of chunk_size; max_conns > 0")
        off = HEADER_SIZE
        rings: dict[RingId, tuple[RingSpec, int]] = {}
        for spec in config.rings:
            rings[spec.ring_id] = (spec, off)
            off = _page_up(off + spec.nbytes)
        bindings = off
        records = _page_up(bindings + config.max_conns * BINDING.size)
        pool = _page_up(records + config.max_conns * RECORD_SIZE)
        size = _page_up(pool + config.pool_size)
        return cls(
            size, config.max_conns, rings, bindings, records, pool, config.pool_size, config.chunk_size
        )

    def write(self, mem: memoryview) -> None:
        HEADER.pack_into(
            mem, 0, MAGIC, VERSION, HEADER_SIZE, self.size, self.max_conns, len(self.rings), RING_TABLE_OFF,
            BINDING.size, RECORD_SIZE, self.chunk_size, self.bindings_off, self.records_off, self.pool_off,
            self.pool_size,
        )  # fmt: skip
        for i, (spec, off) in enumerate(self.rings.values()):
            RING_ENTRY.pack_into(
                mem, RING_TABLE_OFF + i * RING_ENTRY.size, spec.ring_id, spec.kind, spec.producer, spec.slot,
                off, spec.capacity,
            )  # fmt: skip

    @classmethod
    def parse(cls, mem: memoryview) -> Layout:
        """The layout an attaching process reads, every field checked against the arena it mapped."""
        if len(mem) < HEADER_SIZE:
            raise ArenaError("arena_size", f"{len(mem)} bytes")
        (magic, version, hsize, size, conns, nrings, table, bsize, rsize, chunk, bind, rec, pool, psize) = (
            HEADER.unpack_from(mem, 0)
        )
        if magic != MAGIC or version != VERSION:
            raise ArenaError("arena_magic", f"{magic!r} version {version}")
        if (hsize, size, table, bsize, rsize) != (
            HEADER_SIZE,
            len(mem),
            RING_TABLE_OFF,
            BINDING.size,
            RECORD_SIZE,
        ):
            raise ArenaError("arena_header", f"sizes {hsize}/{size}/{table}/{bsize}/{rsize}")
        if not 0 < nrings <= MAX_RINGS or conns <= 0 or chunk <= 0 or psize % chunk:
            raise ArenaError("arena_header", f"{nrings} rings, {conns} connections, chunk {chunk}")
        rings = dict(_parse_ring(mem, i) for i in range(nrings))
        if len(rings) != nrings:
            raise ArenaError("arena_rings", "a ring id twice")
        sections = [(off, spec.nbytes) for spec, off in rings.values()]
        sections += [(bind, conns * BINDING.size), (rec, conns * RECORD_SIZE), (pool, psize)]
        _check_disjoint(sections, len(mem))
        return cls(size, conns, rings, bind, rec, pool, psize, chunk)


def _parse_ring(mem: memoryview, i: int) -> tuple[RingId, tuple[RingSpec, int]]:
    ring_id, kind, producer, slot, off, capacity = RING_ENTRY.unpack_from(mem, RING_TABLE_OFF + i * 32)
    try:
        spec = RingSpec(RingId(ring_id), RingKind(kind), Side(producer), capacity)
    except ValueError:
        raise ArenaError(
            "arena_rings", f"entry {i}: id {ring_id}, kind {kind}, producer {producer}"
        ) from None
    if slot != spec.slot or off % 64 or capacity <= 0:
        raise ArenaError("arena_rings", f"entry {i}: slot {slot}, offset {off}, capacity {capacity}")
    return spec.ring_id, (spec, off)


def _check_disjoint(sections: list[tuple[int, int]], size: int) -> None:
    end = HEADER_SIZE
    for off, length in sorted(sections):
        if off < end or length < 0 or off + length > size:
            raise ArenaError("arena_sections", f"section [{off}, {off + length}) in a {size}-byte arena")
        end = off + length


class Arena:
    """One process's mapping of the arena. ``side`` says which words this process may write."""

    def __init__(self, fd: int, mm: mmap.mmap, layout: Layout, side: Side) -> None:
        self.fd = fd
        self._mm = mm
        self.mem = memoryview(mm)
        self.words = word_view(self.mem)  # the live words: one 8-byte access each (descriptors.py)
        self.layout = layout
        self.side = side
        self._bindings: dict[int, Binding] = {}  # host: what it wrote; NIC: what it validated
        self._commits: dict[int, int] = {}  # NIC: the last commit number per handle
        self._beats = 0
        self._epoch: int | None = None  # host: the epoch it set

    @classmethod
    def create(cls, config: ArenaConfig | None = None) -> Arena:
        """The host's arena: a sealed memfd of the planned size, header written, everything else zero."""
        layout = Layout.plan(config or ArenaConfig())
        fd = os.memfd_create("tcpchimney-arena", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, layout.size)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
            mm = mmap.mmap(fd, layout.size, flags=mmap.MAP_SHARED)
        except BaseException:
            os.close(fd)
            raise
        arena = cls(fd, mm, layout, Side.HOST)
        layout.write(arena.mem)
        arena.store(HOST_PID_OFF, os.getpid())
        return arena

    @classmethod
    def attach(cls, fd: int, side: Side = Side.NIC) -> Arena:
        """Map an arena received from the host (takes ownership of ``fd``). It must be sealed: an arena that
        could shrink under this process could SIGBUS it."""
        try:
            if fcntl.fcntl(fd, fcntl.F_GET_SEALS) & SEALS != SEALS:
                raise ArenaError("arena_unsealed", "the arena can still be resized")
            size = os.fstat(fd).st_size
            if size < HEADER_SIZE:
                raise ArenaError("arena_size", f"{size} bytes")
            mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
        except (OSError, ArenaError):
            os.close(fd)
            raise
        mem = memoryview(mm)
        try:
            layout = Layout.parse(mem)
        except ArenaError:
            mem.release()
            mm.close()
            os.close(fd)
            raise
        mem.release()
        return cls(fd, mm, layout, side)

    def close(self) -> None:
        """Unmap and close the fd. Every ring endpoint of this arena is unusable afterwards."""
        self.words.release()
        self.mem.release()
        self._mm.close()
        os.close(self.fd)

    # --- words ------------------------------------------------------------------------------------------

    def load(self, off: int) -> int:
        value: int = self.words[off // 8]
        return value

    def store(self, off: int, value: int) -> None:
        self.words[off // 8] = value

    @property
    def epoch(self) -> int:
        """The host's epoch: on the host its own copy (never read back), on the NIC the word it wrote."""
        if self._epoch is not None:
            return self._epoch
        return self.load(EPOCH_OFF)

    def set_epoch(self, epoch: int) -> None:
        self._require(Side.HOST)
        self.store(EPOCH_OFF, epoch)
        self._epoch = epoch

    def announce(self) -> None:
        """The NIC says who it is and which epoch it runs in (host-read, for liveness and fencing)."""
        self._require(Side.NIC)
        self.store(NIC_PID_OFF, os.getpid())
        self.store(NIC_EPOCH_OFF, self.epoch)

    def beat(self) -> None:
        """One more heartbeat (the host's watchdog looks for progress, not for a value)."""
        self._require(Side.NIC)
        self._beats += 1
        self.store(HEARTBEAT_OFF, self._beats)

    def nic_words(self) -> tuple[int, int, int]:
        """(pid, epoch, heartbeat) as the NIC last wrote them: values to compare, never to index with."""
        return self.load(NIC_PID_OFF), self.load(NIC_EPOCH_OFF), self.load(HEARTBEAT_OFF)

    def _require(self, side: Side) -> None:
        if self.side is not side:
            raise PermissionError(f"only the {side.name} writes this")

    # --- rings ------------------------------------------------------------------------------------------

    def _ring(self, ring_id: RingId, kind: RingKind, produce: bool) -> tuple[int, int, str, memoryview]:
        spec, off = self.layout.rings[ring_id]
        if spec.kind is not kind:
            raise ValueError(f"{ring_id.name} is a {spec.kind.name} ring")
        if (spec.producer is self.side) != produce:
            raise PermissionError(
                f"the {self.side.name} does not {'produce' if produce else 'consume'} there"
            )
        return off, spec.capacity, ring_id.name, self.words

    def descriptor_producer(self, ring_id: RingId) -> DescriptorProducer:
        return DescriptorProducer(self.mem, *self._ring(ring_id, RingKind.DESCRIPTOR, True))

    def descriptor_consumer(self, ring_id: RingId) -> DescriptorConsumer:
        return DescriptorConsumer(self.mem, *self._ring(ring_id, RingKind.DESCRIPTOR, False))

    def byte_producer(self, ring_id: RingId) -> ByteProducer:
        return ByteProducer(self.mem, *self._ring(ring_id, RingKind.BYTES, True))

    def byte_consumer(self, ring_id: RingId) -> ByteConsumer:
        return ByteConsumer(self.mem, *self._ring(ring_id, RingKind.BYTES, False))

    def reset_rings(self) -> None:
        """Empty every ring: the host, after fencing a dead NIC and before starting the next. Endpoints made
        before this are stale; make new ones."""
        self._require(Side.HOST)
        for _, off in self.layout.rings.values():
            reset_ring(self.words, off)

    # --- bindings and buffers -----------------------------------------------------------------------------

    def bind(self, handle: int, conn_id: int, tx: tuple[int, int], rx: tuple[int, int]) -> Binding:
        """The host gives connection slot ``handle`` its TX and RX buffers (offset, size: from its
        PoolAllocator) before the NIC hears of the connection, and clears the slot's record, so nothing of a
        previous connection on this handle is read as this one's."""
        self._require(Side.HOST)
        self._check_handle(handle)
        binding = Binding(conn_id, BINDING_ACTIVE, tx[0], tx[1], rx[0], rx[1])
        self._check_buffers(binding)
        BINDING.pack_into(self.mem, self.layout.bindings_off + handle * BINDING.size, *binding)
        base = self._record_base(handle)
        self.mem[base : base + RECORD_SIZE] = bytes(RECORD_SIZE)
        self._bindings[handle] = binding
        return binding

    def unbind(self, handle: int) -> None:
        self._require(Side.HOST)
        self._check_handle(handle)
        off = self.layout.bindings_off + handle * BINDING.size
        self.mem[off : off + BINDING.size] = bytes(BINDING.size)
        self._bindings.pop(handle, None)

    def binding(self, handle: int) -> Binding:
        """The buffers of ``handle``: the host's own copy; on the NIC read from the arena and checked."""
        self._check_handle(handle)
        if self.side is Side.HOST:
            if handle not in self._bindings:
                raise ArenaError("binding_unbound", f"handle {handle}")
            return self._bindings[handle]
        binding = Binding._make(
            BINDING.unpack_from(self.mem, self.layout.bindings_off + handle * BINDING.size)
        )
        if not binding.flags & BINDING_ACTIVE:
            raise ArenaError("binding_unbound", f"handle {handle}")
        self._check_buffers(binding)
        self._bindings[handle] = binding
        return binding

    def _check_handle(self, handle: int) -> None:
        if not 0 <= handle < self.layout.max_conns:
            raise ArenaError("handle", f"handle {handle} outside [0, {self.layout.max_conns})")

    def _check_buffers(self, b: Binding) -> None:
        lo, hi = self.layout.pool_off, self.layout.pool_off + self.layout.pool_size
        for off, size in ((b.tx_off, b.tx_size), (b.rx_off, b.rx_size)):
            if size <= 0 or off < lo or off + size > hi:
                raise ArenaError("binding_buffer", f"[{off}, {off + size}) outside the pool [{lo}, {hi})")

    def check_span(self, off: int, size: int, length: int) -> None:
        """A span of ``length`` bytes fits a buffer of ``size`` bytes (its position is taken modulo size)."""
        if not 0 <= length <= size:
            raise ArenaError("span_length", f"{length} bytes in a {size}-byte buffer at {off}")

    def write_stream(self, off: int, size: int, pos: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at stream position ``pos`` of the buffer ``[off, off+size)``, wrapping."""
        view = memoryview(data).cast("B")
        self.check_span(off, size, len(view))
        start = pos % size
        first = min(len(view), size - start)
        self.mem[off + start : off + start + first] = view[:first]
        if first < len(view):
            self.mem[off : off + len(view) - first] = view[first:]

    def read_stream(self, off: int, size: int, pos: int, length: int) -> bytes:
        """``length`` bytes from stream position ``pos`` of the buffer ``[off, off+size)``, wrapping."""
        self.check_span(off, size, length)
        start = pos % size
        first = min(length, size - start)
        head = self.mem[off + start : off + start + first]
        if first == length:
            return bytes(head)
        return b"".join((head, self.mem[off : off + length - first]))

    # --- records -----------------------------------------------------------------------------------------

    def _record_base(self, handle: int) -> int:
        return self.layout.records_off + handle * RECORD_SIZE

    def commit(self, handle: int, record: ConnRecord) -> int:
        """The NIC commits ``record`` for ``handle``: the other slot first, then the commit word. Returns the
        commit number. Only after this returns may an ACK or window covering it leave."""
        self._require(Side.NIC)
        self._check_handle(handle)
        base = self._record_base(handle)
        # The commit word is this process's own: counted locally, never read back. The host cleared the
        # record at bind time, so any count (0 or one from an earlier connection on the handle) is valid.
        gen = self._commits.get(handle, 0) + 1
        RECORD_SLOT.pack_into(self.mem, base + RECORD_SLOT_OFF + (gen & 1) * RECORD_SLOT.size, gen, *record)
        self.store(base + RECORD_COMMIT_OFF, gen)
        self._commits[handle] = gen
        return gen

    def read_record(self, handle: int, attempts: int = 3) -> ConnRecord | None:
        """The last committed record of ``handle`` (None if none yet), checked against its commit word and
        the host's binding. Safe while the NIC writes (retries a slot rewritten under it) and after it died
        mid-commit (the previous commit is intact)."""
        self._check_handle(handle)
        base = self._record_base(handle)
        for _ in range(attempts):
            gen = self.load(base + RECORD_COMMIT_OFF)
            if gen == 0:
                return None
            slot = RECORD_SLOT.unpack_from(self.mem, base + RECORD_SLOT_OFF + (gen & 1) * RECORD_SLOT.size)
            after = self.load(base + RECORD_COMMIT_OFF)
            if after < gen:
                raise ArenaError("record_backwards", f"handle {handle}: commit {gen} then {after}")
            if after != gen:
                continue  # commit gen + 1 is stored, so gen + 2 may be rewriting the slot we read: again
            if slot[0] != gen:
                raise ArenaError("record_torn", f"handle {handle}: commit {gen}, slot holds {slot[0]}")
            record = ConnRecord._make(slot[1:])
            bound = self._bindings.get(handle)
            if bound is not None and record.conn_id != bound.conn_id:
                raise ArenaError("record_conn", f"handle {handle}: record of {record.conn_id}")
            return record
        raise ArenaError("record_busy", f"handle {handle}: commit word moved {attempts} times")


def check_progress(before: ConnRecord | None, after: ConnRecord | None) -> None:
    """A later record never takes back hard state: rcv_nxt and the advertised right edge do not move
    backwards (64-bit extended sequence numbers do not wrap)."""
    if after is None:
        if before is not None:
            raise ArenaError("record_backwards", "a committed record disappeared")
        return
    if before is None:
        return
    if after.rcv_nxt < before.rcv_nxt or after.rcv_adv < before.rcv_adv:
        raise ArenaError(
            "record_backwards",
            f"rcv_nxt {before.rcv_nxt} -> {after.rcv_nxt}, rcv_adv {before.rcv_adv} -> {after.rcv_adv}",
        )


def send_arena(sock: socket.socket, arena: Arena, extra_fds: Sequence[int] = ()) -> None:
    """Pass the arena's fd (and e.g. the doorbells' eventfds, a TAP dup) to the process at the other end."""
    socket.send_fds(sock, [_HANDOFF], [arena.fd, *extra_fds])


def receive_arena(sock: socket.socket, side: Side = Side.NIC, max_fds: int = 8) -> tuple[Arena, list[int]]:
    """Receive what ``send_arena`` sent: the attached arena and the extra fds, in order."""
    msg, fds, _flags, _addr = socket.recv_fds(sock, 64, max_fds)
    if msg != _HANDOFF or not fds:
        for fd in fds:
            os.close(fd)
        raise ArenaError("handoff", f"{msg!r} with {len(fds)} fds")
    try:
        return Arena.attach(fds[0], side), fds[1:]  # attach owns fds[0], also when it fails
    except (OSError, ArenaError):
        for fd in fds[1:]:
            os.close(fd)
        raise
