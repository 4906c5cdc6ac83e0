"""The arena: a sealed memfd passed by fd, a header an attaching process checks field by field, bindings and
buffers the NIC cannot point outside the pool, records that survive a writer killed mid-commit, and the
host's buffer allocator."""

from __future__ import annotations

import errno
import fcntl
import itertools
import mmap
import os
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ring_kit import SMALL, pair, peer

from tcpchimney.nic.arena import Arena, Layout, check_progress, receive_arena, send_arena
from tcpchimney.nic.descriptors import (
    BINDING,
    H2N_KINDS,
    HEADER,
    HEARTBEAT_OFF,
    N2H_KINDS,
    RECORD_SIZE,
    RECORD_SLOT,
    RECORD_SLOT_OFF,
    RING_ENTRY,
    RING_TABLE_OFF,
    ArenaError,
    ConnRecord,
    DescKind,
    Descriptor,
    RingId,
    Side,
    check_descriptor,
)
from tcpchimney.nic.pool import PoolAllocator

# --- creation, seals, hand-off --------------------------------------------------------------------------


def test_an_attached_mapping_reads_the_same_layout_and_shares_the_pages() -> None:
    with pair() as (host, nic):
        assert nic.layout == host.layout == Layout.plan(SMALL)
        assert (host.side, nic.side) == (Side.HOST, Side.NIC)
        host.set_epoch(3)
        assert nic.epoch == 3
        nic.announce()
        assert host.nic_words() == (os.getpid(), 3, 0)
        nic.beat()
        nic.beat()
        assert host.nic_words()[2] == 2


def test_the_seals_refuse_every_resize_and_any_further_seal_change() -> None:
    with pair() as (host, _):
        for size in (host.layout.size * 2, host.layout.size // 2, 0):
            with pytest.raises(PermissionError):
                os.ftruncate(host.fd, size)
        with pytest.raises(PermissionError):
            fcntl.fcntl(host.fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE)
        assert os.fstat(host.fd).st_size == host.layout.size


def test_an_unsealed_arena_is_refused_by_the_attaching_side() -> None:
    with pair() as (host, _):
        fd = os.memfd_create("unsealed", os.MFD_CLOEXEC)
        os.ftruncate(fd, host.layout.size)
        with mmap.mmap(fd, host.layout.size) as mm:
            mm[:] = host.mem  # a perfect header, but it could shrink
        with pytest.raises(ArenaError) as err:
            Arena.attach(fd)  # closes fd
        assert err.value.reason == "arena_unsealed"
        with pytest.raises(OSError) as closed:
            os.fstat(fd)
        assert closed.value.errno == errno.EBADF


def test_the_arena_and_extra_fds_cross_a_socketpair() -> None:
    with pair() as (host, _):
        a, b = socket.socketpair()
        extra = os.eventfd(5)
        try:
            send_arena(a, host, [extra])
            got, fds = receive_arena(b)
            try:
                assert got.layout == host.layout and len(fds) == 1
                assert os.eventfd_read(fds[0]) == 5
            finally:
                got.close()
                os.close(fds[0])
        finally:
            a.close()
            b.close()
            os.close(extra)


def test_a_handoff_without_the_arena_is_refused() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"hello")
        with pytest.raises(ArenaError):
            receive_arena(b)


def corrupt(host: Arena, off: int, fmt: str, value: int | bytes) -> None:
    struct.pack_into(fmt, host.mem, off, value)


HEADER_CASES = {
    "magic": (0, "<8s", b"TCPCHIMX", "arena_magic"),
    "version": (8, "<I", 2, "arena_magic"),
    "arena size": (16, "<Q", 1 << 40, "arena_header"),
    "no rings": (28, "<I", 0, "arena_header"),
    "too many rings": (28, "<I", 17, "arena_header"),
    "pool past the end": (72, "<Q", 1 << 30, "arena_sections"),
    "records over the bindings": (56, "<Q", 0, "arena_sections"),
    "ring kind": (RING_TABLE_OFF + 2, "<B", 7, "arena_rings"),
    "ring id": (RING_TABLE_OFF, "<H", 99, "arena_rings"),
    "ring past the end": (RING_TABLE_OFF + 8, "<Q", 1 << 35, "arena_sections"),
    "ring unaligned": (RING_TABLE_OFF + 8, "<Q", 4096 + 8, "arena_rings"),
    "ring overlapping the next": (RING_TABLE_OFF + 16, "<Q", 1 << 14, "arena_sections"),
}


