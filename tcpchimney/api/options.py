"""Socket options as Linux takes and reports them, translated into the engine's per-connection settings.

``SocketOptions`` is shared by the blocking ``api.socket.Socket`` and by what asyncio code reaches through
``transport.get_extra_info('socket')``. ``set`` validates a value the way the kernel does (same errno) and
returns the ``TcpConnection.configure`` keywords it implies; ``engine_options`` returns them all, to apply
when a connection is created after the options were set.

Linux conventions kept on purpose: SO_RCVBUF / SO_SNDBUF report twice the value set (the kernel counts its
bookkeeping; the engine gets the value set as its data buffer), clamped to the kernel's minimums; booleans
read back as 0/1; TCP_KEEPIDLE / TCP_KEEPINTVL take 1..32767 seconds and TCP_KEEPCNT 1..127.
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import Any

from tcpchimney.tcp.config import TcpConfig

Value = int | bytes | bytearray | memoryview

SOCK_MIN_RCVBUF = 2304  # what Linux reports after SO_RCVBUF is set below its minimum
SOCK_MIN_SNDBUF = 4608
MAX_BUF = 1 << 30  # the engine's largest buffer
MAX_TCP_KEEPIDLE = 32767  # include/net/tcp.h
MAX_TCP_KEEPINTVL = 32767
MAX_TCP_KEEPCNT = 127
_LINGER = struct.Struct("ii")  # struct linger { int l_onoff; int l_linger; }
_INT = struct.Struct("i")

# Options accepted and reported back that change nothing in a one-address user-space stack.
_RECORDED = frozenset(
    {
        (socket.SOL_SOCKET, socket.SO_REUSEADDR),
        (socket.SOL_SOCKET, socket.SO_REUSEPORT),
        (socket.SOL_SOCKET, socket.SO_OOBINLINE),
    }
)


def invalid_argument() -> OSError:
    return OSError(errno.EINVAL, "Invalid argument")


def _no_such_option() -> OSError:
    return OSError(errno.ENOPROTOOPT, "Protocol not available")


class SocketOptions:
    """One socket's options; ``defaults`` (the stack's ``TcpConfig``) is what getsockopt reports unset."""

    def __init__(self, defaults: TcpConfig) -> None:
        self._defaults = defaults
        self._engine: dict[str, Any] = {}  # TcpConnection.configure keywords set so far
        self._recorded: dict[tuple[int, int], int] = {}
        self.linger: tuple[bool, int] = (False, 0)  # SO_LINGER (l_onoff, l_linger seconds)

    def copy(self) -> SocketOptions:
        """What an accepted socket inherits from its listener (Linux copies the listener's options)."""
        other = SocketOptions(self._defaults)
        other._engine = dict(self._engine)
        other._recorded = dict(self._recorded)
        other.linger = self.linger
        return other

    def engine_options(self) -> dict[str, Any]:
        return dict(self._engine)

    # ------------------------------------------------------------------ setsockopt

    def set(self, level: int, name: int, value: Value) -> dict[str, Any]:
        """Validate and keep one option; return the engine changes it implies (empty: none)."""
        key = (level, name)
        if key == (socket.SOL_SOCKET, socket.SO_LINGER):
            self.linger = _parse_linger(value)
            return {}
        number = _as_int(value)
        if key in _RECORDED:
            self._recorded[key] = int(number != 0)
            return {}
        change = _engine_change(level, name, number)
        self._engine.update(change)
        return change

    # ------------------------------------------------------------------ getsockopt

    def get(self, level: int, name: int, buflen: int | None = None) -> int | bytes:
        """The option as Linux reports it; with ``buflen`` the raw bytes (as ``socket.getsockopt``)."""
        key = (level, name)
        if key == (socket.SOL_SOCKET, socket.SO_LINGER):
            raw = _LINGER.pack(int(self.linger[0]), self.linger[1])
            return raw[:buflen] if buflen is not None else int(self.linger[0])
        number = self._recorded[key] if key in _RECORDED else self._engine_value(level, name)
        if buflen is not None:
            return _INT.pack(number)[:buflen]
        return number

    def _engine_value(self, level: int, name: int) -> int:
        field = _FIELDS.get((level, name))
        if field is None:
            raise _no_such_option()
        value = self._engine.get(field, getattr(self._defaults, field))
        if field in ("rcv_buf", "snd_buf"):
            return 2 * int(value)
        return int(value)


_FIELDS: dict[tuple[int, int], str] = {
    (socket.IPPROTO_TCP, socket.TCP_NODELAY): "nodelay",
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE): "keepalive",
    (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE): "keepalive_idle",
    (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL): "keepalive_interval",
    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT): "keepalive_probes",
    (socket.SOL_SOCKET, socket.SO_RCVBUF): "rcv_buf",
    (socket.SOL_SOCKET, socket.SO_SNDBUF): "snd_buf",
}
_RANGES = {
    "keepalive_idle": MAX_TCP_KEEPIDLE,
    "keepalive_interval": MAX_TCP_KEEPINTVL,
    "keepalive_probes": MAX_TCP_KEEPCNT,
}


def _engine_change(level: int, name: int, number: int) -> dict[str, Any]:
    field = _FIELDS.get((level, name))
    if field is None:
        raise _no_such_option()
    if field in ("nodelay", "keepalive"):
        return {field: number != 0}
    if field in _RANGES:
        if not 1 <= number <= _RANGES[field]:
            raise invalid_argument()
        return {field: number}
    # SO_RCVBUF / SO_SNDBUF: Linux treats the value as unsigned, doubles it and clamps it; a negative value
    # becomes the maximum.
    minimum = SOCK_MIN_RCVBUF if field == "rcv_buf" else SOCK_MIN_SNDBUF
    wanted = MAX_BUF if number < 0 else min(number, MAX_BUF)
    return {field: max(minimum // 2, wanted)}


def _as_int(value: Value) -> int:
    if isinstance(value, bool | int):
        return int(value)
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        if len(raw) < _INT.size:
            raise invalid_argument()  # Linux: optlen < sizeof(int)
        return int(_INT.unpack_from(raw)[0])
    raise TypeError(f"a bytes-like object is required, not {type(value).__name__!r}")


def asyncio_options(options: SocketOptions) -> SocketOptions:
    """``options`` with TCP_NODELAY set, as asyncio sets it on every TCP transport it makes (CPython's
    selector transports, since 3.6): an application that writes a response's head, then its body, must not
    wait for the peer's delayed ACK (40 ms on Linux) behind Nagle. Blocking sockets keep Nagle, as Linux's
    do."""
    options.set(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return options


def _parse_linger(value: Value) -> tuple[bool, int]:
    if isinstance(value, bool | int):
        raise invalid_argument()  # an int is shorter than struct linger
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"a bytes-like object is required, not {type(value).__name__!r}")
    raw = bytes(value)
    if len(raw) < _LINGER.size:
        raise invalid_argument()
    onoff, seconds = _LINGER.unpack_from(raw)
    return onoff != 0, max(0, seconds)


__all__ = ["SocketOptions", "asyncio_options", "invalid_argument"]
