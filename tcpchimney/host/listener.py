"""A listening port: the SYN queue (connections in SYN-RECEIVED) and the accept queue (the backlog)."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from tcpchimney.host.errors import ListenerClosedError

if TYPE_CHECKING:
    from tcpchimney.host.sockets import TcpSocket
    from tcpchimney.host.stack import HostStack


class Listener:
    """Like Linux, two bounds: ``syn_backlog`` half-open connections (beyond it the stack answers with SYN
    cookies) and ``backlog`` established connections waiting for accept() (beyond it the final ACK of a
    handshake is dropped, so the peer retransmits it later)."""

    __slots__ = ("_stack", "accept_queue", "backlog", "closed", "port", "syn_backlog", "syn_queue")

    def __init__(self, stack: HostStack, port: int, backlog: int, syn_backlog: int) -> None:
        self._stack = stack
        self.port = port
        self.backlog = backlog
        self.syn_backlog = syn_backlog
        self.syn_queue: dict[int, TcpSocket] = {}  # conn key -> socket in SYN-RECEIVED
        self.accept_queue: deque[TcpSocket] = deque()
        self.closed = False

    def __repr__(self) -> str:
        return f"Listener(port={self.port}, syn={len(self.syn_queue)}, pending={len(self.accept_queue)})"

    @property
    def pending(self) -> int:
        """Connections accept() would return now."""
        return len(self.accept_queue)

    @property
    def syn_queue_full(self) -> bool:
        return len(self.syn_queue) >= self.syn_backlog

    @property
    def accept_queue_full(self) -> bool:
        return len(self.accept_queue) >= self.backlog

    def accept(self) -> TcpSocket | None:
        """The oldest established connection, or None when there is none yet."""
        if self.closed:
            raise ListenerClosedError(f"listener on port {self.port} is closed")
        if not self.accept_queue:
            return None
        sock = self.accept_queue.popleft()
        sock.listener = None
        return sock

    def close(self) -> None:
        """Stop listening; connections not yet accepted are reset (Linux inet_csk_listen_stop)."""
        if not self.closed:
            self._stack._close_listener(self)
