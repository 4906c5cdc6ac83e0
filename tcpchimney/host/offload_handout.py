"""Offload hand-off out: terminate (upload), the returned state and the engine resuming it."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import TYPE_CHECKING

from tcpchimney.chimney.completions import StateCompletion
from tcpchimney.chimney.errors import PreconditionError, ProtocolViolationError
from tcpchimney.chimney.reason import Reason
from tcpchimney.chimney.registry import Phase
from tcpchimney.chimney.requests import TerminateOffload
from tcpchimney.chimney.status import Status
from tcpchimney.chimney.tcp_state import PEER_FIN_RECEIVED, TcpDelegated, TcpSnapshot
from tcpchimney.chimney.tree import PLACEHOLDER, BlockList, Layer, LinkedObject, TreeNode, build_tree, walk
from tcpchimney.host.counters import bump
from tcpchimney.host.events import Uploaded
from tcpchimney.host.offload_base import OffloadBase
from tcpchimney.host.offload_faults import check_returned, lost_peer_probes
from tcpchimney.host.offload_state import OPEN_FOR_SEND, OffloadState, Pending, SharedObject
from tcpchimney.tcp import snapshot as tcp_snapshot
from tcpchimney.tcp.events import ConnectionReset, DataReceived, PeerClosed, SendSpace
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire import tcp as tcp_wire

if TYPE_CHECKING:
    from tcpchimney.host.sockets import TcpSocket


class OffloadHandOut(OffloadBase):
    """Hand-off out: terminate (upload), the returned state checked and given back to the engine."""

    # ================================================================== upload

    def _terminate(self, sock: TcpSocket, reason: Reason) -> bool:
        off = sock.offload
        assert off is not None and off.ctx is not None
        if off.querying:  # the registry refuses a terminate while a query of the object is in flight
            off.after_query = off.after_query or (reason,)
            return True
        path = off.path
        triples: tuple[TreeNode, TreeNode, TreeNode] = (
            PLACEHOLDER,
            PLACEHOLDER,
            LinkedObject(off.ctx, off.handle),
        )
        objects: tuple[SharedObject, ...] = ()
        if path is not None and self._last_user(path, 1) and path.target_handle is not None:
            neighbor = path.parent
            nnode: TreeNode = PLACEHOLDER
            objects = (path,)
            if neighbor is not None and neighbor.target_handle is not None and self._last_user(neighbor, 1):
                nnode = LinkedObject(neighbor.target_handle, neighbor.handle)
                objects = (path, neighbor)
            triples = (nnode, LinkedObject(path.target_handle, path.handle), triples[2])
        request = TerminateOffload(self._rid(), build_tree([triples]))
        try:
            self.registry.submit(request)
        except PreconditionError:  # the path or neighbor is busy: upload the connection alone
            alone = build_tree([(PLACEHOLDER, PLACEHOLDER, triples[2])])
            request, objects = TerminateOffload(request.request_id, alone), ()
            try:
                self.registry.submit(request)
            except PreconditionError as exc:
                bump(self.counters, "precondition_refused")
                self.stack._internal_error(exc)
                return False
        if not self._send_checked(request, Pending("terminate", sock, objects)):
            self._lost(sock, "the target did not take the terminate: the connection's state is lost")
            return False
        for obj in objects:
            self._drop_shared(obj)
        off.state, off.reason, off.started = OffloadState.UPLOADING, reason, self.now
        return True

    def _terminate_many(self, socks: list[TcpSocket], reason: Reason) -> int:
        """One terminate tree for ``socks``, with each path (and neighbor) none of whose users stays."""
        nodes, objects = self._leaving_nodes(socks)
        triples = []
        for sock in socks:
            off = sock.offload
            assert off is not None and off.ctx is not None
            pair = nodes.get(off.path.handle) if off.path is not None else None
            nnode, pnode = pair or (PLACEHOLDER, PLACEHOLDER)
            triples.append((nnode, pnode, LinkedObject(off.ctx, off.handle)))
        request = TerminateOffload(self._rid(), build_tree(triples))
        try:
            self.registry.submit(request)
        except PreconditionError:  # a path or neighbor is busy: each connection alone
            return sum(self._terminate(sock, reason) for sock in socks)
        if not self._send_checked(request, Pending("terminate", None, objects, tuple(socks))):
            for sock in socks:
                self._lost(sock, "the target did not take the terminate: the connection's state is lost")
            return 0
        for sock in socks:
            off = sock.offload
            assert off is not None
            off.state, off.reason, off.started = OffloadState.UPLOADING, reason, self.now
        for obj in objects:
            self._drop_shared(obj)
        return len(socks)

    def _leaving_nodes(
        self, socks: list[TcpSocket]
    ) -> tuple[dict[int, tuple[TreeNode, TreeNode]], tuple[SharedObject, ...]]:
        """Per path handle, the (neighbor, path) nodes of a terminate tree for ``socks``, and the objects it
        terminates: a path when all its connections leave, a neighbor when all its paths do."""
        users: Counter[SharedObject] = Counter(
            s.offload.path for s in socks if s.offload is not None and s.offload.path is not None
        )
        paths = [p for p, n in users.items() if p.target_handle is not None and self._last_user(p, n)]
        by_neighbor: Counter[SharedObject] = Counter(p.parent for p in paths if p.parent is not None)
        neighbors = {
            n for n, count in by_neighbor.items() if n.target_handle is not None and self._last_user(n, count)
        }
        nodes: dict[int, tuple[TreeNode, TreeNode]] = {}
        for path in paths:
            neighbor = path.parent
            nnode: TreeNode = PLACEHOLDER
            if neighbor in neighbors:
                nnode = LinkedObject(neighbor.target_handle or 0, neighbor.handle)
            nodes[path.handle] = (nnode, LinkedObject(path.target_handle or 0, path.handle))
        return nodes, (*paths, *neighbors)

    def _last_user(self, obj: SharedObject, users: int) -> bool:
        if obj.handle not in self.registry:
            return False
        rec = self.registry.record(obj.handle)
        return (
            rec.phase is Phase.OFFLOADED
            and rec.dependents == users
            and not rec.updating
            and not (rec.pending_calls)
        )

    def _on_terminate_done(self, pending: Pending, completion: StateCompletion) -> None:
        socks = pending.socks
        if not socks:
            self._reprobe(pending.objects)
            return  # a neighbor / path nobody uses any more: gone from the target
        blocks = {b.host_handle: b for b in walk(completion.tree) if b.layer is Layer.TCP}
        paths = {}
        for sock in socks:
            off = sock.offload
            assert off is not None
            if off.path is not None:
                paths[off.path.handle] = off.path
            self._uploaded(sock, blocks.get(off.handle))
        self._reprobe(pending.objects)
        for path in paths.values():
            self._release(path)

    def _reprobe(self, terminated: tuple[SharedObject, ...]) -> None:
        """A copy the target kept of a connection the host reset answers the peer's replies to the probes
        (``_probe_lost_peer``) itself, so the host's RST never comes and an idle peer (FIN-WAIT-2, nothing
        to send) waits for ever. The target drops what still hangs on a path when the path is terminated:
        probe those peers again now, and the host, which holds no such connection, resets them."""
        for obj in terminated:
            while obj.lost:
                self._probe_lost_peer(obj.lost.pop())

    def _release(self, path: SharedObject) -> None:
        """Terminate a path (and its neighbor) once no connection hangs on it (spec 3.5, 5.4 refcounts)."""
        if path.target_handle is None or not self._last_user(path, 0):
            return
        triple: tuple[TreeNode, TreeNode, None] = (
            PLACEHOLDER,
            LinkedObject(path.target_handle, path.handle),
            None,
        )
        objects: tuple[SharedObject, ...] = (path,)
        neighbor = path.parent
        if neighbor is not None and neighbor.target_handle is not None and self._last_user(neighbor, 1):
            triple = (LinkedObject(neighbor.target_handle, neighbor.handle), triple[1], None)
            objects = (path, neighbor)
        if self._submit(
            TerminateOffload(self._rid(), build_tree([triple])), Pending("terminate", None, objects)
        ):
            for obj in objects:
                self._drop_shared(obj)

    def _uploaded(self, sock: TcpSocket, block: BlockList | None) -> None:
        """``block``: the connection's block of the completed terminate tree."""
        off = sock.offload
        assert off is not None
        self._by_handle.pop(off.handle, None)
        if block is None or block.status is Status.NOT_SUPPORTED:
            off.state = OffloadState.OFFLOADED  # the target cannot upload: the connection stays there
            self._by_handle[off.handle] = sock
            self._fault(sock, Reason.HARDWARE_FAILURE, "the target cannot terminate the offload", act=False)
            return
        needs_rst = off.aborted and not off.rst_sent  # an abort not yet on the wire (lost state: _lost)
        if off.finished and not needs_rst:
            off.state = OffloadState.IN_HOST
            self._report_upload(sock)
            return
        if block.status is not Status.SUCCESS or block.state is None:
            self._lost(sock, "the target lost the connection's state (terminate FAILURE)")
            return
        state = block.state
        delegated = state.delegated if isinstance(state, TcpSnapshot) else state
        assert isinstance(delegated, TcpDelegated)
        try:
            tail, off.trim = check_returned(off, delegated)
        except ProtocolViolationError as exc:
            self._lost(sock, str(exc))
            return
        if off.trim:
            self._fault(None, Reason.HARDWARE_FAILURE, f"{off.trim} returned bytes were delivered already")
        self._reinstate(sock, delegated, tail)

    def _reinstate(self, sock: TcpSocket, d: TcpDelegated, tail: bytes) -> None:
        """Rebuild the host engine from the returned state: queued sends appended, reads from the socket's
        queue first, then the engine (docs/offload-design.md UPLOADING)."""
        off, stack = sock.offload, self.stack
        assert off is not None and off.const is not None and off.cached is not None
        trim = off.trim
        if trim:
            d = replace(d, buffered_data=d.buffered_data[trim:])
        snap = TcpSnapshot(off.const, off.cached, d)
        base = sock.conn.config
        extra = len(tail) + len(off.queued)
        room = max(base.snd_buf, len(d.send_data)) + extra  # the send backlog may exceed SO_SNDBUF
        conn = tcp_snapshot.rebuild(snap, base.with_options(snd_buf=room), self.now)
        conn.orphaned = off.closed
        if conn.orphaned and conn.state is TcpState.FIN_WAIT_2 and conn.close_deadline is None:
            conn.close_deadline = self.now + conn.config.fin_wait_2_timeout  # the target never armed it
        if off.reason is Reason.NIC_FAILED:
            # A dead NIC commits a turn's right edge before it writes the turn's ACKs (its crash rule), so it
            # may have died with its last window update unsent: the peer may still see a zero window that the
            # record, and so this engine, thinks is open. Announce it now rather than wait for the peer's
            # persist probe (about 200 ms against Linux, bench/nic_recovery.py); if it did leave, this is one
            # duplicate ACK.
            conn.ack_now = True
        conn.mib = sock.conn.mib  # the rebuilt engine counts where the frozen one did
        sock.conn = conn
        sock.template = None
        off.state = OffloadState.IN_HOST
        off.ctx, off.path = None, None
        if tail:
            conn.sndbuf.write(tail)
        if off.queued and conn.state in OPEN_FOR_SEND and not conn.fin_queued:
            for piece in off.queued.drain():
                conn.send(piece)
        off.queued.clear()
        off.inflight.clear()
        off.returned.clear()
        conn.configure(snd_buf=base.snd_buf)
        off.una0, off.rcv0 = conn.snd_una, conn.rcv_nxt
        off.moved_before += off.submitted + off.taken
        mtu = stack._pmtu.get(sock.remote_ip)
        if mtu is not None:
            stack._lower_mss(sock, mtu)
        self._report_upload(sock)
        if off.finished:
            self._resume_engine(sock)
            return
        if conn.readable:
            sock._set_readable(conn.readable)
            self._emit(sock, DataReceived(sock.readable))
        if conn.state in PEER_FIN_RECEIVED and not off.peer_fin:
            off.peer_fin = True  # the target had not indicated it yet
            self._emit(sock, PeerClosed())
        if conn.state is TcpState.CLOSED:
            self._closed_on_target(sock)
            return
        self._resume_engine(sock)

    def _closed_on_target(self, sock: TcpSocket) -> None:
        """The target returned a connection that ended gracefully there (LAST-ACK -> CLOSED) before the
        host's model knew: the peer's FIN was held behind undelivered data (spec 4.3) when the application
        shut down, so the host tracked FIN-WAIT-1 -> CLOSING -> TIME-WAIT and uploaded. A rebuilt engine
        born CLOSED reports nothing: the application gets the rest of the bytes, EOF and Closed here."""
        off = sock.offload
        assert off is not None
        if sock.conn.readable:
            off.rcvq.append(sock.conn.receive(-1))  # read from the socket's queue once finished
        if not off.peer_fin:
            off.peer_fin = True
            self._emit(sock, PeerClosed())
        self._finish(sock)

    def _resume_engine(self, sock: TcpSocket) -> None:
        """Feed the host engine what waited for it: held segments, queued sends, a FIN or abort."""
        off, stack, conn = sock.offload, self.stack, sock.conn
        assert off is not None
        if off.queued and conn.state in OPEN_FOR_SEND and not conn.fin_queued:
            # The socket accepted these bytes already; the engine may be full (its unACKed data was not
            # counted while the offload was in flight). It takes them all over its capacity, so later sends
            # wait behind them (its space reopens, SendSpace follows) instead of overtaking a remainder.
            capacity = conn.sndbuf.capacity
            conn.sndbuf.capacity = len(conn.sndbuf) + len(off.queued)
            for piece in off.queued.drain():
                conn.send(piece)
            conn.sndbuf.capacity = capacity
        if off.send_blocked and not (off.aborted or off.finished):
            # The manager refused the application: the engine reports the space (now, or when ACKs free it).
            off.send_blocked = False
            if conn.sndbuf.space > 0 and not off.queued:
                self._emit(sock, SendSpace(conn.sndbuf.space))
            else:
                conn.send_blocked = True
        if off.aborted:
            conn.abort()
            self._discard_engine_events(sock)
        elif off.fin_pending and conn.state in OPEN_FOR_SEND and not conn.fin_queued:
            conn.close() if off.closed else conn.shutdown()
        off.fin_pending = off.fin_sent = False
        held, off.held = off.held, []
        for raw in held:
            try:
                seg = tcp_wire.parse_tcp(raw, None)
            except Exception:
                continue
            stack._segment_for(sock, seg, self.now)
        stack._dirty[sock] = None
        if not off.aborted:
            stack._drain(sock)

    def _discard_engine_events(self, sock: TcpSocket) -> None:
        """The application already saw this connection close: its engine's last events are nobody's."""
        while sock.conn.next_event() is not None:
            pass
        self.stack._dirty[sock] = None  # its RST still leaves

    def _report_upload(self, sock: TcpSocket) -> None:
        off = sock.offload
        assert off is not None
        if off.reason is not None:  # every terminate sets one: each upload is counted and reported
            bump(self.counters, "uploaded")
            bump(self.counters, f"uploaded_{off.reason.value}")
            self.stack._events.append(Uploaded(sock, off.reason, self.now - off.started))

    def _lost(self, sock: TcpSocket, detail: str) -> None:
        """The connection's state cannot be trusted: abort it (the host's best RST) and report the fault."""
        off = sock.offload
        assert off is not None
        self._by_handle.pop(off.handle, None)
        off.state, off.ctx = OffloadState.IN_HOST, None
        self._fault(sock, Reason.HARDWARE_FAILURE, detail, act=False)
        self._give_up(sock)
        sock.conn.abort()
        self._discard_engine_events(sock)
        self._probe_lost_peer(sock)
        if off.path is not None:
            off.path.lost.append(sock)
            self._release(off.path)  # if it was the path's last connection, nobody else will release it

    def _give_up(self, sock: TcpSocket) -> None:
        """The host aborted the connection for a fault: for the application it was reset (ECONNRESET in
        every later call, the state CLOSED, what it had not read discarded), as after the peer's RST."""
        off = sock.offload
        assert off is not None
        off.aborted = off.reset = True
        if not off.finished:
            off.rcvq.clear()
            off.queued.clear()
            self._emit(sock, ConnectionReset())
            self._finish(sock)

    def _probe_lost_peer(self, sock: TcpSocket) -> None:
        """Make the peer answer so that the host's RST reaches it exactly (``lost_peer_probes``)."""
        off = sock.offload
        assert off is not None
        for probe in lost_peer_probes(sock, off):
            self.stack._send_segment_stateless(sock.remote_ip, probe)
