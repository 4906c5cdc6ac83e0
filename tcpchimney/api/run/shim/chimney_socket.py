"""``StackSocket``: ``socket.socket`` whose IPv4 TCP sockets are the chimney stack's (standard library only).

An AF_INET/SOCK_STREAM socket starts as one end of an AF_UNIX stream socketpair (the C object is told it is
AF_INET, so ``family``/``type`` and address parsing are an IPv4 socket's). ``connect`` and ``listen`` hand the
other end (for a listener, a SOCK_SEQPACKET end put over the descriptor with ``dup2``) to the chimney process;
a socket bound or connected to loopback becomes a kernel socket on the same descriptor number. Readiness is
the kernel's on that descriptor:

- connecting: the chimney process fills the socket's send buffer until the handshake ends, so the descriptor
  turns writable exactly when the connection is established or failed (SO_ERROR then says which);
- connected: readable when the stack received data or the peer's FIN, writable while the relay takes data;
- listening: readable when a connection waits; ``accept`` receives its descriptor (SCM_RIGHTS).

Errors the kernel keeps in ``sk_err`` (a reset, a give-up after retransmissions, a refused connect) are
asked of the chimney process when the descriptor reports EOF or EPIPE, and raised once, as CPython would.
"""

from __future__ import annotations

import _socket
import contextlib
import errno
import os
import select
import socket as _socket_module
import struct
from collections.abc import Callable
from typing import Any

try:
    from . import chimney_shim as shim
except ImportError:  # loaded from the directory ``chimney run`` puts on PYTHONPATH
    import chimney_shim as shim  # type: ignore[no-redef]

AF_INET = _socket_module.AF_INET
SOCK_STREAM = _socket_module.SOCK_STREAM
SOL_SOCKET = _socket_module.SOL_SOCKET
_TYPE_FLAGS = getattr(_socket_module, "SOCK_NONBLOCK", 0) | getattr(_socket_module, "SOCK_CLOEXEC", 0)
_NONBLOCK = getattr(_socket_module, "SOCK_NONBLOCK", 0)
_LINGER = struct.Struct("ii")


class _State:
    """What one stack socket is on the chimney side: its record id, state, addresses, pending pieces."""

    __slots__ = ("eof_checked", "id", "linger", "pair", "peername", "replay", "sockname", "state")

    def __init__(self, state: str = shim.FRESH, pair: Any = None) -> None:
        self.id: int | None = None
        self.state = state
        self.pair = pair  # the socketpair's other end, until connect/listen hands it over
        self.sockname: tuple[str, int] | None = None
        self.peername: tuple[str, int] | None = None
        self.linger = (0, 0)
        self.replay: list[
            tuple[int, int, Any, int | None]
        ] = []  # options for a socket that goes to the kernel
        self.eof_checked = False


# Options the socket answers itself, as the kernel reports them for an IPv4 TCP socket.
_LOCAL: dict[int, Callable[[_State], int]] = {
    getattr(_socket_module, "SO_TYPE", 3): lambda s: SOCK_STREAM,
    getattr(_socket_module, "SO_DOMAIN", 39): lambda s: AF_INET,
    getattr(_socket_module, "SO_PROTOCOL", 38): lambda s: _socket_module.IPPROTO_TCP,
    getattr(_socket_module, "SO_ACCEPTCONN", 30): lambda s: int(s.state == shim.LISTENING),
}


def _not_connected() -> OSError:
    return OSError(errno.ENOTCONN, os.strerror(errno.ENOTCONN))


