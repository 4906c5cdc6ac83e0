"""The NIC's write-ahead of received bytes: what lets its connections outlive it.

The one rule (docs/nic-process.md, "Crash rules"): no ACK and no window may leave the NIC until the bytes it
covers and the new RCV.NXT and right edge are in host-owned memory. The host gives every connection it
offloads an arena slot before the NIC hears of it (a BIND record ahead of the initiate): a binding with an RX
buffer, and a record the NIC commits to. Here, for each such connection:

- ``place``: every byte that became in order is copied into the RX buffer at its stream position (position 0
  is the end of the received data at offload) *before* any of it leaves the engine: the target calls
  ``place`` through its ``receive_hook`` at the start of each delivery, and ``commit_all`` again, so no path
  can skip it;
- ``commit_all``: once per turn of the NIC's loop, after the frames of the turn are built and before any is
  written to the TAP, the record of each connection whose RCV.NXT, right edge or SND.UNA moved is committed
  (``Arena.commit``: the other slot, then the commit word). So every ACK that leaves is covered by a commit.

Sequence values in the record are 64-bit extended sequence numbers: the 32-bit value at offload, plus every
byte since (and the FIN). The RX buffer is as large as the connection's receive buffer (the host sizes it
from the cached initial window), so bytes the host has not taken are never overwritten: the engine accepts
no more in order than its buffer holds. A connection whose buffer grew beyond its RX buffer, or whose bytes
left the engine unseen, is marked UNPROTECTED in its record: the host resets it after a crash rather than
deliver bytes it does not have.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tcpchimney.chimney.requests import InitiateOffload
from tcpchimney.chimney.tcp_state import PEER_FIN_RECEIVED, TcpSnapshot
from tcpchimney.chimney.tree import Layer, Role, walk
from tcpchimney.nic.arena import Arena
from tcpchimney.nic.descriptors import ArenaError, ConnRecord, RecordFlag
from tcpchimney.nic.table import ConnectionTable, TcpEntry
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire.seq import SeqNum

_U32 = (1 << 32) - 1
UNPROTECTED = 0x4  # record flag: the RX buffer does not hold every byte acknowledged (the host resets it)
# Record flags bits 8-15: 1 + the engine's state's index in STATES (0: not said), so the host knows which FIN
# came first (LAST-ACK and CLOSING differ only in that).
STATES = tuple(TcpState)
STATE_SHIFT = 8
_STATE_CODE = {state: (i + 1) << STATE_SHIFT for i, state in enumerate(STATES)}


def state_flags(state: TcpState) -> int:
    return _STATE_CODE[state]


def state_of(flags: int) -> TcpState | None:
    n = (flags >> STATE_SHIFT) & 0xFF
    return STATES[n - 1] if 0 < n <= len(STATES) else None


COMMIT_KEYS = (
    "binds",  # BIND records taken
    "bad_binds",  # bindings that did not check out (the connection runs unprotected)
    "commits",  # records committed
    "placed_bytes",  # received bytes copied to the RX buffers
    "unprotected",  # connections whose RX buffer could not hold what they acknowledged
)


@dataclass(slots=True, eq=False)
class Mirror:
    """One bound connection: where its received bytes go and what was committed last."""

    host_handle: int
    slot: int
    conn_id: int
    rx_off: int
    rx_size: int
    data0: SeqNum  # the sequence number of RX position 0: the end of the received data at offload
    una0: SeqNum  # SND.UNA at offload
    data_end: SeqNum  # the sequence number at ``pos``
    una: SeqNum  # SND.UNA at ``una_pos``
    pos: int = 0  # bytes placed since offload
    una_pos: int = 0  # bytes acknowledged by the peer since offload
    entry: TcpEntry | None = None
    flags: int = 0
    peer_fin: bool = False  # the peer's FIN is in: sticky (a connection that then closes is CLOSED)
    committed: tuple[int, int, int, int] = (-1, -1, -1, -1)  # rcv_nxt, rcv_adv, snd_una, flags
    seen: tuple[object, ...] = ()  # the engine's RCV.NXT, RCV.ADV, SND.UNA and state at the last look


class Committer:
    def __init__(self, arena: Arena, table: ConnectionTable) -> None:
        self.arena = arena
        self.table = table
        self.mirrors: dict[int, Mirror] = {}  # by the host's handle of the connection
        self._binds: dict[int, tuple[int, int]] = {}  # host handle -> (slot, conn_id), until the initiate
        self.counters: dict[str, int] = dict.fromkeys(COMMIT_KEYS, 0)
        self.before_commit: Callable[[], None] = lambda: None  # a crash point's hook (nic/crash.py)

    # ------------------------------------------------------------------ hand-in

    def bind(self, host_handle: int, slot: int, conn_id: int) -> None:
        self.counters["binds"] += 1
        self._binds[host_handle] = (slot, conn_id)

    def expect(self, request: InitiateOffload) -> None:
        """The connections of an initiate that were bound: their mirrors, ready before the target runs."""
        for block in walk(request.tree):
            if block.layer is not Layer.TCP or block.role is not Role.NEW or block.host_handle is None:
                continue
            bound = self._binds.pop(block.host_handle, None)
            if bound is None or not isinstance(block.state, TcpSnapshot):
                continue
            slot, conn_id = bound
            try:
                binding = self.arena.binding(slot)
            except ArenaError:
                self.counters["bad_binds"] += 1
                continue
            if binding.conn_id != conn_id:
                self.counters["bad_binds"] += 1
                continue
            d = block.state.delegated
            data0 = d.buffered_start + len(d.buffered_data)
            self.mirrors[block.host_handle] = Mirror(
                block.host_handle, slot, conn_id, binding.rx_off, binding.rx_size,
                data0, d.snd_una, data0, d.snd_una,
            )  # fmt: skip

    # ------------------------------------------------------------------ received bytes

    def place(self, entry: TcpEntry) -> None:
        """The target's receive hook: copy what became in order to the RX buffer."""
        m = self.mirrors.get(entry.host_handle)
        if m is None:
            return
        if m.entry is not entry:
            m.entry = entry
        self._place(m, entry)

    @staticmethod
    def _peer_fin(m: Mirror, entry: TcpEntry) -> bool:
        if not m.peer_fin and (entry.conn.state in PEER_FIN_RECEIVED or entry.peer_fin):
            m.peer_fin = True
        return m.peer_fin

    def _place(self, m: Mirror, entry: TcpEntry) -> None:
        conn = entry.conn
        fin = 1 if self._peer_fin(m, entry) else 0
        end = conn.rcv_nxt + -fin
        delta = end.dist(m.data_end)
        if delta <= 0 or m.flags & UNPROTECTED:
            return
        if delta > conn.rcvbuf.readable or conn.rcvbuf.capacity > m.rx_size:
            self._unprotect(m)  # bytes left the engine unseen, or more may wait than the buffer holds
            return
        pos = m.pos
        for view in conn.rcvbuf.last_views(delta):  # straight from the engine's pieces: one copy
            self.arena.write_stream(m.rx_off, m.rx_size, pos, view)
            pos += len(view)
        m.pos = pos
        m.data_end = end
        self.counters["placed_bytes"] += delta

    def _unprotect(self, m: Mirror) -> None:
        m.flags |= UNPROTECTED
        self.counters["unprotected"] += 1

    # ------------------------------------------------------------------ commits

    def commit_all(self) -> int:
        """Commit every connection whose receive or send numbers moved; returns how many. Called after the
        turn's frames are built and before any is written."""
        n = 0
        conns = self.table.conns
        gone: list[int] = []
        for host_handle, m in self.mirrors.items():
            entry = m.entry
            if entry is None:
                continue
            conn = entry.conn
            left = conns.get(entry.handle) is not entry  # terminated, reset or dropped this turn
            seen = (conn.rcv_nxt, conn.rcv_adv, conn.snd_una, conn.state)
            if seen == m.seen and not left:
                continue  # nothing a record holds moved: the usual case for an idle connection
            m.seen = seen
            self._place(m, entry)
            # A terminate's last ACK may still leave in this turn, its answer after it: one last commit.
            if self._commit(m, entry):
                n += 1
            if left:
                gone.append(host_handle)
        for host_handle in gone:
            del self.mirrors[host_handle]  # its slot is the host's again once it reads the answer
        return n

    def _commit(self, m: Mirror, entry: TcpEntry) -> bool:
        conn = entry.conn
        fin = self._peer_fin(m, entry)
        flags = m.flags | (int(RecordFlag.FIN_RECEIVED) if fin else 0) | state_flags(conn.state)
        rcv = int(m.data0) + m.pos + (1 if fin else 0)
        adv = max(rcv + max(0, conn.rcv_adv.dist(conn.rcv_nxt)), m.committed[1])
        step = conn.snd_una.dist(m.una)
        if step > 0:
            m.una_pos += step
            m.una = conn.snd_una
        key = (rcv, adv, m.una_pos, flags)
        if key == m.committed:
            return False
        self.before_commit()
        rtt = conn.rtt
        self.arena.commit(
            m.slot,
            ConnRecord(
                m.conn_id, flags, rcv, adv, int(m.una0) + m.una_pos, conn.ts_recent & _U32,
                min(_U32, int(rtt.rto * 1000)), min(_U32, int((rtt.srtt or 0.0) * 1e6)),
                min(_U32, int(rtt.rttvar * 1e6)), min(_U32, conn.cwnd), min(_U32, conn.ssthresh),
            ),
        )  # fmt: skip
        m.committed = key
        self.counters["commits"] += 1
        return True
