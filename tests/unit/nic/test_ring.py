"""The SPSC rings: order across wrap-around, full-ring stalls, batches, one writer per word, a consumer
process that is killed mid-batch, hostile counters and records from the other side, and hypothesis runs
against a model queue."""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ring_kit import pair, peer

from tcpchimney.chimney import codec
from tcpchimney.chimney.requests import Disconnect
from tcpchimney.nic.descriptors import (
    DESCRIPTOR,
    H2N_SLEEP_OFF,
    RECORD_HEADER,
    RING_DATA_OFF,
    RING_HEAD_OFF,
    RING_TAIL_OFF,
    U64,
    ArenaError,
    DescFlag,
    DescKind,
    RecordKind,
    RingId,
)
from tcpchimney.nic.doorbell import Direction, Doorbell, Waiter
from tcpchimney.nic.ring import ByteConsumer, ByteProducer, DescriptorConsumer, DescriptorProducer, ring_bytes

SLOTS = 16
BYTES = 256


def descriptor_ring(slots: int = SLOTS) -> tuple[memoryview, DescriptorProducer, DescriptorConsumer]:
    # The region ends exactly where the ring does: any read past it would show.
    mem = memoryview(bytearray(ring_bytes(32, slots)))
    return mem, DescriptorProducer(mem, 0, slots), DescriptorConsumer(mem, 0, slots)


def byte_ring(size: int = BYTES) -> tuple[memoryview, ByteProducer, ByteConsumer]:
    mem = memoryview(bytearray(ring_bytes(1, size)))
    return mem, ByteProducer(mem, 0, size), ByteConsumer(mem, 0, size)


def put(p: DescriptorProducer, a: int) -> bool:
    return p.put(DescKind.SEND, 0, 1, 3, a, a * 2, a * 3)


# --- descriptor rings ------------------------------------------------------------------------------------


def test_descriptors_come_out_in_order_across_many_wrap_arounds() -> None:
    _, p, c = descriptor_ring()
    sent = 0
    got: list[int] = []
    for batch in [5, 7, 11, 16, 3, 13, 16, 1, 9] * 3:
        for _ in range(batch):
            assert put(p, sent)
            sent += 1
        p.publish()
        taken = c.take()
        c.release()
        assert len(taken) == batch  # everything available, in one take, wrapped or not
        got += [d.a for d in taken]
        assert all((d.b, d.c, d.handle, d.epoch) == (d.a * 2, d.a * 3, 3, 1) for d in taken)
    assert got == list(range(sent))
    assert sent > 4 * SLOTS


def test_a_full_ring_refuses_and_counts_a_stall_until_the_consumer_releases() -> None:
    _, p, c = descriptor_ring()
    assert all(put(p, i) for i in range(SLOTS))
    assert not put(p, SLOTS)
    assert p.stalls == 1
    p.publish()
    assert len(c.take(limit=4)) == 4
    assert not put(p, SLOTS)  # taken but not released: the slots are still the consumer's
    assert p.stalls == 2
    c.release()
    assert all(put(p, SLOTS + i) for i in range(4))
    assert not put(p, 99)
    p.publish()
    assert [d.a for d in c.take()] == list(range(4, SLOTS + 4))


def test_nothing_is_visible_before_publish_and_take_honours_its_limit() -> None:
    _, p, c = descriptor_ring()
    for i in range(10):
        put(p, i)
    assert c.available() == 0 and c.take() == []
    assert p.publish() and not p.publish()  # the second has nothing new
    assert [d.a for d in c.take(limit=3)] == [0, 1, 2]
    assert [d.a for d in c.take(limit=0)] == []
    assert [d.a for d in c.take()] == list(range(3, 10))


def test_each_side_writes_only_its_own_counter() -> None:
    mem, p, c = descriptor_ring()
    tail_line = bytes(mem[RING_TAIL_OFF:RING_DATA_OFF])
    for i in range(40):
        put(p, i)
        if i % 8 == 7:
            p.publish()
            assert bytes(mem[RING_TAIL_OFF:RING_DATA_OFF]) == tail_line  # untouched by the producer
            head_line = bytes(mem[RING_HEAD_OFF:RING_TAIL_OFF])
            c.take()
            c.release()
            assert bytes(mem[RING_HEAD_OFF:RING_TAIL_OFF]) == head_line  # untouched by the consumer
            tail_line = bytes(mem[RING_TAIL_OFF:RING_DATA_OFF])


