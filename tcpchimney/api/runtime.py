"""``Runtime``: one ``HostStack`` and one device driven by the running asyncio event loop.

The stack is sans-I/O; this is its I/O edge. The loop watches the device's descriptor and reads frames in
batches; one loop timer follows the stack's next deadline; every batch, timer and application call that may
produce output ends in one flush (coalesced with ``call_soon``) that writes ``frames_to_send`` to the device
and hands the stack's events to the transports, servers and pending connects waiting for them.

Applications see the asyncio API: ``open_connection`` / ``start_server`` give ``asyncio.StreamReader`` /
``StreamWriter``; ``create_connection`` / ``create_server`` take any protocol factory, as the loop's
methods of the same names do. Everything runs on the loop that called ``start()``; other threads use
``api.socket.BackgroundRuntime``.
"""

from __future__ import annotations

import asyncio
import errno
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol, cast

from tcpchimney.api import gctune
from tcpchimney.api.busy_poll import BusyPoller, Pollable
from tcpchimney.api.options import SocketOptions, asyncio_options
from tcpchimney.api.streams import (
    SocketInfo,
    TcpTransport,
    reset_error,
    timed_out_error,
    unreachable_error,
)
from tcpchimney.host.errors import AddressInUse, InvalidAddress, InvalidPort, NoEphemeralPort
from tcpchimney.host.events import ConnectionEvent, HostEvent, IncomingConnection
from tcpchimney.host.interface import ip_str
from tcpchimney.host.listener import Listener
from tcpchimney.host.sockets import TcpSocket
from tcpchimney.host.stack import HostStack
from tcpchimney.link.sim import Node
from tcpchimney.tcp.events import (
    Closed,
    Connected,
    ConnectionReset,
    ConnectionTimedOut,
    ConnectionUnreachable,
    StateChanged,
)
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire.frame import Frame

DEFAULT_LIMIT = 2**16  # asyncio.streams._DEFAULT_LIMIT
READ_BATCH = 128  # frames read before the stack's output is flushed (bounds latency under a flood)
_MAX_WRITE_RETRIES = 16  # a frame refused this often while the device reported room is dropped (not EAGAIN)
# On a normal exit of ``async with Runtime(...)``, the connections the application closed gracefully get
# this long to deliver what they hold (a kernel keeps sending after close(); here the stack ends with the
# runtime, so it waits for them, bounded); then everything still open is reset.
LINGER_S = 2.0
_LINGERING_STATES = frozenset({TcpState.FIN_WAIT_1, TcpState.CLOSING, TcpState.LAST_ACK})
_EPHEMERAL = (32768, 60999)  # Linux ip_local_port_range, for servers asked to listen on port 0

StreamsCallback = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None]


class Device(Protocol):
    """What the runtime needs of a device (``link.tap.TapDevice``, ``api.memdev.MemoryDevice``)."""

    def fileno(self) -> int: ...

    def read(self) -> Frame | None: ...

    def write(self, frame: Frame) -> bool: ...


class FrameSource(Protocol):
    """Where received frames come from: the device itself, or a NIC process that reads the device and
    passes up what it does not claim (``nic.process_target.ProcessTarget``)."""

    def fileno(self) -> int: ...

    def read(self) -> Frame | None: ...


class _PendingConnect:
    __slots__ = ("future", "options", "protocol_factory", "sock")

    def __init__(
        self,
        sock: TcpSocket,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        options: SocketOptions | None,
    ) -> None:
        self.sock = sock
        self.protocol_factory = protocol_factory
        self.options = options
        self.future: asyncio.Future[tuple[TcpTransport, asyncio.BaseProtocol]] = (
            asyncio.get_running_loop().create_future()
        )


