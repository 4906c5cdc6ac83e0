"""What ``chimney run`` loads into the program: IPv4 TCP sockets that are the stack's (standard library only).

``install()`` replaces ``socket.socket`` with ``StackSocket``, ``socket.getaddrinfo`` and
``socket.gethostbyname`` with resolvers of literals and of the ``--hosts`` file, so whatever the program or
its libraries build on ``socket`` (``create_connection``, ``create_server``, ``socketserver``,
``http.client``, ``urllib3``, the asyncio selector loop) gets the stack's sockets.

A ``StackSocket`` for the stack owns one real kernel descriptor, one end of an AF_UNIX stream socketpair whose
other end the chimney process relays to the stack connection, so ``select``, ``poll``, ``selectors`` and
asyncio see the connection's readiness on it, and ``recv``/``send``/``sendall``/``makefile``/timeouts are
CPython's own calls on that descriptor. Control (connect, bind, listen, options, the pending error) goes over
one AF_UNIX SOCK_SEQPACKET connection per process to the chimney process (``$CHIMNEY_RUN_SOCKET``), one JSON
message each way, descriptors passed with SCM_RIGHTS. The design and its limits: docs/unchanged-apps.md.

This file must run on whatever Python 3 the program uses: nothing outside the standard library, no
``tcpchimney`` import.
"""

from __future__ import annotations

import array
import errno
import ipaddress
import json
import os
import socket as _socket_module
import threading
from typing import Any

SOCKET_ENV = "CHIMNEY_RUN_SOCKET"  # the chimney process's control socket
ADDR_ENV = "CHIMNEY_RUN_ADDR"  # the stack's own IPv4 address
HOSTS_ENV = "CHIMNEY_RUN_HOSTS"  # a hosts(5) file of names for getaddrinfo
MAX_MESSAGE = 65536
_FD_SIZE = array.array("i").itemsize

# The kernel's socket class and resolver, as they were before ``install()``.
KernelSocket = _socket_module.socket
kernel_getaddrinfo = _socket_module.getaddrinfo
_AF_INET = _socket_module.AF_INET
_SOL_SOCKET = _socket_module.SOL_SOCKET

# Socket states (what the chimney process reports in "status" replies too).
FRESH, BOUND, CONNECTING, CONNECTED, LISTENING, FAILED, CLOSED = (
    "fresh",
    "bound",
    "connecting",
    "connected",
    "listening",
    "failed",
    "closed",
)


# ---------------------------------------------------------------------------------------------- the wire


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def decode(raw: bytes) -> dict[str, Any]:
    """One message; ValueError if it is not a JSON object."""
    message = json.loads(raw.decode())
    if not isinstance(message, dict):
        raise ValueError("a control message must be a JSON object")
    return message


def send_message(sock: Any, message: dict[str, Any], fds: list[int] | None = None) -> None:
    ancillary = []
    if fds:
        ancillary = [(_SOL_SOCKET, _socket_module.SCM_RIGHTS, array.array("i", fds).tobytes())]
    sock.sendmsg([encode(message)], ancillary)


def receive_message(sock: Any) -> tuple[bytes, list[int]]:
    """One message and the descriptors that came with it (close-on-exec); b"" when the peer is gone."""
    raw, ancillary, _flags, _addr = sock.recvmsg(
        MAX_MESSAGE, _socket_module.CMSG_SPACE(4 * _FD_SIZE), getattr(_socket_module, "MSG_CMSG_CLOEXEC", 0)
    )
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == _SOL_SOCKET and kind == _socket_module.SCM_RIGHTS:
            usable = len(data) - len(data) % _FD_SIZE
            fds.extend(array.array("i", data[:usable]))
    return raw, fds


def error_from(reply: dict[str, Any]) -> OSError:
    """The OSError subclass CPython raises for the reply's errno (ConnectionRefusedError: ECONNREFUSED)."""
    number = int(reply.get("errno") or errno.EIO)
    return OSError(number, reply.get("message") or os.strerror(number))


# ------------------------------------------------------------------------------------------ the control


