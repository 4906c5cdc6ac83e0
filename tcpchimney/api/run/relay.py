"""One program socket of ``chimney run`` on the stack side: its record, and the relay of its connection.

A ``Relay`` joins a stack connection (``TcpTransport``) and the chimney end of the program's AF_UNIX
socketpair (an asyncio socket transport) with two protocols, so asyncio's flow control carries backpressure
both ways: a program that stops reading fills the socketpair, the relay stops reading the stack connection and
its receive window closes on the peer; a slow peer fills the stack transport's buffer and the relay stops
reading the socketpair, so the program's ``send`` blocks. EOF passes as a half-close each way (the program's
``shutdown(SHUT_WR)`` or ``close`` is a FIN); a program that closed while the peer still sends makes the
socketpair refuse the bytes (EPIPE) and the stack connection is reset, as the kernel resets a closed socket.
A reset or time-out of the stack connection closes the socketpair and is kept as the socket's pending error,
which the program's shim asks for when it sees EOF or EPIPE.
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, Any

from tcpchimney.api.options import SocketOptions

if TYPE_CHECKING:
    from tcpchimney.api.runtime import Server
    from tcpchimney.api.streams import TcpTransport

_MIN_SNDBUF = 1  # the kernel clamps it to its minimum (SOCK_MIN_SNDBUF): a few KiB fill it
_FILLER = bytes(65536)


class RunSocket:
    """The chimney side of one program socket: options, state and what the stack holds for it."""

    def __init__(self, ident: int, options: SocketOptions, owner: object = None) -> None:
        self.id = ident
        self.options = options
        self.owner = owner  # the control connection that made it (a fresh or bound socket dies with it)
        self.state = "fresh"  # the states of chimney_shim (FRESH, BOUND, CONNECTING, ...)
        self.pending = 0  # the pending error's errno (the kernel's sk_err), reported once
        self.sockname: tuple[str, int] | None = None
        self.peername: tuple[str, int] | None = None
        self.server: Server | None = None  # bound or listening
        self.channel: socket.socket | None = None  # a listener's SOCK_SEQPACKET end: accepted descriptors
        self.connect_task: asyncio.Task[Any] | None = None
        self.relay: Relay | None = None

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "pending": self.pending,
            "sockname": self.sockname,
            "peername": self.peername,
        }


class ConnectFiller:
    """Keeps a connecting socket's descriptor unwritable until the handshake ends (see chimney_socket).

    The program's end gets the smallest send buffer and is filled; ``release`` gives the buffer back and
    reads the filler from the chimney end, which is what wakes a ``select``/``poll``/``epoll`` waiting for
    writability."""

    def __init__(self, program_end: socket.socket) -> None:
        self.program_end = program_end
        self.original = program_end.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        program_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _MIN_SNDBUF)
        self.size = 0
        while True:
            try:
                self.size += program_end.send(_FILLER, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break

    def release(self, chimney_end: socket.socket) -> None:
        try:
            # setsockopt doubles what it is given (the kernel's bookkeeping): half gives the original back
            self.program_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, max(1, self.original // 2))
            left = self.size
            while left > 0:
                got = chimney_end.recv(min(left, 65536), socket.MSG_DONTWAIT)
                if not got:
                    break
                left -= len(got)
        except OSError:
            pass  # the program closed its end meanwhile: nothing left to wake
        finally:
            self.program_end.close()


class Relay:
    """Bytes, EOF, errors and backpressure between a stack connection and the program's socketpair."""

    def __init__(self, record: RunSocket, on_done: Any) -> None:
        self.record = record
        self._on_done = on_done  # called with the record once both sides are gone
        self.stack: TcpTransport | None = None
        self.unix: asyncio.Transport | None = None
        self.stack_eof = self.unix_eof = False
        self.stack_lost = self.unix_lost = False
        self.on_stack_connected: Any = None  # an accepted connection's hand-off to the program

    def stack_protocol(self) -> StackSide:
        return StackSide(self)

    async def attach(self, chimney_end: socket.socket) -> None:
        """Start relaying over the program's socketpair (the stack connection was paused until now)."""
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.connect_accepted_socket(lambda: UnixSide(self), chimney_end)
        except OSError:
            chimney_end.close()
            self.unix_lost = True
            if self.stack is not None:
                self.stack.abort()
            return
        self.unix = transport
        if self.stack_lost:
            self._close_unix()
        elif self.stack is not None:
            self.stack.resume_reading()

    def finish(self) -> None:
        if self.stack is not None:
            self.stack.close()
        if self.unix is not None:
            self.unix.close()

    def _close_unix(self) -> None:
        """The stack connection is gone: the program sees EOF, then the pending error (if any)."""
        if self.unix is None:
            return
        if self.record.pending:
            self.unix.abort()  # bytes still queued towards the program die with the connection, as on a reset
        else:
            self.unix.close()

    def on_stack_lost(self, exc: Exception | None) -> None:
        self.stack_lost = True
        if isinstance(exc, OSError) and exc.errno:
            self.record.pending = exc.errno
            self.record.state = "failed"
        else:
            self.record.state = "closed"
        self._close_unix()
        self._maybe_done()

    def on_unix_lost(self, exc: Exception | None) -> None:
        self.unix_lost = True
        if self.stack is not None and not self.stack_lost:
            if exc is not None:
                self.stack.abort()  # the program closed while bytes still came: a reset, as the kernel's
            else:
                self.stack.close()
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self.stack_lost and (self.unix_lost or self.unix is None):
            self._on_done(self.record)


class StackSide(asyncio.Protocol):
    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        relay = self.relay
        relay.stack = transport  # type: ignore[assignment]
        transport.pause_reading()  # type: ignore[attr-defined]  # until the program's side is attached
        info = transport.get_extra_info
        relay.record.sockname = info("sockname")
        relay.record.peername = info("peername")
        relay.record.state = "connected"
        if relay.on_stack_connected is not None:
            relay.on_stack_connected(relay)

    def data_received(self, data: bytes) -> None:
        if self.relay.unix is not None:
            self.relay.unix.write(data)

    def eof_received(self) -> bool:
        relay = self.relay
        relay.stack_eof = True
        if relay.unix is not None and not relay.unix.is_closing():
            relay.unix.write_eof()
        if relay.unix_eof:
            relay.finish()
        return True

    def pause_writing(self) -> None:
        if self.relay.unix is not None:
            self.relay.unix.pause_reading()

    def resume_writing(self) -> None:
        if self.relay.unix is not None and not self.relay.unix.is_closing():
            self.relay.unix.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.on_stack_lost(exc)


class UnixSide(asyncio.Protocol):
    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def data_received(self, data: bytes) -> None:
        if self.relay.stack is not None:
            self.relay.stack.write(data)

    def eof_received(self) -> bool:
        relay = self.relay
        relay.unix_eof = True
        if relay.stack is not None and not relay.stack_lost:
            relay.stack.write_eof()
        if relay.stack_eof:
            relay.finish()
        return True

    def pause_writing(self) -> None:
        if self.relay.stack is not None:
            self.relay.stack.pause_reading()

    def resume_writing(self) -> None:
        if self.relay.stack is not None and not self.relay.stack_lost:
            self.relay.stack.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.on_unix_lost(exc)
