"""SendBuffer and ReceiveBuffer: examples for each rule, then hypothesis properties over random streams."""

from __future__ import annotations

import itertools
import tracemalloc
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpchimney.tcp.buffers import ReceiveBuffer, SendBuffer

# --- SendBuffer ---------------------------------------------------------------------------------------------


def test_send_write_is_bounded_by_capacity() -> None:
    buf = SendBuffer(10)
    assert buf.write(b"abcdefgh") == 8
    assert buf.write(b"xyz") == 2
    assert buf.write(b"q") == 0
    assert len(buf) == 10 and buf.space == 0
    assert buf.tobytes() == b"abcdefghxy"


def test_send_write_copies_the_callers_data() -> None:
    buf = SendBuffer(100)
    data = bytearray(b"hello")
    buf.write(data)
    data[:] = b"XXXXX"
    assert buf.tobytes() == b"hello"


def test_send_write_keeps_a_whole_bytes_object_and_copies_a_view_or_a_part() -> None:
    big = bytes(range(256)) * 400  # larger than the merge limit: its own chunk
    buf = SendBuffer(1 << 20)
    buf.write(big)
    view = buf.view(0, 10)
    assert isinstance(view, memoryview) and view.obj is big  # immutable: no copy needed
    for data in (memoryview(big), big):
        part = SendBuffer(len(big) - 1)  # only a part fits: the part is copied
        part.write(data)
        kept = part.view(0, 10)
        assert isinstance(kept, memoryview) and kept.obj is not big


def test_send_view_within_one_chunk_is_zero_copy() -> None:
    buf = SendBuffer(1 << 20)
    big = bytes(range(256)) * 400  # larger than the merge limit: its own chunk
    buf.write(big)
    view = buf.view(1000, 1460)
    assert isinstance(view, memoryview)
    assert bytes(view) == big[1000:2460]


def test_send_view_across_chunks_joins() -> None:
    buf = SendBuffer(1 << 20)
    a, b = b"a" * 20000, b"b" * 20000
    buf.write(a)
    buf.write(b)
    assert bytes(buf.view(19990, 20)) == b"a" * 10 + b"b" * 10


def test_send_view_stays_valid_after_more_writes_and_consume() -> None:
    buf = SendBuffer(1 << 20)
    buf.write(b"first")
    view = buf.view(0, 5)
    buf.write(b"second")
    buf.consume(3)
    assert bytes(view) == b"first"
    assert buf.tobytes() == b"stsecond"


def test_send_consume_frees_space_and_shifts_offsets() -> None:
    buf = SendBuffer(10)
    buf.write(b"0123456789")
    buf.consume(4)
    assert buf.space == 4 and len(buf) == 6
    assert bytes(buf.view(0, 2)) == b"45"
    assert buf.write(b"abcdef") == 4
    assert buf.tobytes() == b"456789abcd"


def test_send_capacity_can_shrink_below_held_bytes() -> None:
    buf = SendBuffer(10)
    buf.write(b"0123456789")
    buf.capacity = 4
    assert buf.space == 0 and len(buf) == 10
    buf.consume(8)
    assert buf.space == 2


@pytest.mark.parametrize(("offset", "length"), [(-1, 1), (0, 11), (5, 6), (0, -1)])
def test_send_view_out_of_range_raises(offset: int, length: int) -> None:
    buf = SendBuffer(10)
    buf.write(b"0123456789")
    with pytest.raises(ValueError):
        buf.view(offset, length)


def test_send_consume_more_than_held_raises() -> None:
    buf = SendBuffer(10)
    buf.write(b"abc")
    with pytest.raises(ValueError):
        buf.consume(4)


def test_send_many_chunks_acknowledged_piecemeal() -> None:
    buf = SendBuffer(1 << 30)
    stream = b"".join(bytes([k]) * 20000 for k in range(200))  # each write is a chunk of its own
    for k in range(200):
        buf.write(stream[k * 20000 : (k + 1) * 20000])
    acked = 0
    while acked < len(stream):
        assert bytes(buf.view(0, min(30000, len(buf)))) == stream[acked : acked + 30000]
        step = min(17000, len(buf))
        buf.consume(step)
        acked += step
    assert len(buf) == 0 and buf.tobytes() == b""


