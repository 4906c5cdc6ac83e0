"""The asyncio face of one stack connection: ``TcpTransport``, and the standard streams built on it.

``TcpTransport`` is an ``asyncio.Transport`` over a ``host.sockets.TcpSocket``, so any asyncio protocol runs
on the stack unchanged: ``asyncio.StreamReaderProtocol`` gives the ordinary ``asyncio.StreamReader`` /
``StreamWriter`` (``StreamReader`` and ``StreamWriter`` here are those classes), and aiohttp's server protocol
runs as it does on a kernel socket.

Flow control is end to end. The engine's send buffer takes what fits; the rest waits in the transport and goes
in as ``SendSpace`` events arrive, and past the high-water mark the protocol is paused (``drain`` waits). On
receive, a paused transport leaves data in the engine, whose window then closes on the peer.

Errors follow the kernel's: a reset is ``ConnectionResetError`` (``ConnectionRefusedError`` in SYN-SENT), a
give-up after retransmissions is ``TimeoutError`` (errno ETIMEDOUT); both reach the protocol through
``connection_lost(exc)``, which is how the asyncio streams raise them from ``read`` and ``drain``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tcpchimney.api.options import SocketOptions
from tcpchimney.host.interface import ip_str
from tcpchimney.tcp.config import TcpConfig
from tcpchimney.tcp.errors import TcpError
from tcpchimney.tcp.events import (
    Closed,
    ConnectionReset,
    ConnectionTimedOut,
    DataReceived,
    PeerClosed,
    SendSpace,
    TcpEvent,
)
from tcpchimney.tcp.state import TcpState

if TYPE_CHECKING:
    from tcpchimney.api.runtime import Runtime, Server
    from tcpchimney.host.sockets import TcpSocket

StreamReader = asyncio.StreamReader
StreamWriter = asyncio.StreamWriter
IncompleteReadError = asyncio.IncompleteReadError

DEFAULT_HIGH_WATER = 64 * 1024  # asyncio's defaults for a socket transport
# States in which the peer's FIN has already arrived: a connection accepted in one of them reads EOF at once.
_PEER_FIN_SEEN = frozenset({TcpState.CLOSE_WAIT, TcpState.LAST_ACK, TcpState.CLOSING, TcpState.TIME_WAIT})


def reset_error(refused: bool) -> ConnectionError:
    if refused:
        return ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    return ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")


def timed_out_error() -> TimeoutError:
    return TimeoutError(errno.ETIMEDOUT, "Connection timed out")


def unreachable_error() -> OSError:
    """What CPython raises for a connect the kernel fails with EHOSTUNREACH (no ARP answer)."""
    return OSError(errno.EHOSTUNREACH, "No route to host")


class SocketInfo:
    """What ``get_extra_info('socket')`` and ``Server.sockets`` hold: addresses and options of a stack socket.

    It stands where asyncio puts its ``TransportSocket``, so code that tunes a socket runs (aiohttp sets
    TCP_NODELAY). ``setsockopt`` takes and reports values as Linux does (``api.options``) and applies them: to
    the live connection at once, and for a server's socket to every connection it accepts from then on.
    """

    family = socket.AF_INET
    type = socket.SOCK_STREAM
    proto = socket.IPPROTO_TCP

    def __init__(
        self,
        sockname: tuple[str, int],
        peername: tuple[str, int] | None,
        options: SocketOptions | None = None,
        apply: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self._sockname = sockname
        self._peername = peername
        self.options = options or SocketOptions(TcpConfig())
        self._apply = apply

    def __repr__(self) -> str:
        return f"<SocketInfo laddr={self._sockname} raddr={self._peername}>"

    def getsockname(self) -> tuple[str, int]:
        return self._sockname

    def getpeername(self) -> tuple[str, int]:
        if self._peername is None:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
        return self._peername

    def fileno(self) -> int:
        return -1  # no kernel descriptor: the connection lives in the user-space stack

    def setsockopt(self, level: int, name: int, value: int | bytes) -> None:
        changes = self.options.set(level, name, value)
        if changes and self._apply is not None:
            self._apply(changes)

    def getsockopt(self, level: int, name: int, buflen: int | None = None) -> int | bytes:
        return self.options.get(level, name, buflen)


class TcpTransport(asyncio.Transport):
    """One connection of the stack as an asyncio transport (created by the runtime, not by applications)."""

    def __init__(
        self,
        runtime: Runtime,
        sock: TcpSocket,
        protocol: asyncio.BaseProtocol,
        server: Server | None = None,
        options: SocketOptions | None = None,
    ) -> None:
        options = options or SocketOptions(runtime.stack.tcp_config)
        sockname = (ip_str(sock.local_ip), sock.local_port)
        peername = (ip_str(sock.remote_ip), sock.remote_port)
        super().__init__(
            {
                "sockname": sockname,
                "peername": peername,
                "socket": SocketInfo(sockname, peername, options, self._configure),
                "tcp_socket": sock,
                "runtime": runtime,
            }
        )
        self._runtime = runtime
        self._loop = runtime.loop
        self._sock = sock
        self._protocol = protocol
        self._server = server
        self._buffer = bytearray()  # bytes the engine's send buffer had no room for yet
        self._high = DEFAULT_HIGH_WATER
        self._low = DEFAULT_HIGH_WATER // 4
        self._writing_paused = False
        self._reading_paused = False
        self._eof = False  # write_eof() was called
        self._fin_pending = False  # the FIN waits for the buffer to drain
        self._closing = False  # close() or abort() was called, or the connection failed
        self._sock_closed = False  # close()/abort() reached the engine
        self._dead = False  # the engine is gone (reset, timed out, closed): no more calls into it
        self._peer_eof = False  # the peer's FIN arrived
        self._eof_delivered = False
        self._lost = False  # connection_lost() was delivered
        self._options = options
        self._event_waiters: list[asyncio.Future[None]] = []  # wait_event() callers
        if engine := options.engine_options():
            self._configure(engine)  # options the listener had when this connection arrived

    def __repr__(self) -> str:
        return f"<TcpTransport {self._sock!r} buffered={len(self._buffer)}>"

    # ------------------------------------------------------------------ life cycle (called by the runtime)

    def _start(self) -> None:
        if self._sock.state in _PEER_FIN_SEEN:
            self._peer_eof = True  # the FIN came while the connection waited to be accepted
        self._protocol.connection_made(self)
        if self._server is not None:
            self._server._attach(self)
        if self._sock.readable or self._peer_eof:
            self._loop.call_soon(self._deliver)

    def _on_event(self, ev: TcpEvent) -> None:
        if isinstance(ev, DataReceived):
            if not self._closing:
                self._deliver()
        elif isinstance(ev, SendSpace):
            self._push()
        elif isinstance(ev, PeerClosed):
            self._peer_eof = True
            if not self._closing:
                self._deliver()
        elif isinstance(ev, ConnectionReset):
            self._fail(reset_error(ev.refused))
        elif isinstance(ev, ConnectionTimedOut):
            self._fail(timed_out_error())
        elif isinstance(ev, Closed):
            self._on_closed()
        self._wake()

    # ------------------------------------------------------------------ for the blocking socket API

    @property
    def tcp_socket(self) -> TcpSocket:
        return self._sock

    @property
    def engine_gone(self) -> bool:
        """The engine reached CLOSED (reset, timed out or closed): it takes no more calls."""
        return self._dead

    @property
    def peer_eof(self) -> bool:
        return self._peer_eof

    @property
    def lost(self) -> bool:
        """connection_lost was delivered to the protocol."""
        return self._lost

    async def wait_event(self) -> None:
        """Until the connection's next event (data, send space, FIN, reset, close) or its loss."""
        if self._lost and self._dead:
            return
        waiter = self._loop.create_future()
        self._event_waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._event_waiters:
                self._event_waiters.remove(waiter)

    def _wake(self) -> None:
        waiters, self._event_waiters = self._event_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _configure(self, changes: dict[str, Any]) -> None:
        """Socket options reach the engine of a live connection (later ones are kept by the options)."""
        if not self._dead:
            self._sock.configure(**changes)
            self._runtime.flush_soon()

    def _on_closed(self) -> None:
        """The engine reached CLOSED: hand over what is still readable, then end the protocol's connection."""
        if not self._closing and not self._lost:
            self._reading_paused = False
            self._deliver()
        self._dead = True
        self._closing = True
        self._drop_buffer()
        self._call_connection_lost(None)

    def _fail(self, exc: Exception) -> None:
        self._dead = True
        self._closing = True
        self._drop_buffer()
        self._call_connection_lost(exc)

    def _drop_buffer(self) -> None:
        # A new buffer rather than clear(): a reset found by _push's send happens while _push holds a view
        # of the old one, and an exported bytearray cannot be resized.
        self._buffer = bytearray()

    def _call_connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        try:
            self._protocol.connection_lost(exc)
        finally:
            self._wake()
            if self._server is not None:
                self._server._detach(self)
            self._runtime._transport_lost(self)

    # ------------------------------------------------------------------ receive

    def _deliver(self) -> None:
        """Move readable data (then EOF) from the engine to the protocol, unless reading is paused."""
        if self._lost or self._reading_paused:
            return
        sock = self._sock
        got = False
        while sock.readable > 0 and not self._dead:
            try:
                data = sock.receive(sock.readable)
            except TcpError:
                break
            if not data:
                break
            got = True
            self._feed(data)
            if self._reading_paused or self._lost or self._closing:
                break
        if got:
            self._runtime.flush_soon()  # reading reopened the window: a window update may be due
        if self._peer_eof and not self._eof_delivered and not self._reading_paused and not self._lost:
            if sock.readable > 0 and not self._dead:
                return  # more data first (paused or closing midway)
            self._eof_delivered = True
            keep_open = self._protocol.eof_received()  # type: ignore[attr-defined]
            if not keep_open:
                self.close()

    def _feed(self, data: bytes) -> None:
        protocol = self._protocol
        if isinstance(protocol, asyncio.BufferedProtocol):
            view = memoryview(data)
            while view:
                buf = memoryview(protocol.get_buffer(len(view)))
                n = min(len(buf), len(view))
                buf[:n] = view[:n]
                protocol.buffer_updated(n)
                view = view[n:]
        else:
            protocol.data_received(data)  # type: ignore[attr-defined]

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            self._loop.call_soon(self._deliver)

    def is_reading(self) -> bool:
        return not self._reading_paused and not self._closing

    # ------------------------------------------------------------------ send

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
        if self._eof:
            raise RuntimeError("Cannot call write() after write_eof()")
        if not data or self._closing:
            return  # as asyncio: writes after close() or a lost connection are dropped
        if not self._buffer:
            n = self._send(data)
            if n == len(data):
                return
            data = memoryview(data)[n:]
        self._buffer += data
        self._maybe_pause_writing()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def _send(self, data: bytes | bytearray | memoryview) -> int:
        if self._dead:
            return len(data)
        try:
            n = self._sock.send(data)
        except TcpError as exc:
            self._fail(_as_os_error(exc))
            return len(data)
        if n:
            self._runtime.flush_soon()
        return n

    def _push(self) -> None:
        """Feed the engine from the buffer (after SendSpace); then a pending FIN or close."""
        if self._buffer and not self._dead:
            with memoryview(self._buffer) as view:
                n = self._send(view)
            del self._buffer[:n]
        self._maybe_resume_writing()
        if self._buffer or self._dead:
            return
        if self._fin_pending:
            self._fin_pending = False
            self._shutdown()
        if self._closing and not self._sock_closed:
            self._close_now()

    def write_eof(self) -> None:
        if self._eof or self._closing:
            return
        self._eof = True
        if self._buffer:
            self._fin_pending = True
        else:
            self._shutdown()

    def _shutdown(self) -> None:
        if self._dead:
            return
        try:
            self._sock.shutdown()
        except TcpError:
            return  # already closed by the peer's reset: the event reports it
        self._runtime.flush_soon()

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return len(self._buffer)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = DEFAULT_HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._maybe_pause_writing()

    def _maybe_pause_writing(self) -> None:
        if not self._writing_paused and len(self._buffer) > self._high:
            self._writing_paused = True
            self._protocol_call("pause_writing")

    def _maybe_resume_writing(self) -> None:
        if self._writing_paused and len(self._buffer) <= self._low:
            self._writing_paused = False
            self._protocol_call("resume_writing")

    def _protocol_call(self, name: str) -> None:
        try:
            getattr(self._protocol, name)()
        except Exception as exc:
            self._loop.call_exception_handler(
                {"message": f"protocol.{name}() failed.", "exception": exc, "transport": self}
            )

    # ------------------------------------------------------------------ close

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Graceful close: buffered bytes, then FIN (the engine's close: later data from the peer -> RST)."""
        if self._closing:
            return
        self._closing = True
        if not self._buffer:
            self._close_now()

    @property
    def closing_gracefully(self) -> bool:
        """``close()`` was called and bytes it must still hand to the engine wait in the buffer."""
        return self._closing and not self._sock_closed and not self._dead

    def _close_now(self) -> None:
        self._sock_closed = True
        if not self._dead:
            with contextlib.suppress(TcpError):
                self._sock.close()
            self._runtime.flush_soon()
        self._loop.call_soon(self._call_connection_lost, None)

    def abort(self) -> None:
        """RST now; buffered bytes are dropped."""
        self._drop_buffer()
        self._closing = True
        if not self._sock_closed:
            self._sock_closed = True
            if not self._dead:
                self._sock.abort()
                self._runtime.flush_soon()
            self._loop.call_soon(self._call_connection_lost, None)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol


def _as_os_error(exc: TcpError) -> OSError:
    from tcpchimney.tcp.errors import ConnectionResetByPeerError, ConnectionTimedOutError

    if isinstance(exc, ConnectionResetByPeerError):
        return reset_error(False)
    if isinstance(exc, ConnectionTimedOutError):
        return timed_out_error()
    return BrokenPipeError(errno.EPIPE, str(exc))
