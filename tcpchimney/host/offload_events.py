"""Completions, indications and faults: the target's answers, its breaches, its silence."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tcpchimney.chimney.completions import (
    Completion,
    DisconnectCompletion,
    ReceiveCompletion,
    SendCompletion,
    StateCompletion,
)
from tcpchimney.chimney.errors import ContractError, ProtocolViolationError
from tcpchimney.chimney.indications import (
    Indication,
    LinkStatusChanged,
    NeighborReachabilityQuery,
    PeerDisconnect,
    PeerReset,
    ReceiveIndication,
    SendBacklogChanged,
    TargetPaused,
    TargetResumed,
    UploadAllRequested,
    UploadRequest,
)
from tcpchimney.chimney.reason import Reason
from tcpchimney.chimney.registry import Phase
from tcpchimney.chimney.requests import InvalidateOffload, QueryOffload, ReachabilityReply
from tcpchimney.chimney.status import Status
from tcpchimney.chimney.tcp_state import TcpDelegated, TcpSnapshot
from tcpchimney.chimney.tree import PLACEHOLDER, BlockList, Layer, LinkedObject, build_tree, walk
from tcpchimney.host.counters import bump
from tcpchimney.host.events import OffloadFault
from tcpchimney.host.offload_base import OffloadBase
from tcpchimney.host.offload_faults import owed_by_target
from tcpchimney.host.offload_state import (
    SILENCE,
    STATE_CALL_TIMEOUT,
    WATCH_INTERVAL,
    Inspected,
    OffloadState,
    Pending,
    SharedObject,
)

if TYPE_CHECKING:
    from tcpchimney.host.sockets import TcpSocket


class OffloadEvents(OffloadBase):
    """The target's answers dispatched, its breaches handled, its silence watched."""

    # ================================================================== completions and indications

    def _on_completion(self, completion: Completion) -> None:
        pending = self._pending.pop(completion.request_id, None)
        self._state_calls.pop(completion.request_id, None)
        for sock in pending.socks if pending is not None else ():
            if sock.offload is not None:
                sock.offload.heard = self.now
        try:
            self.registry.complete(completion)
        except ContractError as exc:  # a violation, or an answer naming what the registry no longer holds
            self._violation(
                pending,
                f"{type(exc).__name__}: {exc}" if not isinstance(exc, ProtocolViolationError) else str(exc),
                completion,
            )
            return
        if pending is None:
            return
        state_done = self._state_done.get(pending.kind)
        if state_done is not None:
            assert isinstance(completion, StateCompletion)
            state_done(pending, completion)
        elif pending.kind == "return" and pending.sock is not None and pending.sock.offload is not None:
            if completion.status is Status.SUCCESS:  # the target consumed them: they are its no more
                unconfirmed = pending.sock.offload.unconfirmed
                while unconfirmed and unconfirmed[0][0] <= completion.request_id:
                    unconfirmed.popleft()
        elif pending.sock is not None:
            self._on_data_done(pending.sock, completion)

    def _on_data_done(self, sock: TcpSocket, completion: Completion) -> None:
        try:
            if isinstance(completion, SendCompletion):
                self._on_send_done(sock, completion)
            elif isinstance(completion, ReceiveCompletion):
                self._on_receive_done(sock, completion)
            elif isinstance(completion, DisconnectCompletion):
                self._on_disconnect_done(sock, completion)
        except ProtocolViolationError as exc:
            self._fault(sock, Reason.HARDWARE_FAILURE, str(exc))

    def _violation(self, pending: Pending | None, detail: str, completion: Completion) -> None:
        """An answer the registry rejected. A data call's stays unanswered (its real answer may follow);
        a state call is settled as failed: left in flight, the objects it names could never be terminated
        (the registry waits for it), so the connection would never leave the target."""
        if pending is None:
            self._fault(None, Reason.HARDWARE_FAILURE, detail)
            return
        if pending.kind == "initiate" and isinstance(completion, StateCompletion):
            self._bad_initiate(pending, detail, completion.tree)
            return
        if pending.kind not in self._state_done:
            self._fault(pending.sock, Reason.HARDWARE_FAILURE, detail)
            return
        # An initiate answered with no tree says nothing of what the target made: as if never answered.
        made = pending.kind in ("initiate", "neighbor")
        self._state_call_failed(completion.request_id, pending, detail, target_failed=made)

    def _state_call_failed(self, rid: int, pending: Pending, detail: str, target_failed: bool) -> None:
        """Settle a state call the target answered wrongly or not at all: the registry forgets it, the
        connections of an initiate or terminate are reset (their state on the target is unknown), those of
        an update or query uploaded."""
        self.registry.abandon(rid)
        for obj in pending.objects:
            self._drop_shared(obj)
        if not pending.socks:
            self._fault(None, Reason.HARDWARE_FAILURE, detail)
        for sock in pending.socks:
            off = sock.offload
            assert off is not None
            off.updating = off.querying = False
            off.after_query = None
            if pending.kind in ("initiate", "terminate"):
                self._lost(sock, detail)
            else:
                self._fault(sock, Reason.HARDWARE_FAILURE, detail)  # uploads it
        if target_failed:
            self._target_failed(detail)

    def _bad_initiate(self, pending: Pending, detail: str, answer: tuple[BlockList, ...]) -> None:
        """An initiate answer the registry rejected. What it counts as held by the target (an object with a
        handle of its own) the host can name: such a connection is uploaded at once and comes back intact
        when its state checks; the new paths and neighbors go once unused. The rest is reset. A connection
        the answer claims offloaded under a handle the host cannot use (one in use, or none) leaves a copy
        on the target that only the target can name: the target is failed (``_target_failed``), so that
        every path is emptied and terminated, and the target drops what still hangs on one."""
        claimed = False
        said_offloaded = {b.host_handle for b in walk(answer) if b.layer is Layer.TCP and b.status.ok}
        for obj in pending.objects:
            held = obj.handle in self.registry
            obj.target_handle = self.registry.record(obj.handle).target_handle if held else None
            if not held:
                self._drop_shared(obj)
        for sock in pending.socks:
            off = sock.offload
            assert off is not None
            if off.handle in self.registry:
                off.ctx, off.state = self.registry.record(off.handle).target_handle, OffloadState.OFFLOADED
                self._fault(sock, Reason.HARDWARE_FAILURE, detail)  # uploads it
            else:
                claimed = claimed or off.handle in said_offloaded
                self._lost(sock, detail)
        for obj in pending.objects:
            if obj.layer is Layer.PATH:
                self._release(obj)
            elif obj.target_handle is not None:
                self._release_neighbor(obj)
        if claimed:
            self._target_failed(f"an initiate answer left the target holding a connection: {detail}")

    def _target_failed(self, detail: str) -> None:
        """The target broke the contract beyond one connection (its ``submit`` raised; it gave a handle
        that names another object, so the host cannot name what it made): like corrupt hardware (spec
        3.2), every connection comes back, those it cannot hand back are reset, and each path and neighbor
        is terminated as its last connection leaves (the target drops whatever still hangs on one). No
        connection is offered to it again until it announces TargetResumed."""
        self._fault(None, Reason.HARDWARE_FAILURE, detail)
        if self.failed:
            return
        self.failed = True
        bump(self.counters, "target_failed")
        self.upload_all(Reason.HARDWARE_FAILURE)

    def _fault(self, sock: TcpSocket | None, reason: Reason, detail: str, act: bool = True) -> None:
        bump(self.counters, "target_faults")
        self.stack._internal_error(ProtocolViolationError(detail))
        self.stack._events.append(OffloadFault(sock, reason, detail))
        if act and sock is not None:
            self.upload(sock, reason)

    def _on_indication(self, ind: Indication) -> None:
        if isinstance(ind, TargetPaused):
            self.paused = True
        elif isinstance(ind, TargetResumed):
            self.paused = self.failed = False
            self.capabilities = ind.capabilities
            self._reconsider()  # what the pause refused may go now, under the new capabilities
        elif isinstance(ind, UploadAllRequested):
            self.upload_all(Reason.UPLOAD_ALL)
        elif isinstance(ind, LinkStatusChanged):
            if not ind.up:
                self.upload_all(Reason.LINK_DOWN)
        elif isinstance(ind, NeighborReachabilityQuery):
            self._on_reachability_query(ind)
        else:
            self._on_connection_indication(ind)

    def _on_connection_indication(self, ind: Indication) -> None:
        handle = getattr(ind, "host_handle", None)
        sock = self._by_handle.get(handle) if isinstance(handle, int) else None
        if sock is None or sock.offload is None:
            self._fault(None, Reason.HARDWARE_FAILURE, f"{type(ind).__name__} for unknown handle {handle}")
            return
        sock.offload.heard = self.now
        if isinstance(ind, ReceiveIndication):
            self._on_receive(sock, ind)
        elif isinstance(ind, PeerDisconnect):
            self._on_peer_disconnect(sock, ind)
        elif isinstance(ind, PeerReset):
            self._on_peer_reset(sock)
        elif isinstance(ind, UploadRequest):
            self.upload(sock, ind.reason)
        elif isinstance(ind, SendBacklogChanged):
            sock.offload.backlog = ind.backlog
            if sock.offload.state is OffloadState.OFFLOADED:
                self._report_send_space(sock)  # a larger backlog may unblock the application

    def _on_reachability_query(self, ind: NeighborReachabilityQuery) -> None:
        obj = self._neighbor_of.get(ind.host_handle)
        if obj is None or obj.target_handle is None:
            self._fault(
                None, Reason.HARDWARE_FAILURE, f"reachability query for unknown neighbor {ind.host_handle}"
            )
            return
        if obj.handle not in self.registry or self.registry.record(obj.handle).phase is not Phase.OFFLOADED:
            return  # asked while it is being terminated: nothing will be sent through it any more
        entry = self.stack.arp.entry(obj.key)
        fresh = entry is not None and entry.mac is not None and entry.state.value == "REACHABLE"
        hrd = max(0.0, self.now - entry.confirmed) if fresh and entry is not None else 0.0
        self._submit(
            ReachabilityReply(self._rid(), obj.target_handle, ind.indication_id, hrd), Pending("data", None)
        )
        if not fresh:
            self._verify(obj)

    def _verify(self, obj: SharedObject) -> None:
        """Spec 4.6, the host's half of a "stale" answer: confirm the neighbor by ARP (a unicast probe to the
        MAC it has, or a request when it has none). If nobody answers, the ARP cache forgets the entry and
        ``_check_neighbors`` invalidates the target's neighbor. The spec's host first queries the NRD after a
        timer and probes only without progress; here the probe is the check (an answered probe costs one
        ARP exchange), which the spec leaves to the host."""
        arp = self.stack.arp
        if arp.lookup(obj.key, self.now) is None:  # STALE -> PROBE: the lookup sends the unicast probe
            arp.resolve(obj.key, self.now)
        self._verifying[obj.key] = obj

    def _check_verified(self) -> None:
        for hop, obj in list(self._verifying.items()):
            entry = self.stack.arp.entry(hop)
            if entry is None:  # the probes went unanswered: the neighbor is gone
                del self._verifying[hop]
                self._invalidate_neighbor(obj)
            elif entry.state.value == "REACHABLE":
                del self._verifying[hop]

    def _invalidate_neighbor(self, obj: SharedObject) -> None:
        """Spec 3.4 / 4.6: the target stops sending through ``obj`` and asks for the upload of every
        connection behind it (INVALID_STATE); new offloads get a fresh neighbor object."""
        if obj.target_handle is None or obj.handle not in self.registry:
            return
        rec = self.registry.record(obj.handle)
        if rec.phase is not Phase.OFFLOADED or rec.invalidated:
            return
        tree = build_tree([(LinkedObject(obj.target_handle, obj.handle), None, None)])
        if self._submit(InvalidateOffload(self._rid(), tree), Pending("data", None)):
            bump(self.counters, "neighbors_invalidated")
            self._drop_shared(obj)

    # ================================================================== the target's silence

    def _arm_watch(self) -> None:
        if self._next_watch is None:
            self._next_watch = self.now + WATCH_INTERVAL

    def _watch(self, now: float) -> None:
        """Every WATCH_INTERVAL while the target holds anything: lost state calls, silent connections."""
        self._next_watch = None
        for rid, at in list(self._state_calls.items()):
            if now - at >= STATE_CALL_TIMEOUT and rid in self._state_calls:
                self._call_lost(rid)
        for sock in list(self._by_handle.values()):
            off = sock.offload
            if off is None or off.state is not OffloadState.OFFLOADED or off.ctx is None:
                continue
            if not (off.querying or off.updating) and now - off.heard >= SILENCE:
                tree = build_tree([(PLACEHOLDER, PLACEHOLDER, LinkedObject(off.ctx, off.handle))])
                off.querying = self._submit(QueryOffload(self._rid(), tree), Pending("query", sock))
        if self._state_calls or self._by_handle:
            self._arm_watch()

    def _call_lost(self, rid: int) -> None:
        """A state call the target never answered: what it named is in an unknown state on the target. The
        connections it named are reset and the target failed (``_target_failed``)."""
        del self._state_calls[rid]
        pending = self._pending.pop(rid, None)
        kind = pending.kind if pending is not None else "state"
        detail = f"the target never answered {kind} request {rid}"
        if pending is None:
            self.registry.abandon(rid)
            self._target_failed(detail)
            return
        self._state_call_failed(rid, pending, detail, target_failed=True)

    def inspect(self, sock: TcpSocket) -> bool:
        """Ask the target for an offloaded connection's live state (an administrator's look: ``chimney
        netstat -i``); the answer lands in ``off.inspected``. False when the connection is not offloaded or
        a query or update of it is in flight already (its answer will do)."""
        off = sock.offload
        if off is None or off.state is not OffloadState.OFFLOADED or off.ctx is None:
            return False
        if off.querying or off.updating:
            return off.querying
        tree = build_tree([(PLACEHOLDER, PLACEHOLDER, LinkedObject(off.ctx, off.handle))])
        off.querying = self._submit(QueryOffload(self._rid(), tree), Pending("inspect", sock))
        return off.querying

    def _on_query_done(self, pending: Pending, completion: StateCompletion) -> None:
        """A queried connection's state. A silent connection's query judges it: what it shows owed twice in
        a row is a fault (once may be a race with an indication still on its way). An administrator's look
        (``inspect``) is not judged: two of them in a busy transfer would both catch data on its way. A
        failed query is corrupt hardware either way (spec 3.2)."""
        sock = pending.sock
        assert sock is not None and sock.offload is not None
        off = sock.offload
        off.querying = False
        block = next((b for b in walk(completion.tree) if b.layer is Layer.TCP), None)
        state = block.state if block is not None and block.status is Status.SUCCESS else None
        if isinstance(state, TcpSnapshot | TcpDelegated):
            d = state.delegated if isinstance(state, TcpSnapshot) else state
            off.inspected = Inspected.of(d, self.now)
            if pending.kind == "query":
                owed = owed_by_target(off, d)
                if owed is not None and off.suspect is not None and off.after_query is None:
                    self._fault(sock, Reason.HARDWARE_FAILURE, f"{owed} (two queries apart)")
                off.suspect = owed
        elif not off.finished and off.after_query is None:
            self._fault(sock, Reason.HARDWARE_FAILURE, "the target failed a query of the connection")
        if off.after_query is not None and off.state is OffloadState.OFFLOADED:
            (reason,), off.after_query = off.after_query, None
            self._terminate(sock, reason)
