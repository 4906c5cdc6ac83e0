"""The part of the offload manager every phase shares: its tables and the request helpers."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

from tcpchimney.chimney.completions import (
    DisconnectCompletion,
    ReceiveCompletion,
    SendCompletion,
    StateCompletion,
)
from tcpchimney.chimney.errors import PreconditionError
from tcpchimney.chimney.indications import PeerDisconnect, ReceiveIndication, TargetCapabilities
from tcpchimney.chimney.reason import Reason
from tcpchimney.chimney.registry import OffloadRegistry
from tcpchimney.chimney.requests import Request
from tcpchimney.chimney.target import OffloadTarget
from tcpchimney.chimney.tree import TreeNode
from tcpchimney.host.counters import bump
from tcpchimney.host.events import ConnectionEvent
from tcpchimney.host.offload_state import ConnOffload, Pending, SharedObject
from tcpchimney.host.policy import OffloadPolicy, OffloadRule
from tcpchimney.tcp.errors import ConnectionClosedError, ConnectionResetByPeerError
from tcpchimney.tcp.events import StateChanged, TcpEvent
from tcpchimney.tcp.state import TcpState

if TYPE_CHECKING:
    from tcpchimney.host.sockets import TcpSocket
    from tcpchimney.host.stack import HostStack


class OffloadBase:
    """What every phase of the manager shares: its tables, the request helpers (host.offload)."""

    def __init__(self, stack: HostStack, target: OffloadTarget, policy: OffloadPolicy | None) -> None:
        self.stack = stack
        self.target = target
        self.policy = policy or OffloadPolicy()
        self.registry = OffloadRegistry()
        self.counters: dict[str, int] = {}
        self.rule_hits: Counter[OffloadRule] = Counter()  # decisions each rule of the policy made
        self.now = 0.0
        self.paused = False
        self.attached = True  # the target is between the device and the stack (a runtime may say it is not)
        self.failed = False  # the target broke the contract beyond one connection (_target_failed)
        self.capabilities: TargetCapabilities = target.capabilities
        self._next_handle = 0
        self._next_request = 0
        self._pending: dict[int, Pending] = {}
        self._by_handle: dict[int, TcpSocket] = {}
        self._neighbors: dict[bytes, SharedObject] = {}
        self._paths: dict[bytes, SharedObject] = {}
        self._neighbor_of: dict[int, SharedObject] = {}
        self._candidates: dict[TcpSocket, None] = {}
        # Automatic mode's re-examination list: every connection that reached ESTABLISHED (or was named by
        # offload_now) and has not yet been seen past the offloadable states; pruned as it is walked, so the
        # walk never visits the TIME-WAIT crowd of a busy server.
        self._watching: dict[TcpSocket, None] = {}
        # What answers a state call's completion, by the kind of call (the rest are data calls).
        self._state_done: dict[str, Callable[[Pending, StateCompletion], None]] = {
            "initiate": self._on_initiate_done,
            "terminate": self._on_terminate_done,
            "update": self._on_update_done,
            "neighbor": self._on_neighbor_done,
            "relink": self._on_relink_done,
            "query": self._on_query_done,
            "inspect": self._on_query_done,
        }
        self._state_calls: dict[int, float] = {}  # state calls in flight: request id -> when submitted
        self._next_watch: float | None = None
        self._arp_generation = -1
        self._next_check: float | None = None
        self._route_dirty = False  # a next-hop change waits for a resolution, an offload or an update
        self._resolving: set[bytes] = set()  # new next hops the host asked ARP for (a route change)
        self._verifying: dict[bytes, SharedObject] = {}  # neighbors the target asked about, being re-probed

    if TYPE_CHECKING:
        # The phases call one another through the manager (host.offload joins them).

        def _reconsider(self) -> None: ...
        def upload(self, sock: TcpSocket, reason: Reason) -> bool: ...
        def upload_all(self, reason: Reason) -> int: ...
        def _submit_abort(self, sock: TcpSocket) -> None: ...
        def _neighbor_node(self, hop: bytes, mac: bytes) -> tuple[SharedObject | None, TreeNode]: ...
        def _on_initiate_done(self, pending: Pending, completion: StateCompletion) -> None: ...
        def _flush_sends(self, sock: TcpSocket) -> None: ...
        def _report_send_space(self, sock: TcpSocket) -> None: ...
        def _on_send_done(self, sock: TcpSocket, completion: SendCompletion) -> None: ...
        def _on_receive(self, sock: TcpSocket, ind: ReceiveIndication) -> None: ...
        def _on_receive_done(self, sock: TcpSocket, completion: ReceiveCompletion) -> None: ...
        def _on_disconnect_done(self, sock: TcpSocket, completion: DisconnectCompletion) -> None: ...
        def _on_peer_disconnect(self, sock: TcpSocket, ind: PeerDisconnect) -> None: ...
        def _on_peer_reset(self, sock: TcpSocket) -> None: ...
        def _finish(self, sock: TcpSocket) -> None: ...
        def _reconcile(self, obj: SharedObject) -> None: ...
        def _update_tcp(self, sock: TcpSocket) -> None: ...
        def _on_update_done(self, pending: Pending, completion: StateCompletion) -> None: ...
        def _drop_shared(self, obj: SharedObject) -> None: ...
        def _on_neighbor_done(self, pending: Pending, completion: StateCompletion) -> None: ...
        def _on_relink_done(self, pending: Pending, completion: StateCompletion) -> None: ...
        def _release_neighbor(self, obj: SharedObject) -> None: ...
        def _terminate(self, sock: TcpSocket, reason: Reason) -> bool: ...
        def _last_user(self, obj: SharedObject, users: int) -> bool: ...
        def _on_terminate_done(self, pending: Pending, completion: StateCompletion) -> None: ...
        def _release(self, path: SharedObject) -> None: ...
        def _resume_engine(self, sock: TcpSocket) -> None: ...
        def _lost(self, sock: TcpSocket, detail: str) -> None: ...
        def _target_failed(self, detail: str) -> None: ...
        def _fault(self, sock: TcpSocket | None, reason: Reason, detail: str, act: bool = True) -> None: ...
        def _check_verified(self) -> None: ...
        def _arm_watch(self) -> None: ...
        def _on_query_done(self, pending: Pending, completion: StateCompletion) -> None: ...

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

    def _submit(self, request: Request, pending: Pending) -> bool:
        """Check ``request`` with the registry and hand it to the target; False (reported) when the
        registry refuses it: a host bug, never the application's."""
        try:
            self.registry.submit(request)
        except PreconditionError as exc:
            bump(self.counters, "precondition_refused")
            self.stack._internal_error(exc)
            return False
        return self._send_checked(request, pending)

    def _send_checked(self, request: Request, pending: Pending) -> bool:
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