class Runtime:
    """``Runtime(stack, device)``; ``start()`` on the loop (or ``async with``), ``close()`` when done.

    With offload, the target is the device's node and the stack sits behind it::

        target = SoftwareTarget(device.features, mac=iface.mac)
        stack = HostStack(iface, ..., target=target, offload=OffloadPolicy("enabled"))
        target.attach_host(stack)
        runtime = Runtime(stack, device, node=target)

    A stack with a target but no ``node`` keeps every connection on the host (Reason.NO_TARGET).

    With the target in a NIC process, the NIC reads the device and the stack's frames come from it
    (``rx``); the stack's own frames still go straight to ``device``::

        runtime = Runtime(stack, device, node=nic.target, rx=nic.target)
    """

    def __init__(
        self,
        stack: HostStack,
        device: Device,
        *,
        clock: Callable[[], float] = time.monotonic,
        read_batch: int = READ_BATCH,
        node: Node | None = None,
        rx: FrameSource | None = None,
        tune_gc: bool = True,
        busy_poll_us: float = 0.0,
    ) -> None:
        self.stack = stack
        # api/busy_poll.py: after traffic, keep looking at a source that can be looked at cheaply (the NIC
        # process's rings) for this long instead of sleeping on its descriptor; 0: off.
        self._busy_poll_s = busy_poll_us / 1e6
        self._busy: BusyPoller | None = None
        self._tune_gc = tune_gc  # api/gctune.py: what the default collector setting costs a stack
        # What the device talks to: the stack itself, or an offload target in front of it (nic.SoftwareTarget
        # with the stack attached), which takes the frames of the connections it holds.
        self.node: Node = node if node is not None else stack
        if stack.offload_target is not None:
            stack.set_target_attached(node is not None)  # without a node the target never sees a frame
        self.device = device
        self.rx: FrameSource = rx if rx is not None else device  # what the loop reads frames from
        self._clock = clock
        self._read_batch = read_batch
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._closed = False
        self._flush_handle: asyncio.Handle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_deadline: float | None = None
        self._tx_backlog: deque[Frame] = deque()  # frames the device refused (queue full), sent in order
        self._write_retries = 0
        self._transports: dict[TcpSocket, TcpTransport] = {}
        self._connecting: dict[TcpSocket, _PendingConnect] = {}
        self._servers: dict[Listener, Server] = {}
        self._event_handlers: list[Callable[[HostEvent], None]] = []
        self.counters: dict[str, int] = {
            "rx_frames": 0,
            "rx_batches": 0,
            "tx_frames": 0,
            "tx_deferred": 0,  # device queue full: kept and retried when the device is writable
            "tx_dropped": 0,  # refused repeatedly while writable: the device rejected the frame itself
            "tx_error": 0,  # the device raised on write (wrong use, e.g. offload fields it cannot carry)
            "timer_fired": 0,
            "flushes": 0,
            "callback_errors": 0,
        }

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self._started else "idle"
        return f"<Runtime {ip_str(self.stack.iface.ip)} {state} connections={len(self._transports)}>"

    # ================================================================== life cycle

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("the runtime is not started (call start() on the event loop)")
        return self._loop

    @property
    def is_running(self) -> bool:
        return self._started and not self._closed

    def start(self) -> None:
        """Attach to the running loop: watch the device and arm the stack's timer. Idempotent."""
        if self._closed:
            raise RuntimeError("the runtime is closed")
        if self._started:
            return
        self._loop = asyncio.get_running_loop()
        self._started = True
        if self._tune_gc:
            gctune.tune_gc()
        self._loop.add_reader(self.rx.fileno(), self._on_readable)
        self._busy = self._busy_poller(self.rx)
        self.flush_soon()

    def _busy_poller(self, rx: FrameSource) -> BusyPoller | None:
        if self._busy_poll_s <= 0 or not hasattr(rx, "pending"):
            return None  # a device's readiness costs a system call to learn: nothing to gain by polling it
        source = cast("Pollable", rx)
        return BusyPoller(self.loop, source, self._on_readable, self._busy_poll_s, self.counters)

    def close(self) -> None:
        """Close servers, reset open connections (the RSTs are sent), detach from the loop. Idempotent."""
        if self._closed or not self._started:
            self._closed = True
            return
        for server in list(self._servers.values()):
            server.close()
        for transport in list(self._transports.values()):
            transport.abort()
        for pending in list(self._connecting.values()):
            self._fail_connect(pending, ConnectionAbortedError(errno.ECONNABORTED, "the runtime closed"))
            pending.sock.abort()
        self._connecting.clear()
        self._process()
        self._closed = True
        loop = self.loop
        loop.remove_reader(self.rx.fileno())
        if self._busy is not None:
            self._busy.cancel()
        if self._tx_backlog:
            loop.remove_writer(self.device.fileno())
        for handle in (self._timer, self._flush_handle):
            if handle is not None:
                handle.cancel()

    async def __aenter__(self) -> Runtime:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if exc_info[0] is None:
            await self.linger(LINGER_S)
        self.close()

    async def linger(self, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds) until every connection the application closed gracefully has
        handed over its bytes and had its FIN acknowledged."""
        deadline = time.monotonic() + timeout
        while self._started and not self._closed and self._lingering() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    def _lingering(self) -> bool:
        if any(t.closing_gracefully for t in self._transports.values()):
            return True
        return any(sock.state in _LINGERING_STATES for sock in self.stack.connections())

    def set_rx(self, rx: FrameSource) -> None:
        """Read frames from ``rx`` from now on (e.g. the device itself once the NIC process that read it
        is gone)."""
        if self._started and not self._closed:
            self.loop.remove_reader(self.rx.fileno())
            self.loop.add_reader(rx.fileno(), self._on_readable)
            if self._busy is not None:
                self._busy.cancel()
            self._busy = self._busy_poller(rx)
        self.rx = rx
        self.flush_soon()

    def add_event_handler(self, handler: Callable[[HostEvent], None]) -> None:
        """Also give every stack event (echo replies, neighbor and path MTU changes, ...) to ``handler``."""
        self._event_handlers.append(handler)

    # ================================================================== the I/O loop

    def flush_soon(self) -> None:
        """Schedule one flush of the stack's output; many calls in one loop iteration make one flush."""
        if self._flush_handle is None and self._started and not self._closed:
            self._flush_handle = self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        if not self._closed:
            self._process()
            if self._busy is not None:
                self._busy.arm()  # what was just sent is likely answered soon

    def _on_readable(self) -> None:
        device, stack, now = self.rx, self.node, self._clock()
        n = 0
        while n < self._read_batch:
            frame = device.read()
            if frame is None:
                break
            stack.handle_frame(frame, now)
            n += 1
        self.counters["rx_frames"] += n
        self.counters["rx_batches"] += 1
        self._process()
        if self._busy is not None and not self._closed:
            self._busy.arm()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_deadline = None
        self.counters["timer_fired"] += 1
        self.node.handle_timer(self._clock())
        self._process()

    def _process(self) -> None:
        """Output to the device, events to their owners, the timer to the next deadline."""
        self.counters["flushes"] += 1
        self._dispatch_events()
        self._arm_timer()

    def _arm_timer(self) -> None:
        if self._closed:
            return
        deadline = self.node.next_deadline()
        if deadline == self._timer_deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_deadline = deadline
        if deadline is not None:
            loop = self.loop
            self._timer = loop.call_at(loop.time() + max(0.0, deadline - self._clock()), self._on_timer)

    # ------------------------------------------------------------------ transmit

    def _transmit(self, frames: list[Frame]) -> None:
        if not frames:
            return
        if self._tx_backlog:
            self._tx_backlog.extend(frames)
            return
        write = self.device.write
        for i, frame in enumerate(frames):
            try:
                ok = write(frame)
            except Exception as exc:
                self._tx_error(exc)
                continue
            if not ok:
                self._defer(frames[i:])
                return
            self.counters["tx_frames"] += 1

    def _defer(self, frames: list[Frame]) -> None:
        """The device queue is full: keep the frames in order and send them once it has room."""
        self.counters["tx_deferred"] += len(frames)
        was_empty = not self._tx_backlog
        self._tx_backlog.extend(frames)
        if was_empty and not self._closed:
            self.loop.add_writer(self.device.fileno(), self._on_writable)

    def _on_writable(self) -> None:
        backlog, write = self._tx_backlog, self.device.write
        while backlog:
            try:
                ok = write(backlog[0])
            except Exception as exc:
                backlog.popleft()
                self._tx_error(exc)
                continue
            if not ok:
                # The device said it had room and still refused: after a few tries the frame itself is at
                # fault (a TAP write error), and keeping it would block everything behind it.
                self._write_retries += 1
                if self._write_retries >= _MAX_WRITE_RETRIES:
                    backlog.popleft()
                    self._write_retries = 0
                    self.counters["tx_dropped"] += 1
                    continue
                return
            backlog.popleft()
            self._write_retries = 0
            self.counters["tx_frames"] += 1
        self.loop.remove_writer(self.device.fileno())

    def _tx_error(self, exc: Exception) -> None:
        self.counters["tx_error"] += 1
        self.loop.call_exception_handler({"message": "device.write() failed", "exception": exc})

    # ------------------------------------------------------------------ events

    def _dispatch_events(self) -> None:
        stack, clock = self.stack, self._clock
        while True:
            # Output before each event: next_event() drains the engines of dirty sockets and forgets one
            # that reached CLOSED, so a RST that abort() queued in a callback must leave first.
            self._transmit(self.node.frames_to_send(clock()))
            ev = stack.next_event()
            if ev is None:
                return
            try:
                self._dispatch(ev)
            except Exception as exc:
                self.counters["callback_errors"] += 1
                self.loop.call_exception_handler(
                    {"message": f"handling {ev!r} failed", "exception": exc, "runtime": self}
                )
                if isinstance(ev, ConnectionEvent) and (transport := self._transports.get(ev.sock)):
                    transport.abort()  # as asyncio does after a protocol callback raised
            for handler in self._event_handlers:
                handler(ev)

    def _dispatch(self, ev: HostEvent) -> None:
        if isinstance(ev, ConnectionEvent):
            sock, tcp_ev = ev.sock, ev.tcp_event
            transport = self._transports.get(sock)
            if transport is not None:
                if isinstance(tcp_ev, Closed):
                    del self._transports[sock]
                transport._on_event(tcp_ev)
                if isinstance(tcp_ev, StateChanged) and tcp_ev.new is TcpState.TIME_WAIT:
                    self._transport_lost(transport)
            elif (pending := self._connecting.get(sock)) is not None:
                self._on_connect_event(pending, tcp_ev)
        elif isinstance(ev, IncomingConnection):
            server = self._servers.get(ev.listener)
            if server is not None:
                server._accept_pending()

    def _on_connect_event(self, pending: _PendingConnect, ev: object) -> None:
        sock = pending.sock
        if isinstance(ev, Connected):
            del self._connecting[sock]
            if pending.future.done():  # cancelled meanwhile
                sock.abort()
                return
            protocol = pending.protocol_factory()
            transport = self._adopt(sock, protocol, None, pending.options)
            pending.future.set_result((transport, protocol))
        elif isinstance(ev, ConnectionReset):
            self._fail_connect(pending, reset_error(ev.refused))
        elif isinstance(ev, ConnectionTimedOut):
            self._fail_connect(pending, timed_out_error())
        elif isinstance(ev, ConnectionUnreachable):
            self._fail_connect(pending, unreachable_error())
        elif isinstance(ev, Closed):
            self._connecting.pop(sock, None)
            self._fail_connect(pending, ConnectionAbortedError(errno.ECONNABORTED, "connection closed"))

    def _fail_connect(self, pending: _PendingConnect, exc: Exception) -> None:
        if not pending.future.done():
            pending.future.set_exception(exc)

    def _adopt(
        self,
        sock: TcpSocket,
        protocol: asyncio.BaseProtocol,
        server: Server | None,
        options: SocketOptions | None = None,
    ) -> TcpTransport:
        transport = TcpTransport(self, sock, protocol, server, options)
        self._transports[sock] = transport
        transport._start()
        return transport

    def _transport_lost(self, transport: TcpTransport) -> None:
        """connection_lost was delivered (or the connection entered TIME-WAIT since). The socket stays mapped
        until Closed, so late events reach the transport, unless it is in TIME-WAIT: then nothing it could
        still see matters to the application, and the transport, its protocol and their buffers are not held
        for the 2 MSL a busy server keeps thousands of such connections."""
        sock = transport.tcp_socket
        if transport.lost and sock.state is TcpState.TIME_WAIT and self._transports.get(sock) is transport:
            del self._transports[sock]

    # ================================================================== application API

    async def create_connection(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: str,
        port: int,
        *,
        local_port: int | None = None,
        options: SocketOptions | None = None,
    ) -> tuple[TcpTransport, asyncio.BaseProtocol]:
        """Active open, like ``loop.create_connection``: returns once the handshake completed.

        ``options`` (socket options set before the connection existed) reach the engine before the SYN leaves;
        the transport's ``get_extra_info('socket')`` then shares them. Without them (an asyncio caller) the
        connection has TCP_NODELAY, as asyncio's transports on kernel sockets (``options.asyncio_options``).

        Raises ConnectionRefusedError (RST to our SYN), TimeoutError (errno ETIMEDOUT: SYN retries exhausted),
        OSError EHOSTUNREACH (the next hop did not answer ARP: about 3 s, as Linux) and OSError for addresses
        the stack cannot use (EADDRNOTAVAIL, ENETUNREACH, EADDRINUSE).
        """
        self._check_running()
        try:
            sock = self.stack.connect(host, port, self._clock(), local_port=local_port)
        except (InvalidAddress, InvalidPort, AddressInUse, NoEphemeralPort) as exc:
            raise _address_error(exc) from exc
        if options is None:  # an asyncio caller (the blocking Socket passes its own)
            options = asyncio_options(SocketOptions(self.stack.tcp_config))
        if engine := options.engine_options():
            sock.configure(**engine)
        pending = _PendingConnect(sock, protocol_factory, options)
        self._connecting[sock] = pending
        self.flush_soon()
        try:
            return await pending.future
        except asyncio.CancelledError:
            if self._connecting.pop(sock, None) is not None:
                sock.abort()
                self.flush_soon()
            raise

    async def open_connection(
        self, host: str, port: int, *, local_port: int | None = None, limit: int = DEFAULT_LIMIT
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """``asyncio.open_connection`` on the stack."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport, _ = await self.create_connection(lambda: protocol, host, port, local_port=local_port)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        return reader, writer

    async def create_server(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: str | None = None,
        port: int | None = None,
        *,
        backlog: int = 128,
        start_serving: bool = True,
        options: SocketOptions | None = None,
    ) -> Server:
        """Passive open, like ``loop.create_server``; ``port`` None or 0 picks a free ephemeral port.

        Accepted connections inherit the options of ``server.sockets[0]`` (``options``, or set there later).
        """
        self._check_running()
        self._check_local_host(host)
        listener = self._listen(port, backlog)
        server = Server(self, listener, protocol_factory, options)
        self._servers[listener] = server
        if start_serving:
            server._start_serving()
        return server

    async def start_server(
        self,
        client_connected_cb: StreamsCallback,
        host: str | None = None,
        port: int | None = None,
        *,
        limit: int = DEFAULT_LIMIT,
        backlog: int = 128,
        start_serving: bool = True,
    ) -> Server:
        """``asyncio.start_server`` on the stack: ``client_connected_cb(reader, writer)``, plain or async."""
        loop = asyncio.get_running_loop()

        def factory() -> asyncio.StreamReaderProtocol:
            reader = asyncio.StreamReader(limit=limit, loop=loop)
            return asyncio.StreamReaderProtocol(reader, client_connected_cb, loop=loop)

        return await self.create_server(factory, host, port, backlog=backlog, start_serving=start_serving)

    def _check_running(self) -> None:
        if not self._started or self._closed:
            raise RuntimeError("the runtime is not running (start() it on the event loop first)")

    def _check_local_host(self, host: str | None) -> None:
        if host in (None, "", "0.0.0.0"):
            return
        if host != ip_str(self.stack.iface.ip):
            raise OSError(errno.EADDRNOTAVAIL, f"cannot listen on {host!r}: not this stack's address")

    def _listen(self, port: int | None, backlog: int) -> Listener:
        if port:
            try:
                return self.stack.listen(port, backlog=backlog)
            except (AddressInUse, InvalidPort) as exc:
                raise _address_error(exc) from exc
        low, high = _EPHEMERAL
        start = random.randrange(low, high + 1)
        for i in range(high - low + 1):
            try:
                return self.stack.listen(low + (start - low + i) % (high - low + 1), backlog=backlog)
            except AddressInUse:
                continue
        raise OSError(errno.EADDRINUSE, "no free port to listen on")

    def _server_closed(self, server: Server) -> None:
        self._servers.pop(server._listener, None)
        self.flush_soon()


class Server:
    """What ``create_server`` / ``start_server`` return; the methods of ``asyncio.Server``."""

    def __init__(
        self,
        runtime: Runtime,
        listener: Listener,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        options: SocketOptions | None = None,
    ) -> None:
        self._runtime = runtime
        self._listener = listener
        self._protocol_factory = protocol_factory
        self._serving = False
        self._closed = False
        self._transports: set[TcpTransport] = set()
        self._waiters: list[asyncio.Future[None]] = []
        self._serving_forever: asyncio.Future[None] | None = None
        self._accept_waiters: list[asyncio.Future[None]] = []  # accept() callers of a server not serving
        options = options or SocketOptions(runtime.stack.tcp_config)
        self.sockets = [SocketInfo((ip_str(runtime.stack.iface.ip), listener.port), None, options)]

    def __repr__(self) -> str:
        return f"<Server port={self.port} serving={self._serving} connections={len(self._transports)}>"

    @property
    def port(self) -> int:
        return self._listener.port

    @property
    def listener(self) -> Listener:
        return self._listener

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._runtime.loop

    def is_serving(self) -> bool:
        return self._serving and not self._closed

    async def start_serving(self) -> None:
        self._start_serving()

    def _start_serving(self) -> None:
        if self._closed:
            raise RuntimeError(f"server {self!r} is closed")
        if not self._serving:
            self._serving = True
            self._accept_pending()

    def _accept_pending(self) -> None:
        if not self.is_serving():
            self._wake_acceptors()
            return
        while (sock := self._listener.accept()) is not None:  # for asyncio (the Socket calls accept())
            options = asyncio_options(self.sockets[0].options.copy())
            self._runtime._adopt(sock, self._protocol_factory(), self, options)

    async def accept(self, protocol: asyncio.BaseProtocol) -> TcpTransport:
        """One connection from the listener's accept queue, for a server created with ``start_serving=False``
        (the blocking socket's ``accept``): connections wait there, within the backlog, until taken."""
        while True:
            if self._closed:
                raise OSError(errno.EINVAL, "Invalid argument: the server is closed")
            if self._serving:
                raise RuntimeError(f"server {self!r} is serving: it accepts connections itself")
            sock = self._listener.accept()
            if sock is not None:
                self._runtime.flush_soon()
                return self._runtime._adopt(sock, protocol, self, self.sockets[0].options.copy())
            waiter = self._runtime.loop.create_future()
            self._accept_waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._accept_waiters:
                    self._accept_waiters.remove(waiter)

    def _wake_acceptors(self) -> None:
        waiters, self._accept_waiters = self._accept_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _attach(self, transport: TcpTransport) -> None:
        self._transports.add(transport)

    def _detach(self, transport: TcpTransport) -> None:
        self._transports.discard(transport)
        self._wake_waiters()

    def close(self) -> None:
        """Stop listening (connections not yet accepted are reset); accepted connections carry on."""
        if self._closed:
            return
        self._closed = True
        self._serving = False
        self._listener.close()
        self._runtime._server_closed(self)
        self._wake_acceptors()
        if self._serving_forever is not None and not self._serving_forever.done():
            self._serving_forever.cancel()
        self._wake_waiters()

    def close_clients(self) -> None:
        for transport in list(self._transports):
            transport.close()

    def abort_clients(self) -> None:
        for transport in list(self._transports):
            transport.abort()

    def _wake_waiters(self) -> None:
        if self._closed and not self._transports:
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._waiters.clear()

    async def wait_closed(self) -> None:
        """Until the server is closed and every connection it accepted has been lost (asyncio 3.12)."""
        if self._closed and not self._transports:
            return
        waiter = self._runtime.loop.create_future()
        self._waiters.append(waiter)
        await waiter

    async def serve_forever(self) -> None:
        if self._serving_forever is not None:
            raise RuntimeError(f"server {self!r} is already being awaited on serve_forever()")
        if self._closed:
            raise RuntimeError(f"server {self!r} is closed")
        self._start_serving()
        self._serving_forever = self._runtime.loop.create_future()
        try:
            await self._serving_forever
        except asyncio.CancelledError:
            try:
                self.close()
                await self.wait_closed()
            finally:
                raise
        finally:
            self._serving_forever = None

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()


def _address_error(exc: Exception) -> OSError:
    if isinstance(exc, AddressInUse):
        return OSError(errno.EADDRINUSE, str(exc))
    if isinstance(exc, NoEphemeralPort):
        return OSError(errno.EADDRNOTAVAIL, str(exc))
    if isinstance(exc, InvalidAddress) and "no route" in str(exc):
        return OSError(errno.ENETUNREACH, str(exc))
    if isinstance(exc, InvalidPort):
        return OSError(errno.EINVAL, str(exc))
    return OSError(errno.EADDRNOTAVAIL, str(exc))


__all__ = ["DEFAULT_LIMIT", "Device", "FrameSource", "Runtime", "Server"]