@pytest.mark.parametrize("head", [SLOTS + 1, 1 << 40, (1 << 64) - 1], ids=["by-one", "far", "max"])
def test_a_head_that_jumps_beyond_the_ring_is_an_error_not_a_read(head: int) -> None:
    mem, p, c = descriptor_ring()
    put(p, 0)
    p.publish()
    U64.pack_into(mem, RING_HEAD_OFF, head)
    with pytest.raises(ArenaError) as err:
        c.take()
    assert err.value.reason == "ring_index"
    with pytest.raises(ArenaError):
        DescriptorConsumer(mem, 0, SLOTS)  # attaching to it fails the same way


@pytest.mark.parametrize("tail", [5, 1 << 33], ids=["past-published", "far"])
def test_a_tail_beyond_what_was_published_is_an_error_for_the_producer(tail: int) -> None:
    mem, p, _ = descriptor_ring()
    for i in range(SLOTS):
        put(p, i)
    U64.pack_into(mem, RING_TAIL_OFF, tail)  # nothing published yet: a consumer cannot have taken anything
    with pytest.raises(ArenaError) as err:
        put(p, SLOTS)
    assert err.value.reason == "ring_tail"


def test_a_tail_that_moves_backwards_is_an_error_for_the_producer() -> None:
    mem, p, c = descriptor_ring()
    for i in range(SLOTS):
        put(p, i)
    p.publish()
    c.take(limit=8)
    c.release()
    assert p.used() == 8
    U64.pack_into(mem, RING_TAIL_OFF, 2)
    with pytest.raises(ArenaError):
        p.used()


def test_descriptor_capacity_must_be_a_power_of_two_and_fit_the_region() -> None:
    mem = memoryview(bytearray(ring_bytes(32, 16)))
    with pytest.raises(ArenaError):
        DescriptorConsumer(mem, 0, 12)
    with pytest.raises(ArenaError):
        DescriptorProducer(mem, 64, 16)  # would end past the region


# --- byte rings -------------------------------------------------------------------------------------------


def test_records_wrap_with_a_pad_and_come_out_whole() -> None:
    _, p, c = byte_ring()
    payloads = [bytes([i]) * n for i, n in enumerate([100, 60, 3, 0, 90, 120, 1, 119, 7, 64])]
    got = []
    for data in payloads:
        assert p.put(RecordKind.CONTROL, data, flags=len(data) & 0xFF)
        p.publish()
        got += c.take()
        c.release()
    assert [r.data for r in got] == payloads
    assert [r.flags for r in got] == [len(d) for d in payloads]


def test_the_largest_record_fits_an_empty_ring_wherever_it_starts() -> None:
    _, p, c = byte_ring()
    big = b"x" * p.max_payload
    for skew in range(0, BYTES, 8):
        if skew:
            assert p.put(RecordKind.FRAME, b"")
        p.publish()
        c.take()
        c.release()
        assert p.put(RecordKind.FRAME, big)
        p.publish()
        assert c.take() == [(RecordKind.FRAME, 0, big)]
        c.release()
    with pytest.raises(ValueError):
        p.put(RecordKind.FRAME, big + b"y")


def test_a_byte_ring_that_is_full_stalls_until_released() -> None:
    _, p, c = byte_ring()
    n = 0
    while p.put(RecordKind.CONTROL, b"abcdefghij"):  # 24 bytes a record
        n += 1
    assert n == BYTES // 24 and p.stalls == 1
    p.publish()
    first = c.take(limit=2)
    assert len(first) == 2
    assert not p.put(RecordKind.CONTROL, b"abcdefghij")
    c.release()
    assert p.put(RecordKind.CONTROL, b"abcdefghij")


def _published(mem: memoryview, head: int) -> ByteConsumer:
    U64.pack_into(mem, RING_HEAD_OFF, head)
    return ByteConsumer(mem, 0, BYTES)


