"""The host's end of the descriptor data path: Send payload into the TX buffers, receive payload out of the
RX buffers, with 32-byte descriptors on the data rings instead of codec messages on the control rings.

- ``send``: the payload of a Send is written into its connection's TX buffer at the connection's TX
  stream position and a SEND descriptor (position, length, request id) goes on H2N_DATA. The bytes stay
  there until the Send completes (``Shadow.tx_open``), whatever the status. A Send that cannot go this way
  (no slot, no room in the TX buffer, the data ring full, control records waiting for room) goes through
  the control ring as before: same contract, slower. Not held back: holding it would have to hold every
  later call of the connection too, to keep them behind it.
- ``output``: a RECEIVE_PLACED descriptor becomes the ``ReceiveIndication`` it stands for, its bytes
  copied out of the RX buffer *before* the host sees the indication (the NIC keeps them there until the
  host's ReturnReceive has reached it: an indication is a peek, nic/nic_data.py); a SEND_DONE descriptor
  becomes the ``SendCompletion`` (SUCCESS) of the Send it names.

Every descriptor is checked before anything of it is used: kind (one the NIC produces), epoch, handle
(``check_descriptor``), a handle bound to a connection the NIC holds, a span that fits the buffer from the
host's **own** copy of the binding (``check_span``; a position is taken modulo the buffer size, so no read
leaves the buffer); a RECEIVE_PLACED must lie within the bytes the connection's record says are committed,
and within the last RX buffer's worth of them (``span_placed``); a SEND_DONE must name an open Send of that
connection with its own length and end (``descriptor_send``).
Anything else raises ``ArenaError``: the NIC is broken (``ProcessTarget._broken`` fences it).
"""

from __future__ import annotations

from tcpchimney.chimney.completions import SendCompletion
from tcpchimney.chimney.indications import ReceiveIndication
from tcpchimney.chimney.requests import Request, Send
from tcpchimney.chimney.status import Status
from tcpchimney.chimney.target import Output
from tcpchimney.nic.arena import Arena
from tcpchimney.nic.descriptors import (
    N2H_BUILT,
    ArenaError,
    DescKind,
    Descriptor,
    RecordFlag,
    check_descriptor,
)
from tcpchimney.nic.ordering import OrderedWriter
from tcpchimney.nic.process_recovery import Recovery
from tcpchimney.nic.recovery import Shadow

_SEND = int(DescKind.SEND)
_PLACED = int(DescKind.RECEIVE_PLACED)

HOST_DATA_KEYS = (
    "tx_sends",  # Sends whose payload went through a TX buffer
    "tx_bytes",
    "tx_fallback_unbound",  # Sends through the control ring: the connection has no slot
    "tx_fallback_full",  # ... its TX buffer had no room
    "tx_fallback_ring",  # ... the data ring was full or control records waited
    "rx_placed",  # receive indications rebuilt from RECEIVE_PLACED
    "rx_bytes",
    "send_done",  # Send completions rebuilt from SEND_DONE
)


class HostDataPath:
    def __init__(self, arena: Arena, recovery: Recovery, epoch: int) -> None:
        self.arena = arena
        self.recovery = recovery
        self.shadows = recovery.shadows
        self.epoch = epoch
        self.counters: dict[str, int] = dict.fromkeys(HOST_DATA_KEYS, 0)

    # ------------------------------------------------------------------ Send

    def send(self, request: Send, writer: OrderedWriter) -> bool:
        """Put ``request`` on the data ring with its payload in the TX buffer; False: send it as a message."""
        counters = self.counters
        shadow = self.shadows.of_target(request.ctx)
        if shadow is None:
            counters["tx_fallback_unbound"] += 1
            return False
        n = len(request.data)
        if n > shadow.tx_room():
            counters["tx_fallback_full"] += 1
            return False
        off, size = shadow.tx
        start = shadow.tx_head
        self.arena.write_stream(off, size, start, request.data)  # before the descriptor that names it
        if not writer.put(_SEND, 0, shadow.slot, start, n, request.request_id):
            counters["tx_fallback_ring"] += 1
            return False
        shadow.tx_head = start + n
        shadow.tx_open[request.request_id] = (start, start + n)
        counters["tx_sends"] += 1
        counters["tx_bytes"] += n
        return True

    # ------------------------------------------------------------------ what the NIC put on N2H_DATA

    def output(self, desc: Descriptor, pending: dict[int, Request]) -> Output:
        """The contract message a descriptor stands for; ArenaError for one that does not check out."""
        check_descriptor(desc, N2H_BUILT, self.epoch, self.arena.layout.max_conns)
        shadow = self.shadows.by_slot.get(desc.handle)
        if shadow is None or shadow.target_handle not in self.recovery.live:  # not this NIC's (a dead one's)
            raise ArenaError("descriptor_handle", f"slot {desc.handle} holds no connection of the NIC")
        if desc.kind == _PLACED:
            return self._placed(desc, shadow)
        return self._send_done(desc, shadow, pending)

    def _placed(self, desc: Descriptor, shadow: Shadow) -> ReceiveIndication:
        off, size = shadow.rx
        self.arena.check_span(off, size, desc.b)
        if desc.b == 0:
            raise ArenaError("span_length", "an empty RECEIVE_PLACED")
        d0 = shadow.snap.delegated
        data0 = d0.buffered_start + len(d0.buffered_data)  # the sequence number of RX position 0
        self._check_placed(desc, shadow, int(data0))
        data = self.arena.read_stream(off, size, desc.a, desc.b)
        seq = data0 + desc.a
        self.counters["rx_placed"] += 1
        self.counters["rx_bytes"] += desc.b
        return ReceiveIndication(shadow.host_handle, desc.c, data, seq)  # ContractError: a bad id

    def _check_placed(self, desc: Descriptor, shadow: Shadow, data0: int) -> None:
        """The NIC commits a connection's record before it publishes what it placed (nic/commit.py), and
        keeps an indication's bytes until the host's ReturnReceive: so the span lies within the committed
        bytes and within the last RX buffer's worth of them."""
        record = self.arena.read_record(shadow.slot)  # ArenaError for a torn or foreign record
        if record is None:
            raise ArenaError("span_placed", f"RECEIVE_PLACED on slot {desc.handle} before any commit")
        fin = 1 if record.flags & RecordFlag.FIN_RECEIVED else 0
        placed = record.rcv_nxt - fin - data0
        if not placed - shadow.rx[1] <= desc.a <= desc.a + desc.b <= placed:
            raise ArenaError(
                "span_placed", f"[{desc.a}, {desc.a + desc.b}) with RX bytes committed up to {placed}"
            )

    def _send_done(self, desc: Descriptor, shadow: Shadow, pending: dict[int, Request]) -> SendCompletion:
        request = pending.get(desc.c)
        span = shadow.tx_open.get(desc.c)
        if (
            not isinstance(request, Send)
            or request.ctx != shadow.target_handle
            or span is None
            or (desc.a, desc.b) != (span[1], span[1] - span[0])
        ):
            raise ArenaError(
                "descriptor_send", f"SEND_DONE of request {desc.c}: no such Send on slot {desc.handle}"
            )
        self.counters["send_done"] += 1
        return SendCompletion(desc.c, Status.SUCCESS, desc.b)
