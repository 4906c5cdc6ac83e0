"""``Shadows``: the host end's book of the connections its NIC process holds (``nic/recovery.py`` says what
each one records and why), and the arena slots and buffers it gives them.

Hand-in: each NEW TCP block of an initiate gets a slot (its binding and record), an RX buffer as large as
the connection's receive buffer and a TX buffer, bound in the arena before the NIC hears of it; the BIND
record that tells the NIC goes ahead of the initiate on the control ring. A connection that finds no slot
or no room in the pool is offloaded all the same, unbound: the NIC cannot protect it, and a crash resets it.

The TX buffer holds every byte of a Send from the Send until its completion (``Shadow.tx_open``), so it is
sized for what the host keeps outstanding: at most the larger of SO_SNDBUF and the target's preferred
backlog capped at 4 MiB (``host/offload_datapath.py``, ``_send_limit``). SO_SNDBUF is not part of the
contract, so ``TX_BYTES`` is that cap, but never more than a quarter of the free pool; when the pool is
short it is halved down to one chunk rather than leave the connection unbound. A Send that finds no room
goes through the control ring instead (``nic/host_data.py``): slower, never wrong.

Then every request and every answer that crosses the rings is noted (``on_submit``, ``on_output``); a
terminate's completion, or an initiate's refusal, gives the slot and buffers back.
"""

from __future__ import annotations

from collections.abc import Iterator

from tcpchimney.chimney.completions import (
    Completion,
    DisconnectCompletion,
    ReceiveCompletion,
    SendCompletion,
    StateCompletion,
)
from tcpchimney.chimney.indications import PeerDisconnect, PeerReset
from tcpchimney.chimney.requests import (
    Disconnect,
    InitiateOffload,
    Request,
    ReturnReceive,
    Send,
    TerminateOffload,
)
from tcpchimney.chimney.status import Status
from tcpchimney.chimney.tcp_state import TcpSnapshot
from tcpchimney.chimney.tree import Layer, Role, walk
from tcpchimney.nic.arena import Arena
from tcpchimney.nic.pool import PoolAllocator
from tcpchimney.nic.recovery import Shadow

TX_BYTES = 4 << 20  # the most the host keeps outstanding on one connection (MAX_SEND_BACKLOG there)


