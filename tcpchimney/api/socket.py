"""A blocking, ``socket.socket``-like API for code that is not async.

``BackgroundRuntime(stack, device)`` runs a ``Runtime`` on an event loop of its own thread (with offload:
``BackgroundRuntime(stack, device, node=target)``, wired as ``Runtime``); ``Socket`` objects made from it
(``bg.socket()``) are used from ordinary threads and block, with the timeouts and the exceptions of Python's
sockets::

    with BackgroundRuntime(stack, device) as bg, bg.socket() as s:
        s.settimeout(5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.connect(("198.18.0.1", 80))
        s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
        reply = s.makefile("rb").read()

``recv`` and ``send`` work on the connection's engine directly, as the kernel's calls work on its socket
buffers: unread data stays in the receive buffer (so SO_RCVBUF bounds the window the peer sees) and ``send``
takes what the send buffer has room for (SO_SNDBUF). Errors are the kernel's, errno for errno: EBADF after
``close``, ENOTCONN / EPIPE on an unconnected socket, EISCONN, EALREADY and EINPROGRESS around ``connect``,
EHOSTUNREACH from ``connect`` when the next hop does not answer ARP (about 3 s);
a reset is reported once (ECONNRESET, or through SO_ERROR), after which ``recv`` reads EOF and ``send`` fails
with EPIPE. A timeout is ``TimeoutError("timed out")`` (``socket.timeout``); with timeout 0 a call that would
wait raises ``BlockingIOError`` (EAGAIN), and ``connect`` EINPROGRESS while the handshake goes on.

SO_LINGER as on Linux: ``(1, 0)`` makes ``close`` reset the connection; ``(1, n)`` makes ``close`` wait up to
``n`` seconds for the data and the FIN to be acknowledged. A listening socket's options pass to the sockets it
accepts. There is no descriptor (``fileno()`` is -1): ``select`` cannot watch these sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import socket as _socket
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from tcpchimney.api.options import SocketOptions, Value, invalid_argument
from tcpchimney.api.runtime import READ_BATCH, Device, Runtime, Server
from tcpchimney.api.streams import TcpTransport
from tcpchimney.host.interface import ip_str
from tcpchimney.host.stack import HostStack
from tcpchimney.link.sim import Node
from tcpchimney.tcp.errors import TcpError
from tcpchimney.tcp.state import TcpState

T = TypeVar("T")
Address = tuple[str, int]
_SEND_CHUNK = 64 * 1024
# States in which our FIN is acknowledged or the connection is gone: a lingering close() is over.
_FIN_ACKED = frozenset({TcpState.FIN_WAIT_2, TcpState.TIME_WAIT, TcpState.CLOSED})


class BackgroundRuntime:
    """A ``Runtime`` on a private event loop thread. ``start()``/``close()`` or ``with``; ``call(coro)``.

    Takes what ``Runtime`` takes: ``node`` is what the device talks to, the offload target in front of the
    stack when there is one (``BackgroundRuntime(stack, device, node=target)``); without it a stack's
    connections stay on the host (Reason.NO_TARGET)."""

    def __init__(
        self,
        stack: HostStack,
        device: Device,
        *,
        clock: Callable[[], float] = time.monotonic,
        node: Node | None = None,
        read_batch: int = READ_BATCH,
        tune_gc: bool = True,
    ) -> None:
        self.runtime = Runtime(stack, device, clock=clock, node=node, read_batch=read_batch, tune_gc=tune_gc)
        self.loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<BackgroundRuntime {self.runtime!r}>"

    def start(self) -> BackgroundRuntime:
        if self._closed:
            raise RuntimeError("the background runtime is closed")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tcpchimney-runtime", daemon=True)
            self._thread.start()
            self.call(self._start_runtime())
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def _start_runtime(self) -> None:
        self.runtime.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the runtime's loop and return its result (from any other thread)."""
        if self._thread is None or self._closed:
            coro.close()
            raise RuntimeError("the background runtime is not running")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("call() from the runtime's own thread would deadlock: await instead")
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()
            raise

    def socket(self) -> Socket:
        return Socket(self)

    def create_connection(self, address: Address, timeout: float | None = None) -> Socket:
        """``socket.create_connection`` on the stack."""
        sock = Socket(self)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except BaseException:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        """Close the runtime (open connections are reset) and stop the loop thread. Idempotent."""
        if self._closed:
            return
        if self._thread is not None:
            self.call(self._close_runtime())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()
        self._closed = True
        self.loop.close()

    async def _close_runtime(self) -> None:
        self.runtime.close()
        await asyncio.sleep(0)  # let connection_lost callbacks run

    def __enter__(self) -> BackgroundRuntime:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _SocketProtocol(asyncio.Protocol):
    """Keeps the transport's reading paused, so that received data waits in the engine until ``recv``.

    Data only reaches ``data_received`` when the engine closes with bytes still unread (the transport hands
    them over before it forgets the engine); ``recv`` reads that tail first. The loss's exception is the
    socket's pending error (the kernel's ``sk_err``), reported once.
    """

    def __init__(self) -> None:
        self.transport: TcpTransport | None = None
        self.tail = bytearray()
        self.error: OSError | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, TcpTransport)
        self.transport = transport
        transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        self.tail += data

    def eof_received(self) -> bool:
        return True  # a half-close: our side stays open until the application closes it

    def connection_lost(self, exc: Exception | None) -> None:
        if isinstance(exc, OSError):
            self.error = exc


