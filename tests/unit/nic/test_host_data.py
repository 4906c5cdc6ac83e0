"""The host's TX buffers (nic/host_data.py, Shadow.tx_open): every byte of a Send stays in the TX buffer
from the Send until its completion, whatever the order completions come in and however the stream wraps;
a Send goes as a descriptor exactly when it fits the room that leaves, and as a message otherwise."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from ring_kit import pair

from tcpchimney.chimney.requests import Send
from tcpchimney.nic.descriptors import DescKind, RingId
from tcpchimney.nic.host_data import HostDataPath
from tcpchimney.nic.ordering import OrderedReader, OrderedWriter
from tcpchimney.nic.process_recovery import Recovery
from tcpchimney.nic.recovery import Shadow

CTX = 77
TX = 4096 * 3


def _shadow(tx_off: int) -> Shadow:
    snap: Any = SimpleNamespace(delegated=SimpleNamespace(send_data=b""))  # all a Shadow reads of it here
    shadow = Shadow(5, 1, 9, (tx_off + TX, 4096), (tx_off, TX), snap, 0.0)
    shadow.target_handle = CTX
    return shadow


@settings(max_examples=150, deadline=None)
@given(
    ops=st.lists(
        st.one_of(st.integers(1, TX + 100), st.tuples(st.just("done"), st.integers(0, 10))), max_size=60
    )
)
def test_open_sends_are_never_overwritten(ops: list[int | tuple[str, int]]) -> None:
    with pair() as (host, nic):
        recovery = Recovery(host, clock=lambda: 0.0)
        shadow = _shadow(host.layout.pool_off)
        recovery.shadows.by_host[shadow.host_handle] = shadow
        recovery.shadows.by_target[CTX] = shadow.host_handle
        data = HostDataPath(host, recovery, host.epoch or 0)
        writer = OrderedWriter(
            host.byte_producer(RingId.H2N_CONTROL), host.descriptor_producer(RingId.H2N_DATA), 0
        )
        reader = OrderedReader(
            nic.byte_consumer(RingId.H2N_CONTROL), nic.descriptor_consumer(RingId.H2N_DATA)
        )
        open_sends: dict[int, tuple[int, bytes]] = {}
        rid = 0
        for op in ops:
            if isinstance(op, tuple):
                if open_sends:
                    done = sorted(open_sends)[op[1] % len(open_sends)]  # in any order
                    del open_sends[done]
                    shadow.send_done(done, True)
                continue
            rid += 1
            payload = bytes([rid % 251 + 1]) * op
            room = shadow.tx_room()
            went = data.send(Send(rid, CTX, payload), writer)
            assert went == (op <= room), f"{op} bytes, {room} free"
            if went:
                open_sends[rid] = (shadow.tx_open[rid][0], payload)
            writer.publish()
            for item in reader.take():  # the consumer keeps up: the data ring never limits here
                assert not isinstance(item, bytes) and item.kind == DescKind.SEND
            reader.release()
            for start, sent in open_sends.values():
                assert host.read_stream(*shadow.tx, start, len(sent)) == sent, "an open Send was overwritten"