class Shadows:
    def __init__(self, arena: Arena) -> None:
        layout = arena.layout
        self.arena = arena
        self.pool = PoolAllocator(layout.pool_off, layout.pool_size, layout.chunk_size)
        self._chunk = layout.chunk_size
        self._free_slots = list(range(layout.max_conns - 1, -1, -1))
        self._conn_ids = 0
        self.by_host: dict[int, Shadow] = {}
        self.by_target: dict[int, int] = {}  # the NIC's handle -> the host's
        self.by_slot: dict[int, Shadow] = {}
        self.unbound = 0  # connections offloaded without a slot or buffers (a crash resets them)

    def __iter__(self) -> Iterator[Shadow]:
        return iter(self.by_host.values())

    def of_target(self, target_handle: int) -> Shadow | None:
        host = self.by_target.get(target_handle)
        return None if host is None else self.by_host.get(host)

    # ------------------------------------------------------------------ slots

    def bind(self, request: InitiateOffload, now: float) -> list[tuple[int, int, int]]:
        """Slots for the initiate's new connections: (host handle, slot, conn_id) to announce first."""
        binds = []
        for block in walk(request.tree):
            if block.layer is not Layer.TCP or block.role is not Role.NEW or block.host_handle is None:
                continue
            if not isinstance(block.state, TcpSnapshot) or block.host_handle in self.by_host:
                continue
            shadow = self._new(block.host_handle, block.state, now)
            if shadow is None:
                self.unbound += 1
                continue
            binds.append((shadow.host_handle, shadow.slot, shadow.conn_id))
        return binds

    def _new(self, host_handle: int, snap: TcpSnapshot, now: float) -> Shadow | None:
        if not self._free_slots:
            return None
        chunk = self._chunk
        rx_size = -(-snap.cached.initial_rcv_wnd // chunk) * chunk
        rx = self.pool.alloc(rx_size)
        if rx is None:
            return None
        # At most a quarter of what is free, so that a busy pool still binds the connections that follow.
        want = min(TX_BYTES, self.pool.free_bytes() // 4)
        tx_size, tx = max(chunk, want // chunk * chunk), None
        while tx is None:
            tx = self.pool.alloc(tx_size)
            if tx is None and tx_size <= chunk:
                self.pool.free(rx)
                return None
            if tx is None:
                tx_size = max(chunk, tx_size // 2 // chunk * chunk)
        slot = self._free_slots.pop()
        self._conn_ids = self._conn_ids % 0xFFFF_FFFF + 1
        self.arena.bind(slot, self._conn_ids, (tx, tx_size), (rx, rx_size))
        shadow = Shadow(host_handle, slot, self._conn_ids, (rx, rx_size), (tx, tx_size), snap, now)
        self.by_host[host_handle] = shadow
        self.by_slot[slot] = shadow
        return shadow

    def release(self, host_handle: int) -> None:
        shadow = self.by_host.pop(host_handle, None)
        if shadow is None:
            return
        if shadow.target_handle is not None:
            self.by_target.pop(shadow.target_handle, None)
        if self.by_slot.get(shadow.slot) is shadow:
            del self.by_slot[shadow.slot]
        self.arena.unbind(shadow.slot)
        self.pool.free(shadow.rx[0])
        self.pool.free(shadow.tx[0])
        self._free_slots.append(shadow.slot)

    # ------------------------------------------------------------------ what crosses the rings

    def on_submit(self, request: Request) -> None:
        ctx = getattr(request, "ctx", None)
        shadow = self.of_target(ctx) if isinstance(ctx, int) else None
        if shadow is None:
            return
        if isinstance(request, Send):
            shadow.add_send(request.request_id, bytes(request.data))
        elif isinstance(request, Disconnect):
            if request.abortive:
                shadow.aborted = True
            else:
                shadow.fin_asked = True
        elif isinstance(request, ReturnReceive):
            shadow.taken += request.consumed

    def on_output(self, message: object, request: Request | None) -> None:
        if isinstance(message, StateCompletion):
            self._state_done(message, request)
        elif isinstance(message, Completion):
            self._data_done(message, request)
        elif isinstance(message, PeerDisconnect | PeerReset):
            shadow = self.by_host.get(message.host_handle)
            if shadow is not None:
                if isinstance(message, PeerReset):
                    shadow.reset = True
                else:
                    shadow.peer_fin = True

    def _state_done(self, completion: StateCompletion, request: Request | None) -> None:
        if isinstance(request, InitiateOffload):
            for block in walk(completion.tree):
                if block.layer is not Layer.TCP or block.role is not Role.NEW or block.host_handle is None:
                    continue
                shadow = self.by_host.get(block.host_handle)
                if shadow is None:
                    continue
                if block.status.ok and block.target_handle is not None:
                    shadow.target_handle = block.target_handle
                    self.by_target[block.target_handle] = block.host_handle
                else:
                    self.release(block.host_handle)
        elif isinstance(request, TerminateOffload):
            for block in walk(request.tree):
                if block.layer is Layer.TCP and block.target_handle is not None:
                    host = self.by_target.get(block.target_handle)
                    if host is not None:
                        self.release(host)

    def _data_done(self, completion: Completion, request: Request | None) -> None:
        ctx = getattr(request, "ctx", None)
        shadow = self.of_target(ctx) if isinstance(ctx, int) else None
        if shadow is None:
            return
        if isinstance(completion, SendCompletion):
            shadow.send_done(completion.request_id, completion.status is Status.SUCCESS)
        elif isinstance(completion, ReceiveCompletion):
            shadow.taken += len(completion.data)
        elif (
            isinstance(completion, DisconnectCompletion)
            and completion.status is Status.SUCCESS
            and isinstance(request, Disconnect)
        ):
            shadow.fin_acked = shadow.fin_acked or not request.abortive
