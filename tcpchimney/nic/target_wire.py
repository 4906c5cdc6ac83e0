"""The wire side of ``SoftwareTarget`` (``nic.target``): the node attached to the device and the engine of
each offloaded connection.

``handle_frame`` takes the frames of the connections the target holds and passes every other frame up to
the host; ``frames_to_send`` is the host's frames, then the target's own, built from per-connection output
templates; ``handle_timer`` / ``next_deadline`` run a lazy heap of connection deadlines. Every change of an
engine ends in ``_after_engine``, which hands its effects to the data path (``nic.target_data``).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from tcpchimney.chimney.reason import Reason
from tcpchimney.chimney.target import TargetMethods
from tcpchimney.nic.counters import NicCounters
from tcpchimney.nic.frames import IpIds, TxTemplate, classify, parse_segment
from tcpchimney.nic.table import ConnectionTable, NeighborEntry, TcpEntry
from tcpchimney.tcp.config import TcpConfig
from tcpchimney.tcp.events import (
    ConnectionReset,
    ConnectionTimedOut,
    PeerClosed,
    SegmentDropped,
    StateChanged,
)
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire.frame import DeviceFeatures, Frame
from tcpchimney.wire.tcp import PSH, RST, URG, TcpSegment

MAX_HELD_FRAMES = 1024  # frames of a frozen connection kept for the host; later ones are discarded
IPV4_TCP_HEADERS = 40
_ESTABLISHED_LIKE = frozenset({TcpState.ESTABLISHED, TcpState.CLOSE_WAIT})


class UpperNode(Protocol):
    """The node above the target (the host stack)."""

    def handle_frame(self, frame: Frame, now: float) -> None: ...
    def handle_timer(self, now: float) -> None: ...
    def frames_to_send(self, now: float) -> list[Frame]: ...
    def next_deadline(self) -> float | None: ...


class WireSide(TargetMethods):
    """Frames in and out, timers, and the engine of one connection."""

    # The target's state (set by ``SoftwareTarget.__init__``), shared by every layer.
    features: DeviceFeatures
    config: TcpConfig
    table: ConnectionTable
    counters: NicCounters
    mac: bytes | None
    vlans: frozenset[int]
    max_rcv_window: int
    nce_stale: float
    host: UpperNode | None
    _ip_ids: IpIds
    _tx: list[Frame]
    _to_host: list[Frame]
    _dirty: dict[int, TcpEntry]
    _timers: list[tuple[float, int, TcpEntry]]
    _timer_seq: int
    _indication_ids: int
    _refuse_next: Reason | None
    _stalled: bool
    _failed: bool
    _now: float
    # Called with a connection's entry before any of its received bytes leave the engine (to a posted
    # buffer, an indication the host consumes) and after each change of the engine: a NIC in its own
    # process copies them to host memory there (nic/commit.py). None in the host's process.
    receive_hook: Callable[[TcpEntry], None] | None

    if TYPE_CHECKING:  # the offloaded data path (``nic.target_data.DataPath``) the engine drives

        def _progress(self, entry: TcpEntry, now: float) -> None: ...
        def _feed(self, entry: TcpEntry) -> None: ...
        def _deliver(self, entry: TcpEntry, now: float) -> None: ...
        def _complete_partial(self, entry: TcpEntry, force: bool = False) -> None: ...
        def _query_reachability(self, neighbor: NeighborEntry, now: float) -> None: ...
        def _ask_upload(self, entry: TcpEntry, reason: Reason) -> None: ...
        def _freeze(self, entry: TcpEntry, reason: Reason) -> None: ...
        def _peer_reset(self, entry: TcpEntry) -> None: ...

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
        own: list[Frame] = []
        dirty = self._dirty
        self._dirty = {}
        for entry in dirty.values():
            if self.table.conns.get(entry.handle) is entry:
                self._output(entry, now, own)
        return self.early_frames() + out + own

    @property
    def owes_frames(self) -> bool:
        """Frames built outside ``frames_to_send`` wait to leave (``early_frames``)."""
        return bool(self._tx)

    def early_frames(self) -> list[Frame]:
        """The frames built outside ``frames_to_send`` (a terminate's last ACK, spec 3.5 step 1; an abort's
        RST), taken now. They leave ahead of the host's frames: the host may have taken the connection back
        since, and its first frames of it must not overtake the target's last."""
        if self._stalled or not self._tx:
            return []
        early, self._tx = self._tx, []
        return early

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
        gso_mss = min(entry.const.remote_mss, path.cached.path_mtu - IPV4_TCP_HEADERS)
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
