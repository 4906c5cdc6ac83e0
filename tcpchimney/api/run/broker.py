"""The chimney side of ``chimney run``: the control socket the programs' shims talk to, and its requests.

``Broker(runtime, directory)`` listens on ``directory/control`` (AF_UNIX, SOCK_SEQPACKET); each process of the
program opens one connection and sends one JSON request at a time (``chimney_shim.Control``), descriptors
attached with SCM_RIGHTS. Requests never wait for the network: ``connect`` answers once the SYN is on its way
and the program waits on its own descriptor. A malformed request is counted and answered with EINVAL.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from tcpchimney.api.options import SocketOptions
from tcpchimney.api.run.relay import ConnectFiller, Relay, RunSocket
from tcpchimney.api.run.shim import chimney_shim as shim
from tcpchimney.api.runtime import Runtime
from tcpchimney.api.streams import SocketInfo
from tcpchimney.host.interface import ip_str

CONTROL_NAME = "control"
_GRAVEYARD = 4096  # pending errors of sockets whose connection is gone, kept until the program asks
Handler = Callable[[RunSocket, dict[str, Any], list[int]], Awaitable[dict[str, Any]]]


class BadRequest(ValueError):
    """A request the shim would never send."""


def _option_error(exc: OSError, level: int, name: int) -> OSError:
    if exc.errno == errno.ENOPROTOOPT:
        return OSError(
            exc.errno, f"Protocol not available: the chimney stack has no socket option {_name(level, name)}"
        )
    return exc


def _name(level: int, name: int) -> str:
    prefixes = {socket.SOL_SOCKET: "SO_", socket.IPPROTO_TCP: "TCP_", socket.IPPROTO_IP: "IP_"}
    prefix = prefixes.get(level)
    if prefix is not None:
        # Several names share a number (IP_TOS is IP_DEFAULT_MULTICAST_LOOP): the shortest is the usual one.
        names = [a for a in dir(socket) if a.startswith(prefix) and getattr(socket, a) == name]
        if names:
            return min(names, key=len)
    return f"(level {level}, option {name})"


class Broker:
    """Program sockets on the stack, driven over the control socket."""

    def __init__(self, runtime: Runtime, directory: str) -> None:
        self.runtime = runtime
        self.path = os.path.join(directory, CONTROL_NAME)
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._records: dict[int, RunSocket] = {}
        self._graveyard: OrderedDict[int, int] = OrderedDict()
        self._relays: set[Relay] = set()
        self._next_id = 1
        self._tasks: set[asyncio.Task[Any]] = set()
        self.counters = {
            "control_connections": 0,
            "requests": 0,
            "malformed": 0,
            "errors": 0,
            "connects": 0,
            "connect_failures": 0,
            "accepted": 0,
            "listeners": 0,
        }
        self._ops: dict[str, Handler] = {
            "status": self._status,
            "connect": self._connect,
            "bind": self._bind,
            "listen": self._listen,
            "setsockopt": self._setsockopt,
            "getsockopt": self._getsockopt,
            "abort": self._abort,
            "close": self._close,
        }

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        listener.bind(self.path)
        os.chmod(self.path, 0o600)
        listener.listen(64)
        listener.setblocking(False)
        self._listener = listener
        asyncio.get_running_loop().add_reader(listener.fileno(), self._accept)

    async def wait_idle(self, timeout: float) -> None:
        """Until every relay ended (the program's connections handed over their last bytes) or ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._relays and loop.time() < deadline:
            await asyncio.sleep(0.01)

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        if self._listener is not None:
            loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
        for conn in list(self._connections):
            self._drop(conn)
        for record in list(self._records.values()):
            self._release(record)
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    async def __aenter__(self) -> Broker:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the control connections

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            conn, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        conn.setblocking(False)
        self._connections.add(conn)
        self.counters["control_connections"] += 1
        asyncio.get_running_loop().add_reader(conn.fileno(), self._on_message, conn)

    def _drop(self, conn: socket.socket) -> None:
        """A process ended (or exec'd): its fresh and bound sockets go; others end with their descriptors."""
        if conn not in self._connections:
            return
        self._connections.discard(conn)
        asyncio.get_running_loop().remove_reader(conn.fileno())
        conn.close()
        for record in list(self._records.values()):
            if record.owner is conn and record.state in ("fresh", "bound"):
                self._release(record)

    def _on_message(self, conn: socket.socket) -> None:
        try:
            raw, fds = shim.receive_message(conn)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            raw, fds = b"", []
        if not raw:
            self._drop(conn)
            return
        self.counters["requests"] += 1
        self._spawn(self._serve(conn, raw, fds))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: socket.socket, raw: bytes, fds: list[int]) -> None:
        try:
            reply = await self._handle(conn, raw, fds)
        finally:
            for fd in fds:  # what the request's handler did not take
                os.close(fd)
        with contextlib.suppress(OSError):
            shim.send_message(conn, reply)

    async def _handle(self, conn: socket.socket, raw: bytes, fds: list[int]) -> dict[str, Any]:
        try:
            request = shim.decode(raw)
            handler = self._ops.get(request.get("op"))  # type: ignore[arg-type]
            if handler is None:
                raise BadRequest(f"unknown operation {request.get('op')!r}")
            record = self._record(request.get("id"), conn)
            reply = await handler(record, request, fds)
            return {"id": record.id, **reply}
        except OSError as exc:
            return {
                "id": request.get("id"),
                "errno": exc.errno or errno.EIO,
                "message": exc.strerror or str(exc),
            }
        except (ValueError, TypeError, KeyError) as exc:
            self.counters["malformed"] += 1
            return {
                "errno": errno.EINVAL,
                "message": f"Invalid argument: malformed chimney run request ({exc})",
            }

    def _record(self, ident: object, conn: socket.socket) -> RunSocket:
        if ident is None:
            record = RunSocket(self._next_id, SocketOptions(self.runtime.stack.tcp_config), conn)
            self._next_id += 1
            self._records[record.id] = record
            return record
        if not isinstance(ident, int):
            raise BadRequest("a socket id is an integer")
        known = self._records.get(ident)
        if known is None:
            # A socket whose connection is gone: only its pending error is left.
            record = RunSocket(ident, SocketOptions(self.runtime.stack.tcp_config), conn)
            record.state = "closed"
            record.pending = self._graveyard.get(ident, 0)
            return record
        return known

    def _release(self, record: RunSocket) -> None:
        self._records.pop(record.id, None)
        if record.connect_task is not None:
            record.connect_task.cancel()
        if record.server is not None:
            record.server.close()
            record.server = None
        if record.channel is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(record.channel.fileno())
            record.channel.close()
            record.channel = None
        if record.relay is not None and record.relay.stack is not None and not record.relay.stack_lost:
            record.relay.stack.abort()

    def _relay_done(self, record: RunSocket) -> None:
        relay = record.relay
        if relay is not None:
            self._relays.discard(relay)
        self._records.pop(record.id, None)
        if record.pending:
            self._graveyard[record.id] = record.pending
            while len(self._graveyard) > _GRAVEYARD:
                self._graveyard.popitem(last=False)

    # ------------------------------------------------------------------ requests

    async def _status(self, record: RunSocket, request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        status = record.status()
        if request.get("consume"):
            record.pending = 0
            self._graveyard.pop(record.id, None)
        return status

    async def _close(self, record: RunSocket, request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        self._release(record)
        return {}

    async def _abort(self, record: RunSocket, request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        relay = record.relay
        if relay is not None and relay.stack is not None and not relay.stack_lost:
            relay.stack.abort()
        elif record.connect_task is not None:
            record.connect_task.cancel()
        return {}

    async def _connect(self, record: RunSocket, request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        host, port = request["host"], request["port"]
        if not isinstance(host, str) or not isinstance(port, int) or len(fds) != 2:
            raise BadRequest("connect takes host, port and two descriptors")
        if record.state not in ("fresh", "bound"):
            raise OSError(errno.EISCONN, os.strerror(errno.EISCONN))
        local_port = None
        if record.server is not None:  # bound first: the connection leaves from the bound port
            local_port = record.server.port
            record.server.close()
            record.server = None
        chimney_end = socket.socket(fileno=fds.pop(0))
        filler = ConnectFiller(socket.socket(fileno=fds.pop(0)))
        relay = Relay(record, self._relay_done)
        record.relay = relay
        task = asyncio.get_running_loop().create_task(
            self.runtime.create_connection(
                relay.stack_protocol, host, port, local_port=local_port, options=record.options
            )
        )
        await asyncio.sleep(0)  # the task's first step: the stack takes the address or refuses it now
        if task.done() and task.exception() is not None:
            filler.release(chimney_end)
            chimney_end.close()
            record.relay = None
            raise task.exception()  # type: ignore[misc]
        record.state = "connecting"
        record.connect_task = task
        self.counters["connects"] += 1
        self._relays.add(relay)
        task.add_done_callback(lambda t: self._spawn(self._connected(record, t, filler, chimney_end)))
        return {"state": "connecting"}

    async def _connected(
        self, record: RunSocket, task: asyncio.Task[Any], filler: ConnectFiller, chimney_end: socket.socket
    ) -> None:
        record.connect_task = None
        relay = record.relay
        assert relay is not None
        error = None if task.cancelled() else task.exception()
        if task.cancelled() or error is not None:
            self.counters["connect_failures"] += 1
            record.state = "failed"
            record.pending = error.errno if isinstance(error, OSError) and error.errno else errno.ECONNABORTED
            filler.release(chimney_end)
            chimney_end.close()  # the program reads EOF, then SO_ERROR or recv tells it why
            relay.stack_lost = relay.unix_lost = True
            self._relays.discard(relay)
            self._relay_done(record)
            return
        filler.release(chimney_end)
        await relay.attach(chimney_end)

    async def _bind(self, record: RunSocket, request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        host, port = request["host"], request["port"]
        if not isinstance(host, str) or not isinstance(port, int):
            raise BadRequest("bind takes host and port")
        if record.state != "fresh":
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        if host not in ("0.0.0.0", ip_str(self.runtime.stack.iface.ip)):
            raise OSError(errno.EADDRNOTAVAIL, os.strerror(errno.EADDRNOTAVAIL))

        def accepted() -> Any:
            return self._accepted_relay(record).stack_protocol()

        record.server = await self.runtime.create_server(
            accepted, port=port or None, start_serving=False, options=record.options
        )
        record.state = "bound"
        record.sockname = (host, record.server.port)
        return {"port": record.server.port}

    async def _listen(self, record: RunSocket, request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        if len(fds) != 1:
            raise BadRequest("listen takes one descriptor")
        if record.state != "bound" or record.server is None:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        channel = socket.socket(fileno=fds.pop(0))
        channel.setblocking(False)
        record.channel = channel
        record.state = "listening"
        self.counters["listeners"] += 1
        # The program never writes on this channel: readable means every copy of its end is closed.
        asyncio.get_running_loop().add_reader(channel.fileno(), self._release, record)
        await record.server.start_serving()
        return {}

    def _accepted_relay(self, listener: RunSocket) -> Relay:
        record = RunSocket(self._next_id, listener.options.copy(), None)
        self._next_id += 1
        relay = Relay(record, self._relay_done)
        record.relay = relay
        relay.on_stack_connected = lambda r: self._hand_over(listener, r)
        return relay

    def _hand_over(self, listener: RunSocket, relay: Relay) -> None:
        """An accepted connection's descriptor goes to the program's listening socket (its accept queue)."""
        record = relay.record
        assert relay.stack is not None
        if listener.channel is None:
            relay.stack.abort()
            return
        program_end, chimney_end = socket.socketpair()
        meta = {"id": record.id, "sockname": record.sockname, "peername": record.peername}
        try:
            shim.send_message(listener.channel, meta, [program_end.fileno()])
        except OSError:  # its queue is full (the program does not accept) or it is gone: as a full backlog
            chimney_end.close()
            relay.stack.abort()
            return
        finally:
            program_end.close()
        self._records[record.id] = record
        self._relays.add(relay)
        self.counters["accepted"] += 1
        self._spawn(relay.attach(chimney_end))

    async def _setsockopt(self, record: RunSocket, request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        level, name = int(request["level"]), int(request["name"])
        value: int | bytes = bytes.fromhex(request["hex"]) if "hex" in request else int(request["value"])
        try:
            self._options_target(record).setsockopt(level, name, value)
        except OSError as exc:
            raise _option_error(exc, level, name) from None
        return {}

    async def _getsockopt(self, record: RunSocket, request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        level, name, buflen = int(request["level"]), int(request["name"]), request.get("buflen")
        try:
            value = self._options_target(record).getsockopt(level, name, buflen)
        except OSError as exc:
            raise _option_error(exc, level, name) from None
        return {"hex": value.hex()} if isinstance(value, bytes) else {"value": value}

    def _options_target(self, record: RunSocket) -> Any:
        """The live connection's or listener's socket (changes apply at once), else the record's options."""
        relay = record.relay
        if relay is not None and relay.stack is not None:
            return relay.stack.get_extra_info("socket")
        if record.server is not None:
            return record.server.sockets[0]
        return SocketInfo(("0.0.0.0", 0), None, record.options)
