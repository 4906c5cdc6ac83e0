"""``TcpSocket``: the handle the API layer wraps; one engine plus its addresses and transmit template."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tcpchimney.tcp.state import TcpState

if TYPE_CHECKING:
    from tcpchimney.host.ipv4 import HeaderTemplate
    from tcpchimney.host.listener import Listener
    from tcpchimney.host.stack import HostStack
    from tcpchimney.tcp.connection import TcpConnection


def conn_key(remote_ip: bytes, remote_port: int, local_port: int) -> int:
    """The demultiplexing key of a 4-tuple (our address is fixed: one interface per stack)."""
    return (int.from_bytes(remote_ip, "big") << 32) | (remote_port << 16) | local_port


class TcpSocket:
    """One TCP connection of the host stack. Data calls go to the engine and mark the socket for output."""

    __slots__ = (
        "_readable",
        "_stack",
        "conn",
        "deadline",
        "gso_mss",
        "key",
        "listener",
        "local_ip",
        "local_port",
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

    def __repr__(self) -> str:
        return (
            f"TcpSocket({self.local_port} -> {'.'.join(map(str, self.remote_ip))}:{self.remote_port}, "
            f"{self.conn.state.value})"
        )

    @property
    def state(self) -> TcpState:
        return self.conn.state

    @property
    def readable(self) -> int:
        """Bytes receive() would return now."""
        return self._readable

    def _set_readable(self, n: int) -> None:
        self._readable = n

    def send(self, data: bytes | bytearray | memoryview) -> int:
        n = self.conn.send(data)
        self._stack._mark(self)
        return n

    def receive(self, max_bytes: int) -> bytes:
        data = self.conn.receive(max_bytes)
        self._readable = max(0, self._readable - len(data))
        if data:
            self._stack._mark(self)  # reading reopens the window: a window update may be due
        return data

    def shutdown(self) -> None:
        self.conn.shutdown()
        self._stack._mark(self)

    def close(self) -> None:
        self.conn.close()
        self._stack._mark(self)

    def abort(self) -> None:
        self.conn.abort()
        self._stack._mark(self)

    def configure(self, **options: Any) -> None:
        """Socket options of the live connection (see ``TcpConnection.configure``)."""
        self.conn.configure(**options)
        self._stack._mark(self)
