"""One direction's control ring and data ring, read and written as a single ordered stream.

Each direction has two rings: the control byte ring (codec messages, ``nic/messages.py``) and the data
descriptor ring (SEND, RECEIVE_PLACED, SEND_DONE: ``nic/descriptors.py``). What the producer puts on them
is one sequence, and the consumer must see it in that order: a completion or an indication must neither
overtake nor fall behind the data it refers to (a PeerDisconnect after the last ReceiveIndication, a
Disconnect after the last Send, a terminate's completion after the Sends' completions).

**The mark.** Before a control record, whenever descriptors were put on the data ring since the last
mark, the producer writes a DATA_MARK record carrying the count N of descriptors put so far (the data
ring's free-running head). The order is then fixed: descriptors below N come before the records after the
mark, descriptors from N on after them. A batch of data with no control record between costs no mark.

**Publishing and taking** (what makes "the descriptor is there" and "the message before it is there"
agree across processes; x86-64 TSO, doorbell.py):

- the producer never puts a descriptor while control records wait for room in its backlog (the caller
  then sends that item through the control ring: ``put`` says False), so every control record that comes
  before a descriptor is in the ring when the descriptor is;
- ``publish`` stores the control ring's head **before** the data ring's head;
- ``take`` loads the data ring's head **before** the control ring's head. So every descriptor it sees has
  every control record before it visible too. A mark may name descriptors whose head store it has not seen
  yet: ``take`` then stops at that mark and keeps the records from it on for the next take, in order.

A mark that moves backwards, or beyond what the data ring can hold, is ``ArenaError("ring_mark")``.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from tcpchimney.nic.descriptors import ArenaError, Descriptor
from tcpchimney.nic.messages import ControlReader, ControlWriter
from tcpchimney.nic.ring import ByteConsumer, ByteProducer, DescriptorConsumer, DescriptorProducer

Item = bytes | Descriptor  # what a take returns: an encoded message, or a descriptor


class OrderedWriter:
    """The producer's end: control messages and descriptors in one order."""

    def __init__(self, control: ByteProducer, data: DescriptorProducer, epoch: int) -> None:
        self.control = ControlWriter(control)
        self._data = data
        self._epoch = epoch & 0xFFFF
        self._marked = data.head  # descriptors put when the last mark was written
        self.descriptors = 0  # descriptors put
        self.marks = 0  # DATA_MARK records written

    def _mark(self) -> None:
        head = self._data.head
        if head != self._marked:
            self.control.send_mark(head)
            self._marked = head
            self.marks += 1

    def send(self, message: Any) -> None:
        """Queue one contract message (CodecError for anything else), after every descriptor put so far."""
        self._mark()
        self.control.send(message)

    def send_bind(self, host_handle: int, slot: int, conn_id: int) -> None:
        self._mark()
        self.control.send_bind(host_handle, slot, conn_id)

    def put(self, kind: int, flags: int, handle: int, a: int, b: int, c: int) -> bool:
        """One descriptor after everything queued so far; False when it cannot go now (control records
        wait for room, or the data ring is full): the caller sends the same item as a control message."""
        if self.control.blocked or not self._data.put(kind, flags, self._epoch, handle, a, b, c):
            return False
        self.descriptors += 1
        return True

    def flush(self) -> bool:
        return self.control.flush()

    @property
    def blocked(self) -> bool:
        return self.control.blocked

    def publish(self) -> bool:
        control = self.control.publish()  # the control head first (module docstring)
        data = self._data.publish()
        return control or data

    @property
    def stalls(self) -> int:
        return self.control.stalls

    @property
    def data_stalls(self) -> int:
        return self._data.stalls

    @property
    def records(self) -> int:
        return self.control.records

    @property
    def backlogged(self) -> int:
        return self.control.backlogged


class OrderedReader:
    """The consumer's end: what ``OrderedWriter`` put, in its order."""

    def __init__(self, control: ByteConsumer, data: DescriptorConsumer, accept_binds: bool = False) -> None:
        self.control = ControlReader(control, accept_binds)
        self._data = data
        self._waiting: deque[bytes | int] = deque()  # taken, behind a mark whose descriptors are not seen
        self.waits = 0  # takes that stopped at such a mark

    @property
    def binds(self) -> list[tuple[int, int, int]]:
        return self.control.binds

    def available(self) -> bool:
        return bool(self._waiting) or self._data.available() > 0 or self.control.available()

    def moved(self) -> bool:
        """``available`` with unvalidated loads (``take`` validates): the look the host makes many times a
        loop turn."""
        return bool(self._waiting) or self._data.moved() or self.control.moved()

    def take(self) -> list[Item]:
        """Everything published so far that may be handled now, in the producer's order. Call
        ``release`` once it is handled."""
        data = self._data
        head = data.taken + data.available()  # the data head first, then the control head (docstring)
        items = self._waiting
        items.extend(self.control.take())
        out: list[Item] = []
        cursor, room = data.taken, data.capacity
        while items:
            item = items[0]
            if type(item) is bytes:
                out.append(item)
                items.popleft()
                continue
            assert isinstance(item, int)
            if item < cursor or item - cursor > room:
                raise ArenaError("ring_mark", f"mark {item} with {cursor} descriptors taken")
            if item > head:
                self.waits += 1
                break  # its descriptors are published but not seen yet: the rest waits, in order
            out.extend(data.take(item - cursor))
            cursor = item
            items.popleft()
        out.extend(data.take(head - cursor))
        return out

    def release(self) -> None:
        self.control.release()
        self._data.release()
