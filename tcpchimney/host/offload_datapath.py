"""The offloaded data path: socket calls while not on the engine, sends, receives, disconnects."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tcpchimney.chimney.completions import DisconnectCompletion, ReceiveCompletion, SendCompletion
from tcpchimney.chimney.errors import ProtocolViolationError
from tcpchimney.chimney.indications import PeerDisconnect, ReceiveIndication
from tcpchimney.chimney.reason import Reason
from tcpchimney.chimney.requests import Disconnect, PostReceive, ReturnReceive, Send
from tcpchimney.chimney.status import Status
from tcpchimney.chimney.tcp_state import AFTER_OUR_FIN_ACKED, AFTER_PEER_FIN, AFTER_SHUTDOWN
from tcpchimney.host.offload_base import OffloadBase
from tcpchimney.host.offload_faults import check_indication, check_peer_disconnect
from tcpchimney.host.offload_state import (
    MAX_SEND_BACKLOG,
    MAX_SEND_CHUNK,
    OPEN_FOR_SEND,
    OffloadState,
    Pending,
)
from tcpchimney.host.piece_queue import PieceQueue
from tcpchimney.tcp.errors import ConnectionClosedError
from tcpchimney.tcp.events import Closed, ConnectionReset, DataReceived, PeerClosed, SendSpace
from tcpchimney.tcp.state import TcpState

if TYPE_CHECKING:
    from tcpchimney.host.sockets import TcpSocket


class OffloadDataPath(OffloadBase):
    """The offloaded data path: the socket's calls, Sends, receive indications, disconnects."""

    # ================================================================== socket calls while not on the engine

    def send(self, sock: TcpSocket, data: bytes | bytearray | memoryview) -> int:
        off = self._record(sock)
        if off.aborted or off.tcp_state is TcpState.CLOSED:
            raise self._closed_error(off, "send")
        if off.fin_pending or off.tcp_state not in OPEN_FOR_SEND:
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
            self._submit(PostReceive(self._rid(), off.ctx, 0), Pending("data", sock))
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
        if off.fin_pending or off.tcp_state not in AFTER_SHUTDOWN:
            return  # already closing: idempotent, as the engine's shutdown
        off.fin_pending = True
        self._set_state(sock, AFTER_SHUTDOWN[off.tcp_state])
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
        off.rst_sent = self._submit(Disconnect(self._rid(), off.ctx, abortive=True), Pending("data", sock))

    def configure(self, sock: TcpSocket) -> None:
        off = self._record(sock)
        off.update_pending = True
        if off.state is OffloadState.OFFLOADED:
            self._update_tcp(sock)

    # ================================================================== data while offloaded

    def _flush_sends(self, sock: TcpSocket) -> None:
        off = sock.offload
        assert off is not None and off.ctx is not None
        while off.queued:
            chunk = off.queued.take_chunk(MAX_SEND_CHUNK)
            rid = self._rid()
            if not self._submit(Send(rid, off.ctx, chunk), Pending("send", sock)):
                off.queued.push_front(chunk)
                return
            off.inflight.append((rid, chunk))
            off.outstanding += len(chunk)
            off.submitted += len(chunk)
        if off.fin_pending and not off.fin_sent and not off.aborted:
            off.fin_sent = True
            self._submit(Disconnect(self._rid(), off.ctx), Pending("data", sock))

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
        self._submit(ReturnReceive(rid, off.ctx, ind.indication_id, take), Pending("return", sock))
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
        if completion.status is Status.SUCCESS and not off.aborted and off.tcp_state in AFTER_OUR_FIN_ACKED:
            self._set_state(sock, AFTER_OUR_FIN_ACKED[off.tcp_state])
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
        if off.tcp_state in AFTER_PEER_FIN:
            self._set_state(sock, AFTER_PEER_FIN[off.tcp_state])
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
