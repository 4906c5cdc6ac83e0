"""Offload hand-off in: the policy's decision, the initiate trees and their completion."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tcpchimney.chimney.completions import StateCompletion
from tcpchimney.chimney.neighbor import NeighborCached, NeighborConst, NeighborState
from tcpchimney.chimney.path import PathCached, PathConst, PathState
from tcpchimney.chimney.reason import Reason
from tcpchimney.chimney.registry import Phase
from tcpchimney.chimney.requests import Forward, InitiateOffload
from tcpchimney.chimney.status import Status
from tcpchimney.chimney.tcp_state import TcpSnapshot
from tcpchimney.chimney.tree import (
    PLACEHOLDER,
    BlockList,
    Layer,
    LinkedObject,
    NewObject,
    Role,
    TreeNode,
    build_tree,
    walk,
)
from tcpchimney.host.counters import bump
from tcpchimney.host.events import OffloadDeferred, Offloaded, OffloadRefused
from tcpchimney.host.offload_base import OffloadBase
from tcpchimney.host.offload_state import (
    OFFLOADABLE_NOW,
    REFUSAL_FOR_STATUS,
    OffloadState,
    Pending,
    SharedObject,
)
from tcpchimney.host.policy import ConnectionInfo, OffloadPolicy
from tcpchimney.tcp import snapshot as tcp_snapshot

if TYPE_CHECKING:
    from tcpchimney.host.sockets import TcpSocket
    from tcpchimney.wire.frame import Frame


class OffloadHandIn(OffloadBase):
    """Hand-off in: whether a connection may go, and the initiate of one or many (spec 3.2, 4.1)."""

    # ================================================================== policy

    def _info(self, sock: TcpSocket) -> ConnectionInfo:
        conn, off = sock.conn, sock.offload
        moved = 0
        if off is not None and off.in_host:
            moved = off.moved_before + self._engine_moved(sock)
        return ConnectionInfo(sock.remote_ip, sock.remote_port, sock.local_port, moved, conn.srtt)

    @staticmethod
    def _engine_moved(sock: TcpSocket) -> int:
        """Bytes the current host engine moved (ACKed sent, in-order received) since it took over."""
        conn, off = sock.conn, sock.offload
        assert off is not None
        return max(0, conn.snd_una.dist(off.una0)) + max(0, conn.rcv_nxt.dist(off.rcv0))

    def _check(
        self, sock: TcpSocket, forced: bool = False, joining: int = 0, policy: OffloadPolicy | None = None
    ) -> Reason | None:
        """Why ``sock`` cannot be offloaded now, or None; ``joining``: connections already going in the
        same initiate (they count against the target's announced capacity); ``policy``: judge by this one
        instead of the manager's (what a change of policy would do)."""
        conn = sock.conn
        if not sock.offload_allowed:
            return Reason.SOCKET_OPT_OUT
        # sock.state, not conn.state: a connection that ended while away (a peer reset) keeps the engine
        # copy frozen at its offload, which still says ESTABLISHED.
        if sock.state not in OFFLOADABLE_NOW or conn.fin_queued or conn.orphaned:
            return Reason.STATE_NOT_OFFLOADABLE
        if not self.attached:
            return Reason.NO_TARGET
        if self.failed:
            return Reason.TARGET_FAILED
        if self.paused:
            return Reason.TARGET_PAUSED
        if self.capabilities.capacity == 0:
            return Reason.TARGET_NOT_SUPPORTED
        # What the target announced with its last resume (spec 4.5): the host does not offer what it would
        # have to refuse.
        if conn.sack_enabled and not self.capabilities.sack:
            return Reason.OPTION_UNSUPPORTED
        if len(self._by_handle) + joining >= self.capabilities.capacity:
            return Reason.TARGET_FULL
        info, judging = self._info(sock), policy or self.policy
        if forced:
            rule = judging.matching(info)
            reason = rule.reason if rule is not None and rule.keeps_on_host else None
        else:
            reason, rule = judging.judge(info)
        if rule is not None and policy is None:  # a dry run (another policy) counts no hit
            self.rule_hits[rule] += 1
        return reason

    def _consider_all(self, socks: list[TcpSocket], quiet: bool = False) -> None:
        """Offload every connection of ``socks`` the policy wants, with one initiate for all of them."""
        ready: list[TcpSocket] = []
        for sock in socks:
            off = sock.offload
            if off is None or not off.in_host or not self.stack.holds(sock):
                self._candidates.pop(sock, None)
                continue
            if sock.listener is not None:
                continue  # waits in the accept queue: considered once accepted
            self._candidates.pop(sock, None)
            reason = self._check(sock, forced=off.forced, joining=len(ready))
            if reason is None:
                ready.append(sock)
            elif not (quiet and (reason is off.reason or reason is Reason.STATE_NOT_OFFLOADABLE)):
                # Re-examined (quiet): one that is closing merely stops waiting; nothing refused it.
                self._refuse(sock, reason)
        refused = self._initiate_many(ready) if ready else {}
        for sock in ready:
            off = sock.offload
            assert off is not None
            reason = refused.get(sock)
            off.forced = off.forced and reason is None and off.in_host  # still deferred: still explicit
            if reason is not None and not (quiet and reason is off.reason):
                self._refuse(sock, reason)

    def _refuse(self, sock: TcpSocket, reason: Reason) -> None:
        """Report why ``sock`` stays on the host: a refusal, or a deferral (not eligible yet: counted and
        reported once per wait, never as a refusal)."""
        off = sock.offload
        assert off is not None
        if reason.deferral:
            if reason is not off.reason:
                off.reason = reason
                bump(self.counters, f"deferred_{reason.value}")
                self.stack._events.append(OffloadDeferred(sock, reason))
            return
        off.reason = reason
        bump(self.counters, f"refused_{reason.value}")
        self.stack._events.append(OffloadRefused(sock, reason))

    # ================================================================== initiate

    def _initiate(self, sock: TcpSocket) -> Reason | None:
        """Submit the initiate for ``sock``; a Reason when it cannot go now."""
        return self._initiate_many([sock]).get(sock)

    def _initiate_many(self, socks: list[TcpSocket]) -> dict[TcpSocket, Reason]:
        """One initiate tree for ``socks`` (spec 3.1: one call offloads many connections, and the neighbors
        and paths they need, each new one once). Returns the connections that cannot go now, with why; a
        connection whose neighbor or path another call is offloading waits as a candidate."""
        refused: dict[TcpSocket, Reason] = {}
        made: dict[tuple[Layer, bytes], tuple[SharedObject, TreeNode]] = {}
        triples: list[tuple[TreeNode, TreeNode, TreeNode]] = []
        batch: list[TcpSocket] = []
        for sock in socks:
            nodes = self._nodes_for(sock, made)
            if isinstance(nodes, Reason):
                refused[sock] = nodes
            elif nodes is None:
                self._candidates[sock] = None  # its neighbor or path is being offloaded: try after that
            else:
                triples.append((nodes[0], nodes[1], self._new_tcp_node(sock, nodes[2])))
                batch.append(sock)
        if not batch:
            return refused
        new = tuple(obj for obj, node in made.values() if isinstance(node, NewObject))
        one = len(batch) == 1
        pending = Pending("initiate", batch[0] if one else None, new, () if one else tuple(batch))
        if not self._submit(InitiateOffload(self._rid(), build_tree(triples)), pending):
            for sock in batch:
                self._thaw(sock)
                refused[sock] = Reason.TARGET_REFUSED
        return refused

    def _nodes_for(
        self, sock: TcpSocket, made: dict[tuple[Layer, bytes], tuple[SharedObject, TreeNode]]
    ) -> tuple[TreeNode, TreeNode, SharedObject] | Reason | None:
        """The neighbor and path nodes of ``sock``'s branch (``made``: those of this call so far), and its
        path; a Reason when there is no next hop yet; None when another call is offloading one of them."""
        hop = self.stack.iface.next_hop(sock.remote_ip)
        mac = None if hop is None else self.stack.arp.lookup(hop, self.now)
        if hop is None or mac is None:
            return Reason.DEPENDENCY_FAILED
        neighbor, nnode = made.get((Layer.NEIGHBOR, hop)) or self._neighbor_node(hop, mac)
        if neighbor is None:
            return None
        made[(Layer.NEIGHBOR, hop)] = (neighbor, nnode)
        dst = sock.remote_ip
        path, pnode = made.get((Layer.PATH, dst)) or self._path_node(dst, neighbor, nnode)
        if path is None:
            return None
        made[(Layer.PATH, dst)] = (path, pnode)
        return nnode, pnode, path

    def _new_tcp_node(self, sock: TcpSocket, path: SharedObject) -> NewObject:
        """Freeze ``sock``'s engine into the TCP node of an initiate; the connection is OFFLOADING."""
        snap = self._freeze(sock)
        off = sock.offload
        assert off is not None
        off.handle = self._handle()
        off.state, off.path, off.started = OffloadState.OFFLOADING, path, self.now
        self._by_handle[off.handle] = sock
        return NewObject(off.handle, snap)

    def _neighbor_node(self, hop: bytes, mac: bytes) -> tuple[SharedObject | None, TreeNode]:
        obj = self._neighbors.get(hop)
        if obj is not None and obj.handle in self.registry:
            rec = self.registry.record(obj.handle)
            if rec.phase is Phase.OFFLOADING:
                return None, PLACEHOLDER
            if rec.phase is Phase.OFFLOADED and not rec.invalidated and obj.target_handle is not None:
                return obj, LinkedObject(obj.target_handle, obj.handle)
        obj = SharedObject(Layer.NEIGHBOR, self._handle(), hop, mac)
        self._neighbors[hop] = obj
        self._neighbor_of[obj.handle] = obj
        return obj, NewObject(obj.handle, NeighborState(NeighborConst(), NeighborCached(mac)))

    def _path_node(
        self, dst: bytes, neighbor: SharedObject, nnode: TreeNode
    ) -> tuple[SharedObject | None, TreeNode]:
        obj = self._paths.get(dst)
        if obj is not None and obj.parent is neighbor and obj.handle in self.registry:
            rec = self.registry.record(obj.handle)
            if rec.phase is Phase.OFFLOADING:
                return None, PLACEHOLDER
            if rec.phase is Phase.OFFLOADED and not rec.invalidated and obj.target_handle is not None:
                return obj, LinkedObject(obj.target_handle, obj.handle)
        mtu = self.stack.path_mtu(dst)
        obj = SharedObject(Layer.PATH, self._handle(), dst, mtu, parent=neighbor)
        self._paths[dst] = obj
        return obj, NewObject(obj.handle, PathState(PathConst(self.stack.iface.ip, dst), PathCached(mtu)))

    def _freeze(self, sock: TcpSocket) -> TcpSnapshot:
        """Stop the host engine: its readable bytes move to the socket's queue, every segment it owes (a
        delayed ACK included, spec 3.1 step 1) leaves first, its timers stop; then export it."""
        stack, conn, off = self.stack, sock.conn, sock.offload
        assert off is not None
        readable = conn.receive(-1)
        if readable:
            off.rcvq.append(readable)
            sock._set_readable(0)
        if conn.delack_deadline is not None:
            conn.ack_now = True
        out: list[Frame] = []
        stack._output(sock, self.now, out)
        stack._tx.extend(out)
        stack._dirty.pop(sock, None)
        sock.deadline = None  # its heap entry goes stale: no engine timer while it is away
        snap = tcp_snapshot.export_snapshot(conn, self.now)
        d = snap.delegated
        off.const, off.cached, off.tcp_state = snap.const, snap.cached, d.state
        off.base_una, off.base_end = d.snd_una, d.snd_una + len(d.send_data)
        off.rcv_end = d.buffered_start + len(d.buffered_data)
        off.submitted = off.acked = off.outstanding = off.taken = off.trim = 0
        off.last_indication = None
        off.unconfirmed.clear()
        off.inflight.clear()
        off.returned.clear()
        off.held.clear()
        off.update_pending = off.updating = off.target_holds = off.querying = False
        off.suspect = off.after_query = None
        off.backlog = 0  # the target indicates its own estimate
        off.upload_after = None
        # An application the engine refused waits for a SendSpace the frozen engine will never report.
        off.send_blocked = conn.send_blocked
        return snap

    def _thaw(self, sock: TcpSocket) -> None:
        """The offload did not happen: the host engine continues where it stopped, with what waited."""
        off = sock.offload
        assert off is not None
        self._by_handle.pop(off.handle, None)
        off.state, off.ctx, off.path = OffloadState.IN_HOST, None, None
        self._resume_engine(sock)

    def _on_initiate_done(self, pending: Pending, completion: StateCompletion) -> None:
        blocks = {b.host_handle: b for b in walk(completion.tree) if b.role is Role.NEW}
        for obj in pending.objects:
            block = blocks.get(obj.handle)
            if block is not None and block.status.ok:
                obj.target_handle = block.target_handle
            else:
                self._drop_shared(obj)
        for sock in pending.socks:
            self._initiated(sock, blocks, completion.tree)

    def _initiated(
        self, sock: TcpSocket, blocks: dict[int | None, BlockList], tree: tuple[BlockList, ...]
    ) -> None:
        """One connection of a completed initiate: on the target now, or back on its host engine."""
        off = sock.offload
        assert off is not None
        tcp = blocks.get(off.handle)
        if tcp is None or not tcp.status.ok:
            reason = self._refusal_reason(tree, off.handle)
            self._thaw(sock)
            off.refused_by_target = True
            if not off.aborted:
                self._refuse(sock, reason)
            return
        off.ctx, off.state, off.reason = tcp.target_handle, OffloadState.OFFLOADED, None
        off.heard = self.now
        off.moved_before += self._engine_moved(sock)  # its engine stays frozen: what it moved is settled
        bump(self.counters, "offloaded")
        self.stack._events.append(Offloaded(sock, self.now - off.started))
        self._after_offload(sock)
        path = off.path
        if path is not None:  # a PMTU or MAC change may have raced the initiate
            self._reconcile(path)
            if path.parent is not None:
                self._reconcile(path.parent)

    def _after_offload(self, sock: TcpSocket) -> None:
        off = sock.offload
        assert off is not None and off.ctx is not None
        if off.aborted:
            self._submit_abort(sock)
            self._terminate(sock, Reason.ABORTED)
            return
        if off.held:
            held, off.held = tuple(off.held), []
            self._submit(Forward(self._rid(), off.ctx, held), Pending("data", sock))
        self._flush_sends(sock)
        self._report_send_space(sock)
        if off.update_pending:
            self._update_tcp(sock)
        if off.upload_after is not None:
            reason, off.upload_after = off.upload_after, None
            self.upload(sock, reason)

    def _refusal_reason(self, tree: tuple[BlockList, ...], tcp_handle: int) -> Reason:
        """The first failed block on the way to the TCP block says why (its own status, or a dependency)."""
        for block in _branch(tree, tcp_handle):
            # A linker's FAILURE only says none of its dependents made it (spec 3.1), not why.
            if block.role is not Role.NEW or block.status.ok:
                continue
            if block.host_handle != tcp_handle and block.status is Status.FAILURE:
                return Reason.DEPENDENCY_FAILED
            status = block.status
            if status in REFUSAL_FOR_STATUS:
                return REFUSAL_FOR_STATUS[status]
            if status.is_resource_shortage:
                return Reason.TARGET_RESOURCES
            return Reason.TARGET_REFUSED if block.host_handle == tcp_handle else Reason.DEPENDENCY_FAILED
        return Reason.TARGET_REFUSED


def _branch(tree: tuple[BlockList, ...], tcp_handle: int) -> tuple[BlockList, ...]:
    """The blocks from the top of ``tree`` down to the TCP block of ``tcp_handle`` (its neighbor, its path,
    itself); empty when the tree does not hold it."""
    for top in tree:
        for mid in top.dependents:
            for low in mid.dependents:
                if low.host_handle == tcp_handle:
                    return (top, mid, low)
    return ()
