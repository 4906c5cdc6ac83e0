"""The host side of offload: each connection's offload state machine and the host's use of the contract.

docs/offload-design.md is the page this implements; chimney-spec sections 3-5 the rules behind it.

A connection moves IN_HOST -> OFFLOADING -> OFFLOADED -> UPLOADING -> IN_HOST (a refused initiate goes back
from OFFLOADING to IN_HOST). The manager talks to the target only through ``submit`` / ``poll``, checks every
request with ``chimney.registry.OffloadRegistry`` before submitting it and every completion after, and keeps
the application's view unchanged: ``TcpSocket`` calls land here while the connection is not on the host
engine, and the host events the API relies on (``ConnectionEvent`` with DataReceived, SendSpace, PeerClosed,
ConnectionReset, Closed) come from here for those connections.

Byte accounting (why uploads lose, duplicate or reorder nothing):

- At offload the engine's readable bytes move to the socket's own queue ``rcvq`` (reads are served from it
  first, whatever the state), so the snapshot carries no buffered data; send data starts at SND.UNA.
- Every byte given to the target in a ``Send`` is kept until its completion says SUCCESS (the peer ACKed
  it). On upload, the stream must end where the host expects (SND.UNA at offload + the send data then + the
  bytes submitted since); a target that returned fewer bytes than that (a Send it completed with
  UPLOAD_IN_PROGRESS without taking it) gets the missing tail appended from those copies.
- Every byte the host took from a ``ReceiveIndication`` / ``ReceiveCompletion`` is counted: the returned
  buffered data must start exactly there. Overlap is trimmed (and reported), a gap aborts the connection.

A target that breaks the contract (an answer the registry rejects, an unknown handle, impossible sequence
numbers) never crashes the stack: the fault is counted and reported as an ``OffloadFault`` event, and the
affected connection is uploaded, or aborted when its state cannot be trusted.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING

from tcpchimney.chimney.completions import (
    Completion,
    DisconnectCompletion,
    ReceiveCompletion,
    SendCompletion,
    StateCompletion,
)
from tcpchimney.chimney.errors import ContractError, PreconditionError, ProtocolViolationError
from tcpchimney.chimney.indications import (
    Indication,
    LinkStatusChanged,
    NeighborReachabilityQuery,
    PeerDisconnect,
    PeerReset,
    ReceiveIndication,
    SendBacklogChanged,
    TargetCapabilities,
    TargetPaused,
    TargetResumed,
    UploadAllRequested,
    UploadRequest,
)
from tcpchimney.chimney.neighbor import NeighborCached, NeighborConst, NeighborState
from tcpchimney.chimney.path import PathCached, PathConst, PathState
from tcpchimney.chimney.reason import Reason
from tcpchimney.chimney.registry import OffloadRegistry, Phase
from tcpchimney.chimney.requests import (
    Disconnect,
    Forward,
    InitiateOffload,
    InvalidateOffload,
    PostReceive,
    QueryOffload,
    ReachabilityReply,
    Request,
    ReturnReceive,
    Send,
    TerminateOffload,
    UpdateOffload,
)
from tcpchimney.chimney.status import Status
from tcpchimney.chimney.target import OffloadTarget
from tcpchimney.chimney.tcp_state import PEER_FIN_RECEIVED, TcpCached, TcpConst, TcpDelegated, TcpSnapshot
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
from tcpchimney.host.events import (
    ConnectionEvent,
    OffloadDeferred,
    Offloaded,
    OffloadFault,
    OffloadRefused,
    Uploaded,
)
from tcpchimney.host.offload_faults import (
    check_indication,
    check_peer_disconnect,
    check_returned,
    lost_peer_probes,
    owed_by_target,
)
from tcpchimney.host.piece_queue import PieceQueue
from tcpchimney.host.policy import ConnectionInfo, OffloadMode, OffloadPolicy
from tcpchimney.tcp import snapshot as tcp_snapshot
from tcpchimney.tcp.errors import ConnectionClosedError, ConnectionResetByPeerError
from tcpchimney.tcp.events import (
    Closed,
    Connected,
    ConnectionReset,
    DataReceived,
    PeerClosed,
    SendSpace,
    StateChanged,
    TcpEvent,
)
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire import tcp as tcp_wire
from tcpchimney.wire.seq import SeqNum

if TYPE_CHECKING:
    from tcpchimney.host.sockets import TcpSocket
    from tcpchimney.host.stack import HostStack
    from tcpchimney.wire.frame import Frame

_SEQ0 = SeqNum(0)
MAX_SEND_CHUNK = 256 * 1024  # bytes per Send request: one NBL each (contract), bounded for the codec
# The most an offloaded socket accepts beyond SO_SNDBUF on the target's SendBacklogChanged (Linux's default
# tcp_wmem maximum, the bound of its own send-buffer autotuning).
MAX_SEND_BACKLOG = 4 << 20
# The target's silence (docs/offload-contract.md "What the host checks"): a state call it has not answered
# in STATE_CALL_TIMEOUT was lost; a connection it said nothing about for SILENCE is queried, and a state that
# shows something owed (data never indicated, a completion never sent) twice in a row is a fault.
STATE_CALL_TIMEOUT = 5.0
SILENCE = 5.0
WATCH_INTERVAL = 1.0
_OFFLOADABLE_NOW = frozenset({TcpState.ESTABLISHED, TcpState.CLOSE_WAIT})
_OPEN_FOR_SEND = frozenset({TcpState.ESTABLISHED, TcpState.CLOSE_WAIT})
# What the target's events do to the connection's state as the host tracks it (RFC 9293 3.10.7.4).
_AFTER_PEER_FIN = {
    TcpState.ESTABLISHED: TcpState.CLOSE_WAIT,
    TcpState.FIN_WAIT_1: TcpState.CLOSING,
    TcpState.FIN_WAIT_2: TcpState.TIME_WAIT,
}
_AFTER_OUR_FIN_ACKED = {
    TcpState.FIN_WAIT_1: TcpState.FIN_WAIT_2,
    TcpState.CLOSING: TcpState.TIME_WAIT,
    TcpState.LAST_ACK: TcpState.CLOSED,
}
_AFTER_SHUTDOWN = {TcpState.ESTABLISHED: TcpState.FIN_WAIT_1, TcpState.CLOSE_WAIT: TcpState.LAST_ACK}
_REFUSAL_FOR_STATUS = {
    Status.NOT_SUPPORTED: Reason.TARGET_NOT_SUPPORTED,
    Status.TCP_ENTRIES: Reason.TARGET_FULL,
    Status.PATH_ENTRIES: Reason.TARGET_FULL,
    Status.NEIGHBOR_ENTRIES: Reason.TARGET_FULL,
    Status.TCP_RCV_WINDOW: Reason.RCV_WINDOW_UNSUPPORTED,
    Status.PATH_MTU: Reason.PATH_MTU_UNSUPPORTED,
    Status.VLAN_ENTRIES: Reason.VLAN_UNSUPPORTED,
    Status.VLAN_MISMATCH: Reason.VLAN_UNSUPPORTED,
}


class OffloadState(Enum):
    IN_HOST = "in_host"
    OFFLOADING = "offloading"
    OFFLOADED = "offloaded"
    UPLOADING = "uploading"


@dataclass(eq=False, slots=True)
class SharedObject:
    """A neighbor (keyed by next-hop IP) or path (keyed by destination IP) the host offloaded or offers."""

    layer: Layer
    handle: int
    key: bytes
    sent: bytes | int  # the cached value the target has: neighbor MAC or path MTU
    parent: SharedObject | None = None
    target_handle: int | None = None
    pending: bool = False  # a change waits for the update in flight
    # Paths: connections reset for a fault while the target may still hold a copy of them here (an answer
    # the host could not trust); their peers are probed again once the path is terminated (_reprobe).
    lost: list[TcpSocket] = field(default_factory=list)


@dataclass(eq=False, slots=True)
class ConnOffload:
    """One connection's offload record (the host's half of spec 9.1's per-connection state machine)."""

    state: OffloadState = OffloadState.IN_HOST
    reason: Reason | None = None  # the last decision's reason (refusal or upload)
    handle: int = 0  # host handle of the TCP object in the current offload
    ctx: int | None = None  # the target's handle while offloaded
    path: SharedObject | None = None
    started: float = 0.0  # when the current initiate or terminate was submitted
    tcp_state: TcpState = TcpState.ESTABLISHED  # last known state while not on the host engine
    const: TcpConst | None = None
    cached: TcpCached | None = None
    rcvq: PieceQueue = field(default_factory=PieceQueue)  # received bytes the application has not read
    held: list[bytes] = field(default_factory=list)  # segments (TCP header on) received while moving
    queued: PieceQueue = field(default_factory=PieceQueue)  # application bytes not yet given to anyone
    inflight: deque[tuple[int, bytes]] = field(default_factory=deque)  # Sends not completed SUCCESS
    returned: bytearray = field(default_factory=bytearray)  # unACKed rest of Sends completed otherwise
    outstanding: int = 0  # bytes given to the target and not yet ACKed (counts against snd_buf)
    base_una: SeqNum = _SEQ0  # SND.UNA at offload
    base_end: SeqNum = _SEQ0  # end of the send data at offload
    rcv_end: SeqNum = _SEQ0  # sequence number of the next byte the host expects from the target
    last_indication: int | None = None  # the ReceiveIndication the host answered last
    # Bytes the host took from indications, by ReturnReceive request id, until the target confirms it
    # consumed them: an upload may hand them back (an overlap), and must hand back exactly these.
    unconfirmed: deque[tuple[int, bytes]] = field(default_factory=deque)
    submitted: int = 0  # bytes given in Sends since the offload
    acked: int = 0  # bytes the target reported ACKed (completions)
    send_blocked: bool = False
    fin_pending: bool = False  # shutdown/close asked: FIN after the queued data
    fin_sent: bool = False  # Disconnect submitted
    closed: bool = False  # the application closed: nobody reads any more
    aborted: bool = False
    finished: bool = False  # Closed was reported: only clean-up remains
    peer_fin: bool = False  # PeerClosed was reported
    reset: bool = False  # the peer reset the connection
    rst_sent: bool = False  # an abortive Disconnect went to the target
    taken: int = 0  # bytes the host took from the target since the offload
    trim: int = 0  # returned buffered bytes the host already had (a faulty target's overlap)
    target_holds: bool = False  # the target kept data we could not take; post to get it again
    upload_after: Reason | None = None  # an upload asked while a call was in flight
    update_pending: bool = False  # socket options changed while an update was in flight
    updating: bool = False
    refused_by_target: bool = False
    backlog: int = 0  # the target's preferred send backlog (SendBacklogChanged); 0: none indicated
    forced: bool = False  # offload_now waits for a neighbor / path: the mode must not judge it again
    moved_before: int = 0  # automatic mode: bytes moved by earlier engines of this connection
    una0: SeqNum = _SEQ0
    rcv0: SeqNum = _SEQ0
    heard: float = 0.0  # when the target last said something about the connection
    querying: bool = False  # a QueryOffload of it is in flight
    suspect: str | None = None  # what its last query showed owed (a fault if the next one shows it too)
    after_query: tuple[Reason] | None = None  # a terminate (with its reason) waits for the query

    @property
    def in_host(self) -> bool:
        return self.state is OffloadState.IN_HOST

    @property
    def away(self) -> bool:
        """Socket calls go to the manager: the connection is not on the host engine, or it is finished
        (its engine may be a frozen copy that must not take calls any more)."""
        return self.state is not OffloadState.IN_HOST or self.finished


