"""A blocking, ``socket.socket``-like API for code that is not async.

``BackgroundRuntime(stack, device)`` runs a ``Runtime`` on an event loop of its own thread; ``Socket``
objects made from it (``bg.socket()``) are used from ordinary threads and block, with the timeouts and the
exceptions of Python's sockets::

    with BackgroundRuntime(stack, device) as bg, bg.socket() as s:
        s.settimeout(5)
        s.connect(("198.18.0.1", 80))
        s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
        reply = s.recv(65536)

Wrong use raises what the kernel would: EBADF after ``close``, ENOTCONN before ``connect``,
``BrokenPipeError`` for ``send`` after ``shutdown(SHUT_WR)``, EISCONN for a second ``connect``; a timeout is
``TimeoutError("timed out")`` (``socket.timeout``), and with timeout 0 ``BlockingIOError`` (EAGAIN).

A listening socket accepts connections as they complete (as asyncio servers do); ``accept`` hands them out in
arrival order.
"""

from __future__ import annotations

import asyncio
import errno
import socket as _socket
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from tcpchimney.api.runtime import Device, Runtime, Server
from tcpchimney.host.interface import ip_str
from tcpchimney.host.stack import HostStack

T = TypeVar("T")
Address = tuple[str, int]
_SEND_CHUNK = 64 * 1024