def test_send_small_writes_share_a_chunk() -> None:
    buf = SendBuffer(1 << 20)
    for k in range(100):
        buf.write(bytes([k]) * 10)
    view = buf.view(0, 1000)
    assert isinstance(view, memoryview)  # one chunk: no copy even across the 100 writes
    assert bytes(view) == b"".join(bytes([k]) * 10 for k in range(100))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["write", "consume", "view"]), st.integers(0, 40000), st.integers(0, 40000)
        ),
        max_size=40,
    ),
    st.integers(1, 200000),
)
def test_property_send_views_equal_the_written_stream(ops: list[tuple[str, int, int]], capacity: int) -> None:
    buf = SendBuffer(capacity)
    model = bytearray()
    counter = 0
    for op, a, b in ops:
        if op == "write":
            data = bytes((counter + k) % 251 for k in range(a % 3000 if b % 2 else a))
            counter += len(data)
            taken = buf.write(data)
            assert taken == min(len(data), capacity - len(model))
            model += data[:taken]
        elif op == "consume":
            n = a % (len(model) + 1)
            buf.consume(n)
            del model[:n]
        else:
            offset = a % (len(model) + 1)
            length = b % (len(model) - offset + 1)
            assert bytes(buf.view(offset, length)) == model[offset : offset + length]
        assert len(buf) == len(model)
        assert buf.space == capacity - len(model)
    assert buf.tobytes() == bytes(model)


# --- ReceiveBuffer ------------------------------------------------------------------------------------------


def test_receive_in_order_insert_advances_and_reads() -> None:
    buf = ReceiveBuffer(100)
    assert buf.insert(0, b"hello") == 5
    assert buf.readable == 5 and buf.window == 95
    assert buf.read(3) == b"hel"
    assert buf.read() == b"lo"
    assert buf.window == 100


def test_receive_out_of_order_then_gap_filled() -> None:
    buf = ReceiveBuffer(100)
    assert buf.insert(5, b"world") == 0
    assert buf.readable == 0 and buf.window == 100  # out-of-order bytes stay inside the window
    assert buf.ooo_ranges() == [(5, 10)]
    assert buf.insert(0, b"hello") == 10
    assert buf.read() == b"helloworld"
    assert buf.ooo_ranges() == []


def test_receive_negative_offset_trims_the_old_part() -> None:
    buf = ReceiveBuffer(100)
    buf.insert(0, b"abc")
    assert buf.insert(-2, b"bcdef") == 3
    assert buf.read() == b"abcdef"


def test_receive_data_beyond_window_is_trimmed() -> None:
    buf = ReceiveBuffer(8)
    assert buf.insert(0, b"0123456789") == 8
    assert buf.window == 0
    assert buf.insert(0, b"89") == 0
    assert buf.read() == b"01234567"


def test_receive_out_of_order_beyond_window_is_trimmed() -> None:
    buf = ReceiveBuffer(10)
    buf.insert(6, b"6789abcd")
    assert buf.ooo_ranges() == [(6, 10)]


def test_receive_duplicates_are_idempotent() -> None:
    buf = ReceiveBuffer(100)
    buf.insert(10, b"xyz")
    buf.insert(10, b"xyz")
    buf.insert(11, b"y")
    assert buf.ooo_ranges() == [(10, 13)]
    assert buf.ooo_bytes == 3


def test_rfc2018_4_most_recently_changed_block_first() -> None:
    buf = ReceiveBuffer(1000)
    buf.insert(100, b"a" * 10)
    buf.insert(300, b"b" * 10)
    buf.insert(200, b"c" * 10)
    assert buf.ooo_ranges() == [(200, 210), (300, 310), (100, 110)]
    buf.insert(110, b"d" * 5)  # extends the oldest block: it becomes the newest
    assert buf.ooo_ranges() == [(100, 115), (200, 210), (300, 310)]


def test_receive_insert_bridging_blocks_merges_them() -> None:
    buf = ReceiveBuffer(1000)
    buf.insert(10, b"B" * 10)
    buf.insert(30, b"D" * 10)
    buf.insert(5, b"A" * 5 + b"X" * 10 + b"C" * 10 + b"Y" * 10 + b"E" * 5)
    assert buf.ooo_ranges() == [(5, 45)]
    buf.insert(0, b"0" * 5)
    assert buf.read() == b"0" * 5 + b"A" * 5 + b"B" * 10 + b"C" * 10 + b"D" * 10 + b"E" * 5


def test_receive_capacity_change_moves_the_window() -> None:
    buf = ReceiveBuffer(100)
    buf.insert(0, b"x" * 60)
    buf.capacity = 50
    assert buf.window == 0
    assert buf.insert(0, b"more") == 0
    buf.capacity = 200
    assert buf.window == 140


