"""The NIC's end of the descriptor data path (nic/host_data.py is the host's).

- SEND descriptors from H2N_DATA become the contract's ``Send`` for the target: the payload read from the
  connection's TX buffer at the position the descriptor gives. The slot names the connection: the NIC
  learns slot -> target handle from the completion of the initiate that bound it (``initiated``), and keeps
  it until the slot is bound again, so a Send that races the connection's end still reaches the target and
  is answered there, as any call on a gone connection.
- ``descriptor_for`` turns an output of the target into a descriptor when it can go as one:
  a ``ReceiveIndication`` whose bytes are all in the RX buffer (``nic/commit.py`` places every in-order
  byte there before any of it leaves the engine) becomes RECEIVE_PLACED (position, length, indication id).
  It is safe to let the host read them later: an indication is a peek, the bytes stay in the engine's
  receive buffer until the host's ReturnReceive, the engine accepts no more in order than that buffer
  holds and the RX buffer is at least as large (else the connection is UNPROTECTED and nothing more is
  placed), so nothing overwrites them before the host took them. A ``SendCompletion`` (SUCCESS) of a
  Send that came as a descriptor becomes SEND_DONE.
- Everything else stays a codec message, and so does a ``ReceiveCompletion``: its bytes left the engine's
  buffer when they filled the posted buffer, so the engine may accept and place a whole window more over
  their RX space before the host reads them (the host stack posts only empty buffers, to re-enable
  indications, so no data rides there in practice).

The host is trusted (a bad descriptor is its bug): a SEND that does not check out raises ``ArenaError``.
"""

from __future__ import annotations

from tcpchimney.chimney.completions import SendCompletion, StateCompletion
from tcpchimney.chimney.indications import ReceiveIndication
from tcpchimney.chimney.requests import Send
from tcpchimney.chimney.status import Status
from tcpchimney.chimney.target import Output
from tcpchimney.chimney.tree import Layer, walk
from tcpchimney.nic.arena import Arena
from tcpchimney.nic.commit import UNPROTECTED, Committer
from tcpchimney.nic.descriptors import H2N_BUILT, ArenaError, DescKind, Descriptor, check_descriptor
from tcpchimney.nic.ordering import OrderedWriter

_PLACED = int(DescKind.RECEIVE_PLACED)
_DONE = int(DescKind.SEND_DONE)

NIC_DATA_KEYS = (
    "sends_in",  # SEND descriptors taken
    "send_bytes_in",
    "placed_out",  # RECEIVE_PLACED descriptors put
    "placed_bytes_out",
    "placed_fallback",  # receive indications that went as messages (not all placed, ring full, ...)
    "send_done_out",  # SEND_DONE descriptors put
)


class NicDataPath:
    def __init__(self, arena: Arena, committer: Committer) -> None:
        self.arena = arena
        self.committer = committer
        self.epoch = arena.epoch
        self._bound: dict[int, int] = {}  # host handle -> slot, from the BIND records, until the completion
        self._slots: dict[int, tuple[int, int, int]] = {}  # slot -> (target handle, tx_off, tx_size)
        self._sends: dict[int, tuple[int, int]] = {}  # request id of a SEND -> (slot, TX end position)
        self.counters: dict[str, int] = dict.fromkeys(NIC_DATA_KEYS, 0)

    def bind(self, host_handle: int, slot: int) -> None:
        """A BIND record: the slot the host gave the connection the next initiate names."""
        self._bound[host_handle] = slot

    def initiated(self, completion: StateCompletion) -> None:
        """An initiate's completion is going to the host: the slots of its accepted connections."""
        for block in walk(completion.tree):
            if block.layer is not Layer.TCP or block.host_handle is None:
                continue
            slot = self._bound.pop(block.host_handle, None)
            if slot is None or not block.status.ok or block.target_handle is None:
                continue
            try:
                binding = self.arena.binding(slot)
            except ArenaError:
                continue  # the committer counted it (bad_binds); a SEND on it is the host's bug
            self._slots[slot] = (block.target_handle, binding.tx_off, binding.tx_size)

    def send(self, desc: Descriptor) -> Send:
        """The Send a SEND descriptor stands for (ArenaError for one that does not check out)."""
        check_descriptor(desc, H2N_BUILT, self.epoch, self.arena.layout.max_conns)
        bound = self._slots.get(desc.handle)
        if bound is None:
            raise ArenaError("descriptor_handle", f"SEND on slot {desc.handle}, which no initiate bound")
        ctx, off, size = bound
        self.arena.check_span(off, size, desc.b)
        data = self.arena.read_stream(off, size, desc.a, desc.b)
        self._sends[desc.c] = (desc.handle, desc.a + desc.b)
        self.counters["sends_in"] += 1
        self.counters["send_bytes_in"] += desc.b
        return Send(desc.c, ctx, data)  # ContractError for an empty one or a bad id

    def descriptor_for(self, out: Output, writer: OrderedWriter) -> bool:
        """Put ``out`` on N2H_DATA as a descriptor if it can go as one; False: send it as a message."""
        if isinstance(out, ReceiveIndication):
            return self._placed(out, writer)
        if isinstance(out, SendCompletion):
            sent = self._sends.pop(out.request_id, None)
            if sent is None or out.status is not Status.SUCCESS:
                return False
            slot, end = sent
            if not writer.put(_DONE, 0, slot, end, out.bytes_acked, out.request_id):
                return False
            self.counters["send_done_out"] += 1
            return True
        return False

    def _placed(self, out: ReceiveIndication, writer: OrderedWriter) -> bool:
        m = self.committer.mirrors.get(out.host_handle)
        n = len(out.data)
        if m is None or m.flags & UNPROTECTED:
            self.counters["placed_fallback"] += 1
            return False
        back = m.data_end.dist(out.seq)  # placed bytes from the indication's first byte on
        if not n <= back <= min(m.pos, m.rx_size) or not writer.put(
            _PLACED, 0, m.slot, m.pos - back, n, out.indication_id
        ):
            self.counters["placed_fallback"] += 1
            return False
        self.counters["placed_out"] += 1
        self.counters["placed_bytes_out"] += n
        return True
