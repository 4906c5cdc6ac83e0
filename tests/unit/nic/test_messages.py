"""The byte rings' payloads (nic/messages.py): codec messages cut into records and joined again, a writer's
backlog when the ring is full, and frames with their virtio-net header."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ring_kit import pair

from tcpchimney.chimney import codec
from tcpchimney.chimney.indications import PeerReset
from tcpchimney.chimney.requests import Send
from tcpchimney.nic.descriptors import RECORD_MORE, ArenaError, RecordKind, RingId
from tcpchimney.nic.messages import ControlReader, ControlWriter, frame_of_record, put_frame
from tcpchimney.wire.errors import WireError
from tcpchimney.wire.frame import Frame


@contextmanager
def _ends() -> Iterator[tuple[ControlWriter, ControlReader]]:
    """The host's writer and the NIC's reader of H2N_CONTROL (4 KiB: records of at most 2 KiB)."""
    with pair() as (host, nic):
        yield (
            ControlWriter(host.byte_producer(RingId.H2N_CONTROL)),
            ControlReader(nic.byte_consumer(RingId.H2N_CONTROL)),
        )


def test_a_message_longer_than_a_record_is_cut_and_joined_in_order() -> None:
    """The ring holds 4 KiB (records of at most 2 KiB): a 10 KB Send crosses it in pieces, between two small
    messages, and comes out whole and in order however the consumer's takes fall."""
    with _ends() as (writer, reader):
        big = Send(7, 3, bytes(range(256)) * 40)
        messages = [PeerReset(1), big, PeerReset(2)]
        for m in messages:
            writer.send(m)
        got: list[object] = []
        for _ in range(20):
            writer.publish()
            got += [codec.decode(d) for d in reader.take()]
            reader.release()
            writer.flush()
        assert got == messages
        assert writer.records > 3 and writer.backlogged > 0, "cut into records, some waited for room"
        assert not writer.blocked


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 9000), min_size=1, max_size=12), takes=st.lists(st.booleans()))
def test_any_mix_of_message_sizes_arrives_exactly(sizes: list[int], takes: list[bool]) -> None:
    with _ends() as (writer, reader):
        sent = [Send(i, 1, bytes([i % 251]) * n) for i, n in enumerate(sizes)]
        got: list[object] = []
        pending = list(sent)
        turns = iter(takes + [True] * 200)
        while len(got) < len(sent):
            if pending and next(turns):
                writer.send(pending.pop(0))
            writer.flush()
            writer.publish()
            got += [codec.decode(d) for d in reader.take()]
            reader.release()
        assert got == sent


def test_a_frame_record_on_a_control_ring_is_refused() -> None:
    with pair() as (host, nic):
        ring = host.byte_producer(RingId.H2N_CONTROL)
        ring.put(RecordKind.FRAME, b"x" * 8)
        ring.publish()
        with pytest.raises(ArenaError, match="ring_record"):
            ControlReader(nic.byte_consumer(RingId.H2N_CONTROL)).take()


def test_a_message_never_finished_stays_partial() -> None:
    """A producer that died after a MORE record: nothing is decoded from the half message."""
    with pair() as (host, nic):
        ring = host.byte_producer(RingId.H2N_CONTROL)
        ring.put(RecordKind.CONTROL, codec.encode(PeerReset(3))[:2], RECORD_MORE)
        ring.publish()
        reader = ControlReader(nic.byte_consumer(RingId.H2N_CONTROL))
        assert reader.take() == []


def _tcp_frame(payload: bytes) -> bytes:
    eth = bytes(6) + bytes([2, 0, 0, 0, 0, 1]) + b"\x08\x00"
    ip = bytes([0x45, 0]) + (40 + len(payload)).to_bytes(2, "big") + bytes(4) + bytes([64, 6]) + bytes(10)
    tcp = bytes(12) + bytes([0x50, 0x18]) + bytes(6)
    return eth + ip + tcp + payload


@pytest.mark.parametrize(
    ("partial", "valid", "gso"),
    [(False, False, 0), (False, True, 0), (True, False, 0), (True, False, 1448)],
)
def test_a_frame_passed_up_keeps_its_offload_state(partial: bool, valid: bool, gso: int) -> None:
    data = _tcp_frame(bytes(range(200)) * 20)
    frame = Frame(data[:54], data[54:], partial, valid, gso)
    with pair() as (host, nic):
        ring = nic.byte_producer(RingId.N2H_FRAMES)
        assert put_frame(ring, frame)
        ring.publish()
        (record,) = host.byte_consumer(RingId.N2H_FRAMES).take()
    got = frame_of_record(record.kind, record.data)
    assert got.tobytes() == data
    assert (got.csum_partial, got.csum_valid, got.gso_size) == (partial, valid, gso)


def test_a_frame_whose_header_makes_no_sense_raises_with_a_reason() -> None:
    with pytest.raises(WireError) as info:
        frame_of_record(RecordKind.FRAME, bytes([0x80]) + bytes(9) + _tcp_frame(b""))
    assert info.value.reason == "vnet_unknown_flags"
