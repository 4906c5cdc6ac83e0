"""``SoftwareTarget``: the emulated NIC, an offload target that runs the stack's own TCP engine.

It is two things at once (docs/offload-design.md):

- the **node** attached to the device: ``handle_frame`` takes the frames of the connections it holds (plain
  IPv4, no options, not a fragment) and passes every other frame up to the host node set with
  ``attach_host``; ``frames_to_send`` is the host's frames, then its own; deadlines are merged;
- an **offload target** (``chimney.target.TargetMethods``): the host offloads, updates, queries, invalidates
  and uploads connections and moves their data through ``submit`` / ``poll`` only.

Each offloaded connection is a ``TcpConnection`` rebuilt from the offered state (``tcp.snapshot.rebuild``)
and exported again on upload (``tcp.snapshot.export_snapshot``), so the data path is the host's own, bug for
bug. The contract rules it adds (spec 3-4): send completions only once the peer ACKed every byte; posted
buffers fill before any indication; one indication at a time; the peer's FIN indicated only after every byte
before it was delivered; an upload asked for (not taken) on TIME-WAIT, urgent data, timeouts, invalid state.

In the spirit of Linux netdevsim it has a bounded table, counters, ``dump_state`` for tests, fault knobs
(``refuse_next_offload``, ``request_upload``, ``pause`` / ``resume``, ``stall``, ``fail_hardware``) and
``close`` warns when state leaked.
"""

from __future__ import annotations

import heapq
import logging
import math
import warnings
from collections.abc import Callable, Collection
from dataclasses import replace
from typing import Any, Protocol