@pytest.mark.parametrize("case", HEADER_CASES.values(), ids=HEADER_CASES.keys())
def test_an_attaching_process_checks_every_header_field(case: tuple[int, str, int | bytes, str]) -> None:
    off, fmt, value, reason = case
    with pair() as (host, _):
        corrupt(host, off, fmt, value)
        with pytest.raises(ArenaError) as err:
            Arena.attach(os.dup(host.fd))
        assert err.value.reason == reason


def test_the_header_fits_its_lines() -> None:
    assert HEADER.size <= 128 and RING_ENTRY.size == 32 and BINDING.size == 64 and RECORD_SIZE == 192


# --- bindings and buffers ---------------------------------------------------------------------------------


def test_a_binding_is_read_and_checked_on_the_nic_side() -> None:
    with pair() as (host, nic):
        pool = host.layout.pool_off
        bound = host.bind(3, 41, (pool, 8192), (pool + 8192, 4096))
        assert nic.binding(3) == bound == host.binding(3)
        host.unbind(3)
        with pytest.raises(ArenaError):
            nic.binding(3)
        with pytest.raises(ArenaError):
            host.binding(3)


@pytest.mark.parametrize(
    ("field", "value"),
    [(2, 0), (2, 1 << 62), (3, 1 << 40), (3, 0), (4, 4096), (5, -1 & (2**64 - 1))],
    ids=["tx-at-0", "tx-far", "tx-too-big", "tx-empty", "rx-in-header", "rx-wraps-u64"],
)
def test_a_binding_outside_the_pool_is_an_error_on_the_nic_side(field: int, value: int) -> None:
    with pair() as (host, nic):
        pool = host.layout.pool_off
        bound = list(host.bind(1, 9, (pool, 4096), (pool + 4096, 4096)))
        bound[field] = value
        BINDING.pack_into(
            host.mem, host.layout.bindings_off + BINDING.size, *bound
        )  # what a bad host would do
        with pytest.raises(ArenaError) as err:
            nic.binding(1)
        assert err.value.reason == "binding_buffer"
        with pytest.raises(ArenaError):
            host.bind(2, 9, (bound[2], bound[3]), (bound[4], bound[5]))


def test_handles_out_of_range_are_errors() -> None:
    with pair() as (host, nic):
        for handle in (-1, SMALL.max_conns, 1 << 32):
            with pytest.raises(ArenaError):
                nic.binding(handle)
            with pytest.raises(ArenaError):
                host.read_record(handle)
            with pytest.raises(ArenaError):
                nic.commit(handle, ConnRecord(1, 0, 0, 0, 0))


def test_streams_wrap_at_the_end_of_their_buffer() -> None:
    with pair() as (host, nic):
        pool = host.layout.pool_off
        b = host.bind(0, 1, (pool, 4096), (pool + 4096, 4096))
        data = bytes(range(256)) * 12  # 3072 bytes
        for pos in (0, 3000, 4095, 4096 * 7 + 1):
            host.write_stream(b.tx_off, b.tx_size, pos, data)
            assert nic.read_stream(b.tx_off, b.tx_size, pos, len(data)) == data
        assert bytes(host.mem[b.rx_off : b.rx_off + 4096]) == bytes(4096)  # the neighbour is untouched
        with pytest.raises(ArenaError):
            nic.read_stream(b.tx_off, b.tx_size, 0, 4097)  # a span longer than its buffer
        with pytest.raises(ArenaError):
            host.write_stream(b.rx_off, b.rx_size, 0, bytes(5000))


def test_descriptor_fields_are_checked_against_the_ring_epoch_and_table() -> None:
    good = Descriptor(DescKind.RECEIVE_PLACED, 0, 7, 3, 0, 10, 10)
    check_descriptor(good, N2H_KINDS, 7, 8)
    for bad, reason in [
        (good._replace(kind=0), "descriptor_kind"),
        (good, "descriptor_kind"),  # an N2H kind on an H2N ring
        (good._replace(epoch=6), "descriptor_epoch"),
        (good._replace(handle=8), "descriptor_handle"),
    ]:
        with pytest.raises(ArenaError) as err:
            check_descriptor(bad, H2N_KINDS if bad is good else N2H_KINDS, 7, 8)
        assert err.value.reason == reason