@pytest.mark.parametrize(
    ("header", "head", "reason"),
    [
        ((0, 0, 0), 8, "ring_record"),  # a zeroed area: kind 0 is never valid
        ((8, 99, 0), 16, "ring_record"),  # an unknown kind
        ((64, int(RecordKind.CONTROL), 0), 16, "ring_record"),  # the length runs past what is published
        ((1 << 31, int(RecordKind.FRAME), 0), BYTES, "ring_record"),  # ... and past the ring's end
        ((0, int(RecordKind.PAD), 0), 8, "ring_record"),  # a pad that does not reach the end
        ((8, int(RecordKind.CONTROL), 0), 12, "ring_index"),  # a head that is not 8-aligned
        ((8, int(RecordKind.CONTROL), 0), BYTES + 8, "ring_index"),  # a head beyond the ring
    ],
)
def test_hostile_records_are_errors_not_reads(header: tuple[int, int, int], head: int, reason: str) -> None:
    mem = memoryview(bytearray(ring_bytes(1, BYTES)))
    RECORD_HEADER.pack_into(mem, RING_DATA_OFF, *header)
    with pytest.raises(ArenaError) as err:
        _published(mem, head).take()
    assert err.value.reason == reason


def test_a_record_that_would_cross_the_end_of_the_ring_is_an_error() -> None:
    mem = memoryview(bytearray(ring_bytes(1, BYTES)))
    U64.pack_into(mem, RING_TAIL_OFF, 200)
    RECORD_HEADER.pack_into(mem, RING_DATA_OFF + 200, 100, RecordKind.CONTROL, 0)  # 200 + 112 > 256
    with pytest.raises(ArenaError) as err:
        _published(mem, 200 + BYTES).take(limit=1)  # all published: only the end of the ring is crossed
    assert err.value.reason == "ring_record"


def test_a_pad_must_cover_exactly_the_rest_of_the_ring() -> None:
    mem, p, c = byte_ring()
    assert p.put(RecordKind.CONTROL, b"x" * 100)  # 112 bytes
    assert p.put(RecordKind.CONTROL, b"y" * 100)  # 224
    p.publish()
    c.take()
    c.release()
    assert p.put(RecordKind.CONTROL, b"z" * 100)  # does not fit the last 32 bytes: a pad, then at 0
    p.publish()
    RECORD_HEADER.pack_into(mem, RING_DATA_OFF + 224, 8, RecordKind.PAD, 0)  # says 8, the rest is 24
    with pytest.raises(ArenaError):
        c.take()


# --- hypothesis: against a model queue ----------------------------------------------------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 20)),
        st.tuples(st.just("take"), st.one_of(st.none(), st.integers(0, 20))),
        st.tuples(st.just("release"), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops=OPS)
def test_descriptor_ring_behaves_as_a_bounded_queue(ops: list[tuple[str, int | None]]) -> None:
    _, p, c = descriptor_ring(8)
    queue: deque[int] = deque()  # published or not, not yet taken
    unreleased = 0
    released = 0  # taken and released
    sent = 0
    for op, n in ops:
        if op == "put":
            for _ in range(n or 0):
                room = len(queue) + unreleased < 8
                assert put(p, sent) == room
                if room:
                    queue.append(sent)
                    sent += 1
            p.publish()
        elif op == "take":
            taken = [d.a for d in c.take(n)]
            want = [queue.popleft() for _ in range(min(len(queue), len(queue) if n is None else n))]
            assert taken == want
            unreleased += len(taken)
        else:
            c.release()
            released += unreleased
            unreleased = 0
    assert released + unreleased + len(queue) == sent


@settings(max_examples=150, deadline=None)
@given(sizes=st.lists(st.integers(0, 120), max_size=40), takes=st.lists(st.integers(1, 4), min_size=1))
def test_byte_ring_behaves_as_a_queue_of_records(sizes: list[int], takes: list[int]) -> None:
    _, p, c = byte_ring()
    queue: deque[bytes] = deque()
    for i, size in enumerate(sizes):
        data = bytes([i % 256]) * size
        while not p.put(RecordKind.CONTROL, data):
            p.publish()
            taken = c.take(takes[i % len(takes)])
            assert taken, "a full ring with nothing to take"
            assert [r.data for r in taken] == [queue.popleft() for _ in taken]
            c.release()
        queue.append(data)
    p.publish()
    assert [r.data for r in c.take()] == list(queue)


# --- across processes -------------------------------------------------------------------------------------


