"""``Recovery``: what the host end of the transport answers for a NIC process that died, so that none of its
connections is lost (docs/nic-process.md, "Recovery").

When the NIC is gone (dead and reaped, or fenced), ``fail`` turns what it left into the contract's own
answers, in this order after what it published while alive:

1. ``TargetPaused`` (no offload until a new NIC runs);
2. the calls it left open: an initiate fails (the NIC published nothing of an unanswered initiate and put no
   frame of it on the wire, ``nic/core.py``), an update or invalidate succeeds (the connections it names
   come back anyway), a query fails, a terminate completes with the state rebuilt from the arena; data calls
   wait for their connection's terminate;
3. for every other connection it held, ``UploadRequest(NIC_FAILED)``; the host's terminate is answered here
   at once, as an upload would be: its data calls first (Sends ``UPLOAD_IN_PROGRESS`` with the bytes the
   peer acknowledged, their bytes in the returned send data), then the state (``nic/recovery.py``).

A connection that cannot be rebuilt (no slot, a record that does not check out, an unprotected buffer) is
told what a target with corrupt hardware says (chimney-spec 3.2): ``UploadRequest(TARGET_HARDWARE_FAILURE)``
and ``PeerReset``; its terminate fails and the host resets it.

The dead NIC's handles stay **stale** until the host terminated them: any later call naming one is
answered here (a new NIC numbers its objects apart, ``NicConfig.handle_base``), whether or not a new NIC
runs by then.
"""

from __future__ import annotations

from collections.abc import Callable

from tcpchimney.chimney.completions import (
    Completion,
    DisconnectCompletion,
    ReceiveCompletion,
    SendCompletion,
    StateCompletion,
    completion_for,
)
from tcpchimney.chimney.indications import PeerReset, TargetPaused, UploadRequest
from tcpchimney.chimney.reason import Reason
from tcpchimney.chimney.requests import (
    Disconnect,
    InitiateOffload,
    InvalidateOffload,
    PostReceive,
    Request,
    ReturnReceive,
    Send,
    TerminateOffload,
    UpdateOffload,
)
from tcpchimney.chimney.status import Status
from tcpchimney.chimney.target import Output
from tcpchimney.chimney.tcp_state import TcpDelegated
from tcpchimney.chimney.tree import BlockList, Layer, Role, Tree, mark_all, overall_status, walk
from tcpchimney.nic.arena import Arena
from tcpchimney.nic.descriptors import ArenaError, ConnRecord
from tcpchimney.nic.recovery import RecoveryError, Shadow, check_record, recovered_state, una_offset
from tcpchimney.nic.shadows import Shadows

RECOVERY_KEYS = (
    "recoveries",  # NIC failures answered here
    "recovered",  # connections rebuilt from the arena
    "recovery_lost",  # connections that could not be (reset)
    "recovered_rx_bytes",  # received bytes handed to the host from the RX buffers
    "recovered_tx_bytes",  # send bytes handed back to be retransmitted
    "answered_stale",  # calls naming a dead NIC's objects, answered here
)