from tcpchimney.chimney.completions import (
    Completion,
    DisconnectCompletion,
    ReceiveCompletion,
    SendCompletion,
    StateCompletion,
    completion_for,
)
from tcpchimney.chimney.indications import (
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
from tcpchimney.chimney.neighbor import NeighborCached, NeighborDelegated, NeighborState
from tcpchimney.chimney.path import PathCached, PathState
from tcpchimney.chimney.reason import Reason, ReasonGroup
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
from tcpchimney.chimney.target import Output, TargetMethods
from tcpchimney.chimney.tcp_state import TcpCached, TcpSnapshot
from tcpchimney.chimney.tree import (
    BlockList,
    Layer,
    Role,
    Tree,
    complete_initiate,
    overall_status,
)
from tcpchimney.nic.counters import NicCounters
from tcpchimney.nic.frames import IpIds, TxTemplate, classify, parse_segment
from tcpchimney.nic.table import (
    ConnectionTable,
    NeighborEntry,
    PathEntry,
    PendingDisconnect,
    PendingSend,
    PostedBuffer,
    TcpEntry,
)
from tcpchimney.tcp.config import TcpConfig
from tcpchimney.tcp.connection import TcpConnection
from tcpchimney.tcp.events import (
    ConnectionReset,
    ConnectionTimedOut,
    PeerClosed,
    SegmentDropped,
    StateChanged,
)
from tcpchimney.tcp.snapshot import export_snapshot, rebuild
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire import tcp as tcp_wire
from tcpchimney.wire.frame import DeviceFeatures, Frame
from tcpchimney.wire.tcp import PSH, RST, URG, TcpSegment

log = logging.getLogger(__name__)

PUSH_TIMEOUT = 0.5  # Windows' push timer (spec 3.6): a partly filled push-mode buffer completes after it
# SendBacklogChanged throttle (spec 4.3: "do not indicate small or frequent changes"): a new estimate is
# indicated only when it differs from the last one by more than a quarter, and at most once per smoothed RTT
# (at least this many seconds apart).
BACKLOG_CHANGE_FRACTION = 4
MIN_BACKLOG_INTERVAL = 0.01
MAX_HELD_FRAMES = 1024  # frames of a frozen connection kept for the host; later ones are discarded
_IPV4_TCP_HEADERS = 40
_OPEN_FOR_SEND = frozenset({TcpState.ESTABLISHED, TcpState.CLOSE_WAIT})
_ESTABLISHED_LIKE = frozenset({TcpState.ESTABLISHED, TcpState.CLOSE_WAIT})
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


class UpperNode(Protocol):
    """The node above the target (the host stack)."""

    def handle_frame(self, frame: Frame, now: float) -> None: ...
    def handle_timer(self, now: float) -> None: ...
    def frames_to_send(self, now: float) -> list[Frame]: ...
    def next_deadline(self) -> float | None: ...


class _Refused(Exception):
    """One initiate block cannot be offloaded: its status and the reason counted."""

    def __init__(self, status: Status, reason: Reason) -> None:
        super().__init__(status.name)
        self.status = status
        self.reason = reason


class SoftwareTarget(TargetMethods):
    def __init__(
        self,
        features: DeviceFeatures | None = None,
        *,
        capacity: int = 1024,
        config: TcpConfig | None = None,
        mac: bytes | None = None,
        vlans: frozenset[int] = frozenset(),
        max_rcv_window: int = 1 << 30,
        ip_id_start: int = 0,
        nce_stale: float = 30.0,
    ) -> None:
        """``features``: the device's stateless offloads (checksum, TSO), used for the frames it builds.
        ``config``: engine settings the contract leaves to each side (interface MSS, RTO bounds, retries).
        ``mac``: the interface MAC for neighbors without a source MAC; learnt from the host's frames if None.
        ``vlans``: VLAN ids configured on the interface (spec 5.6); others fail with VLAN_MISMATCH.
        ``nce_stale``: NceStaleTicks in seconds (spec 2.5, 4.6): with neither forward progress nor a host
        confirmation for that long, the target asks the host whether a neighbor it sends to is reachable."""
        super().__init__(TargetCapabilities(ipv4=True, ipv6=False, sack=True, capacity=capacity))
        self.features = features or DeviceFeatures()
        base = config or TcpConfig()
        tso = self.features.tso
        self.config = replace(
            base, max_segment_payload=max(0, min(self.features.tso_max, 65535) - 80) if tso else 0
        )
        self.table = ConnectionTable(capacity)
        self.counters = NicCounters()
        self.mac = mac
        self.vlans = vlans
        self.max_rcv_window = max_rcv_window
        self.nce_stale = nce_stale
        self.host: UpperNode | None = None
        self._ip_ids = IpIds(ip_id_start)
        self._tx: list[Frame] = []  # own frames built outside frames_to_send (an abort's RST)
        self._to_host: list[Frame] = []  # held frames of uploaded connections, handed up at the next entry
        self._dirty: dict[int, TcpEntry] = {}
        # Lazy heap of (deadline, seq, entry): an item is live while the entry is still in the table and its
        # ``timer_at`` equals the deadline; others are skipped on pop (as HostStack._timers).
        self._timers: list[tuple[float, int, TcpEntry]] = []
        self._timer_seq = 0
        self._indication_ids = 0
        self._refuse_next: Reason | None = None
        self._stalled = False
        self._failed = False
        self._now = 0.0

    # ================================================================== node interface

    def attach_host(self, host: UpperNode) -> None:
        self.host = host

    def handle_frame(self, frame: Frame, now: float) -> None:
        self._now = now
        self._flush_to_host(now)
        rx = classify(frame) if self.table.by_key else None
        entry = self.table.by_key.get(rx.key) if rx is not None else None
        if rx is None or entry is None:
            self._up(frame, now)
            return
        neighbor = entry.path.neighbor
        if not rx.plain or rx.dst_mac != neighbor.src_mac or rx.vlan_id != neighbor.const.vlan_id:
            if rx.ip.options_raw:
                self._ask_upload(entry, Reason.IP_OPTIONS_RECEIVED)
            self._up(frame, now)  # the host reassembles / strips options and forwards the segment back
            return
        if entry.stopped:
            self._hold(entry, frame)
            return
        seg = parse_segment(rx, frame)
        if seg is None:
            self._up(frame, now)  # spec 4.8: indicate a corrupt segment raw rather than count it here
            return
        ip = self.counters.ip
        ip["in_receives"] += 1
        ip["in_octets"] += rx.ip.total_len
        if seg.flags & URG:
            self._freeze(entry, Reason.URGENT_DATA)  # spec 4.3: not ACKed; the host gets it raw after upload
            self._hold(entry, frame)
            return
        ip["in_delivers"] += 1
        self._segment_in(entry, seg, now)

    def handle_timer(self, now: float) -> None:
        self._now = now
        self._flush_to_host(now)
        if self.host is not None:
            self.host.handle_timer(now)
        due: list[TcpEntry] = []
        timers, conns = self._timers, self.table.conns
        while timers and timers[0][0] <= now:
            deadline, _, entry = heapq.heappop(timers)
            if entry.timer_at == deadline and conns.get(entry.handle) is entry:
                entry.timer_at = None  # popped: the entry re-arms after its timer work
                due.append(entry)
        for entry in due:  # one pass: work due again at ``now`` waits for the next call
            actual = self._deadline_of(entry)
            if actual is not None and actual <= now:
                self._timer(entry, now)
            else:
                self._rearm(entry)  # the deadline moved later (or stopped) since it was pushed

    def frames_to_send(self, now: float) -> list[Frame]:
        self._now = now
        self._flush_to_host(now)
        out: list[Frame] = []
        if self.host is not None:
            out = self.host.frames_to_send(now)
            if self.mac is None and out:
                self.mac = bytes(out[0].headers[6:12])  # the interface MAC, as the host uses it
        if self._stalled:
            return out
        own = self._tx
        self._tx = []
        dirty = self._dirty
        self._dirty = {}
        for entry in dirty.values():
            if self.table.conns.get(entry.handle) is entry:
                self._output(entry, now, own)
        return out + own

    def next_deadline(self) -> float | None:
        best = self.host.next_deadline() if self.host is not None else None
        timers, conns = self._timers, self.table.conns
        while timers:
            deadline, _, entry = timers[0]
            if entry.timer_at == deadline and conns.get(entry.handle) is entry:
                return deadline if best is None or deadline < best else best
            heapq.heappop(timers)
        return best

    def _up(self, frame: Frame, now: float) -> None:
        self.counters.lifecycle["passed_up"] += 1
        if self.host is not None:
            self.host.handle_frame(frame, now)

    def _flush_to_host(self, now: float) -> None:
        # Handed up outside submit(): the host drains poll() first, so it sees the terminate completion
        # before the frames, and is never re-entered from inside its own submit call.
        while self._to_host:
            frames, self._to_host = self._to_host, []
            for frame in frames:
                self._up(frame, now)

    def _hold(self, entry: TcpEntry, frame: Frame) -> None:
        if len(entry.held) >= MAX_HELD_FRAMES:
            self.counters.ip["in_discards"] += 1
            return
        self.counters.lifecycle["held_for_host"] += 1
        entry.held.append(Frame(bytes(frame.headers) + bytes(frame.payload), b"", frame.csum_partial,
                                frame.csum_valid, frame.gso_size))  # fmt: skip

    # ================================================================== the engine of one connection

    def _segment_in(self, entry: TcpEntry, seg: TcpSegment, now: float) -> None:
        self.counters.tcp["in_segments"] += 1
        entry.conn.handle_segment(seg, now)
        if seg.payload and seg.flags & PSH:
            entry.psh_seen = True
        self._after_engine(entry, now)

    def _deadline_of(self, entry: TcpEntry) -> float | None:
        if entry.stopped:
            return None
        conn = entry.conn
        # In TIME-WAIT only the delayed ACK runs: 2*MSL is the host's (spec 1.2), the upload is asked for.
        deadline = conn.delack_deadline if conn.state is TcpState.TIME_WAIT else conn.next_deadline()
        push = entry.push_deadline
        if push is not None and (deadline is None or push < deadline):
            deadline = push
        return deadline

    def _rearm(self, entry: TcpEntry) -> None:
        """Push the entry's deadline when it changed; called after every change of its engine or timers."""
        deadline = self._deadline_of(entry)
        if deadline == entry.timer_at:
            return
        entry.timer_at = deadline
        if deadline is None:
            return
        self._timer_seq += 1
        heapq.heappush(self._timers, (deadline, self._timer_seq, entry))
        if len(self._timers) > 4 * len(self.table.conns) + 64:
            self._compact_timers()

    def _compact_timers(self) -> None:
        conns = self.table.conns
        self._timers = [t for t in self._timers if t[2].timer_at == t[0] and conns.get(t[2].handle) is t[2]]
        heapq.heapify(self._timers)

    def _timer(self, entry: TcpEntry, now: float) -> None:
        reason = self._limit_reached(entry, now)
        if reason is not None:
            self._freeze(entry, reason)
            return
        conn = entry.conn
        if conn.state is TcpState.TIME_WAIT:
            if conn.delack_deadline is not None and conn.delack_deadline <= now:
                conn.delack_deadline = None  # the delayed ACK only: 2*MSL is the host's to run
                conn.ack_now = True
        else:
            deadline = conn.next_deadline()
            if deadline is not None and deadline <= now:
                conn.handle_timer(now)
        if entry.push_deadline is not None and entry.push_deadline <= now:
            entry.push_deadline = None
            self._complete_partial(entry)
        self._after_engine(entry, now)

    def _limit_reached(self, entry: TcpEntry, now: float) -> Reason | None:
        """Spec 4.3 TimeoutExpiration: instead of letting the engine give up, the target stops and asks for
        the upload; the exported timer is then 0, so the host's engine takes the decision at once."""
        conn = entry.conn
        limit = conn.config.max_retransmits
        if conn.rto_deadline is not None and conn.rto_deadline <= now:
            if conn.persisting:
                if conn.retransmit_count >= limit:
                    return Reason.PERSIST_TIMEOUT
            elif conn.snd_max != conn.snd_una and self._retransmits_exhausted(entry, now):
                return Reason.RETRANSMIT_TIMEOUT
        if (
            conn.keepalive_deadline is not None
            and conn.keepalive_deadline <= now
            and conn.state is TcpState.ESTABLISHED
            and conn.snd_max == conn.snd_una
            and conn.keepalive_probe_count >= conn.config.keepalive_probes
        ):
            return Reason.KEEPALIVE_TIMEOUT
        if (
            conn.state is TcpState.FIN_WAIT_2
            and conn.close_deadline is not None
            and conn.close_deadline <= now
        ):
            return Reason.FIN_WAIT_2_TIMEOUT
        return None

    def _retransmits_exhausted(self, entry: TcpEntry, now: float) -> bool:
        conn = entry.conn
        max_rt = entry.cached.max_rt
        if math.isinf(max_rt):
            return False
        if max_rt > 0:  # MaxRT: seconds spent retransmitting one segment, instead of the count (spec 2.4)
            return conn.first_rexmit_time is not None and now - conn.first_rexmit_time >= max_rt
        return conn.retransmit_count >= conn.config.max_retransmits

    def _after_engine(self, entry: TcpEntry, now: float) -> None:
        """Everything a change of the engine may cause: events, send completions, delivery."""
        conn = entry.conn
        ev = conn.next_event()
        while ev is not None:
            self._on_event(entry, ev)
            ev = conn.next_event()
        self._progress(entry, now)
        self._feed(entry)
        self._deliver(entry, now)
        self._dirty[entry.handle] = entry
        self._rearm(entry)

    def _on_event(self, entry: TcpEntry, ev: object) -> None:
        if isinstance(ev, SegmentDropped):
            self.counters.engine_drop(ev.reason)
        elif isinstance(ev, StateChanged):
            if ev.new is TcpState.TIME_WAIT:
                entry.time_wait_pending = True
            elif ev.new is TcpState.CLOSED and ev.old in _ESTABLISHED_LIKE:
                self.counters.tcp["reset_established"] += 1
        elif isinstance(ev, PeerClosed):
            entry.peer_fin = True
        elif isinstance(ev, ConnectionReset):
            self._peer_reset(entry)
        elif isinstance(ev, ConnectionTimedOut):
            self._freeze(entry, Reason.RETRANSMIT_TIMEOUT)

    def _output(self, entry: TcpEntry, now: float, out: list[Frame]) -> None:
        conn = entry.conn
        if entry.frozen is not None:
            return  # spec 3.4: nothing more leaves for a connection that waits for its upload
        snd_max = conn.snd_max
        segs = conn.segments_to_send(now)
        if not segs:
            self._rearm(entry)  # building no segment may still have moved a timer
            return
        neighbor = entry.path.neighbor
        if now - neighbor.last_progress > self.nce_stale:
            self._query_reachability(neighbor, now)
        template = entry.template or self._template(entry)
        tcp, ip = self.counters.tcp, self.counters.ip
        for seg in segs:
            frame = template.frame(seg, self._ip_ids.next(), self.features)
            out.append(frame)
            tcp["out_segments"] += 1
            ip["out_requests"] += 1
            ip["out_octets"] += len(frame) - 14
            if seg.payload and seg.seq < snd_max:
                tcp["retransmitted_segments"] += 1
            if seg.flags & RST:
                tcp["out_resets"] += 1
        self._after_engine(entry, now)
        self._dirty.pop(entry.handle, None)  # what it produced is out; new work marks it again

    def _template(self, entry: TcpEntry) -> TxTemplate:
        path = entry.path
        neighbor = path.neighbor
        gso_mss = min(entry.const.remote_mss, path.cached.path_mtu - _IPV4_TCP_HEADERS)
        template = TxTemplate(
            src_mac=neighbor.src_mac,
            dst_mac=neighbor.cached.dest_mac,
            src_ip=path.const.source,
            dst_ip=path.const.destination,
            vlan_id=neighbor.const.vlan_id,
            user_priority=entry.cached.user_priority,
            ttl=entry.cached.ttl,
            tos=entry.cached.tos,
            gso_mss=gso_mss,
        )
        entry.template = template
        return template

    # ---------------------------------------------------------------- send side

    def _progress(self, entry: TcpEntry, now: float) -> None:
        """Complete the Sends (and the graceful Disconnect) the peer has acknowledged, in order (spec 4.2)."""
        una = entry.conn.snd_una
        step = una.dist(entry.una_last)
        if step > 0:
            entry.acked += step
            entry.una_last = una
            entry.path.neighbor.last_progress = now  # forward progress (spec 4.6)
            if now >= entry.backlog_quiet_until:
                self._indicate_backlog(entry, now)
        rcv = entry.conn.rcv_nxt
        if rcv != entry.rcv_last:
            # New in-order data: the peer keeps sending into the window our ACKs opened, so it hears us
            # (spec 4.6: "a segment whose sequence number shows the peer heard our ACK").
            entry.rcv_last = rcv
            entry.path.neighbor.last_progress = now
        acked = min(entry.acked, entry.written)
        while entry.sends and entry.sends[0].end <= acked:
            send = entry.sends.popleft()
            self._send_done(send, Status.SUCCESS, send.end - send.start)
        disc = entry.disconnect
        if disc is not None and not entry.sends and entry.conn.our_fin_acked:
            entry.disconnect = None
            self.complete(DisconnectCompletion(disc.request_id, Status.SUCCESS, disc.end - disc.start))

    def _query_reachability(self, neighbor: NeighborEntry, now: float) -> None:
        """Spec 4.6: about to send through a neighbor with no forward progress for NceStaleTicks. When the
        host has not vouched for it for as long either, ask (one query at a time; after an answer, none for
        NceStaleTicks: the spec rate-limits only the "stale" answer, the same bound for a "reachable" one
        keeps a host whose confirmation is itself older than NceStaleTicks from being asked at every send)."""
        if neighbor.query is not None or now < neighbor.quiet_until:
            return
        if now - neighbor.host_confirmed <= self.nce_stale:
            return
        self._indication_ids += 1
        neighbor.query = self._indication_ids
        self.counters.lifecycle["reachability_queries"] += 1
        nrd = now - neighbor.last_progress
        self.indicate(NeighborReachabilityQuery(neighbor.host_handle, neighbor.query, nrd))

    def _indicate_backlog(self, entry: TcpEntry, now: float) -> None:
        """A new preferred send backlog, when it moved enough (throttled, see BACKLOG_CHANGE_FRACTION)."""
        backlog = send_backlog(entry.conn)
        last = entry.backlog_indicated
        if abs(backlog - last) * BACKLOG_CHANGE_FRACTION <= last:
            return
        entry.backlog_indicated = backlog
        entry.backlog_quiet_until = now + max(entry.conn.srtt or 0.0, MIN_BACKLOG_INTERVAL)
        self.counters.lifecycle["send_backlog_changes"] += 1
        self.indicate(SendBacklogChanged(entry.host_handle, backlog))

    def _send_done(self, send: PendingSend, status: Status, acked: int) -> None:
        self.counters.lifecycle["send_completions"] += 1
        self.complete(SendCompletion(send.request_id, status, acked))

    def _feed(self, entry: TcpEntry) -> None:
        """Move accepted data into the engine's send buffer as it makes room; then the pending FIN."""
        conn = entry.conn
        while entry.backlog and conn.send_space:
            head = entry.backlog[0]
            n = conn.send(head)
            if n < len(head):
                entry.backlog[0] = head[n:]
                break
            entry.backlog.popleft()
        if entry.fin_pending and not entry.backlog:
            entry.fin_pending = False
            conn.shutdown()

    def _accept(self, entry: TcpEntry, data: bytes) -> tuple[int, int]:
        start = entry.written
        entry.written += len(data)
        entry.backlog.append(data)
        return start, entry.written

    def _abort_calls(self, entry: TcpEntry, status: Status) -> None:
        """Complete every outstanding call with ``status`` (reset, abort, upload; spec 3.5, 4.3)."""
        acked = min(entry.acked, entry.written)
        while entry.sends:
            send = entry.sends.popleft()
            self._send_done(send, status, max(0, min(acked, send.end) - send.start))
        if entry.disconnect is not None:
            disc, entry.disconnect = entry.disconnect, None
            done = max(0, min(acked, disc.end) - disc.start)
            self.complete(DisconnectCompletion(disc.request_id, status, done))
        while entry.posted:
            buf = entry.posted.popleft()
            self._receive_done(buf, status)
        entry.push_deadline = None

    # ---------------------------------------------------------------- receive side (spec 4.1)

    def _deliver(self, entry: TcpEntry, now: float) -> None:
        """The delivery algorithm: posted buffers first, then one indication at a time; the FIN only after
        every byte before it was delivered; the TIME-WAIT upload request after that."""
        if entry.reset or entry.indication is not None:
            return
        conn = entry.conn
        self._fill_posted(entry, now)
        if not entry.posted and conn.readable and entry.indications_enabled:
            self._indicate(entry)
            return
        if entry.peer_fin and not entry.peer_fin_indicated and not conn.readable:
            self._complete_partial(entry, force=True)
            entry.peer_fin_indicated = True
            self.counters.lifecycle["peer_disconnects"] += 1
            self.indicate(PeerDisconnect(entry.host_handle, entry.delivered))  # every byte delivered: the FIN
            while entry.posted:  # they can never fill: spec 4.3, posts after the FIN are INVALID_STATE
                self._receive_done(entry.posted.popleft(), Status.INVALID_STATE)
        if entry.time_wait_pending and entry.peer_fin_indicated:
            entry.time_wait_pending = False
            self._ask_upload(entry, Reason.TIME_WAIT)

    def _fill_posted(self, entry: TcpEntry, now: float) -> None:
        conn = entry.conn
        while entry.posted and conn.readable:
            buf = entry.posted[0]
            got = conn.receive(buf.room - len(buf.data))
            entry.delivered = entry.delivered + len(got)
            buf.data += got
            if len(buf.data) >= buf.room:
                entry.posted.popleft()
                entry.push_deadline = None
                self._receive_done(buf, Status.SUCCESS)
            elif buf.push:
                entry.push_deadline = now + PUSH_TIMEOUT  # restarted whenever data arrives (spec 3.6)
        if entry.psh_seen:
            self._complete_partial(entry)
        if not conn.readable:
            entry.psh_seen = False

    def _complete_partial(self, entry: TcpEntry, force: bool = False) -> None:
        """PSH, the push timer or the FIN completes a partly filled push-mode buffer (the FIN any buffer)."""
        if entry.posted and entry.posted[0].data and (force or entry.posted[0].push):
            entry.push_deadline = None
            self._receive_done(entry.posted.popleft(), Status.SUCCESS)

    def _receive_done(self, buf: PostedBuffer, status: Status) -> None:
        self.counters.lifecycle["receive_completions"] += 1
        self.complete(ReceiveCompletion(buf.request_id, status, bytes(buf.data)))

    def _indicate(self, entry: TcpEntry) -> None:
        data = entry.conn.rcvbuf.tobytes()  # a peek: the bytes stay until the host says it took them
        size = entry.cached.rcv_indication_size
        if size and len(data) > size:
            data = data[:size]
        self._indication_ids += 1
        entry.indication = (self._indication_ids, len(data))
        self.counters.lifecycle["receive_indications"] += 1
        self.indicate(ReceiveIndication(entry.host_handle, self._indication_ids, data, entry.delivered))

    # ---------------------------------------------------------------- stopping a connection

    def _ask_upload(self, entry: TcpEntry, reason: Reason) -> None:
        if reason in entry.requested:
            return  # one request per cause is enough; the host decides
        entry.requested.add(reason)
        self.counters.upload_requested(reason)
        self.indicate(UploadRequest(entry.host_handle, reason))

    def _freeze(self, entry: TcpEntry, reason: Reason) -> None:
        """Stop the connection where it stands (no output, no timers; its frames are held for the host) and
        ask for its upload. The state returned on terminate is exactly the state it stopped in."""
        if entry.frozen is None:
            entry.frozen = reason
        self._ask_upload(entry, reason)

    def _peer_reset(self, entry: TcpEntry) -> None:
        if entry.reset:
            return
        entry.reset = True
        self.counters.lifecycle["peer_resets"] += 1
        self.indicate(PeerReset(entry.host_handle))
        self._abort_calls(entry, Status.REQUEST_ABORTED)

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
        conn.set_path_mss(path_mtu - _IPV4_TCP_HEADERS)

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

    # ================================================================== contract: data calls

    def _entry_for(self, request: Request) -> TcpEntry | None:
        """The connection a data call names, or None after completing the call with the right failure."""
        entry = self.table.conns.get(request.ctx)  # type: ignore[union-attr]
        if entry is None:
            self.complete(completion_for(request, Status.INVALID_STATE))
            return None
        if entry.reset:
            self.complete(completion_for(request, Status.REQUEST_ABORTED))
            return None
        if entry.frozen is not None or self._failed:
            self.complete(completion_for(request, Status.UPLOAD_IN_PROGRESS))  # spec 3.5 step 4
            return None
        return entry

    def send(self, request: Send, now: float) -> None:
        self._now = now
        entry = self._entry_for(request)
        if entry is None:
            return
        conn = entry.conn
        if conn.state not in _OPEN_FOR_SEND or conn.fin_queued or entry.fin_pending:
            self.complete(SendCompletion(request.request_id, Status.REQUEST_ABORTED, 0))
            return
        start, end = self._accept(entry, request.data)
        entry.sends.append(PendingSend(request.request_id, start, end))
        self._after_engine(entry, now)

    def post_receive(self, request: PostReceive, now: float) -> None:
        self._now = now
        entry = self._entry_for(request)
        if entry is None:
            return
        if entry.peer_fin_indicated:
            self._receive_done(PostedBuffer(request.request_id, 0, request.push), Status.INVALID_STATE)
            return
        entry.indications_enabled = True  # any post re-enables indications (spec 4.1)
        room = request.size - request.filled
        if room == 0:
            self._receive_done(PostedBuffer(request.request_id, 0, request.push), Status.SUCCESS)
        else:
            entry.posted.append(PostedBuffer(request.request_id, room, request.push))
            if request.push and request.filled:
                entry.push_deadline = now + PUSH_TIMEOUT  # the host already placed data (spec 3.6)
        self._after_engine(entry, now)

    def return_receive(self, request: ReturnReceive, now: float) -> None:
        self._now = now
        entry = self.table.conns.get(request.ctx)
        if entry is None or entry.indication is None or entry.indication[0] != request.indication_id:
            self.complete(Completion(request.request_id, Status.INVALID_STATE))
            return
        _, offered = entry.indication
        consumed = min(request.consumed, offered)
        entry.indication = None
        if consumed:
            entry.conn.receive(consumed)  # only now: the window reopens as the application takes data
            entry.delivered = entry.delivered + consumed
        if consumed < offered:
            entry.indications_enabled = False  # the rest waits for a posted buffer (spec 4.1)
        self.complete(Completion(request.request_id, Status.SUCCESS))
        if not entry.stopped:
            self._after_engine(entry, now)

    def disconnect(self, request: Disconnect, now: float) -> None:
        self._now = now
        entry = self._entry_for(request)
        if entry is None:
            return
        if request.abortive:
            self._abort(entry, request, now)
            return
        if entry.disconnect is not None:
            self.complete(DisconnectCompletion(request.request_id, Status.REQUEST_ABORTED))
            return
        start, end = self._accept(entry, request.data) if request.data else (entry.written, entry.written)
        entry.disconnect = PendingDisconnect(request.request_id, start, end)
        entry.fin_pending = True  # the FIN follows the data (spec 3.6)
        self._after_engine(entry, now)

    def _abort(self, entry: TcpEntry, request: Disconnect, now: float) -> None:
        """Spec 3.6 abortive close: outstanding calls fail, the RST leaves (the only one a target sends)."""
        self._abort_calls(entry, Status.REQUEST_ABORTED)
        entry.backlog.clear()
        entry.conn.abort()
        if not self._stalled:
            self._output(entry, now, self._tx)
        while entry.conn.next_event() is not None:
            pass  # Closed: the host learns it from this completion
        entry.reset = True
        self.complete(DisconnectCompletion(request.request_id, Status.SUCCESS))

    def forward(self, request: Forward, now: float) -> None:
        self._now = now
        entry = self._entry_for(request)
        if entry is None:
            return
        for raw in request.segments:
            try:
                seg = tcp_wire.parse_tcp(raw)  # the host checked the checksum when it received it
            except Exception:
                self.counters.engine_drop("forward_malformed")
                continue
            self.counters.lifecycle["forwarded_segments"] += 1
            if seg.flags & URG:
                self._freeze(entry, Reason.URGENT_DATA)
                break
            self._segment_in(entry, seg, now)
        self.complete(Completion(request.request_id, Status.SUCCESS))

    def reachability_reply(self, request: ReachabilityReply, now: float) -> None:
        neighbor = self.table.neighbors.get(request.ctx)
        if neighbor is None:
            self.complete(Completion(request.request_id, Status.INVALID_STATE))
            return
        hrd = request.host_reachability_delta
        neighbor.cached = NeighborCached(neighbor.cached.dest_mac, hrd)
        neighbor.host_confirmed = now - hrd  # spec 4.6: HRT = NCT - HRD (0, "stale": HRT = now)
        if neighbor.query == request.indication_id:
            neighbor.query = None
            neighbor.quiet_until = now + self.nce_stale
        self.complete(Completion(request.request_id, Status.SUCCESS))

    # ================================================================== fault knobs and introspection

    def refuse_next_offload(self, reason: Reason = Reason.TARGET_REFUSED) -> None:
        """The next TCP block of an initiate fails with the status that ``reason`` (a refusal) maps to."""
        if reason.group is not ReasonGroup.REFUSAL:
            raise ValueError(f"{reason} is not a refusal reason")
        self._refuse_next = reason

    def request_upload(self, host_handle: int, reason: Reason = Reason.RESOURCE_PRESSURE) -> None:
        """Ask the host to upload the connection it calls ``host_handle`` (the target keeps working)."""
        if reason.group is not ReasonGroup.TARGET_UPLOAD:
            raise ValueError(f"{reason} is not a target upload reason")
        for entry in self.table.conns.values():
            if entry.host_handle == host_handle:
                entry.requested.discard(reason)
                self._ask_upload(entry, reason)
                return
        raise KeyError(f"no offloaded connection with host handle {host_handle}")

    def pause(self, upload_all: bool = False) -> None:
        """Stop taking offloads (spec 4.5 NDIS_STATUS_OFFLOAD_PAUSE), e.g. before a teaming failover;
        ``upload_all``: and ask the host to empty the target (NDIS_STATUS_UPLOAD_ALL)."""
        self.indicate(TargetPaused())
        if upload_all:
            self.indicate(UploadAllRequested())

    def resume(self, capabilities: TargetCapabilities | None = None) -> None:
        """Take offloads again (NDIS_STATUS_OFFLOAD_RESUME), with new ``capabilities`` if given: a target
        announces a change only this way (spec 2.5). The new capacity bounds the table from now on and a
        connection using an option the target lost (SACK) is refused."""
        if capabilities is not None:
            if capabilities.ipv6 and not self._capabilities.ipv6:
                raise ValueError("this target has no IPv6 data path")
            self._capabilities = capabilities
            self.table.capacity = capabilities.capacity
        self.indicate(TargetResumed(self._capabilities))

    def stall(self, on: bool = True) -> None:
        """A stalled target sends no frame and releases no completion or indication (they queue)."""
        self._stalled = on

    def poll(self) -> Output | None:
        return None if self._stalled else super().poll()

    def fail_hardware(self, lost: Collection[int] = ()) -> None:
        """Corrupt hardware (spec 3.2): every connection stops and asks for its upload (TcpIndicateRetrieve,
        HardwareFailure); later state calls fail. Terminate returns the state of each connection, except
        those whose host handle is in ``lost``: their state is gone, so the target also aborts them
        (TcpIndicateAbort), completes their calls with REQUEST_ABORTED and their terminate with FAILURE."""
        self._failed = True
        for entry in list(self.table.conns.values()):
            self._freeze(entry, Reason.TARGET_HARDWARE_FAILURE)
            if entry.host_handle in lost:
                entry.state_lost = entry.reset = True  # later calls: REQUEST_ABORTED
                self.indicate(PeerReset(entry.host_handle))  # TcpIndicateAbort (spec 3.2 step 3)

    def dump_state(self) -> dict[str, Any]:
        """A plain-data picture of the table for tests and diagnostics."""
        t = self.table
        return {
            "capacity": t.capacity,
            "stalled": self._stalled,
            "failed": self._failed,
            "mac": self.mac.hex(":") if self.mac else None,
            "neighbors": {
                n.handle: {
                    "host_handle": n.host_handle,
                    "dest_mac": n.cached.dest_mac.hex(":"),
                    "paths": sorted(n.paths),
                    "invalid": n.invalid,
                }
                for n in t.neighbors.values()
            },
            "paths": {
                p.handle: {
                    "host_handle": p.host_handle,
                    "neighbor": p.neighbor.handle,
                    "path_mtu": p.cached.path_mtu,
                    "conns": sorted(p.conns),
                    "invalid": p.invalid,
                }
                for p in t.paths.values()
            },
            "connections": {e.handle: _dump_conn(e) for e in t.conns.values()},
            "counters": self.counters.snapshot(),
        }

    def close(self) -> None:
        """Tear down; warns loudly when objects were never uploaded (their state is lost)."""
        if len(self.table):
            message = (
                f"SoftwareTarget closed with {len(self.table.conns)} connection(s), {len(self.table.paths)} "
                f"path(s) and {len(self.table.neighbors)} neighbor(s) still offloaded: their state is lost"
            )
            log.error(message)
            warnings.warn(message, ResourceWarning, stacklevel=2)


def send_backlog(conn: TcpConnection) -> int:
    """The bytes the host should keep outstanding at the target (spec 2.4 SendBacklogSize, 4.3
    TcpIndicateSendBacklogChange). The spec suggests min(bandwidth-delay product, advertised window); the
    congestion window is the sender's measure of the bandwidth-delay product and the largest window the peer
    offered bounds it, so one send window is min(cwnd, MaxSndWnd). The backlog is two of them: one window in
    flight while the next is already posted, so the target never waits for the host between round trips
    (the host's Send completes only once the peer ACKed it, a round trip later). It does not vary with what is
    posted now, as the spec requires."""
    return min(2 * min(conn.cwnd, conn.max_snd_wnd), 0xFFFF_FFFF)


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


def _dump_conn(e: TcpEntry) -> dict[str, Any]:
    c = e.conn
    return {
        "host_handle": e.host_handle,
        "local": f"{'.'.join(map(str, e.key[0]))}:{e.key[2]}",
        "remote": f"{'.'.join(map(str, e.key[1]))}:{e.key[3]}",
        "path": e.path.handle,
        "state": c.state.value,
        "snd_una": int(c.snd_una),
        "snd_nxt": int(c.snd_nxt),
        "snd_max": int(c.snd_max),
        "rcv_nxt": int(c.rcv_nxt),
        "readable": c.readable,
        "unacked_send_bytes": e.written - min(e.acked, e.written),
        "pending_sends": [s.request_id for s in e.sends],
        "posted": [b.request_id for b in e.posted],
        "indication": e.indication,
        "peer_fin_indicated": e.peer_fin_indicated,
        "reset": e.reset,
        "frozen": e.frozen.value if e.frozen else None,
        "upload_requested": sorted(r.value for r in e.requested),
        "held_frames": len(e.held),
    }
