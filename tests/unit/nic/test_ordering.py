"""One direction's control ring and data ring as one ordered stream (nic/ordering.py): whatever mix of
messages and descriptors a producer puts, wherever it publishes and the consumer takes, with the rings
full or not, the consumer sees them in the producer's order; a mark whose descriptors it has not seen yet
makes it wait, never skip; a mark that lies is an ArenaError."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ring_kit import pair

from tcpchimney.chimney import codec
from tcpchimney.chimney.indications import SendBacklogChanged
from tcpchimney.chimney.requests import Send
from tcpchimney.nic.descriptors import ArenaError, DescKind, Descriptor, RingId
from tcpchimney.nic.ordering import OrderedReader, OrderedWriter

EPOCH = 3


@contextmanager
def _ends() -> Iterator[tuple[OrderedWriter, OrderedReader]]:
    """The host's writer and the NIC's reader of the H2N rings (4 KiB of control, 16 descriptors)."""
    with pair() as (host, nic):
        yield (
            OrderedWriter(
                host.byte_producer(RingId.H2N_CONTROL), host.descriptor_producer(RingId.H2N_DATA), EPOCH
            ),
            OrderedReader(nic.byte_consumer(RingId.H2N_CONTROL), nic.descriptor_consumer(RingId.H2N_DATA)),
        )


def _put(writer: OrderedWriter, i: int, as_descriptor: bool) -> None:
    """Item ``i``: a descriptor if asked and it can go as one, else a message that says ``i`` (every fifth
    one 3 KB long: cut into records of at most 2 KiB, some waiting in the backlog)."""
    if as_descriptor and writer.put(DescKind.SEND, 0, 1, i, 8, i):
        return
    writer.send(Send(i + 1, 1, bytes(3000)) if i % 5 == 0 else SendBacklogChanged(1, i))


def _index(item: bytes | Descriptor) -> int:
    if isinstance(item, bytes):
        message = codec.decode(item)
        if isinstance(message, Send):
            return message.request_id - 1
        assert isinstance(message, SendBacklogChanged)
        return message.backlog
    assert item.epoch == EPOCH and item.kind == DescKind.SEND
    return item.c


@settings(max_examples=120, deadline=None)
@given(
    kinds=st.lists(st.booleans(), min_size=1, max_size=80),
    steps=st.lists(st.sampled_from(["put", "publish", "take", "control_only"]), max_size=300),
)
def test_any_mix_arrives_in_the_producers_order(kinds: list[bool], steps: list[str]) -> None:
    """Items 0..n-1, each a descriptor or a message, put, published (sometimes the control ring alone,
    as a reader in the other process may see it between the two head stores) and taken at random points:
    the reader returns exactly 0..n-1."""
    with _ends() as (writer, reader):
        got: list[int] = []
        nxt = 0
        for step in [*steps, *["put", "publish", "take"] * (len(kinds) + 20)]:
            if step == "put" and nxt < len(kinds):
                _put(writer, nxt, kinds[nxt])
                nxt += 1
            elif step == "publish":
                writer.flush()
                writer.publish()
            elif step == "control_only":
                writer.flush()
                writer.control.publish()
            else:
                got += [_index(item) for item in reader.take()]
                reader.release()
            assert got == list(range(len(got))), "out of order"
        assert got == list(range(len(kinds)))


def test_a_mark_ahead_of_the_data_head_seen_waits_then_goes_on_in_order() -> None:
    """The producer's control head is stored before its data head: a reader between the two sees the
    mark but not the descriptors it names. It hands out nothing after the mark until they are there."""
    with _ends() as (writer, reader):
        _put(writer, 0, True)
        _put(writer, 1, False)  # the mark "1 descriptor first", then message 1
        writer.control.publish()  # as seen between the two stores
        assert reader.take() == []
        assert reader.waits == 1 and reader.available()
        writer.publish()
        assert [_index(i) for i in reader.take()] == [0, 1]
        assert not reader.available()


def test_no_descriptor_overtakes_a_message_waiting_for_room() -> None:
    """Control records wait in the backlog (the ring is full): a descriptor is refused, the item goes as a
    message behind them."""
    with _ends() as (writer, _reader):
        for i in range(30):  # 1 KB each: fills the 4 KiB control ring, the rest waits
            writer.send(Send(i + 1, 1, bytes(1000)))
            if writer.blocked:
                break
        assert writer.blocked
        assert not writer.put(DescKind.SEND, 0, 1, 0, 8, 999)
        assert writer.descriptors == 0


@pytest.mark.parametrize("mark", [0, 19], ids=["backwards", "beyond_the_ring"])
def test_a_mark_that_lies_is_an_arena_error(mark: int) -> None:
    with _ends() as (writer, reader):
        for i in range(2):
            assert writer.put(DescKind.SEND, 0, 1, i, 8, i)
        writer.send(SendBacklogChanged(1, 5))  # mark 2
        writer.publish()
        assert len(reader.take()) == 3
        reader.release()
        writer.control.send_mark(mark)  # a producer gone astray: 0 < 2 taken, or 19 > 2 + 16 slots
        writer.control.publish()
        with pytest.raises(ArenaError, match="ring_mark"):
            reader.take()