@dataclass(slots=True)
class _Pending:
    kind: str  # "initiate", "terminate", "update", "send", "data", "neighbor", "relink"
    sock: TcpSocket | None
    objects: tuple[SharedObject, ...] = ()
    batch: tuple[TcpSocket, ...] = ()  # an initiate or terminate of many connections: one tree for all

    @property
    def socks(self) -> tuple[TcpSocket, ...]:
        """The connections the call is about (none for a neighbor or path alone)."""
        return self.batch or ((self.sock,) if self.sock is not None else ())


class OffloadManager:
    def __init__(self, stack: HostStack, target: OffloadTarget, policy: OffloadPolicy | None) -> None:
        self.stack = stack
        self.target = target
        self.policy = policy or OffloadPolicy()
        self.registry = OffloadRegistry()
        self.counters: dict[str, int] = {}
        self.now = 0.0
        self.paused = False
        self.attached = True  # the target is between the device and the stack (a runtime may say it is not)
        self.failed = False  # the target broke the contract beyond one connection (_target_failed)
        self.capabilities: TargetCapabilities = target.capabilities
        self._next_handle = 0
        self._next_request = 0
        self._pending: dict[int, _Pending] = {}
        self._by_handle: dict[int, TcpSocket] = {}
        self._neighbors: dict[bytes, SharedObject] = {}
        self._paths: dict[bytes, SharedObject] = {}
        self._neighbor_of: dict[int, SharedObject] = {}
        self._candidates: dict[TcpSocket, None] = {}
        # What answers a state call's completion, by the kind of call (the rest are data calls).
        self._state_done: dict[str, Callable[[_Pending, StateCompletion], None]] = {
            "initiate": self._on_initiate_done,
            "terminate": self._on_terminate_done,
            "update": self._on_update_done,
            "neighbor": self._on_neighbor_done,
            "relink": self._on_relink_done,
            "query": self._on_query_done,
        }
        self._state_calls: dict[int, float] = {}  # state calls in flight: request id -> when submitted
        self._next_watch: float | None = None
        self._arp_generation = -1
        self._next_check: float | None = None
        self._route_dirty = False  # a next-hop change waits for a resolution, an offload or an update
        self._resolving: set[bytes] = set()  # new next hops the host asked ARP for (a route change)
        self._verifying: dict[bytes, SharedObject] = {}  # neighbors the target asked about, being re-probed

    # ================================================================== entry points (from HostStack)

    def service(self, now: float | None = None) -> None:
        """Drain the target's outputs, then act on what waits: candidates, neighbor changes, the policy."""
        if now is not None:
            self.now = max(self.now, now)
        self.poll()
        if self._candidates:
            self._consider_all(list(self._candidates))
            self.poll()  # an in-process target answered the initiates already
        if self.stack.arp.generation != self._arp_generation:
            self._arp_generation = self.stack.arp.generation
            self._check_neighbors()
        if self._route_dirty:
            self._check_routes()

    def poll(self) -> None:
        target = self.target
        out = target.poll()
        while out is not None:
            try:
                if isinstance(out, Completion):
                    self._on_completion(out)
                else:
                    self._on_indication(out)
            except ContractError as exc:
                self._fault(None, Reason.HARDWARE_FAILURE, f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # an answer we cannot digest must not stop the stack
                self.stack._internal_error(exc)
            out = target.poll()

    def next_deadline(self) -> float | None:
        check = self._next_check if self.policy.mode is OffloadMode.AUTOMATIC else None
        watch = self._next_watch
        return watch if check is None or (watch is not None and watch < check) else check

    def handle_timer(self, now: float) -> None:
        self.service(now)
        if self._next_watch is not None and now >= self._next_watch:
            self._watch(now)
        if self.policy.mode is not OffloadMode.AUTOMATIC:
            self._next_check = None
            return
        if self._next_check is None or now >= self._next_check:
            self._next_check = now + self.policy.check_interval
            waiting = [
                sock
                for sock in self.stack.connections()
                if sock.offload is not None and sock.offload.in_host and not sock.offload.refused_by_target
            ]
            self._consider_all(waiting, quiet=True)

    def on_engine_event(self, sock: TcpSocket, ev: TcpEvent) -> None:
        """An event of a connection on the host engine: established connections become candidates."""
        if isinstance(ev, Connected):
            if sock.offload is None:
                sock.offload = ConnOffload(una0=sock.conn.snd_una, rcv0=sock.conn.rcv_nxt)
            self._candidates[sock] = None
            if self.policy.mode is OffloadMode.AUTOMATIC and self._next_check is None:
                self._next_check = self.now + self.policy.check_interval

    def held_segment(self, sock: TcpSocket, raw: bytes) -> None:
        """A segment for a connection that is not on the host engine reached the host (the target passed
        it up: IP options, a fragment, or the connection is moving)."""
        off = sock.offload
        assert off is not None
        if off.state is OffloadState.OFFLOADED and off.ctx is not None:
            self._submit(Forward(self._rid(), off.ctx, (raw,)), _Pending("data", sock))
        else:
            off.held.append(raw)

    def seq_in_flight(self, sock: TcpSocket, seq: SeqNum) -> bool:
        """RFC 5927 check of an ICMP quote for a connection the target holds: a byte it may have in flight."""
        off = sock.offload
        assert off is not None
        low = off.base_una + off.acked
        high = off.base_end + (off.submitted + 1)
        return low <= seq <= high

    def on_pmtu(self, dst: bytes, mtu: int) -> None:
        path = self._paths.get(dst)
        if path is not None:
            self._reconcile(path)

    def on_route_change(self, now: float) -> None:
        """The routing table changed (HostStack.set_gateway): move the offloaded paths whose next hop is
        another neighbor now (spec 3.4)."""
        self.now = max(self.now, now)
        self._route_dirty = True
        self.service()

    # ================================================================== administration

    def set_policy(self, policy: OffloadPolicy) -> None:
        """Apply a new mode or rule set: upload what no longer qualifies, consider what now does."""
        old, self.policy = self.policy, policy
        reason = Reason.MODE_CHANGE if policy.mode is not old.mode else Reason.POLICY_CHANGE
        for sock in self.stack.connections():
            off = sock.offload
            if off is None:
                continue
            if off.state in (OffloadState.OFFLOADED, OffloadState.OFFLOADING):
                why = policy.keeps(self._info(sock))
                if why is not None or not sock.offload_allowed:
                    self.upload(sock, reason if why is not None else Reason.POLICY_CHANGE)
        self._reconsider()
        self._next_check = self.now if policy.mode is OffloadMode.AUTOMATIC else None

    def set_attached(self, attached: bool) -> None:
        """Whether the target sits between the device and the stack: one that sees no frame cannot run a
        connection (nor learn the interface's MAC), so nothing is offered to it while it is not."""
        self.attached = attached
        if attached:
            self._reconsider()

    def _reconsider(self) -> None:
        """Every connection on the host becomes a candidate again (refusals may no longer hold)."""
        for sock in self.stack.connections():
            off = sock.offload
            if off is not None and off.in_host:
                off.refused_by_target = False
                self._candidates[sock] = None

    def offload_now(self, sock: TcpSocket) -> Reason | None:
        """Offload ``sock`` whatever the mode (rules and opt-out still apply). None: the initiate is in
        flight (an Offloaded or OffloadRefused event follows); otherwise why it was refused now."""
        if sock.offload is None:
            sock.offload = ConnOffload(una0=sock.conn.snd_una, rcv0=sock.conn.rcv_nxt)
        if not sock.offload.in_host:
            return None
        reason = self._check(sock, forced=True)
        if reason is None:
            reason = self._initiate(sock)
        sock.offload.forced = reason is None and sock.offload.in_host  # deferred: a candidate again
        if reason is not None:
            self._refuse(sock, reason)
        return reason

    def upload(self, sock: TcpSocket, reason: Reason) -> bool:
        """Bring ``sock`` back to the host. True when a terminate was submitted (or will be, once the call in
        flight completes)."""
        off = sock.offload
        if off is None or off.in_host or off.state is OffloadState.UPLOADING:
            return False
        if off.state is OffloadState.OFFLOADING or off.updating:
            off.upload_after = off.upload_after or reason
            return True
        return self._terminate(sock, reason)

    def upload_all(self, reason: Reason) -> int:
        """Upload every offloaded connection with one terminate tree (spec 3.5: one call takes many
        connections, and the paths and neighbors they leave unused); those busy with another call upload
        once it completes."""
        count, ready = 0, []
        for sock in list(self._by_handle.values()):
            off = sock.offload
            if off is None or off.in_host or off.state is OffloadState.UPLOADING:
                continue
            if off.state is OffloadState.OFFLOADED and not off.updating and off.ctx is not None:
                ready.append(sock)
            else:
                count += self.upload(sock, reason)
        if len(ready) > 1:
            return count + self._terminate_many(ready, reason)
        return count + sum(self._terminate(sock, reason) for sock in ready)

    # ================================================================== socket calls while not on the engine

    def send(self, sock: TcpSocket, data: bytes | bytearray | memoryview) -> int:
        off = self._record(sock)
        if off.aborted or off.tcp_state is TcpState.CLOSED:
            raise self._closed_error(off, "send")
        if off.fin_pending or off.tcp_state not in _OPEN_FOR_SEND:
            raise ConnectionClosedError(f"send: the connection is {off.tcp_state.value}", off.tcp_state)
        space = max(0, self._send_limit(sock) - off.outstanding - len(off.queued))
        n = min(space, len(data))
        if n:
            self._queue_send(off.queued, data, n)
        if n < len(data):
            off.send_blocked = True
        if off.state is OffloadState.OFFLOADED:
            self._flush_sends(sock)
        return n

    @staticmethod
    def _queue_send(queued: PieceQueue, data: bytes | bytearray | memoryview, n: int) -> None:
        """Queue the first ``n`` bytes of ``data``: a whole bytes object as it is (immutable), anything else
        (the application may reuse it) copied once, in pieces that become Send requests whole."""
        if type(data) is bytes and n == len(data) and n <= MAX_SEND_CHUNK:
            queued.append(data)
            return
        view = memoryview(data)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        for start in range(0, n, MAX_SEND_CHUNK):
            queued.append(bytes(view[start : min(n, start + MAX_SEND_CHUNK)]))

    def receive(self, sock: TcpSocket, max_bytes: int) -> bytes:
        off = self._record(sock)
        data = off.rcvq.take(max_bytes)
        if off.finished:
            return data  # what the application had not read when the connection ended; then EOF
        if off.in_host:
            if max_bytes < 0 or len(data) < max_bytes:
                more = sock.conn.receive(-1 if max_bytes < 0 else max_bytes - len(data))
                sock._set_readable(max(0, sock._readable - len(more)))
                data += more
            self.stack._mark(sock)
        elif self._wants_more(sock) and off.ctx is not None:
            off.target_holds = False  # size 0 re-enables indications: the target offers the rest again
            self._submit(PostReceive(self._rid(), off.ctx, 0), _Pending("data", sock))
        return data

    def _wants_more(self, sock: TcpSocket) -> bool:
        """The target kept data back and the application's reads freed half the receive buffer."""
        off = sock.offload
        assert off is not None
        return (
            off.state is OffloadState.OFFLOADED
            and off.target_holds
            and self._rcv_space(sock) * 2 >= sock.conn.config.rcv_buf
        )

    def shutdown(self, sock: TcpSocket) -> None:
        off = self._record(sock)
        if off.aborted:
            return
        if off.tcp_state is TcpState.CLOSED:
            raise self._closed_error(off, "shutdown")
        if off.fin_pending or off.tcp_state not in _AFTER_SHUTDOWN:
            return  # already closing: idempotent, as the engine's shutdown
        off.fin_pending = True
        self._set_state(sock, _AFTER_SHUTDOWN[off.tcp_state])
        if off.state is OffloadState.OFFLOADED:
            self._flush_sends(sock)

    def close(self, sock: TcpSocket) -> None:
        off = self._record(sock)
        if off.tcp_state is TcpState.CLOSED or off.aborted:
            return
        off.closed = True
        if off.rcvq:
            self.abort(sock)  # unread data: a reset, as the engine's close (RFC 2525 2.17)
            return
        self.shutdown(sock)
        self._upload_orphan(sock)

    def abort(self, sock: TcpSocket) -> None:
        off = self._record(sock)
        if off.aborted or off.tcp_state is TcpState.CLOSED:
            return
        off.aborted = True
        off.rcvq.clear()
        off.queued.clear()
        if off.state is OffloadState.OFFLOADED and off.ctx is not None:
            self._submit_abort(sock)
        self._finish(sock)
        if off.state is OffloadState.OFFLOADED:
            self._terminate(sock, Reason.ABORTED)

    def _submit_abort(self, sock: TcpSocket) -> None:
        """The target sends the RST (an abortive Disconnect); if it never got the call, the host's engine
        sends it once the connection is back (``_uploaded``)."""
        off = sock.offload
        assert off is not None and off.ctx is not None
        off.rst_sent = self._submit(Disconnect(self._rid(), off.ctx, abortive=True), _Pending("data", sock))

    def configure(self, sock: TcpSocket) -> None:
        off = self._record(sock)
        off.update_pending = True
        if off.state is OffloadState.OFFLOADED:
            self._update_tcp(sock)

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

    def _check(self, sock: TcpSocket, forced: bool = False, joining: int = 0) -> Reason | None:
        """Why ``sock`` cannot be offloaded now, or None; ``joining``: connections already going in the
        same initiate (they count against the target's announced capacity)."""
        conn = sock.conn
        if not sock.offload_allowed:
            return Reason.SOCKET_OPT_OUT
        # sock.state, not conn.state: a connection that ended while away (a peer reset) keeps the engine
        # copy frozen at its offload, which still says ESTABLISHED.
        if sock.state not in _OFFLOADABLE_NOW or conn.fin_queued or conn.orphaned:
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
        info = self._info(sock)
        return self.policy.rule_reason(info) if forced else self.policy.decide(info)

    def _consider_all(self, socks: list[TcpSocket], quiet: bool = False) -> None:
        """Offload every connection of ``socks`` the policy wants, with one initiate for all of them."""
        ready: list[TcpSocket] = []
        for sock in socks:
            off = sock.offload
            if off is None or not off.in_host or self.stack._conns.get(sock.key) is not sock:
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
        pending = _Pending("initiate", batch[0] if one else None, new, () if one else tuple(batch))
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

    def _on_initiate_done(self, pending: _Pending, completion: StateCompletion) -> None:
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
            self._submit(Forward(self._rid(), off.ctx, held), _Pending("data", sock))
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
            if status in _REFUSAL_FOR_STATUS:
                return _REFUSAL_FOR_STATUS[status]
            if status.is_resource_shortage:
                return Reason.TARGET_RESOURCES
            return Reason.TARGET_REFUSED if block.host_handle == tcp_handle else Reason.DEPENDENCY_FAILED
        return Reason.TARGET_REFUSED

    # ================================================================== data while offloaded

    def _flush_sends(self, sock: TcpSocket) -> None:
        off = sock.offload
        assert off is not None and off.ctx is not None
        while off.queued:
            chunk = off.queued.take_chunk(MAX_SEND_CHUNK)
            rid = self._rid()
            if not self._submit(Send(rid, off.ctx, chunk), _Pending("send", sock)):
                off.queued.push_front(chunk)
                return
            off.inflight.append((rid, chunk))
            off.outstanding += len(chunk)
            off.submitted += len(chunk)
        if off.fin_pending and not off.fin_sent and not off.aborted:
            off.fin_sent = True
            self._submit(Disconnect(self._rid(), off.ctx), _Pending("data", sock))

    def _send_limit(self, sock: TcpSocket) -> int:
        """Bytes the socket keeps given to the target or queued for it: SO_SNDBUF, or the target's preferred
        send backlog when that is larger (a long fat path needs more in flight than the buffer holds; the
        application sees it as send space, as Windows' ideal send backlog). Capped at MAX_SEND_BACKLOG."""
        off = sock.offload
        assert off is not None
        return max(sock.conn.config.snd_buf, min(off.backlog, MAX_SEND_BACKLOG))

    def _report_send_space(self, sock: TcpSocket) -> None:
        """A blocked application learns of the space the offload opened (no Send completion may follow)."""
        off = sock.offload
        assert off is not None
        space = self._send_limit(sock) - off.outstanding - len(off.queued)
        if off.send_blocked and not off.finished and space > 0:
            off.send_blocked = False
            self._emit(sock, SendSpace(space))

    def _on_send_done(self, sock: TcpSocket, completion: SendCompletion) -> None:
        off = sock.offload
        assert off is not None
        index = next((i for i, (rid, _) in enumerate(off.inflight) if rid == completion.request_id), None)
        if index is None:
            return
        _, data = off.inflight[index]
        acked = len(data) if completion.status is Status.SUCCESS else completion.bytes_acked
        if acked > len(data):
            raise ProtocolViolationError(f"send of {len(data)} bytes completed with {acked} acked")
        del off.inflight[index]
        off.acked += acked
        if completion.status is Status.UPLOAD_IN_PROGRESS:
            off.returned += data[acked:]  # the target keeps it in its send data, or the host resends it
            return
        off.outstanding -= len(data)
        if off.send_blocked and not off.finished:
            space = self._send_limit(sock) - off.outstanding - len(off.queued)
            if space > 0:
                off.send_blocked = False
                self._emit(sock, SendSpace(space))

    def _rcv_space(self, sock: TcpSocket) -> int:
        off = sock.offload
        assert off is not None
        return max(0, sock.conn.config.rcv_buf - len(off.rcvq))

    def _on_receive(self, sock: TcpSocket, ind: ReceiveIndication) -> None:
        off = sock.offload
        assert off is not None
        if off.state is not OffloadState.OFFLOADED or off.ctx is None:
            return  # uploading: take nothing, the terminate completion returns it as buffered data
        try:
            check_indication(off, ind)
        except ProtocolViolationError as exc:
            # Not answered: the upload takes back what the target holds, from the byte the host expects.
            self._fault(sock, Reason.HARDWARE_FAILURE, str(exc))
            return
        off.last_indication = ind.indication_id
        take = len(ind.data) if off.closed or off.finished else min(len(ind.data), self._rcv_space(sock))
        rid = self._rid()
        self._submit(ReturnReceive(rid, off.ctx, ind.indication_id, take), _Pending("return", sock))
        if take:  # kept until the target confirms it consumed them (check_returned compares them)
            off.unconfirmed.append((rid, ind.data[:take]))
        off.rcv_end = off.rcv_end + take
        off.taken += take
        if take < len(ind.data):
            off.target_holds = True
        if off.closed and not off.aborted:
            self.abort(sock)  # data after close: a reset, as the engine sends for an orphaned connection
            return
        if take and not off.finished:
            off.rcvq.append(ind.data if take == len(ind.data) else memoryview(ind.data)[:take])
            self._emit(sock, DataReceived(len(off.rcvq)))

    def _on_receive_done(self, sock: TcpSocket, completion: ReceiveCompletion) -> None:
        off = sock.offload
        assert off is not None
        if completion.data:
            off.rcv_end = off.rcv_end + len(completion.data)
            off.taken += len(completion.data)
            if not off.finished:
                off.rcvq.append(completion.data)
                self._emit(sock, DataReceived(len(off.rcvq)))

    def _on_disconnect_done(self, sock: TcpSocket, completion: DisconnectCompletion) -> None:
        off = sock.offload
        assert off is not None
        if completion.status is Status.SUCCESS and not off.aborted and off.tcp_state in _AFTER_OUR_FIN_ACKED:
            self._set_state(sock, _AFTER_OUR_FIN_ACKED[off.tcp_state])
            self._after_state_change(sock)

    def _on_peer_disconnect(self, sock: TcpSocket, ind: PeerDisconnect) -> None:
        off = sock.offload
        assert off is not None
        if off.peer_fin or off.finished:
            return
        try:
            check_peer_disconnect(off, ind)
        except ProtocolViolationError as exc:
            # No EOF: the upload returns the target's state, whose FIN (if any) comes after its data.
            self._fault(sock, Reason.HARDWARE_FAILURE, str(exc))
            return
        off.peer_fin = True
        if off.tcp_state in _AFTER_PEER_FIN:
            self._set_state(sock, _AFTER_PEER_FIN[off.tcp_state])
        self._emit(sock, PeerClosed())
        self._after_state_change(sock)

    def _on_peer_reset(self, sock: TcpSocket) -> None:
        off = sock.offload
        assert off is not None
        if off.finished:
            return
        off.rcvq.clear()
        self._emit(sock, ConnectionReset())
        if off.state is OffloadState.UPLOADING and off.reason is Reason.TARGET_HARDWARE_FAILURE:
            # Spec 3.2 step 3: after asking for the upload for corrupt hardware the target aborts the
            # connection: its state is lost, the peer reset nothing. The terminate fails and the host
            # resets the peer (_lost).
            off.aborted = True
        off.reset = True
        self._finish(sock)
        self.upload(sock, Reason.PEER_RESET)

    def _after_state_change(self, sock: TcpSocket) -> None:
        off = sock.offload
        assert off is not None
        if off.tcp_state is TcpState.CLOSED:
            self._finish(sock)  # LAST-ACK done: only the target's entry remains, freed without an event
            if off.state is OffloadState.OFFLOADED and not off.updating:
                self._terminate(sock, Reason.CLOSED)
            else:
                self.upload(sock, Reason.SHUTDOWN)
        elif off.tcp_state is TcpState.TIME_WAIT:
            self.upload(sock, Reason.HOST_TIME_WAIT)  # TIME-WAIT is the host's (spec 1.2)
        else:
            self._upload_orphan(sock)

    def _upload_orphan(self, sock: TcpSocket) -> None:
        """A closed connection in FIN-WAIT-2 may wait forever for the peer's FIN: its time limit is the
        host's (Linux tcp_fin_timeout), and a Disconnect cannot tell the target the application is gone.
        The rebuilt engine runs it (``_reinstate`` arms the timer)."""
        off = sock.offload
        assert off is not None
        if off.closed and off.tcp_state is TcpState.FIN_WAIT_2 and not off.finished:
            self.upload(sock, Reason.ORPHANED_FIN_WAIT_2)

    def _finish(self, sock: TcpSocket) -> None:
        """The connection reached CLOSED for the application: report it and forget it."""
        off = sock.offload
        assert off is not None
        if off.finished:
            return
        off.finished = True
        self._set_state(sock, TcpState.CLOSED)
        self.stack._forget(sock)
        self._emit(sock, Closed())

    # ================================================================== updates of cached state

    def _check_neighbors(self) -> None:
        for obj in list(self._neighbors.values()):
            self._reconcile(obj)
        if self._verifying:
            self._check_verified()

    def _wanted(self, obj: SharedObject) -> bytes | int | None:
        if obj.layer is Layer.PATH:
            return self.stack.path_mtu(obj.key)
        entry = self.stack.arp.entry(obj.key)
        return None if entry is None else entry.mac

    def _reconcile(self, obj: SharedObject) -> None:
        """Send the target the current cached value of ``obj`` if it changed (one update at a time)."""
        wanted = self._wanted(obj)
        if (
            wanted is None
            or wanted == obj.sent
            or obj.target_handle is None
            or obj.handle not in self.registry
        ):
            return
        rec = self.registry.record(obj.handle)
        if rec.invalidated:
            return  # never updated again (spec 3.3): its connections are on their way back
        if rec.phase is not Phase.OFFLOADED or rec.updating:
            obj.pending = True
            return
        if obj.layer is Layer.PATH:
            assert isinstance(wanted, int)
            node: TreeNode = LinkedObject(obj.target_handle, obj.handle, PathCached(wanted))
            tree = build_tree([(PLACEHOLDER, node, None)])
        else:
            assert isinstance(wanted, bytes)
            node = LinkedObject(obj.target_handle, obj.handle, NeighborCached(wanted))
            tree = build_tree([(node, None, None)])
        obj.pending = False
        if self._submit(UpdateOffload(self._rid(), tree), _Pending("update", None, (obj,))):
            obj.sent = wanted

    def _update_tcp(self, sock: TcpSocket) -> None:
        off = sock.offload
        assert off is not None and off.ctx is not None and off.cached is not None
        if off.updating or off.finished:
            return
        c = sock.conn.config
        new = replace(
            off.cached,
            initial_rcv_wnd=c.rcv_buf,
            nodelay=c.nodelay,
            keepalive=c.keepalive,
            keepalive_idle=c.keepalive_idle,
            keepalive_interval=c.keepalive_interval,
            keepalive_probes=c.keepalive_probes,
        )
        flags = replace(
            new,
            update_rcv_wnd=new.initial_rcv_wnd != off.cached.initial_rcv_wnd,
            keepalive_restart=(new.keepalive, new.keepalive_idle)
            != (off.cached.keepalive, off.cached.keepalive_idle),
        )
        off.update_pending = False
        if new == off.cached:
            return
        tree = build_tree([(PLACEHOLDER, PLACEHOLDER, LinkedObject(off.ctx, off.handle, flags))])
        if self._submit(UpdateOffload(self._rid(), tree), _Pending("update", sock)):
            off.cached, off.updating = new, True

    def _on_update_done(self, pending: _Pending, completion: StateCompletion) -> None:
        failed = any(b.status is not Status.SUCCESS for b in walk(completion.tree) if b.role is Role.LINKER)
        sock = pending.sock
        if sock is not None:
            off = sock.offload
            assert off is not None
            off.updating = False
            if failed:
                self.upload(sock, Reason.HARDWARE_FAILURE)  # spec 3.3: a failed update terminates the object
            elif off.upload_after is not None:
                reason, off.upload_after = off.upload_after, None
                self.upload(sock, reason)
            elif off.update_pending:
                self._update_tcp(sock)
            return
        for obj in pending.objects:
            if failed:
                reason = Reason.PATH_CHANGE if obj.layer is Layer.PATH else Reason.NEIGHBOR_CHANGE
                for s in self._dependents(obj):
                    self.upload(s, reason)
                self._drop_shared(obj)
            else:
                self._reconcile(obj)

    def _dependents(self, obj: SharedObject) -> list[TcpSocket]:
        out = []
        for sock in self._by_handle.values():
            path = sock.offload.path if sock.offload is not None else None
            if path is obj or (path is not None and path.parent is obj):
                out.append(sock)
        return out

    def _drop_shared(self, obj: SharedObject) -> None:
        """New connections get a fresh object: this one failed or is going away."""
        table = self._paths if obj.layer is Layer.PATH else self._neighbors
        if table.get(obj.key) is obj:
            del table[obj.key]

    # ================================================================== next-hop change (spec 3.4)
    #
    # The next hop is not a path field: it is the neighbor a path is linked to. For every offloaded path
    # whose route now names another next hop the host follows the spec's sequence: resolve the new next hop
    # (ARP), offload it as a neighbor of its own if the target does not hold it yet, relink the paths to it
    # with one update rooted at it, then terminate the old neighbor once no path hangs on it. The connections
    # stay offloaded throughout. The optional first step (invalidate the old neighbor) is skipped: an
    # invalidated neighbor makes the target stop its connections and ask for their (mandatory) upload
    # (INVALID_STATE), which would undo the relink; until the new next hop resolves the target keeps sending
    # through the old one, as frames already queued to it would. No route, or a next hop that does not
    # resolve: the connections are uploaded (PATH_CHANGE / NEIGHBOR_CHANGE) and the host engine carries on.

    def _check_routes(self) -> None:
        waiting = False
        moves: dict[bytes, list[SharedObject]] = {}
        for path in self._paths_in_use():
            hop = self.stack.iface.next_hop(path.key)
            if path.parent is not None and path.parent.key == hop:
                continue
            rec = self.registry.record(path.handle)
            if rec.invalidated:
                continue
            if rec.phase is not Phase.OFFLOADED or rec.updating or path.target_handle is None:
                waiting = True  # its offload, update or upload completes first
            elif hop is None:
                self._upload_dependents(path, Reason.PATH_CHANGE)
            elif self.stack.arp.lookup(hop, self.now) is not None:
                self._resolving.discard(hop)
                moves.setdefault(hop, []).append(path)
            elif self._resolve(hop):
                waiting = True
            else:
                self._upload_dependents(path, Reason.NEIGHBOR_CHANGE)
        for hop, paths in moves.items():
            waiting |= not self._relink(hop, paths)
        self._route_dirty = waiting

    def _paths_in_use(self) -> list[SharedObject]:
        """The paths of the connections on the target or on their way (a dict keeps them unique and in a
        stable order)."""
        paths: dict[int, SharedObject] = {}
        for sock in self._by_handle.values():
            path = sock.offload.path if sock.offload is not None else None
            if path is not None and path.handle in self.registry:
                paths[path.handle] = path
        return list(paths.values())

    def _resolve(self, hop: bytes) -> bool:
        """Resolution of ``hop`` is under way (started now if needed); False once it failed."""
        entry = self.stack.arp.entry(hop)
        if entry is None and hop in self._resolving:
            self._resolving.discard(hop)  # the ARP cache gave up on it (NeighborUnreachable)
            return False
        if entry is None and self.stack.arp.resolve(hop, self.now) is None:
            return False
        self._resolving.add(hop)
        return True

    def _upload_dependents(self, obj: SharedObject, reason: Reason) -> None:
        for sock in self._dependents(obj):
            self.upload(sock, reason)

    def _relink(self, hop: bytes, paths: list[SharedObject]) -> bool:
        """Steps 2-3: the new neighbor offloaded (alone) if needed, then the paths relinked to it. True when
        the relink update went to the target."""
        mac = self.stack.arp.lookup(hop, self.now)
        assert mac is not None
        neighbor, node = self._neighbor_node(hop, mac)
        if neighbor is None:
            return False  # being offloaded: the relink follows its completion
        if isinstance(node, NewObject):
            request = InitiateOffload(self._rid(), build_tree([(node, None, None)]))
            if not self._submit(request, _Pending("neighbor", None, (neighbor, *paths))):
                self._drop_shared(neighbor)
            return False
        assert neighbor.target_handle is not None
        if self.registry.record(neighbor.handle).updating:
            return False  # a MAC update of the new neighbor is in flight: one update at a time (3.3)
        root = LinkedObject(neighbor.target_handle, neighbor.handle)
        tree = build_tree([(root, LinkedObject(p.target_handle or 0, p.handle), None) for p in paths])
        return self._submit(UpdateOffload(self._rid(), tree), _Pending("relink", None, (neighbor, *paths)))

    def _on_neighbor_done(self, pending: _Pending, completion: StateCompletion) -> None:
        neighbor, *paths = pending.objects
        block = next((b for b in walk(completion.tree) if b.host_handle == neighbor.handle), None)
        if block is not None and block.status.ok:
            neighbor.target_handle = block.target_handle
            self._reconcile(neighbor)  # ARP may have learnt another MAC meanwhile
        else:  # the target cannot hold the new next hop: the connections that needed it come back
            self._drop_shared(neighbor)
            for path in paths:
                self._upload_dependents(path, Reason.NEIGHBOR_CHANGE)
        self._route_dirty = True  # the relink goes next

    def _on_relink_done(self, pending: _Pending, completion: StateCompletion) -> None:
        """Step 4: an old neighbor no path hangs on any more is terminated. A path the target could not
        relink (FAILURE: corrupt hardware, spec 3.3) has its connections uploaded."""
        neighbor, *paths = pending.objects
        status = {b.host_handle: b.status for b in walk(completion.tree)}
        old: dict[int, SharedObject] = {}
        for path in paths:
            if status.get(path.handle) is Status.SUCCESS:
                if path.parent is not None:
                    old[path.parent.handle] = path.parent
                path.parent = neighbor
                self._reconcile(path)  # a PMTU change that waited for this update
            else:
                self._upload_dependents(path, Reason.NEIGHBOR_CHANGE)
        self._reconcile(neighbor)
        for obj in old.values():
            self._release_neighbor(obj)
        self._route_dirty = True

    def _release_neighbor(self, obj: SharedObject) -> None:
        if obj.target_handle is None or not self._last_user(obj, 0):
            return
        tree = build_tree([(LinkedObject(obj.target_handle, obj.handle), None, None)])
        if self._submit(TerminateOffload(self._rid(), tree), _Pending("terminate", None, (obj,))):
            self._drop_shared(obj)

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
        if not self._send_checked(request, _Pending("terminate", sock, objects)):
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
        if not self._send_checked(request, _Pending("terminate", None, objects, tuple(socks))):
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

    def _on_terminate_done(self, pending: _Pending, completion: StateCompletion) -> None:
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
            TerminateOffload(self._rid(), build_tree([triple])), _Pending("terminate", None, objects)
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
        sock.conn = conn
        sock.template = None
        off.state = OffloadState.IN_HOST
        off.ctx, off.path = None, None
        if tail:
            conn.sndbuf.write(tail)
        if off.queued and conn.state in _OPEN_FOR_SEND and not conn.fin_queued:
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
        if off.queued and conn.state in _OPEN_FOR_SEND and not conn.fin_queued:
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
        elif off.fin_pending and conn.state in _OPEN_FOR_SEND and not conn.fin_queued:
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

    def _violation(self, pending: _Pending | None, detail: str, completion: Completion) -> None:
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

    def _state_call_failed(self, rid: int, pending: _Pending, detail: str, target_failed: bool) -> None:
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

    def _bad_initiate(self, pending: _Pending, detail: str, answer: tuple[BlockList, ...]) -> None:
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
            ReachabilityReply(self._rid(), obj.target_handle, ind.indication_id, hrd), _Pending("data", None)
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
        if self._submit(InvalidateOffload(self._rid(), tree), _Pending("data", None)):
            bump(self.counters, "neighbors_invalidated")
            self._drop_shared(obj)

    # ================================================================== helpers

    def _record(self, sock: TcpSocket) -> ConnOffload:
        off = sock.offload
        assert off is not None
        return off

    def _closed_error(self, off: ConnOffload, op: str) -> ConnectionClosedError:
        if off.reset:
            return ConnectionResetByPeerError(f"{op}: the peer reset the connection", TcpState.CLOSED)
        return ConnectionClosedError(f"{op}: the connection is closed", TcpState.CLOSED)

    def _set_state(self, sock: TcpSocket, new: TcpState) -> None:
        off = sock.offload
        assert off is not None
        old = off.tcp_state
        if old is not new:
            off.tcp_state = new
            if not off.finished:
                self._emit(sock, StateChanged(old, new))

    def _emit(self, sock: TcpSocket, ev: TcpEvent) -> None:
        self.stack._events.append(ConnectionEvent(sock, ev))

    def _handle(self) -> int:
        self._next_handle += 1
        return self._next_handle

    def _rid(self) -> int:
        self._next_request += 1
        return self._next_request

    def _submit(self, request: Request, pending: _Pending) -> bool:
        """Check ``request`` with the registry and hand it to the target; False (reported) when the
        registry refuses it: a host bug, never the application's."""
        try:
            self.registry.submit(request)
        except PreconditionError as exc:
            bump(self.counters, "precondition_refused")
            self.stack._internal_error(exc)
            return False
        return self._send_checked(request, pending)

    def _send_checked(self, request: Request, pending: _Pending) -> bool:
        """Hand a checked request to the target. A target's ``submit`` never raises (the contract: it
        completes what it cannot do with a status); one that does is a failed target, and its exception
        stops here, whatever socket call led to it. False: the request is treated as never made."""
        self._pending[request.request_id] = pending
        try:
            self.target.submit(request, self.now)
        except Exception as exc:
            self._pending.pop(request.request_id, None)
            self.registry.abandon(request.request_id)
            self._target_failed(f"submit({type(request).__name__}) raised {type(exc).__name__}: {exc}")
            return False
        if pending.kind in self._state_done and request.request_id in self._pending:
            self._state_calls[request.request_id] = self.now
            self._arm_watch()
        return True

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
                off.querying = self._submit(QueryOffload(self._rid(), tree), _Pending("query", sock))
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

    def _on_query_done(self, pending: _Pending, completion: StateCompletion) -> None:
        """A silent connection's state: what it shows owed twice in a row is a fault (once may be a race
        with an indication still on its way); a failed query is corrupt hardware (spec 3.2)."""
        sock = pending.sock
        assert sock is not None and sock.offload is not None
        off = sock.offload
        off.querying = False
        block = next((b for b in walk(completion.tree) if b.layer is Layer.TCP), None)
        state = block.state if block is not None and block.status is Status.SUCCESS else None
        if isinstance(state, TcpSnapshot | TcpDelegated):
            d = state.delegated if isinstance(state, TcpSnapshot) else state
            owed = owed_by_target(off, d)
            if owed is not None and off.suspect is not None and off.after_query is None:
                self._fault(sock, Reason.HARDWARE_FAILURE, f"{owed} (two queries apart)")
            off.suspect = owed
        elif not off.finished and off.after_query is None:
            self._fault(sock, Reason.HARDWARE_FAILURE, "the target failed a query of the connection")
        if off.after_query is not None and off.state is OffloadState.OFFLOADED:
            (reason,), off.after_query = off.after_query, None
            self._terminate(sock, reason)


def _branch(tree: tuple[BlockList, ...], tcp_handle: int) -> tuple[BlockList, ...]:
    """The blocks from the top of ``tree`` down to the TCP block of ``tcp_handle`` (its neighbor, its path,
    itself); empty when the tree does not hold it."""
    for top in tree:
        for mid in top.dependents:
            for low in mid.dependents:
                if low.host_handle == tcp_handle:
                    return (top, mid, low)
    return ()