# --- records ------------------------------------------------------------------------------------------------


def record(conn_id: int, n: int) -> ConnRecord:
    return ConnRecord(conn_id, 0, 1000 + n, 66535 + n, 500 + n, ts_recent=n, rto_ms=200, cwnd=14600)


def test_the_last_commit_is_what_the_host_reads() -> None:
    with pair() as (host, nic):
        pool = host.layout.pool_off
        host.bind(2, 77, (pool, 4096), (pool + 4096, 4096))
        assert host.read_record(2) is None
        before = None
        for n in range(5):
            assert nic.commit(2, record(77, n)) == n + 1
            now = host.read_record(2)
            assert now == record(77, n)
            check_progress(before, now)
            before = now


def test_a_writer_killed_mid_commit_leaves_the_previous_commit_readable() -> None:
    with pair() as (host, nic):
        pool = host.layout.pool_off
        host.bind(0, 5, (pool, 4096), (pool + 4096, 4096))
        nic.commit(0, record(5, 1))
        nic.commit(0, record(5, 2))  # commit 2, slot 0
        # Commit 3 goes to slot 1: half of it written, then the writer dies before the commit word.
        slot1 = host.layout.records_off + RECORD_SLOT_OFF + RECORD_SLOT.size
        host.mem[slot1 : slot1 + 20] = b"\xee" * 20
        assert host.read_record(0) == record(5, 2)


@pytest.mark.parametrize(
    ("offset", "value", "reason"),
    [
        (0, (3).to_bytes(8, "little"), "record_torn"),  # commit word 3, but slot 1 holds commit 1
        (64, (9).to_bytes(8, "little"), "record_torn"),  # commit 2's slot says it is commit 9
        (72, (6).to_bytes(4, "little"), "record_conn"),  # commit 2's slot is another connection's
    ],
    ids=["commit-word-ahead-of-its-slot", "slot-generation-wrong", "another-connection"],
)
def test_a_torn_or_foreign_record_is_an_error(offset: int, value: bytes, reason: str) -> None:
    with pair() as (host, nic):
        pool = host.layout.pool_off
        host.bind(0, 5, (pool, 4096), (pool + 4096, 4096))
        nic.commit(0, record(5, 1))  # commit 1: slot 1
        nic.commit(0, record(5, 2))  # commit 2: slot 0, at 64
        at = host.layout.records_off + offset
        host.mem[at : at + len(value)] = value
        with pytest.raises(ArenaError) as err:
            host.read_record(0)
        assert err.value.reason == reason


def test_records_that_take_back_hard_state_are_refused() -> None:
    a = record(1, 10)
    for later in (a._replace(rcv_nxt=a.rcv_nxt - 1), a._replace(rcv_adv=a.rcv_adv - 1), None):
        with pytest.raises(ArenaError) as err:
            check_progress(a, later)
        assert err.value.reason == "record_backwards"
    check_progress(a, a._replace(snd_una=0))  # snd_una is soft: a stale value is allowed


def test_a_rebinding_clears_the_record_of_the_previous_connection() -> None:
    with pair() as (host, nic):
        pool = host.layout.pool_off
        host.bind(1, 5, (pool, 4096), (pool + 4096, 4096))
        nic.commit(1, record(5, 1))
        host.bind(1, 6, (pool, 4096), (pool + 4096, 4096))
        assert host.read_record(1) is None
        nic.commit(1, record(6, 1))
        assert host.read_record(1) == record(6, 1)


def test_records_committed_by_a_process_killed_with_sigkill_stay_readable() -> None:
    with pair() as (host, _):
        pool = host.layout.pool_off
        host.bind(4, 31, (pool, 4096), (pool + 4096, 4096))
        with peer(host, "commit", "4", "50") as nic:
            assert nic.line() == "committed"
            nic.proc.kill()
            nic.proc.wait(timeout=30)
        assert host.read_record(4) == ConnRecord(31, 0, 50, 1050, 50)
        assert host.nic_words()[0] == nic.proc.pid