class Socket:
    """A TCP socket of the stack with the blocking ``socket.socket`` API (AF_INET, SOCK_STREAM)."""

    family = _socket.AF_INET
    type = _socket.SOCK_STREAM
    proto = _socket.IPPROTO_TCP

    def __init__(self, background: BackgroundRuntime, _transport: TcpTransport | None = None) -> None:
        self._bg = background
        self._timeout: float | None = _socket.getdefaulttimeout()
        self._closed = False  # close() was called (the connection goes once no makefile() object is left)
        self._released = False
        self._io_refs = 0
        self._bound: Address | None = None
        self._transport: TcpTransport | None = None
        self._protocol: _SocketProtocol | None = None
        self._server: Server | None = None
        self._connect: Future[tuple[TcpTransport, asyncio.BaseProtocol]] | None = None
        self._connect_failed = False  # a non-blocking connect failed and SO_ERROR consumed its error
        self._error: OSError | None = None  # a pending error not tied to a connection (failed connect)
        self._shut_rd = self._shut_wr = False
        self._options = SocketOptions(background.runtime.stack.tcp_config)
        if _transport is not None:
            self._adopt(_transport)

    def __repr__(self) -> str:
        if self._closed:
            return "<tcpchimney Socket [closed]>"
        peer = self._transport.get_extra_info("peername") if self._transport is not None else None
        return f"<tcpchimney Socket laddr={self._local_address()} raddr={peer}>"

    def _adopt(self, transport: TcpTransport) -> None:
        protocol = transport.get_protocol()
        assert isinstance(protocol, _SocketProtocol)
        self._transport, self._protocol = transport, protocol
        self._options = transport.get_extra_info("socket").options  # shared with the asyncio view

    # ------------------------------------------------------------------ timeouts

    @property
    def timeout(self) -> float | None:
        return self._timeout

    def settimeout(self, timeout: float | None) -> None:
        if timeout is not None and timeout < 0:
            raise ValueError("Timeout value out of range")
        self._check_open()
        self._timeout = None if timeout is None else float(timeout)

    def gettimeout(self) -> float | None:
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        self.settimeout(None if flag else 0.0)

    def getblocking(self) -> bool:
        return self._timeout != 0.0

    def _run(self, make: Callable[[], Awaitable[T]]) -> T:
        """Run ``make()`` on the loop under this socket's timeout; ``make`` is called on the loop thread."""
        timeout = self._timeout

        async def op() -> T:
            if timeout is None:
                return await make()
            limit = asyncio.timeout(timeout)
            try:
                async with limit:
                    return await make()
            except TimeoutError:
                if not limit.expired():
                    raise  # the connection's own ETIMEDOUT, not our timeout
            if timeout == 0:
                raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
            raise TimeoutError("timed out")

        return self._bg.call(op())

    # ------------------------------------------------------------------ state checks

    def _check_open(self) -> None:
        if self._released:  # after close() the socket works on while makefile() objects use it (Python's)
            raise OSError(errno.EBADF, "Bad file descriptor")

    def _settle_connect(self) -> None:
        """A connect that went on in the background (non-blocking, or past a timeout) has finished."""
        future = self._connect
        if future is None or not future.done() or self._transport is not None:
            return
        try:
            transport, _ = future.result()
        except OSError as exc:
            self._connect = None
            self._error = exc
            return
        self._adopt(transport)

    def _connection(self) -> tuple[TcpTransport, _SocketProtocol]:
        self._check_open()
        self._settle_connect()
        if self._transport is None or self._protocol is None:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
        return self._transport, self._protocol

    # ------------------------------------------------------------------ client side

    def connect(self, address: Address) -> None:
        self._check_open()
        self._settle_connect()
        if self._server is not None or (self._transport is not None and self._connect is None):
            raise OSError(errno.EISCONN, "Transport endpoint is already connected")
        if self._connect is not None:
            self._finish_connect(self._connect)
            return
        if self._error is not None or self._connect_failed:
            self._raise_failed_connect()
        future = self._start_connect(address)
        if self._timeout == 0:
            raise BlockingIOError(errno.EINPROGRESS, "Operation now in progress")
        try:
            future.result(self._timeout)
        except TimeoutError:
            if not future.done():
                raise TimeoutError("timed out") from None  # the handshake goes on, as the kernel's
        except BaseException:
            pass  # reported by _finish_connect (a failed attempt leaves the socket free to try again)
        self._finish_connect(future)

    def _start_connect(self, address: Address) -> Future[tuple[TcpTransport, asyncio.BaseProtocol]]:
        host, port = address
        local_port = self._bound[1] if self._bound and self._bound[1] else None
        runtime, options = self._bg.runtime, self._options

        async def connect() -> tuple[TcpTransport, asyncio.BaseProtocol]:
            return await runtime.create_connection(
                _SocketProtocol, host, port, local_port=local_port, options=options
            )

        if self._bg._thread is None or self._bg._closed:
            raise RuntimeError("the background runtime is not running")
        future = asyncio.run_coroutine_threadsafe(connect(), self._bg.loop)
        self._connect = future
        return future

    def _finish_connect(self, future: Future[tuple[TcpTransport, asyncio.BaseProtocol]]) -> None:
        """Linux: EALREADY while the handshake goes on; once it is over, the next connect() reports it."""
        if not future.done():
            raise OSError(errno.EALREADY, "Operation already in progress")
        self._connect = None
        try:
            transport, _ = future.result()
        except OSError:
            self._transport = None
            raise
        if self._transport is None:
            self._adopt(transport)

    def _raise_failed_connect(self) -> None:
        error, self._error = self._error, None
        self._connect_failed = False
        if error is not None:
            raise error
        raise ConnectionAbortedError(errno.ECONNABORTED, "Software caused connection abort")

    def connect_ex(self, address: Address) -> int:
        try:
            self.connect(address)
        except OSError as exc:
            return exc.errno or errno.EIO
        return 0

    # ------------------------------------------------------------------ server side

    def bind(self, address: Address) -> None:
        self._check_open()
        if self._bound is not None or self._transport is not None or self._server is not None:
            raise invalid_argument()
        host, port = address
        if not 0 <= port <= 0xFFFF:
            raise OverflowError("bind(): port must be 0-65535.")
        ours = ip_str(self._bg.runtime.stack.iface.ip)
        if host not in ("", "0.0.0.0", ours):
            raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
        self._bound = (ours, port)

    def listen(self, backlog: int = min(_socket.SOMAXCONN, 128)) -> None:
        self._check_open()
        self._settle_connect()
        if self._transport is not None or self._connect is not None:
            raise invalid_argument()
        if self._server is not None:
            return
        port = self._bound[1] if self._bound else 0
        runtime, options = self._bg.runtime, self._options

        async def start() -> Server:
            return await runtime.create_server(
                _SocketProtocol,
                port=port or None,
                backlog=max(1, backlog),
                start_serving=False,
                options=options,
            )

        self._server = self._bg.call(start())

    def accept(self) -> tuple[Socket, Address]:
        self._check_open()
        server = self._server
        if server is None:
            raise invalid_argument()
        transport = self._run(lambda: server.accept(_SocketProtocol()))
        conn = Socket(self._bg, transport)  # blocking unless a default timeout is set, as Python's
        return conn, transport.get_extra_info("peername")

    # ------------------------------------------------------------------ receive

    def recv(self, bufsize: int) -> bytes:
        if bufsize < 0:
            raise ValueError("negative buffersize in recv")
        transport, protocol = self._connection()
        if bufsize == 0:
            return b""

        async def op() -> bytes:
            while (data := self._take(transport, protocol, bufsize)) is None:
                await transport.wait_event()
            return data

        return self._run(op)

    def _take(self, transport: TcpTransport, protocol: _SocketProtocol, n: int) -> bytes | None:
        """On the loop: up to ``n`` received bytes, b"" at EOF, None when recv() must wait."""
        if protocol.tail:
            data = bytes(protocol.tail[:n])
            del protocol.tail[:n]
            return data
        sock = transport.tcp_socket
        if sock.readable > 0 and not self._shut_rd:
            if transport.engine_gone:
                # Reset or timed out with data unread: as Linux, that data is read before the error.
                data = sock.conn.receive(n)
                sock._set_readable(sock.conn.readable)
                if data:
                    return data
            else:
                try:
                    return sock.receive(min(n, sock.readable))
                except TcpError:
                    pass  # the engine failed meanwhile: its loss reports why
                finally:
                    self._bg.runtime.flush_soon()  # a window update may be due
        if protocol.error is not None:
            error, protocol.error = protocol.error, None
            raise error
        if transport.peer_eof or transport.engine_gone or self._shut_rd:
            return b""
        return None

    def recv_into(self, buffer: bytearray | memoryview, nbytes: int = 0) -> int:
        if nbytes < 0:
            raise ValueError("negative buffersize in recv_into")
        view = memoryview(buffer).cast("B")
        if nbytes > len(view):
            raise ValueError("buffer too small for requested bytes")
        data = self.recv(nbytes or len(view))
        view[: len(data)] = data
        return len(data)

    def recvfrom(self, bufsize: int) -> tuple[bytes, None]:
        return self.recv(bufsize), None  # a connected TCP socket reports no address

    # ------------------------------------------------------------------ send

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Wait (under the timeout) for room in the send buffer; take what fits and return how much."""
        transport, protocol = self._writable()
        view = memoryview(data).cast("B")
        if not view:
            return 0

        async def op() -> int:
            while not (n := self._put(transport, protocol, view)):
                await transport.wait_event()
            return n

        return self._run(op)

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        transport, protocol = self._writable()
        view = memoryview(bytes(data))

        async def op() -> None:
            sent = 0
            while sent < len(view):
                n = self._put(transport, protocol, view[sent : sent + _SEND_CHUNK])
                if n:
                    sent += n
                else:
                    await transport.wait_event()

        self._run(op)

    def _writable(self) -> tuple[TcpTransport, _SocketProtocol]:
        """Linux answers send() on an unconnected or listening TCP socket with EPIPE, not ENOTCONN."""
        self._check_open()
        self._settle_connect()
        if self._transport is None or self._protocol is None:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")
        return self._transport, self._protocol

    def _put(self, transport: TcpTransport, protocol: _SocketProtocol, view: memoryview) -> int:
        """On the loop: queue what the send buffer takes (0: wait for room)."""
        if protocol.error is not None:
            error, protocol.error = protocol.error, None
            raise error
        if self._shut_wr or transport.engine_gone or transport.is_closing():
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")
        try:
            n = transport.tcp_socket.send(view)
        except TcpError as exc:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe") from exc
        if n:
            self._bg.runtime.flush_soon()
        return n

    # ------------------------------------------------------------------ shutdown and close

    def shutdown(self, how: int) -> None:
        self._check_open()
        if how not in (_socket.SHUT_RD, _socket.SHUT_WR, _socket.SHUT_RDWR):
            raise invalid_argument()
        if self._server is not None and self._transport is None:
            if how != _socket.SHUT_WR:
                self._bg.call(self._stop_server(self._server))  # Linux: no more connections are taken
            return
        transport, _ = self._connection()
        if how in (_socket.SHUT_RD, _socket.SHUT_RDWR):
            self._shut_rd = True
        if how in (_socket.SHUT_WR, _socket.SHUT_RDWR) and not self._shut_wr:
            self._shut_wr = True

            async def fin() -> None:
                transport.write_eof()

            self._bg.call(fin())

    @staticmethod
    async def _stop_server(server: Server) -> None:
        server.close()

    def close(self) -> None:
        """Release the socket once no ``makefile`` object uses it (as Python's): a connection is closed
        gracefully (queued data, then FIN) or as SO_LINGER says; a listener stops."""
        self._closed = True
        if self._io_refs <= 0:
            self._release()

    def _decref_socketios(self) -> None:
        """A ``makefile`` object was closed (``socket.SocketIO`` calls this)."""
        if self._io_refs > 0:
            self._io_refs -= 1
        if self._closed:
            self._release()

    def _release(self) -> None:
        if self._released:
            return
        self._released = True
        self._settle_connect()
        transport, server, connect = self._transport, self._server, self._connect
        if self._bg._closed or self._bg._thread is None:
            return
        if connect is not None and not connect.done():
            connect.cancel()  # the handshake in progress is abandoned (its SYN_SENT socket aborted)
        if server is not None:
            self._bg.call(self._stop_server(server))
        if transport is not None:
            self._close_connection(transport)

    def _close_connection(self, transport: TcpTransport) -> None:
        onoff, seconds = self._options.linger
        if onoff and seconds == 0:

            async def abort() -> None:
                transport.abort()  # Linux: SO_LINGER with a zero timeout closes with RST

            self._bg.call(abort())
            return

        async def close() -> None:
            transport.close()
            if onoff:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(seconds):
                        while not transport.engine_gone and transport.tcp_socket.state not in _FIN_ACKED:
                            await transport.wait_event()

        self._bg.call(close())

    def detach(self) -> int:
        raise OSError(errno.EOPNOTSUPP, "a stack socket has no descriptor to detach")

    def __enter__(self) -> Socket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ addresses

    def getsockname(self) -> Address:
        self._check_open()
        self._settle_connect()
        return self._local_address()

    def _local_address(self) -> Address:
        if self._transport is not None:
            return tuple(self._transport.get_extra_info("sockname"))
        if self._server is not None:
            return self._server.sockets[0].getsockname()
        return self._bound or ("0.0.0.0", 0)

    def getpeername(self) -> Address:
        transport, _ = self._connection()
        if transport.engine_gone:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
        return tuple(transport.get_extra_info("peername"))

    def fileno(self) -> int:
        return -1  # no kernel descriptor: select()/poll() cannot watch this socket

    # ------------------------------------------------------------------ options

    def setsockopt(self, level: int, optname: int, value: Value) -> None:
        self._check_open()
        self._settle_connect()
        changes = self._options.set(level, optname, value)
        transport = self._transport
        if changes and transport is not None:

            async def apply() -> None:
                transport._configure(changes)

            self._bg.call(apply())

    def getsockopt(self, level: int, optname: int, buflen: int | None = None) -> int | bytes:
        self._check_open()
        self._settle_connect()
        if level == _socket.SOL_SOCKET and optname == _socket.SO_ERROR:
            return self._int_option(self._take_error(), buflen)
        if level == _socket.SOL_SOCKET and optname == _socket.SO_TYPE:
            return self._int_option(_socket.SOCK_STREAM, buflen)
        if level == _socket.SOL_SOCKET and optname == _socket.SO_ACCEPTCONN:
            return self._int_option(int(self._server is not None and self._transport is None), buflen)
        return self._options.get(level, optname, buflen)

    @staticmethod
    def _int_option(value: int, buflen: int | None) -> int | bytes:
        return value if buflen is None else value.to_bytes(4, "little", signed=True)[:buflen]

    def _take_error(self) -> int:
        """SO_ERROR: the pending error, cleared by reading it (as the kernel's sk_err)."""
        if self._error is not None:
            error, self._error = self._error, None
            self._connect_failed = True
            return error.errno or errno.EIO
        protocol = self._protocol
        if protocol is None or protocol.error is None:
            return 0

        async def take() -> int:
            error, protocol.error = protocol.error, None
            return error.errno or errno.EIO if error is not None else 0

        return self._bg.call(take())

    # ------------------------------------------------------------------ makefile

    def makefile(
        self,
        mode: str = "r",
        buffering: int | None = None,
        *,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
    ) -> Any:
        """A file object over the socket, built as ``socket.socket.makefile`` builds it."""
        if not set(mode) <= {"r", "w", "b"}:
            raise ValueError(f"invalid mode {mode!r} (only r, w, b allowed)")
        writing = "w" in mode
        reading = "r" in mode or not writing
        binary = "b" in mode
        raw = _socket.SocketIO(self, ("r" if reading else "") + ("w" if writing else ""))  # type: ignore[arg-type]
        self._io_refs += 1
        if buffering is None or buffering < 0:
            buffering = io.DEFAULT_BUFFER_SIZE
        if buffering == 0:
            if not binary:
                raise ValueError("unbuffered streams must be binary")
            return raw
        buffer: Any
        if reading and writing:
            buffer = io.BufferedRWPair(raw, raw, buffering)
        elif reading:
            buffer = io.BufferedReader(raw, buffering)
        else:
            buffer = io.BufferedWriter(raw, buffering)
        if binary:
            return buffer
        text = io.TextIOWrapper(buffer, io.text_encoding(encoding), errors, newline)
        text.mode = mode  # type: ignore[misc]
        return text