def test_a_second_process_attached_by_fd_echoes_descriptors_and_codec_messages() -> None:
    with pair() as (host, _nic), peer(host, "echo") as nic:
        out = host.descriptor_producer(RingId.H2N_DATA)
        back = host.descriptor_consumer(RingId.N2H_DATA)
        ctl_out = host.byte_producer(RingId.H2N_CONTROL)
        ctl_back = host.byte_consumer(RingId.N2H_CONTROL)
        bell = Doorbell(host.words, nic.efds[0], Direction.H2N)
        waiter = Waiter(host.words, nic.efds[1], Direction.N2H)
        messages = [Disconnect(request_id=i, ctx=7, data=bytes(i * 10)) for i in range(20)]
        for m in messages:
            assert ctl_out.put(RecordKind.CONTROL, codec.encode(m))
        ctl_out.publish()
        total = 200  # many times the ring's 16 slots: both directions fill and drain
        sent, got, ctl = 0, [], []
        deadline = time.monotonic() + 60
        while len(got) < total or len(ctl) < len(messages):
            assert time.monotonic() < deadline
            while sent < total and out.put(
                DescKind.SEND, DescFlag.FIN if sent == total - 1 else 0, 0, 5, sent, 1, -sent % 99
            ):
                sent += 1
            if out.publish():
                bell.ring()
            waiter.wait(lambda: back.available() > 0 or ctl_back.available() > 0, timeout=5)
            got += back.take()
            back.release()
            ctl += [codec.decode(r.data) for r in ctl_back.take()]
            ctl_back.release()
        assert [(d.kind, d.a, d.c, d.handle) for d in got] == [
            (DescKind.SEND_DONE, -i % 99, i, 5) for i in range(total)
        ]
        assert ctl == messages
        counters = json.loads(nic.line())
        assert counters["doorbells_rung"] + counters["doorbells_suppressed"] > 0


def test_a_consumer_killed_mid_batch_leaves_the_ring_consistent_and_the_producer_free() -> None:
    with pair() as (host, nic_side):
        out = host.descriptor_producer(RingId.H2N_DATA)
        for i in range(10):
            assert put(out, i)
        out.publish()
        with peer(host, "hold", "4") as nic:
            assert nic.line() == "took 6"  # 4 taken and released, 6 taken and held
            nic.proc.kill()
            nic.proc.wait(timeout=30)
        assert out.used() == 6  # the released 4 are free again, the held 6 are not
        assert all(put(out, i) for i in range(10, 20))  # exactly the free slots: not wedged
        assert not put(out, 20) and out.stalls == 1
        out.publish()
        successor = nic_side.descriptor_consumer(RingId.H2N_DATA)
        assert [d.a for d in successor.take()] == list(range(4, 20))  # the held batch, then the rest


def test_a_peer_can_be_woken_while_it_sleeps() -> None:
    with pair() as (host, _), peer(host, "echo", "60") as nic:  # the peer sleeps up to 60 s at a time
        out = host.descriptor_producer(RingId.H2N_DATA)
        bell = Doorbell(host.words, nic.efds[0], Direction.H2N)
        back = host.descriptor_consumer(RingId.N2H_DATA)
        waiter = Waiter(host.words, nic.efds[1], Direction.N2H)
        for i in range(3):
            wait_until_asleep(host.mem)
            assert put(out, i) and out.publish()
            assert bell.ring()  # it is asleep: this rings
            wait_for(waiter, lambda: back.available() > 0)  # it woke and answered
            assert [d.c for d in back.take()] == [i]
            back.release()
        out.put(DescKind.SEND, DescFlag.FIN, 0, 0, 0, 0, 0)
        out.publish()
        bell.ring()
        counters = json.loads(nic.line())
        assert counters["wakeups"] >= 3 and counters["wakeup_timeouts"] == 0  # each ring woke it


def wait_for(waiter: Waiter, has_work: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not waiter.wait(has_work):
        assert time.monotonic() < deadline, "no answer from the peer"


def wait_until_asleep(mem: memoryview) -> None:
    deadline = time.monotonic() + 30
    while not U64.unpack_from(mem, H2N_SLEEP_OFF)[0] & 1:
        assert time.monotonic() < deadline, "the peer never went to sleep"
        time.sleep(0.001)


def test_descriptor_size_is_the_documented_32_bytes() -> None:
    assert DESCRIPTOR.size == 32