class Control:
    """This process's control connection to the chimney process; one request at a time (a lock), reopened
    in a forked child (the parent's connection stays the parent's)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._sock: Any = None
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        sock, self._sock = self._sock, None
        self._lock = threading.Lock()
        if sock is not None:
            sock.close()  # the child's copy only

    def request(self, op: str, fds: list[int] | None = None, **fields: Any) -> dict[str, Any]:
        """The reply to one request (with "fds": descriptors that came with it); OSError ENETDOWN when the
        chimney process is gone."""
        with self._lock:
            try:
                if self._sock is None:
                    sock = KernelSocket(_socket_module.AF_UNIX, _socket_module.SOCK_SEQPACKET)
                    sock.connect(self.path)
                    self._sock = sock
                send_message(self._sock, {"op": op, **fields}, fds)
                raw, got = receive_message(self._sock)
            except OSError as exc:
                raise _stack_gone(str(exc)) from None
            if not raw:
                raise _stack_gone("it closed the control connection")
            reply = decode(raw)
            reply["fds"] = got
            return reply


def _stack_gone(detail: str) -> OSError:
    return OSError(errno.ENETDOWN, f"Network is down: the chimney run stack process is gone ({detail})")


_control: Control | None = None
_stack_addr = "0.0.0.0"


def control() -> Control:
    if _control is None:
        raise _stack_gone(f"${SOCKET_ENV} is not set")
    return _control


# ------------------------------------------------------------------------------------------- addresses


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def inet_address(address: Any, what: str = "AF_INET") -> tuple[str, int]:
    """(ip, port) of an AF_INET address as CPython checks it; names are resolved as getaddrinfo does."""
    if not isinstance(address, tuple) or len(address) != 2:
        raise TypeError(f"{what} address must be tuple, not {type(address).__name__}")
    host, port = address
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise OverflowError("connect(): port must be 0-65535.")
    if isinstance(host, bytes):
        host = host.decode()
    if not isinstance(host, str):
        raise TypeError(f"str, bytes or bytearray expected, not {type(host).__name__}")
    if host in ("", "0.0.0.0"):
        return "0.0.0.0", port
    if host == "<broadcast>":
        return "255.255.255.255", port
    return _resolve(host), port


def _resolve(host: str) -> str:
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    if is_loopback(host):
        return "127.0.0.1"
    found = hosts().get(host.lower())
    if found is None:
        raise _socket_module.gaierror(
            _socket_module.EAI_NONAME,
            f"Name or service not known: {host!r} (chimney run resolves IPv4 literals and the names of its "
            "--hosts file)",
        )
    return found


def parse_hosts(text: str) -> dict[str, str]:
    """Names to IPv4 addresses of a hosts(5) text; ValueError names the first bad line."""
    names: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        try:
            address = ipaddress.ip_address(fields[0])
        except ValueError:
            raise ValueError(f"line {number}: {fields[0]!r} is not an IP address") from None
        if len(fields) < 2:
            raise ValueError(f"line {number}: {fields[0]} has no name")
        if address.version != 4:
            continue  # IPv6 entries are the kernel's business (and stay on the kernel)
        for name in fields[1:]:
            names.setdefault(name.lower().rstrip("."), str(address))  # a trailing dot: the same name
    return names


_hosts: dict[str, str] | None = None


def hosts() -> dict[str, str]:
    global _hosts
    if _hosts is None:
        path = os.environ.get(HOSTS_ENV)
        _hosts = {}
        if path:
            with open(path, encoding="utf-8") as file:
                _hosts = parse_hosts(file.read())
    return _hosts


def getaddrinfo(
    host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
) -> list[Any]:
    """IPv4 answers for literals, None (any or loopback) and the hosts file; IPv6 literals and localhost are
    the kernel's (they stay on loopback)."""
    if isinstance(host, bytes):
        host = host.decode()
    if family not in (0, _AF_INET) or (isinstance(host, str) and (":" in host or host == "localhost")):
        return kernel_getaddrinfo(host, port, family, type, proto, flags)
    ip = ("0.0.0.0" if flags & _socket_module.AI_PASSIVE else "127.0.0.1") if host is None else _resolve(host)
    # The kernel's resolver turns the service into ports and fills the type/proto combinations.
    answers = kernel_getaddrinfo(ip, port, _AF_INET, type, proto, flags | _socket_module.AI_NUMERICHOST)
    return list(answers)


def gethostbyname(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "0.0.0.0"
    return _resolve(host)


def _unsupported(what: str) -> OSError:
    return OSError(errno.ENETUNREACH, f"Network is unreachable: chimney run carries IPv4 TCP only ({what})")


def check_kernel_destination(sock: Any, address: Any) -> None:
    """UDP and IPv6 stay on the kernel's loopback; anything else would leave through the host's network."""
    family = sock.family
    if family not in (_AF_INET, _socket_module.AF_INET6) or not isinstance(address, tuple) or not address:
        return
    host = address[0].decode() if isinstance(address[0], bytes) else str(address[0])
    try:
        if ipaddress.ip_address(host.split("%")[0]).is_loopback:
            return
    except ValueError:
        if is_loopback(host):
            return
    kind = "UDP" if sock.type == _socket_module.SOCK_DGRAM else "IPv6" if family != _AF_INET else "raw"
    raise _unsupported(f"{kind} to {host} is not supported")


def configure(environ: Any = None) -> bool:
    """Read the environment ``chimney run`` gave; False when this process is not under ``chimney run``."""
    global _control, _stack_addr
    env = os.environ if environ is None else environ
    path = env.get(SOCKET_ENV)
    if not path:
        return False
    _control = Control(path)
    _stack_addr = env.get(ADDR_ENV, "0.0.0.0")
    return True


def stack_addr() -> str:
    return _stack_addr
