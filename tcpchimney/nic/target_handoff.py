"""The hand-offs of ``SoftwareTarget`` (``nic.target``): the state calls (initiate, update, invalidate,
query, terminate) that build the neighbor, path and connection entries from an offered tree, change them,
report them and tear them down with the state handed back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from tcpchimney.chimney.completions import StateCompletion
from tcpchimney.chimney.neighbor import NeighborCached, NeighborDelegated, NeighborState
from tcpchimney.chimney.path import PathCached, PathState
from tcpchimney.chimney.reason import Reason
from tcpchimney.chimney.requests import (
    InitiateOffload,
    InvalidateOffload,
    QueryOffload,
    TerminateOffload,
    UpdateOffload,
)
from tcpchimney.chimney.status import Status
from tcpchimney.chimney.tcp_state import TcpCached, TcpSnapshot
from tcpchimney.chimney.tree import BlockList, Layer, Role, Tree, complete_initiate, overall_status
from tcpchimney.nic.table import NeighborEntry, PathEntry, TcpEntry
from tcpchimney.nic.target_data import DataPath, send_backlog
from tcpchimney.nic.target_wire import IPV4_TCP_HEADERS
from tcpchimney.tcp.snapshot import export_snapshot, rebuild

# What a refusal knob's reason answers in the initiate block (spec 3.1 statuses).
_REFUSAL_STATUS = {
    Reason.TARGET_FULL: Status.TCP_ENTRIES,
    Reason.TARGET_RESOURCES: Status.RESOURCES,
    Reason.TARGET_REFUSED: Status.CONNECTION_REJECTED,
    Reason.OPTION_UNSUPPORTED: Status.CONNECTION_REJECTED,
    Reason.RCV_WINDOW_UNSUPPORTED: Status.TCP_RCV_WINDOW,
    Reason.PATH_MTU_UNSUPPORTED: Status.PATH_MTU,
    Reason.VLAN_UNSUPPORTED: Status.VLAN_MISMATCH,
    Reason.TARGET_NOT_SUPPORTED: Status.NOT_SUPPORTED,
}


class _Refused(Exception):
    """One initiate block cannot be offloaded: its status and the reason counted."""

    def __init__(self, status: Status, reason: Reason) -> None:
        super().__init__(status.name)
        self.status = status
        self.reason = reason


class HandOff(DataPath):
    """The state calls: entries built from an initiate tree, updated, queried, invalidated, terminated."""

    # ================================================================== contract: state calls

    def initiate_offload(self, request: InitiateOffload, now: float) -> None:
        self._now = now
        added: list[TcpEntry] = []
        cursor: dict[Layer, Any] = {}

        def attempt(block: BlockList) -> tuple[Status, int | None]:
            try:
                return self._attempt(block, cursor, added, now)
            except _Refused as refused:
                if block.layer is Layer.TCP:
                    self.counters.refused(refused.reason)
                return refused.status, None

        done = complete_initiate(request.tree, attempt)
        self.complete(StateCompletion(request.request_id, overall_status(done), done))
        for entry in added:  # buffered data handed over is delivered first (spec 3.1), after the completion
            self._after_engine(entry, now)

    def _attempt(
        self, block: BlockList, cursor: dict[Layer, Any], added: list[TcpEntry], now: float
    ) -> tuple[Status, int | None]:
        if block.role is Role.LINKER:
            obj = self._linked(block)
            cursor[block.layer] = obj
            return Status.SUCCESS, None
        if self._failed:
            raise _Refused(Status.FAILURE, Reason.TARGET_RESOURCES)
        if block.layer is Layer.NEIGHBOR:
            neighbor = self._new_neighbor(block, now)
            cursor[Layer.NEIGHBOR] = neighbor
            return Status.SUCCESS, neighbor.handle
        if block.layer is Layer.PATH:
            path = self._new_path(block, cursor[Layer.NEIGHBOR])
            cursor[Layer.PATH] = path
            return Status.SUCCESS, path.handle
        entry = self._new_conn(block, cursor[Layer.PATH], now)
        added.append(entry)
        return Status.SUCCESS, entry.handle

    def _linked(self, block: BlockList) -> NeighborEntry | PathEntry:
        handle = block.target_handle or 0
        table = self.table.neighbors if block.layer is Layer.NEIGHBOR else self.table.paths
        obj = table.get(handle)
        if obj is None or obj.invalid:
            raise _Refused(Status.FAILURE, Reason.DEPENDENCY_FAILED)
        return obj

    def _new_neighbor(self, block: BlockList, now: float) -> NeighborEntry:
        state = block.state
        assert isinstance(state, NeighborState)  # check_initiate_tree guarantees it
        if len(self.table.neighbors) >= self.table.capacity:
            raise _Refused(Status.NEIGHBOR_ENTRIES, Reason.TARGET_FULL)
        if state.const.vlan_id and state.const.vlan_id not in self.vlans:
            raise _Refused(Status.VLAN_MISMATCH, Reason.VLAN_UNSUPPORTED)
        src_mac = state.const.source_mac or self.mac
        if src_mac is None:
            raise _Refused(Status.HW_ADDRESS_ENTRIES, Reason.TARGET_RESOURCES)
        entry = NeighborEntry(
            self.table.new_handle(),
            block.host_handle or 0,
            state.const,
            state.cached,
            src_mac,
            now - state.delegated.nic_reachability_delta,
            now - state.cached.host_reachability_delta,
        )
        self.table.add_neighbor(entry)
        return entry

    def _new_path(self, block: BlockList, neighbor: NeighborEntry) -> PathEntry:
        state = block.state
        assert isinstance(state, PathState)
        if len(self.table.paths) >= self.table.capacity:
            raise _Refused(Status.PATH_ENTRIES, Reason.TARGET_FULL)
        if state.const.ipv6:
            raise _Refused(Status.IP_ADDRESS_ENTRIES, Reason.OPTION_UNSUPPORTED)  # capabilities: IPv4 only
        entry = PathEntry(
            self.table.new_handle(), block.host_handle or 0, state.const, state.cached, neighbor
        )
        self.table.add_path(entry)
        return entry

    def _new_conn(self, block: BlockList, path: PathEntry, now: float) -> TcpEntry:
        snap = block.state
        assert isinstance(snap, TcpSnapshot)
        if self._refuse_next is not None:
            reason, self._refuse_next = self._refuse_next, None
            raise _Refused(_REFUSAL_STATUS.get(reason, Status.FAILURE), reason)
        if self.table.tcp_full:
            raise _Refused(Status.TCP_ENTRIES, Reason.TARGET_FULL)
        const, cached = snap.const, snap.cached
        key = (path.const.source, path.const.destination, const.local_port, const.remote_port)
        if key in self.table.by_key:
            raise _Refused(Status.FAILURE, Reason.TARGET_REFUSED)
        if cached.initial_rcv_wnd > self.max_rcv_window:
            raise _Refused(Status.TCP_RCV_WINDOW, Reason.RCV_WINDOW_UNSUPPORTED)
        if const.sack and not self.capabilities.sack:
            raise _Refused(Status.CONNECTION_REJECTED, Reason.OPTION_UNSUPPORTED)
        conn = rebuild(snap, self.config, now)
        self._apply_path_mtu(conn, path.cached.path_mtu)
        conn.sndbuf.capacity = max(conn.sndbuf.capacity, 1 << 30)  # a target accepts every Send (3.6)
        entry = TcpEntry(
            self.table.new_handle(),
            block.host_handle or 0,
            key,
            conn,
            path,
            const,
            cached,
            una_last=snap.delegated.snd_una,
            delivered=snap.delegated.buffered_start,
            written=len(snap.delegated.send_data),
        )
        self.table.add_conn(entry)
        self.counters.lifecycle["offloads"] += 1
        return entry

    def _apply_path_mtu(self, conn: Any, path_mtu: int) -> None:
        conn.set_path_mss(path_mtu - IPV4_TCP_HEADERS)

    def update_offload(self, request: UpdateOffload, now: float) -> None:
        self._now = now
        done = self._each_block(request.tree, lambda parent, block: self._update_block(parent, block, now))
        self.complete(StateCompletion(request.request_id, overall_status(done), done))

    def _update_block(self, parent: BlockList | None, block: BlockList, now: float) -> BlockList:
        if self._failed:
            return block.with_result(Status.FAILURE)
        handle = block.target_handle or 0
        state = block.state
        if isinstance(state, NeighborCached) and handle in self.table.neighbors:
            self.table.neighbors[handle].cached = state  # ARP learnt a new MAC (spec 3.3)
            for entry in self.table.dependents(handle):
                entry.template = None
        elif isinstance(state, PathCached) and handle in self.table.paths:
            self.table.paths[handle].cached = state  # ICMP: a new PMTU (RFC 1191)
            for entry in self.table.dependents(handle):
                entry.template = None
                self._apply_path_mtu(entry.conn, state.path_mtu)
                self._dirty[entry.handle] = entry
                self._rearm(entry)
        elif isinstance(state, TcpCached) and handle in self.table.conns:
            self._update_conn(self.table.conns[handle], state, now)
        elif state is None and handle in self.table.paths and parent is not None:
            neighbor = self.table.neighbors.get(parent.target_handle or 0)
            if neighbor is None:
                return block.with_result(Status.FAILURE)
            self.table.relink(self.table.paths[handle], neighbor)  # a next-hop change (spec 3.4)
        elif state is None and handle in self.table.neighbors:
            pass  # the root of a relink tree: its paths carry the change
        else:
            return block.with_result(Status.FAILURE)
        return block.with_result(Status.SUCCESS)

    def _update_conn(self, entry: TcpEntry, cached: TcpCached, now: float) -> None:
        conn = entry.conn
        old = entry.cached
        entry.cached = cached
        entry.template = None  # TTL, TOS, user priority
        conn.configure(
            nodelay=cached.nodelay,
            keepalive=cached.keepalive,
            keepalive_idle=cached.keepalive_idle,
            keepalive_interval=cached.keepalive_interval,
            keepalive_probes=cached.keepalive_probes,
            rcv_buf=cached.initial_rcv_wnd if cached.update_rcv_wnd else None,
        )
        if cached.update_rcv_wnd:
            conn.ack_now = True  # spec 2.4 TCP_FLAG_UPDATE_RCV_WND: advertise the new window
        if cached.keepalive_restart or (cached.keepalive and not old.keepalive):
            conn.arm_keepalive(now)
        if cached.max_rt_restart:
            conn.first_rexmit_time = None
        self._dirty[entry.handle] = entry
        self._rearm(entry)

    def invalidate_offload(self, request: InvalidateOffload, now: float) -> None:
        self._now = now
        done = self._each_block(request.tree, lambda _parent, block: self._invalidate_block(block))
        self.complete(StateCompletion(request.request_id, overall_status(done), done))

    def _invalidate_block(self, block: BlockList) -> BlockList:
        handle = block.target_handle or 0
        obj: NeighborEntry | PathEntry | TcpEntry | None = (
            self.table.neighbors.get(handle) or self.table.paths.get(handle) or self.table.conns.get(handle)
        )
        if obj is None or self._failed:
            return block.with_result(Status.FAILURE)
        if isinstance(obj, NeighborEntry | PathEntry):
            obj.invalid = True
        for entry in self.table.dependents(handle):
            self._freeze(entry, Reason.INVALID_STATE)  # spec 3.4: stop sending, ask for the upload
        return block.with_result(Status.SUCCESS)

    def query_offload(self, request: QueryOffload, now: float) -> None:
        self._now = now
        done = self._each_block(request.tree, lambda _parent, block: self._query_block(block, now))
        self.complete(StateCompletion(request.request_id, overall_status(done), done))

    def _query_block(self, block: BlockList, now: float) -> BlockList:
        handle = block.target_handle or 0
        if self._failed:
            return block.with_result(Status.FAILURE)
        if handle in self.table.neighbors:
            n = self.table.neighbors[handle]
            nrd = NeighborDelegated(max(0.0, now - n.last_progress))
            return block.with_result(Status.SUCCESS, state=NeighborState(n.const, n.cached, nrd))
        if handle in self.table.paths:
            p = self.table.paths[handle]
            return block.with_result(Status.SUCCESS, state=PathState(p.const, p.cached))
        if handle in self.table.conns:
            entry = self.table.conns[handle]
            snap = self._export(entry, now)
            delegated = replace(
                snap.delegated,
                send_backlog_size=send_backlog(entry.conn),
                receive_backlog_size=entry.conn.readable,
            )
            return block.with_result(Status.SUCCESS, state=TcpSnapshot(snap.const, entry.cached, delegated))
        return block.with_result(Status.FAILURE)

    def terminate_offload(self, request: TerminateOffload, now: float) -> None:
        self._now = now
        done = self._each_block(request.tree, lambda _parent, block: self._terminate_block(block, now))
        self.complete(StateCompletion(request.request_id, overall_status(done), done))
        # Neighbors and paths go after their dependents; the host's registry orders the tree that way.
        for block in _walk(done):
            if block.layer is not Layer.TCP and block.status is Status.SUCCESS:
                self._drop_orphans(block.target_handle or 0)
                self.table.remove(block.target_handle or 0)

    def _drop_orphans(self, handle: int) -> None:
        """A host terminates a path or neighbor only once nothing hangs on it, so what still does is an
        object the host lost track of (an answer of ours it could not trust): drop it rather than keep a
        connection nobody can name answering its peer. Its frames go up; the host, which holds no such
        connection, answers the peer with a reset."""
        for entry in self.table.dependents(handle):
            self.counters.lifecycle["orphans_dropped"] += 1
            self._abort_calls(entry, Status.REQUEST_ABORTED)
            self.table.remove(entry.handle)
            self._dirty.pop(entry.handle, None)
            self._to_host.extend(entry.held)
        neighbor = self.table.neighbors.get(handle)
        for path in list(neighbor.paths) if neighbor is not None else ():
            self.table.remove(path)

    def _terminate_block(self, block: BlockList, now: float) -> BlockList:
        handle = block.target_handle or 0
        if block.layer is not Layer.TCP:
            known = handle in self.table.neighbors or handle in self.table.paths
            return block.with_result(Status.SUCCESS if known else Status.FAILURE)
        entry = self.table.conns.get(handle)
        if entry is None:
            return block.with_result(Status.FAILURE)
        if entry.state_lost:  # spec 3.2 steps 4-5: nothing to hand back
            self._abort_calls(entry, Status.REQUEST_ABORTED)
            self.table.remove(handle)
            self._dirty.pop(handle, None)
            self._to_host.extend(entry.held)
            return block.with_result(Status.FAILURE)
        self._abort_calls(entry, Status.UPLOAD_IN_PROGRESS)  # spec 3.5 step 8
        if not entry.stopped and not self._stalled:
            if entry.conn.delack_deadline is not None:
                entry.conn.ack_now = True  # the delayed-ACK timer is not handed over: its ACK leaves now
            self._output(entry, now, self._tx)  # step 1: pending ACKs leave before the state does
        delegated = self._export(entry, now).delegated
        self.table.remove(handle)
        self._dirty.pop(handle, None)
        self._to_host.extend(entry.held)  # step 2: what it did not process goes up raw
        self.counters.lifecycle["uploads"] += 1
        return block.with_result(Status.SUCCESS, state=delegated)

    def _export(self, entry: TcpEntry, now: float) -> TcpSnapshot:
        """The connection's state; send data = every byte accepted and not acknowledged, the backlog too."""
        snap = export_snapshot(entry.conn, now, hash_value=entry.const.hash_value, ttl=entry.cached.ttl)
        if entry.backlog:
            data = snap.delegated.send_data + b"".join(entry.backlog)
            snap = replace(snap, delegated=replace(snap.delegated, send_data=data))
        return snap

    def _each_block(self, tree: Tree, fn: Callable[[BlockList | None, BlockList], BlockList]) -> Tree:
        def visit(parent: BlockList | None, block: BlockList) -> BlockList:
            done = block.with_result(Status.SUCCESS) if block.role is Role.PLACEHOLDER else fn(parent, block)
            return done.with_dependents(tuple(visit(block, d) for d in block.dependents))

        return tuple(visit(None, b) for b in tree)


def _walk(tree: Tree) -> list[BlockList]:
    """Dependents before the blocks they hang on."""
    out: list[BlockList] = []

    def visit(block: BlockList) -> None:
        for dep in block.dependents:
            visit(dep)
        out.append(block)

    for root in tree:
        visit(root)
    return out