class Recovery:
    def __init__(self, arena: Arena, clock: Callable[[], float]) -> None:
        self.arena = arena
        self.shadows = Shadows(arena)
        self._clock = clock
        self.stale: set[int] = set()  # handles of a dead NIC the host still names
        self.live: set[int] = set()  # handles of the running NIC's objects (stale once it dies)
        self._records: dict[int, ConnRecord | None] = {}  # by host handle, read once the NIC is fenced
        self._lost: set[int] = set()  # host handles that cannot be rebuilt
        self._held: dict[int, list[Request]] = {}  # data calls by ctx, answered with the terminate
        self.counters: dict[str, int] = dict.fromkeys(RECOVERY_KEYS, 0)
        self.failed_at: float | None = None
        self.last_recovery_s = 0.0  # from the failure to the last connection's terminate answered

    # ------------------------------------------------------------------ while the NIC runs

    def note_state(self, completion: StateCompletion, request: Request | None) -> None:
        """Follow which objects the NIC holds (for ``live``)."""
        if isinstance(request, InitiateOffload):
            for block in walk(completion.tree):
                if block.role is Role.NEW and block.status.ok and block.target_handle is not None:
                    self.live.add(block.target_handle)
        elif isinstance(request, TerminateOffload):
            for block in walk(request.tree):
                if block.target_handle is not None:
                    self.live.discard(block.target_handle)

    # ------------------------------------------------------------------ the failure

    def fail(self, pending: dict[int, Request], held: dict[int, int]) -> list[Output]:
        """The answers for a NIC that is gone: ``pending`` are its open calls, ``held`` the connections
        it holds (its handle -> the host's)."""
        self.counters["recoveries"] += 1
        self.failed_at = self._clock()
        self.stale |= self.live
        self.live = set()
        self._read_records()
        out: list[Output] = [TargetPaused()]
        terminates = []
        for request in pending.values():
            if isinstance(request, TerminateOffload):
                terminates.append(request)
            else:
                out.extend(self._answer_open(request))
        terminating = {b.target_handle for t in terminates for b in walk(t.tree) if b.layer is Layer.TCP}
        for request in terminates:
            out.extend(self.answer(request))
        for target_handle, host_handle in held.items():
            if target_handle in terminating:
                continue
            shadow = self.shadows.of_target(target_handle)
            if shadow is not None and host_handle not in self._lost:
                out.append(UploadRequest(host_handle, Reason.NIC_FAILED))
            else:
                self.counters["recovery_lost"] += 1
                out.append(UploadRequest(host_handle, Reason.TARGET_HARDWARE_FAILURE))
                out.append(PeerReset(host_handle))  # TcpIndicateAbort: its state is lost (spec 3.2)
        return out

    def _read_records(self) -> None:
        """Each record once, now that nothing writes them; one that does not check out loses its
        connection (checked again when it is rebuilt: the host may take more bytes meanwhile)."""
        for shadow in self.shadows:
            try:
                record = self.arena.read_record(shadow.slot)
                check_record(shadow, record)
            except (ArenaError, RecoveryError):
                self._lost.add(shadow.host_handle)
                continue
            self._records[shadow.host_handle] = record

    def _answer_open(self, request: Request) -> list[Output]:
        """A call the NIC left open, other than a terminate."""
        if isinstance(request, InitiateOffload):
            done = completion_for(request, Status.FAILURE)
            assert isinstance(done, StateCompletion)
            self.shadows.on_output(done, request)  # its slots are free again
            return [done]
        if isinstance(request, UpdateOffload | InvalidateOffload):
            return [
                StateCompletion(request.request_id, Status.SUCCESS, mark_all(request.tree, Status.SUCCESS))
            ]
        ctx = getattr(request, "ctx", None)
        if isinstance(ctx, int) and ctx in self.stale:
            return self._data_call(request)
        return [
            completion_for(request, Status.FAILURE if hasattr(request, "tree") else Status.REQUEST_ABORTED)
        ]

    # ------------------------------------------------------------------ calls naming a dead NIC's objects

    def claims(self, request: Request) -> bool:
        """Whether ``request`` names an object of a dead NIC (then ``answer`` answers it)."""
        if not self.stale:
            return False
        tree = getattr(request, "tree", None)
        if tree is not None:
            return any(b.target_handle in self.stale for b in walk(tree) if b.role is not Role.NEW)
        ctx = getattr(request, "ctx", None)
        return isinstance(ctx, int) and ctx in self.stale

    def answer(self, request: Request) -> list[Output]:
        self.counters["answered_stale"] += 1
        if isinstance(request, TerminateOffload):
            out = self._terminate(request)
            if not self.stale and self.failed_at is not None:
                self.last_recovery_s = self._clock() - self.failed_at
            return out
        if hasattr(request, "tree"):
            return self._answer_open(request)
        self.shadows.on_submit(request)
        return self._data_call(request)

    def _data_call(self, request: Request) -> list[Output]:
        if isinstance(request, Send | Disconnect | PostReceive):
            self._held.setdefault(request.ctx, []).append(request)  # answered with the terminate
            return []
        if isinstance(request, ReturnReceive):
            return [Completion(request.request_id, Status.SUCCESS)]  # taken: it is the host's now
        return [completion_for(request, Status.REQUEST_ABORTED)]

    def _terminate(self, request: TerminateOffload) -> list[Output]:
        out: list[Output] = []

        def block_done(block: BlockList) -> BlockList:
            if block.target_handle is not None:
                self.stale.discard(block.target_handle)
            if block.layer is not Layer.TCP:
                return block.with_result(Status.SUCCESS)  # gone with the NIC
            shadow = self.shadows.of_target(block.target_handle or 0)
            state = self._rebuild(shadow) if shadow is not None else None
            if shadow is not None:
                out.extend(self._answer_held(shadow, state))
                self.shadows.release(shadow.host_handle)
                self._records.pop(shadow.host_handle, None)
                self._lost.discard(shadow.host_handle)
            if state is None:
                return block.with_result(Status.FAILURE)
            return block.with_result(Status.SUCCESS, state=state)

        done = _map_tree(request.tree, block_done)
        out.append(StateCompletion(request.request_id, overall_status(done), done))
        return out

    def _rebuild(self, shadow: Shadow) -> TcpDelegated | None:
        """The connection's rebuilt delegated state, or None (it is reset)."""
        host = shadow.host_handle
        if host in self._lost or shadow.aborted or shadow.reset:
            return None
        try:
            state = recovered_state(shadow, self._records.get(host), self.arena, self._clock())
        except (RecoveryError, ArenaError, ValueError):
            self.counters["recovery_lost"] += 1
            return None
        self.counters["recovered"] += 1
        self.counters["recovered_rx_bytes"] += len(state.buffered_data)
        self.counters["recovered_tx_bytes"] += len(state.send_data)
        return state

    def _answer_held(self, shadow: Shadow, state: TcpDelegated | None) -> list[Output]:
        """The connection's open data calls, as an upload completes them (spec 3.5 step 8)."""
        ctx = shadow.target_handle or 0
        status = Status.UPLOAD_IN_PROGRESS if state is not None else Status.REQUEST_ABORTED
        una = una_offset(shadow, self._records.get(shadow.host_handle))
        starts = {rid: (start, len(data)) for rid, start, data in shadow.sends}
        out: list[Output] = []
        for request in self._held.pop(ctx, []):
            if isinstance(request, Send):
                start, length = starts.get(request.request_id, (0, 0))
                out.append(SendCompletion(request.request_id, status, shadow.acked_of(start, length, una)))
            elif isinstance(request, Disconnect):
                out.append(DisconnectCompletion(request.request_id, status))
            elif isinstance(request, PostReceive):
                out.append(ReceiveCompletion(request.request_id, status, b""))
        return out


def _map_tree(tree: Tree, fn: Callable[[BlockList], BlockList]) -> Tree:
    def visit(block: BlockList) -> BlockList:
        done = block.with_result(Status.SUCCESS) if block.role is Role.PLACEHOLDER else fn(block)
        return done.with_dependents(tuple(visit(d) for d in block.dependents))

    return tuple(visit(b) for b in tree)