class StackSocket(shim.KernelSocket):
    """``socket.socket``; an AF_INET stream socket is the stack's unless it goes to loopback."""

    def __init__(self, family: Any = -1, type: Any = -1, proto: Any = -1, fileno: Any = None) -> None:
        self._chimney: _State | None = None
        if fileno is None and _for_stack(family, type, proto):
            mine, theirs = _socket.socketpair(_socket_module.AF_UNIX, SOCK_STREAM)
            super().__init__(AF_INET, SOCK_STREAM, 0 if proto == -1 else proto, mine.detach())
            self._chimney = _State(pair=theirs)
            if type != -1 and type & _NONBLOCK:
                self.setblocking(False)
        else:
            super().__init__(family, type, proto, fileno)

    # ------------------------------------------------------------------ control

    def _request(self, st: _State, op: str, fds: list[int] | None = None, **fields: Any) -> dict[str, Any]:
        reply = shim.control().request(op, fds, id=st.id, **fields)
        if reply.get("id") is not None:
            st.id = reply["id"]
        if reply.get("errno"):
            for fd in reply["fds"]:
                os.close(fd)
            raise shim.error_from(reply)
        return reply

    def _status(self, st: _State, consume: bool) -> int:
        """Refresh state and addresses from the chimney process; the pending error (0: none)."""
        if st.id is None:
            return 0
        reply = self._request(st, "status", consume=consume)
        state = reply.get("state", st.state)
        if st.state == shim.CONNECTING or state in (shim.FAILED, shim.CLOSED):
            st.state = state
        if reply.get("sockname"):
            st.sockname = tuple(reply["sockname"])
        if reply.get("peername"):
            st.peername = tuple(reply["peername"])
        return int(reply.get("pending") or 0)

    def _error_or(self, st: _State, exc: OSError) -> OSError:
        pending = self._status(st, consume=True)
        return OSError(pending, os.strerror(pending)) if pending else exc

    def _to_kernel(self, st: _State) -> None:
        """Loopback: the descriptor number becomes a kernel TCP socket, with the options set so far."""
        kernel = _socket.socket(AF_INET, SOCK_STREAM, self.proto)
        for level, name, value, optlen in st.replay:
            if optlen is None:
                kernel.setsockopt(level, name, value)
            else:
                kernel.setsockopt(level, name, None, optlen)
        self._replace_descriptor(kernel)
        if st.pair is not None:
            st.pair.close()
        if st.id is not None:
            self._forget_record(st)
        self._chimney = None

    def _replace_descriptor(self, other: Any) -> None:
        timeout = self.gettimeout()
        try:
            os.dup2(other.fileno(), self.fileno(), inheritable=False)
        finally:
            other.close()
        super().settimeout(timeout)  # O_NONBLOCK belongs to the new file description

    def _forget_record(self, st: _State) -> None:
        with contextlib.suppress(OSError):  # the chimney process is gone: nothing to release
            shim.control().request("close", None, id=st.id)

    # ------------------------------------------------------------------ connect

    def connect(self, address: Any) -> None:
        st = self._chimney
        if st is None:
            shim.check_kernel_destination(self, address)
            return super().connect(address)
        self._connect(st, address)

    def connect_ex(self, address: Any) -> int:
        try:
            self.connect(address)
        except _socket_module.gaierror:
            raise
        except TimeoutError as exc:
            return exc.errno or errno.EAGAIN  # CPython: a timeout is EWOULDBLOCK here
        except OSError as exc:
            if exc.errno is None:
                raise
            return exc.errno
        return 0

    def _connect(self, st: _State, address: Any) -> None:
        host, port = shim.inet_address(address)
        if st.state == shim.CONNECTING:
            raise OSError(errno.EALREADY, os.strerror(errno.EALREADY))
        if st.state == shim.CONNECTED:
            raise OSError(errno.EISCONN, os.strerror(errno.EISCONN))
        if st.state not in (shim.FRESH, shim.BOUND):
            raise OSError(
                errno.EINVAL, "Invalid argument: chimney run connects a socket once (open a new one)"
            )
        if shim.is_loopback(host) and st.state == shim.FRESH:
            self._to_kernel(st)
            return super().connect(address)
        self._request(st, "connect", [st.pair.fileno(), self.fileno()], host=host, port=port)
        st.pair.close()
        st.pair = None
        st.state = shim.CONNECTING
        timeout = self.gettimeout()
        if timeout == 0:
            raise BlockingIOError(errno.EINPROGRESS, os.strerror(errno.EINPROGRESS))
        self._wait_connected(st, timeout)

    def _wait_connected(self, st: _State, timeout: float | None) -> None:
        poller = select.poll()
        poller.register(self.fileno(), select.POLLOUT)
        if not poller.poll(None if timeout is None else max(0, int(timeout * 1000 + 0.999))):
            self._abort(st)
            st.state = shim.FAILED
            raise TimeoutError("timed out")
        pending = self._status(st, consume=True)
        if pending:
            st.state = shim.FAILED
            raise OSError(pending, os.strerror(pending))

    def _abort(self, st: _State) -> None:
        with contextlib.suppress(OSError):
            shim.control().request("abort", None, id=st.id)

    # ------------------------------------------------------------------ bind, listen, accept

    def bind(self, address: Any) -> None:
        st = self._chimney
        if st is None:
            return super().bind(address)
        host, port = shim.inet_address(address)
        if st.state != shim.FRESH:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        if shim.is_loopback(host):
            self._to_kernel(st)
            return super().bind(address)
        if host not in ("0.0.0.0", shim.stack_addr()):
            raise OSError(errno.EADDRNOTAVAIL, os.strerror(errno.EADDRNOTAVAIL))
        reply = self._request(st, "bind", host=host, port=port)
        st.sockname = (host, int(reply["port"]))
        st.state = shim.BOUND

    def listen(self, backlog: int = 128) -> None:
        st = self._chimney
        if st is None:
            return super().listen(backlog)
        if st.state == shim.FRESH:
            self.bind(("0.0.0.0", 0))
        if st.state == shim.LISTENING:
            return
        if st.state != shim.BOUND:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        mine, theirs = _socket.socketpair(_socket_module.AF_UNIX, _socket_module.SOCK_SEQPACKET)
        try:
            self._request(st, "listen", [theirs.fileno()], backlog=backlog)
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        self._replace_descriptor(mine)
        st.pair.close()
        st.pair = None
        st.state = shim.LISTENING

    def accept(self) -> tuple[Any, Any]:
        st = self._chimney
        if st is None:
            return super().accept()
        if st.state != shim.LISTENING:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        raw, fds = shim.receive_message(self)
        for extra in fds[1:]:
            os.close(extra)
        if not raw or not fds:
            raise OSError(errno.EINVAL, "Invalid argument: the stack closed the listening socket")
        meta = shim.decode(raw)
        conn = StackSocket(AF_INET, SOCK_STREAM, self.proto, fileno=fds[0])
        accepted = _State(shim.CONNECTED)
        accepted.id = meta["id"]
        accepted.sockname = tuple(meta["sockname"])
        accepted.peername = tuple(meta["peername"])
        conn._chimney = accepted
        if _socket_module.getdefaulttimeout() is None and self.gettimeout():
            conn.setblocking(True)
        return conn, accepted.peername

    # ------------------------------------------------------------------ data

    def _check_io(self, st: _State, sending: bool) -> None:
        if st.state in (shim.FRESH, shim.BOUND, shim.LISTENING):
            if sending:
                raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))
            raise _not_connected()

    def _eof(self, st: _State) -> None:
        st.eof_checked = True
        pending = self._status(st, consume=True)
        if pending:
            raise OSError(pending, os.strerror(pending))

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        st = self._chimney
        if st is None:
            return super().recv(bufsize, flags)
        if st.state != shim.CONNECTED:
            self._check_io(st, False)
        try:
            data = super().recv(bufsize, flags)
        except ConnectionError as exc:
            raise self._error_or(st, exc) from None
        if not data and bufsize and not st.eof_checked:
            self._eof(st)
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        st = self._chimney
        if st is None:
            return super().recv_into(buffer, nbytes, flags)
        if st.state != shim.CONNECTED:
            self._check_io(st, False)
        try:
            n = super().recv_into(buffer, nbytes, flags)
        except ConnectionError as exc:
            raise self._error_or(st, exc) from None
        if not n and (nbytes or len(buffer)) and not st.eof_checked:
            self._eof(st)
        return n

    def send(self, data: Any, flags: int = 0) -> int:
        st = self._chimney
        if st is None:
            return super().send(data, flags)
        if st.state != shim.CONNECTED:
            self._check_io(st, True)
        try:
            return super().send(data, flags)
        except ConnectionError as exc:
            raise self._error_or(st, exc) from None

    def sendall(self, data: Any, flags: int = 0) -> None:
        st = self._chimney
        if st is None:
            return super().sendall(data, flags)
        if st.state != shim.CONNECTED:
            self._check_io(st, True)
        try:
            return super().sendall(data, flags)
        except ConnectionError as exc:
            raise self._error_or(st, exc) from None

    def sendmsg(self, buffers: Any, *args: Any) -> int:
        st = self._chimney
        if st is None:
            return super().sendmsg(buffers, *args)
        if st.state != shim.CONNECTED:
            self._check_io(st, True)
        try:
            return super().sendmsg(buffers, *args)
        except ConnectionError as exc:
            raise self._error_or(st, exc) from None

    def sendto(self, data: Any, *args: Any) -> int:
        if self._chimney is None:
            shim.check_kernel_destination(self, args[-1] if args else None)
        return super().sendto(data, *args)

    def shutdown(self, how: int) -> None:
        st = self._chimney
        if st is not None and st.state not in (shim.CONNECTED, shim.CONNECTING):
            raise _not_connected()
        super().shutdown(how)

    # ------------------------------------------------------------------ addresses and options

    def getsockname(self) -> Any:
        st = self._chimney
        if st is None:
            return super().getsockname()
        if st.sockname is None and st.state == shim.CONNECTING:
            self._status(st, consume=False)
        return st.sockname or ("0.0.0.0", 0)

    def getpeername(self) -> Any:
        st = self._chimney
        if st is None:
            return super().getpeername()
        if st.state == shim.CONNECTING:
            self._status(st, consume=False)
        if st.peername is None or st.state in (shim.CONNECTING, shim.FAILED):
            raise _not_connected()
        return st.peername  # also after the peer's FIN, as the kernel reports it in CLOSE-WAIT

    def setsockopt(self, level: int, optname: int, value: Any, optlen: int | None = None) -> None:
        st = self._chimney
        if st is None:
            if optlen is None:
                return super().setsockopt(level, optname, value)
            return super().setsockopt(level, optname, None, optlen)
        if optlen is not None:
            fields: dict[str, Any] = {"hex": bytes(optlen).hex()}
        elif isinstance(value, int):
            fields = {"value": int(value)}
        else:
            fields = {"hex": bytes(value).hex()}
        self._request(st, "setsockopt", level=level, name=optname, **fields)
        if (level, optname) == (SOL_SOCKET, _socket_module.SO_LINGER) and "hex" in fields:
            raw = bytes.fromhex(fields["hex"])
            st.linger = _LINGER.unpack_from(raw) if len(raw) >= _LINGER.size else (0, 0)
        if st.state == shim.FRESH:
            st.replay.append((level, optname, value, optlen))

    def getsockopt(self, level: int, optname: int, buflen: int | None = None) -> Any:
        st = self._chimney
        if st is None:
            if buflen is None:
                return super().getsockopt(level, optname)
            return super().getsockopt(level, optname, buflen)
        if level == SOL_SOCKET and optname == _socket_module.SO_ERROR:
            number = self._status(st, consume=True) if st.state != shim.FRESH else 0
        elif level == SOL_SOCKET and optname in _LOCAL:
            number = _LOCAL[optname](st)
        else:
            reply = self._request(st, "getsockopt", level=level, name=optname, buflen=buflen)
            if "hex" in reply:
                return bytes.fromhex(reply["hex"])
            number = int(reply["value"])
        if buflen is not None:
            return struct.pack("i", number)[:buflen]
        return number

    # ------------------------------------------------------------------ life cycle

    def dup(self) -> Any:
        other = super().dup()
        other._chimney = self._chimney
        return other

    def _real_close(self, _ss: Any = _socket.socket) -> None:
        st = self._chimney
        if st is not None:
            self._chimney = None
            self._release(st)
        super()._real_close()  # type: ignore[misc]

    def _release(self, st: _State) -> None:
        if st.pair is not None:
            st.pair.close()
            st.pair = None
        if st.id is None:
            return
        if st.linger[0] and st.linger[1] == 0 and st.state in (shim.CONNECTED, shim.CONNECTING):
            self._abort(st)  # SO_LINGER (1, 0): close() resets the connection
        elif st.state in (shim.FRESH, shim.BOUND, shim.CONNECTING):
            self._forget_record(st)
        # connected and listening sockets end when every copy of their descriptor is closed


def _for_stack(family: Any, type: Any, proto: Any) -> bool:
    family = AF_INET if family == -1 else family
    kind = SOCK_STREAM if type == -1 else type & ~_TYPE_FLAGS
    return bool(family == AF_INET and kind == SOCK_STREAM and proto in (-1, 0, _socket_module.IPPROTO_TCP))


def install() -> bool:
    """Patch the socket module when this process runs under ``chimney run``; False otherwise."""
    if not shim.configure():
        return False
    _socket_module.socket = StackSocket  # type: ignore[misc]
    _socket_module.getaddrinfo = shim.getaddrinfo
    _socket_module.gethostbyname = shim.gethostbyname
    return True


__all__ = ["StackSocket", "install"]
