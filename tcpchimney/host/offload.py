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

``OffloadManager`` is one object whose methods live by phase, each module a mixin over ``offload_base``
(the manager's tables and request helpers): ``offload_state`` (the records and the state tables),
``offload_handin`` (policy checks, initiate trees), ``offload_datapath`` (socket calls, sends, receives,
disconnects while offloaded), ``offload_shared`` (neighbor and path updates, next-hop changes),
``offload_handout`` (terminate, the returned state, the engine resuming), ``offload_events`` (completions,
indications, faults and the target's silence). This module holds the entry points and administration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tcpchimney.chimney.completions import Completion
from tcpchimney.chimney.errors import ContractError
from tcpchimney.chimney.reason import Reason
from tcpchimney.chimney.requests import Forward
from tcpchimney.host.offload_datapath import OffloadDataPath
from tcpchimney.host.offload_events import OffloadEvents
from tcpchimney.host.offload_handin import OffloadHandIn
from tcpchimney.host.offload_handout import OffloadHandOut
from tcpchimney.host.offload_shared import OffloadShared
from tcpchimney.host.offload_state import (
    MAX_SEND_BACKLOG,
    MAX_SEND_CHUNK,
    OFFLOADABLE_NOW,
    SILENCE,
    STATE_CALL_TIMEOUT,
    WATCH_INTERVAL,
    ConnOffload,
    OffloadState,
    Pending,
    SharedObject,
)
from tcpchimney.host.policy import ConnectionInfo, OffloadMode, OffloadPolicy
from tcpchimney.tcp.events import Connected, TcpEvent
from tcpchimney.wire.seq import SeqNum

if TYPE_CHECKING:
    from tcpchimney.host.sockets import TcpSocket

_Pending = Pending  # the name the offload test harness knows
__all__ = [
    "MAX_SEND_BACKLOG",
    "MAX_SEND_CHUNK",
    "SILENCE",
    "STATE_CALL_TIMEOUT",
    "WATCH_INTERVAL",
    "ConnOffload",
    "OffloadManager",
    "OffloadState",
    "Pending",
    "SharedObject",
    "_Pending",
]


class OffloadManager(OffloadHandIn, OffloadDataPath, OffloadShared, OffloadHandOut, OffloadEvents):
    """The host side of offload: one façade over the phases (each an ``OffloadBase`` mixin)."""

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
            self._consider_all(self._still_waiting(), quiet=True)

    def _still_waiting(self) -> list[TcpSocket]:
        """The watched connections on the host that automatic mode may offload now; those gone or past the
        offloadable states (they never return to them) leave the list."""
        waiting: list[TcpSocket] = []
        stack, watching = self.stack, self._watching
        for sock in list(watching):
            if not stack.holds(sock) or sock.state not in OFFLOADABLE_NOW:
                del watching[sock]
                continue
            off = sock.offload
            if off is not None and off.in_host and not off.refused_by_target:
                waiting.append(sock)
        return waiting

    def on_engine_event(self, sock: TcpSocket, ev: TcpEvent) -> None:
        """An event of a connection on the host engine: established connections become candidates (in
        automatic mode, those below its threshold wait for the first re-examination instead: a connection
        that closes before it costs no decision and reports none)."""
        if isinstance(ev, Connected):
            if sock.offload is None:
                sock.offload = ConnOffload(una0=sock.conn.snd_una, rcv0=sock.conn.rcv_nxt)
            self._watching[sock] = None
            if self.policy.mode is OffloadMode.AUTOMATIC:
                if self._next_check is None:
                    self._next_check = self.now + self.policy.check_interval
                if self.policy.decide(self._info(sock)) is Reason.MODE_AUTOMATIC_THRESHOLD:
                    return
            self._candidates[sock] = None

    def held_segment(self, sock: TcpSocket, raw: bytes) -> None:
        """A segment for a connection that is not on the host engine reached the host (the target passed
        it up: IP options, a fragment, or the connection is moving)."""
        off = sock.offload
        assert off is not None
        if off.state is OffloadState.OFFLOADED and off.ctx is not None:
            self._submit(Forward(self._rid(), off.ctx, (raw,)), Pending("data", sock))
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
        uploads = self._uploads_for(policy)
        self.policy = policy
        for rule in [r for r in self.rule_hits if r not in policy.rules]:
            del self.rule_hits[rule]  # a rule removed: its count goes with it
        for sock, reason in uploads:
            self.upload(sock, reason)
        self._reconsider()
        self._next_check = self.now if policy.mode is OffloadMode.AUTOMATIC else None

    def plan(self, policy: OffloadPolicy) -> list[tuple[TcpSocket, str, Reason | None]]:
        """What ``set_policy(policy)`` would move, moving nothing: ``(sock, "upload", reason)`` for an
        offloaded connection the policy would not keep, ``(sock, "offload", None)`` for one on the host it
        would offload at once (automatic mode's thresholds judged against what the connection did so far)."""
        moves: list[tuple[TcpSocket, str, Reason | None]] = [
            (s, "upload", r) for s, r in self._uploads_for(policy)
        ]
        for sock in self.stack.connections():
            off = sock.offload
            if off is not None and off.in_host and self._check(sock, policy=policy) is None:
                moves.append((sock, "offload", None))
        return moves

    def _uploads_for(self, policy: OffloadPolicy) -> list[tuple[TcpSocket, Reason]]:
        """The offloaded (or offloading) connections ``policy`` would not keep, each with its reason."""
        change = Reason.MODE_CHANGE if policy.mode is not self.policy.mode else Reason.POLICY_CHANGE
        uploads: list[tuple[TcpSocket, Reason]] = []
        for sock in self.stack.connections():
            off = sock.offload
            if off is None or off.state not in (OffloadState.OFFLOADED, OffloadState.OFFLOADING):
                continue
            why = policy.keeps(self._info(sock))
            if why is not None or not sock.offload_allowed:
                uploads.append((sock, change if why is not None else Reason.POLICY_CHANGE))
        return uploads

    def info(self, sock: TcpSocket) -> ConnectionInfo:
        """What the policy sees of ``sock``: its addresses, the bytes it moved so far and its RTT."""
        return self._info(sock)

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
                self._watching[sock] = None

    def offload_now(self, sock: TcpSocket) -> Reason | None:
        """Offload ``sock`` whatever the mode (rules and opt-out still apply). None: the initiate is in
        flight (an Offloaded or OffloadRefused event follows); otherwise why it was refused now."""
        if sock.offload is None:
            sock.offload = ConnOffload(una0=sock.conn.snd_una, rcv0=sock.conn.rcv_nxt)
        self._watching[sock] = None
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