def test_receive_drop_out_of_order() -> None:
    buf = ReceiveBuffer(100)
    buf.insert(5, b"later")
    buf.drop_out_of_order()
    assert buf.ooo_ranges() == []
    assert buf.insert(0, b"01234") == 5


def test_receive_tobytes_does_not_consume() -> None:
    buf = ReceiveBuffer(100)
    buf.insert(0, b"abc")
    buf.insert(0, b"def")  # offsets are relative to RCV.NXT, which is now 3
    buf.read(1)
    assert buf.tobytes() == b"bcdef"
    assert buf.read() == b"bcdef"


def test_receive_keeps_a_copy_of_mutable_sources() -> None:
    buf = ReceiveBuffer(100)
    frame = bytearray(b"payload")
    buf.insert(0, memoryview(frame))
    buf.insert(3, memoryview(frame)[:3])  # out of order: 3 bytes after RCV.NXT
    frame[:] = b"XXXXXXX"
    assert buf.read() == b"payload"
    buf.insert(0, b"...")
    assert buf.read() == b"...pay"


@st.composite
def _stream_and_segments(draw: st.DrawFn) -> tuple[bytes, list[tuple[int, int]], int]:
    length = draw(st.integers(0, 3000))
    stream = bytes((k * 7 + length) % 256 for k in range(length))
    cuts = sorted([*draw(st.lists(st.integers(0, length), max_size=30)), 0, length])
    segments = [(a, b) for a, b in itertools.pairwise(cuts) if b > a]
    overlaps = draw(st.lists(st.tuples(st.integers(0, length), st.integers(1, 400)), max_size=15))
    segments += [(a, min(length, a + n)) for a, n in overlaps if a < length]
    segments = draw(st.permutations(segments))
    capacity = draw(st.integers(1, 4000))
    return stream, list(segments), capacity


@settings(max_examples=300, deadline=None)
@given(_stream_and_segments())
def test_property_random_order_and_duplicates_reassemble(
    case: tuple[bytes, list[tuple[int, int]], int],
) -> None:
    stream, segments, capacity = case
    buf = ReceiveBuffer(capacity)
    nxt = 0  # stream offset of RCV.NXT
    received = bytearray()
    pending = list(segments)
    rounds = 0
    while nxt < len(stream):
        rounds += 1
        assert rounds <= len(stream)  # every round makes progress
        for a, b in pending:
            advance = buf.insert(a - nxt, memoryview(stream)[a:b])
            nxt += advance
            right_edge = buf.window
            for start, end in buf.ooo_ranges():
                assert 0 < start < end <= right_edge
            ranges = sorted(buf.ooo_ranges())
            for (_, e1), (s2, _) in itertools.pairwise(ranges):
                assert e1 < s2  # disjoint and not touching
        received += buf.read()
        # The window may have cut data off: the peer retransmits everything still unacknowledged.
        pending = [(a, b) for a, b in segments if b > nxt]
    assert bytes(received) == stream


@settings(max_examples=200, deadline=None)
@given(_stream_and_segments(), st.integers(0, 4), st.integers(0, 600))
def test_property_bounded_queue_reassembles_and_never_passes_its_bounds(
    case: tuple[bytes, list[tuple[int, int]], int], max_blocks: int, max_ooo_bytes: int
) -> None:
    """Whatever the bounds (0 runs: no out-of-order queue at all), data at RCV.NXT is always taken, so a
    peer that retransmits what is unacknowledged completes the stream; the queue never passes either bound."""
    stream, segments, capacity = case
    buf = ReceiveBuffer(capacity, max_blocks=max_blocks, max_ooo_bytes=max_ooo_bytes)
    byte_bound = max_ooo_bytes or capacity
    nxt = 0
    received = bytearray()
    pending = list(segments)
    while nxt < len(stream):
        before = nxt
        for a, b in pending:
            nxt += buf.insert(a - nxt, memoryview(stream)[a:b])
            ranges = buf.ooo_ranges()
            assert len(ranges) == buf.ooo_blocks <= max_blocks
            assert buf.ooo_bytes == sum(e - s for s, e in ranges) <= byte_bound
        assert nxt > before  # every round makes progress
        received += buf.read()
        pending = [(a, b) for a, b in segments if b > nxt]
    assert bytes(received) == stream


# --- the bounds on the out-of-order queue (SegmentSmack, CVE-2018-5390) -------------------------------