def test_a_word_stored_by_another_process_is_never_seen_zeroed_or_torn() -> None:
    beats = 1_500_000  # about 0.5 s: with struct.pack_into, a zero shows in nearly every run
    with pair() as (host, _), peer(host, "beat", str(beats)) as nic:
        assert nic.line() == "beating"
        seen, reads = 0, 0
        while seen < beats:
            now = host.load(HEARTBEAT_OFF)
            assert seen <= now <= beats, f"heartbeat {now} after {seen}"  # struct.pack_into zeroes first
            seen = now
            reads += 1
            assert reads < 100_000_000
        assert nic.proc.poll() is None  # it is still waiting, not dead


def test_only_the_owner_writes_the_words_of_its_side() -> None:
    with pair() as (host, nic):
        with pytest.raises(PermissionError):
            nic.set_epoch(1)
        with pytest.raises(PermissionError):
            host.commit(0, record(1, 1))
        with pytest.raises(PermissionError):
            host.beat()
        with pytest.raises(PermissionError):
            nic.bind(0, 1, (0, 1), (0, 1))
        with pytest.raises(PermissionError):
            host.descriptor_consumer(RingId.H2N_DATA)  # the host produces there
        with pytest.raises(PermissionError):
            nic.descriptor_producer(RingId.H2N_DATA)
        with pytest.raises(ValueError):
            host.byte_producer(RingId.H2N_DATA)  # a descriptor ring


def test_reset_empties_every_ring_for_the_next_nic() -> None:
    with pair() as (host, nic):
        out = host.descriptor_producer(RingId.H2N_DATA)
        frames = nic.byte_producer(RingId.N2H_FRAMES)
        out.put(DescKind.SEND, 0, 0, 0, 0, 0, 0)
        out.publish()
        frames.put(3, b"frame")
        frames.publish()
        host.reset_rings()
        assert host.descriptor_producer(RingId.H2N_DATA).used() == 0
        assert host.byte_consumer(RingId.N2H_FRAMES).take() == []


# --- the pool ---------------------------------------------------------------------------------------------


def test_the_pool_allocates_first_fit_and_merges_freed_runs() -> None:
    pool = PoolAllocator(1 << 20, 16 * 4096, 4096)
    a = pool.alloc(4096)
    b = pool.alloc(5000)  # two chunks
    c = pool.alloc(4096 * 13)
    assert (a, b, c) == (1 << 20, (1 << 20) + 4096, (1 << 20) + 3 * 4096)
    assert pool.alloc(1) is None and pool.failures == 1
    assert pool.size_of(b) == 8192
    pool.free(b)
    assert pool.alloc(4096 * 3) is None  # the hole is two chunks
    pool.free(a)
    assert pool.alloc(4096 * 3) == 1 << 20  # a and b merged
    with pytest.raises(ValueError):
        pool.free((1 << 20) + 100)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 5 * 4096)), max_size=60))
def test_pool_buffers_never_overlap_and_all_space_comes_back(ops: list[tuple[bool, int]]) -> None:
    pool = PoolAllocator(8192, 32 * 4096, 4096)
    live: list[int] = []
    for do_free, size in ops:
        if do_free and live:
            pool.free(live.pop(size % len(live)))
            continue
        off = pool.alloc(size)
        if off is not None:
            assert pool.size_of(off) >= size
            live.append(off)
        spans = sorted((o, o + pool.size_of(o)) for o in live)
        assert all(end <= start for (_, end), (start, _) in itertools.pairwise(spans))
        assert all(s >= 8192 and e <= 8192 + 32 * 4096 for s, e in spans)
    for off in live:
        pool.free(off)
    assert pool.free_bytes() == 32 * 4096 and pool.alloc(32 * 4096) == 8192


def test_a_refused_handoff_closes_every_fd_it_brought() -> None:
    fd = os.memfd_create("unsealed", os.MFD_CLOEXEC)
    os.ftruncate(fd, 8192)
    extra = os.eventfd(0)
    a, b = socket.socketpair()
    try:
        socket.send_fds(a, [b"tcpchimney-arena-1"], [fd, extra])
        before = set(os.listdir("/proc/self/fd"))
        with pytest.raises(ArenaError):
            receive_arena(b)
        assert set(os.listdir("/proc/self/fd")) <= before  # the two received copies are closed again
    finally:
        a.close()
        b.close()
        os.close(fd)
        os.close(extra)
