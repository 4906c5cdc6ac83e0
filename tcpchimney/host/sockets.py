"""``TcpSocket``: the handle the API layer wraps; one engine plus its addresses and transmit template."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tcpchimney.tcp.state import TcpState

if TYPE_CHECKING:
    from tcpchimney.chimney.reason import Reason
    from tcpchimney.host.ipv4 import HeaderTemplate
    from tcpchimney.host.listener import Listener
    from tcpchimney.host.offload import ConnOffload, OffloadState
    from tcpchimney.host.stack import HostStack
    from tcpchimney.tcp.connection import TcpConnection


def conn_key(remote_ip: bytes, remote_port: int, local_port: int) -> int:
    """The demultiplexing key of a 4-tuple (our address is fixed: one interface per stack)."""
    return (int.from_bytes(remote_ip, "big") << 32) | (remote_port << 16) | local_port


class TcpSocket:
    """One TCP connection of the host stack. Data calls go to the engine and mark the socket for output.

    While the connection is offloaded (or moving), ``offload`` holds its record and every call goes to the
    stack's offload manager instead: the application sees the same calls, results and events either way.
    """

    __slots__ = (
        "_readable",
        "_stack",
        "bytes_received",
        "bytes_sent",
        "conn",
        "deadline",
        "gso_mss",
        "key",
        "listener",
        "local_ip",
        "local_port",
        "offload",
        "offload_allowed",
        "pseudo_base",
        "remote_ip",
        "remote_port",
        "template",
        "template_gen",
    )

    def __init__(
        self,
        stack: HostStack,
        conn: TcpConnection,
        local_ip: bytes,
        local_port: int,
        remote_ip: bytes,
        remote_port: int,
        listener: Listener | None = None,
    ) -> None:
        self._stack = stack
        self.conn = conn
        self.local_ip = local_ip
        self.local_port = local_port
        self.remote_ip = remote_ip
        self.remote_port = remote_port
        self.key = conn_key(remote_ip, remote_port, local_port)
        self.listener = listener  # set while the connection waits in a listener's SYN or accept queue
        self.deadline: float | None = None  # the engine deadline last pushed on the stack's timer heap
        self.template: HeaderTemplate | None = None  # Ethernet + IPv4 headers towards the current next hop
        self.template_gen = -1  # neighbor-table generation the template was built for
        self.pseudo_base = 0  # pseudo-header sum without the TCP length (wire.checksum.pseudo_base_sum)
        self.gso_mss = 0  # payload bytes per wire segment when the device cuts a super-segment
        self._readable = 0
        self.bytes_sent = 0  # bytes the application handed to send() and the stack took
        self.bytes_received = 0  # bytes receive() returned to the application
        self.offload: ConnOffload | None = None  # set once the offload manager looked at the connection
        self.offload_allowed = True  # False: the application opted this socket out (Reason.SOCKET_OPT_OUT)

    def __repr__(self) -> str:
        return (
            f"TcpSocket({self.local_port} -> {'.'.join(map(str, self.remote_ip))}:{self.remote_port}, "
            f"{self.conn.state.value})"
        )

    def _moved(self) -> ConnOffload | None:
        """The offload record when the connection is not (only) on the host engine, else None."""
        off = self.offload
        if off is None or (not off.away and not off.rcvq):
            return None
        return off

    @property
    def state(self) -> TcpState:
        off = self.offload
        if off is not None and (not off.in_host or off.finished):
            return off.tcp_state
        return self.conn.state

    @property
    def offload_state(self) -> OffloadState | None:
        """IN_HOST / OFFLOADING / OFFLOADED / UPLOADING; None on a stack without an offload target."""
        return None if self.offload is None else self.offload.state

    @property
    def offload_reason(self) -> Reason | None:
        """The reason of the last offload decision about this connection (refusal or upload), if any."""
        return None if self.offload is None else self.offload.reason

    @property
    def readable(self) -> int:
        """Bytes receive() would return now (the socket's own queue first, then the engine's)."""
        off = self._moved()
        if off is not None:
            return len(off.rcvq) + (0 if off.away else self._readable)
        return self._readable

    def _set_readable(self, n: int) -> None:
        self._readable = n

    def send(self, data: bytes | bytearray | memoryview) -> int:
        off = self.offload
        if off is not None and off.away:
            n = self._stack._offload_manager().send(self, data)
        else:
            n = self.conn.send(data)
            self._stack._mark(self)
        self.bytes_sent += n
        return n

    def receive(self, max_bytes: int) -> bytes:
        off = self._moved()
        if off is not None:
            data = self._stack._offload_manager().receive(self, max_bytes)
        else:
            data = self.conn.receive(max_bytes)
            self._readable = max(0, self._readable - len(data))
            if data:
                self._stack._mark(self)  # reading reopens the window: a window update may be due
        self.bytes_received += len(data)
        return data

    def shutdown(self) -> None:
        off = self.offload
        if off is not None and off.away:
            self._stack._offload_manager().shutdown(self)
            return
        self.conn.shutdown()
        self._stack._mark(self)

    def close(self) -> None:
        off = self.offload
        if off is not None and off.away:
            self._stack._offload_manager().close(self)
            return
        if off is not None and off.rcvq:
            off.rcvq.clear()  # unread data: close is a reset, as the engine's close with unread data
            self.conn.abort()
        else:
            self.conn.close()
        self._stack._mark(self)

    def abort(self) -> None:
        off = self.offload
        if off is not None and off.away:
            self._stack._offload_manager().abort(self)
            return
        self.conn.abort()
        self._stack._mark(self)

    def configure(self, **options: Any) -> None:
        """Socket options of the live connection (see ``TcpConnection.configure``); an offloaded connection
        gets them as an update of its cached state."""
        self.conn.configure(**options)
        off = self.offload
        if off is not None and off.away:
            self._stack._offload_manager().configure(self)
            return
        self._stack._mark(self)