def _one_byte_holes(buf: ReceiveBuffer, count: int) -> list[str | None]:
    """A peer sending ``count`` one-byte segments with a one-byte hole before each; what ``refused`` said."""
    refusals = []
    for k in range(count):
        assert buf.insert(2 * k + 1, b"%c" % (k % 256)) == 0
        refusals.append(buf.refused)
    return refusals


def test_queue_never_exceeds_its_bound_under_a_flood_of_one_byte_holes() -> None:
    buf = ReceiveBuffer(1 << 20)
    refusals = _one_byte_holes(buf, 100_000)
    assert buf.ooo_blocks == 100  # the default bound (FreeBSD's 100 segments)
    assert buf.ooo_bytes == 100
    assert refusals[:100] == [None] * 100 and set(refusals[100:]) == {"ooo_queue_full"}
    assert buf.ooo_ranges(3) == [(199, 200), (197, 198), (195, 196)]  # the newest held first


def test_next_in_order_segment_is_always_admitted_and_the_stream_completes() -> None:
    stream = bytes(k % 251 for k in range(50_000))
    buf = ReceiveBuffer(1 << 20, max_blocks=10)
    for k in range(1000):  # the peer's real bytes, every other one first
        buf.insert(2 * k + 1, stream[2 * k + 1 : 2 * k + 2])
    assert buf.ooo_blocks == 10
    got = bytearray()
    nxt = 0
    for start in range(0, len(stream), 1000):  # then the whole stream, in order
        nxt += buf.insert(start - nxt, stream[start : start + 1000])
        assert buf.refused is None
        got += buf.read()
    assert bytes(got) == stream and buf.ooo_blocks == 0


def test_segments_that_grow_or_join_runs_are_taken_at_the_bound() -> None:
    buf = ReceiveBuffer(1000, max_blocks=2)
    buf.insert(10, b"b" * 10)
    buf.insert(30, b"d" * 10)
    buf.insert(50, b"f" * 10)
    assert buf.refused == "ooo_queue_full" and buf.ooo_ranges() == [(30, 40), (10, 20)]
    buf.insert(40, b"e" * 5)  # grows a run
    buf.insert(20, b"c" * 10)  # joins the two
    assert buf.refused is None and buf.ooo_ranges() == [(10, 45)]
    buf.insert(60, b"g")
    assert buf.ooo_ranges() == [(60, 61), (10, 45)]
    assert buf.insert(0, b"a" * 10) == 45
    assert buf.read() == b"a" * 10 + b"b" * 10 + b"c" * 10 + b"d" * 10 + b"e" * 5


def test_queue_byte_bound_drops_what_would_pass_it() -> None:
    buf = ReceiveBuffer(1000, max_ooo_bytes=20)
    buf.insert(10, b"x" * 15)
    buf.insert(100, b"y" * 10)
    assert buf.refused == "ooo_bytes_full" and buf.ooo_bytes == 15
    buf.insert(12, b"x" * 16)  # 3 new bytes: fits
    assert buf.refused is None and buf.ooo_bytes == 18


def _held_memory(buf: ReceiveBuffer, offsets: Callable[[int], int], count: int = 20_000) -> int:
    """Memory (tracemalloc) held after ``count`` one-byte segments, each in its own 66-byte frame as a
    device hands them over, are inserted at ``offsets(k)``."""
    payloads = [memoryview(bytes(65) + b"z")[65:] for _ in range(count)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for k, payload in enumerate(payloads):
            buf.insert(offsets(k), payload)
        del payloads, payload
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def test_memory_of_a_flood_of_one_byte_holes_is_bounded() -> None:
    held = _held_memory(ReceiveBuffer(1 << 20), lambda k: 2 * k + 1)
    assert held < 64 * 1024, held  # 100 runs held, about 220 bytes each; the frames are not kept


def test_memory_of_one_byte_segments_is_a_small_multiple_of_the_bytes() -> None:
    """A run (or readable data) made of 20,000 one-byte segments does not cost an object per byte."""
    behind_a_hole = ReceiveBuffer(1 << 20)
    assert _held_memory(behind_a_hole, lambda k: k + 1) < 3 * 20_000
    assert behind_a_hole.ooo_ranges() == [(1, 20_001)]
    in_order = ReceiveBuffer(1 << 20)  # nobody reads
    assert _held_memory(in_order, lambda k: 0) < 3 * 20_000
    assert in_order.read() == b"z" * 20_000
