"""The offloaded data path of ``SoftwareTarget`` (``nic.target``): the data calls (Send, PostReceive,
ReturnReceive, Disconnect, Forward, the reachability reply) and what the engine's progress completes or
indicates.

Send completions only once the peer ACKed every byte; posted buffers fill before any indication; one
indication at a time; the peer's FIN indicated only after every byte before it was delivered; a connection
that must stop is frozen and its upload asked for.
"""

from __future__ import annotations

from tcpchimney.chimney.completions import (
    Completion,
    DisconnectCompletion,
    ReceiveCompletion,
    SendCompletion,
    completion_for,
)
from tcpchimney.chimney.indications import (
    NeighborReachabilityQuery,
    PeerDisconnect,
    PeerReset,
    ReceiveIndication,
    SendBacklogChanged,
    UploadRequest,
)
from tcpchimney.chimney.neighbor import NeighborCached
from tcpchimney.chimney.reason import Reason
from tcpchimney.chimney.requests import (
    Disconnect,
    Forward,
    PostReceive,
    ReachabilityReply,
    Request,
    ReturnReceive,
    Send,
)
from tcpchimney.chimney.status import Status
from tcpchimney.nic.table import NeighborEntry, PendingDisconnect, PendingSend, PostedBuffer, TcpEntry
from tcpchimney.nic.target_wire import WireSide
from tcpchimney.tcp.connection import TcpConnection
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire import tcp as tcp_wire
from tcpchimney.wire.tcp import URG

PUSH_TIMEOUT = 0.5  # Windows' push timer (spec 3.6): a partly filled push-mode buffer completes after it
# SendBacklogChanged throttle (spec 4.3: "do not indicate small or frequent changes"): a new estimate is
# indicated only when it differs from the last one by more than a quarter, and at most once per smoothed RTT
# (at least this many seconds apart).
BACKLOG_CHANGE_FRACTION = 4
MIN_BACKLOG_INTERVAL = 0.01
_OPEN_FOR_SEND = frozenset({TcpState.ESTABLISHED, TcpState.CLOSE_WAIT})


class DataPath(WireSide):
    """Send side, receive side (spec 4.1), stopping a connection, and the data calls."""

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
        hook = self.receive_hook
        if hook is not None:
            hook(entry)  # first: what arrived is copied out before any of it leaves the engine
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


def send_backlog(conn: TcpConnection) -> int:
    """The bytes the host should keep outstanding at the target (spec 2.4 SendBacklogSize, 4.3
    TcpIndicateSendBacklogChange). The spec suggests min(bandwidth-delay product, advertised window); the
    congestion window is the sender's measure of the bandwidth-delay product and the largest window the peer
    offered bounds it, so one send window is min(cwnd, MaxSndWnd). The backlog is two of them: one window in
    flight while the next is already posted, so the target never waits for the host between round trips
    (the host's Send completes only once the peer ACKed it, a round trip later). It does not vary with what is
    posted now, as the spec requires."""
    return min(2 * min(conn.cwnd, conn.max_snd_wnd), 0xFFFF_FFFF)