class BackgroundRuntime:
    """A ``Runtime`` on a private event loop thread. ``start()``/``close()`` or ``with``; ``call(coro)``."""

    def __init__(
        self, stack: HostStack, device: Device, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.runtime = Runtime(stack, device, clock=clock)
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


class Socket:
    """A TCP socket of the stack with the blocking ``socket.socket`` API (AF_INET, SOCK_STREAM)."""

    family = _socket.AF_INET
    type = _socket.SOCK_STREAM
    proto = _socket.IPPROTO_TCP

    def __init__(
        self,
        background: BackgroundRuntime,
        _streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None,
    ) -> None:
        self._bg = background
        self._timeout: float | None = _socket.getdefaulttimeout()
        self._closed = False
        self._bound: Address | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._server: Server | None = None
        self._accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] | None = None
        self._shut_rd = self._shut_wr = False
        if _streams is not None:
            self._reader, self._writer = _streams

    def __repr__(self) -> str:
        if self._closed:
            return "<tcpchimney Socket [closed]>"
        local = self._local_address()
        peer = self._writer.get_extra_info("peername") if self._writer is not None else None
        return f"<tcpchimney Socket laddr={local} raddr={peer}>"

    # ------------------------------------------------------------------ timeouts

    def settimeout(self, timeout: float | None) -> None:
        if timeout is not None and timeout < 0:
            raise ValueError("Timeout value out of range")
        self._timeout = None if timeout is None else float(timeout)

    def gettimeout(self) -> float | None:
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        self._timeout = None if flag else 0.0

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
        if self._closed:
            raise OSError(errno.EBADF, "Bad file descriptor")

    def _connected(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self._check_open()
        if self._reader is None or self._writer is None:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
        return self._reader, self._writer

    def _writable(self) -> asyncio.StreamWriter:
        """Linux answers send() on an unconnected or write-shut TCP socket with EPIPE."""
        self._check_open()
        if self._writer is None or self._shut_wr:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")
        return self._writer

    # ------------------------------------------------------------------ client side

    def connect(self, address: Address) -> None:
        self._check_open()
        if self._writer is not None:
            raise OSError(errno.EISCONN, "Transport endpoint is already connected")
        if self._server is not None:
            raise OSError(errno.EINVAL, "Invalid argument: the socket is listening")
        host, port = address
        local_port = self._bound[1] if self._bound and self._bound[1] else None
        runtime = self._bg.runtime
        self._reader, self._writer = self._run(
            lambda: runtime.open_connection(host, port, local_port=local_port)
        )

    def connect_ex(self, address: Address) -> int:
        try:
            self.connect(address)
        except OSError as exc:
            return exc.errno or errno.EIO
        return 0

    # ------------------------------------------------------------------ server side

    def bind(self, address: Address) -> None:
        self._check_open()
        if self._bound is not None or self._writer is not None:
            raise OSError(errno.EINVAL, "Invalid argument: the socket is already bound")
        host, port = address
        ours = ip_str(self._bg.runtime.stack.iface.ip)
        if host not in ("", "0.0.0.0", ours):
            raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
        if not 0 <= port <= 0xFFFF:
            raise OverflowError("bind(): port must be 0-65535.")
        self._bound = (ours, port)

    def listen(self, backlog: int = 128) -> None:
        self._check_open()
        if self._writer is not None:
            raise OSError(errno.EINVAL, "Invalid argument: the socket is connected")
        if self._server is not None:
            return
        port = self._bound[1] if self._bound else 0
        runtime = self._bg.runtime

        async def start() -> Server:
            queue: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
            self._accepted = queue

            def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                queue.put_nowait((reader, writer))

            return await runtime.start_server(on_connection, port=port or None, backlog=max(1, backlog))

        self._server = self._bg.call(start())

    def accept(self) -> tuple[Socket, Address]:
        self._check_open()
        queue = self._accepted
        if self._server is None or queue is None:
            raise OSError(errno.EINVAL, "Invalid argument: the socket is not listening")
        reader, writer = self._run(queue.get)
        conn = Socket(self._bg, (reader, writer))  # blocking unless a default timeout is set, as Python's
        return conn, writer.get_extra_info("peername")

    # ------------------------------------------------------------------ data

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Wait (under the timeout) until the connection takes more, then queue all of ``data``."""
        writer = self._writable()
        payload = bytes(data)

        async def op() -> int:
            await writer.drain()  # nothing is queued if this times out: a retry sends no duplicate
            writer.write(payload)
            return len(payload)

        return self._run(op)

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        writer = self._writable()
        view = memoryview(bytes(data))

        async def op() -> None:
            for start in range(0, len(view), _SEND_CHUNK):
                await writer.drain()
                writer.write(view[start : start + _SEND_CHUNK])
            await writer.drain()

        self._run(op)

    def recv(self, bufsize: int) -> bytes:
        if bufsize < 0:
            raise ValueError("negative buffersize in recv")
        reader, _ = self._connected()
        if self._shut_rd or bufsize == 0:
            return b""
        return self._run(lambda: reader.read(bufsize))

    def recv_into(self, buffer: bytearray | memoryview, nbytes: int = 0) -> int:
        view = memoryview(buffer)
        data = self.recv(nbytes or len(view))
        view[: len(data)] = data
        return len(data)

    def shutdown(self, how: int) -> None:
        if how not in (_socket.SHUT_RD, _socket.SHUT_WR, _socket.SHUT_RDWR):
            raise OSError(errno.EINVAL, "Invalid argument")
        _, writer = self._connected()
        if how in (_socket.SHUT_RD, _socket.SHUT_RDWR):
            self._shut_rd = True
        if how in (_socket.SHUT_WR, _socket.SHUT_RDWR) and not self._shut_wr:
            self._shut_wr = True

            async def fin() -> None:
                writer.write_eof()

            self._bg.call(fin())

    # ------------------------------------------------------------------ the rest

    def getsockname(self) -> Address:
        self._check_open()
        return self._local_address()

    def _local_address(self) -> Address:
        if self._writer is not None:
            return tuple(self._writer.get_extra_info("sockname"))
        if self._server is not None:
            return self._server.sockets[0].getsockname()
        return self._bound or ("0.0.0.0", 0)

    def getpeername(self) -> Address:
        _, writer = self._connected()
        return tuple(writer.get_extra_info("peername"))

    def fileno(self) -> int:
        return -1  # no kernel descriptor: select()/poll() cannot watch this socket

    def close(self) -> None:
        """Release the socket: a connection is closed gracefully (queued data, then FIN), a listener stops."""
        if self._closed:
            return
        self._closed = True
        writer, server = self._writer, self._server

        async def release() -> None:
            if writer is not None:
                writer.close()
            if server is not None:
                server.close()

        if (writer is not None or server is not None) and not self._bg._closed:
            self._bg.call(release())

    def detach(self) -> None:
        raise OSError(errno.EOPNOTSUPP, "a stack socket has no descriptor to detach")

    def __enter__(self) -> Socket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
