"""Finding a running stack's control socket and asking it: what every admin verb does first."""

from __future__ import annotations

import glob
import json
import os
import socket
from collections.abc import Iterator
from typing import Any

from tcpchimney.link import runs
from tcpchimney.manage.paths import SUFFIX, is_live, socket_path
from tcpchimney.manage.protocol import RequestError, parse_reply, request_line

TIMEOUT = 10.0
MAX_REPLY = 64 * 1024 * 1024  # a netstat of a few hundred thousand connections


class ControlError(Exception):
    """What went wrong reaching or asking a stack, as one sentence."""


def find(name: str | None = None, directory: str | None = None) -> str:
    """The control socket of the stack named ``name``, or of the only one running."""
    directory = directory or runs.run_dir()
    if name is not None:
        path = socket_path(name, directory)
        if not os.path.exists(path):
            raise ControlError(f"no stack named {name} is running (no {path})")
        return path
    paths = sorted(glob.glob(os.path.join(glob.escape(directory), "*" + SUFFIX)))
    live = [p for p in paths if is_live(p)]
    if len(live) == 1:
        return live[0]
    if len(live) > 1:
        names = ", ".join(os.path.basename(p)[: -len(SUFFIX)] for p in live)
        raise ControlError(f"{len(live)} stacks are running ({names}): say which with --name")
    if paths:
        raise ControlError(
            f"no stack is running; {paths[0]} is left by one that died (chimney cleanup removes it)"
        )
    raise ControlError(f"no stack is running (none has a control socket in {directory})")


def _connected(path: str, timeout: float) -> socket.socket:
    """A connection to the control socket at ``path``, or ControlError saying why there is none."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except PermissionError:
        sock.close()
        raise ControlError(
            f"permission denied on {path}: the control socket is for root and its group"
        ) from None
    except OSError:
        sock.close()
        raise ControlError(
            f"the stack behind {path} is not running (chimney cleanup removes its leftover)"
        ) from None
    return sock


def call(path: str, command: str, args: dict[str, Any] | None = None, timeout: float = TIMEOUT) -> Any:
    """Send one request to the stack at ``path`` and return its result."""
    with _connected(path, timeout) as sock:
        try:
            sock.sendall(request_line(command, args))
            reply = _read_line(sock)
        except TimeoutError:
            raise ControlError(f"the stack at {path} did not answer within {timeout:g} s") from None
        except OSError as exc:
            raise ControlError(f"the stack at {path} went away: {exc.strerror or exc}") from None
    try:
        return parse_reply(reply)
    except RequestError as exc:
        raise ControlError(str(exc)) from None


def follow(path: str, command: str, args: dict[str, Any] | None = None) -> Iterator[Any]:
    """Send one request whose answer is a stream and yield each of its events as it comes, until the stack
    ends (or refuses the request: ControlError with its sentence)."""
    with _connected(path, TIMEOUT) as sock:
        try:
            sock.sendall(request_line(command, args))
        except OSError as exc:
            raise ControlError(f"the stack at {path} went away: {exc.strerror or exc}") from None
        sock.settimeout(None)
        lines = sock.makefile("rb")
        for line in lines:
            try:
                raw = json.loads(line)
            except ValueError:
                raise ControlError("the stack answered something that is not JSON") from None
            if isinstance(raw, dict) and "event" in raw:
                yield raw["event"]
                continue
            try:
                parse_reply(line)
            except RequestError as exc:
                raise ControlError(str(exc)) from None
            return


def _read_line(sock: socket.socket) -> bytes:
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionResetError("the stack closed the connection")
        data += chunk
        if len(data) > MAX_REPLY:
            raise ConnectionResetError("the reply is too long")
    return bytes(data)


class StreamClient:
    """The client end of a streaming command (a ``Stream`` on the stack's side): event lines as dicts."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray()

    def next(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next event line; None when ``timeout`` passed first; ConnectionError once the stack ended."""
        self.sock.settimeout(timeout)
        while b"\n" not in self._buf:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return None
            if not chunk:
                raise ConnectionResetError("the stack closed the connection")
            self._buf += chunk
        line, _, rest = bytes(self._buf).partition(b"\n")
        self._buf = bytearray(rest)
        try:
            event = json.loads(line)
        except ValueError:
            raise ConnectionResetError("the stack sent something that is not JSON") from None
        return event if isinstance(event, dict) else {}

    def send_line(self, line: bytes) -> None:
        self.sock.sendall(line)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> StreamClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_stream(
    path: str, command: str, args: dict[str, Any] | None = None, timeout: float = TIMEOUT
) -> tuple[StreamClient, Any]:
    """Start the streaming ``command`` at ``path``: the stream and the result of its first reply."""
    sock = _connected(path, timeout)
    try:
        stream = StreamClient(sock)
        try:
            sock.sendall(request_line(command, args))
            reply = stream.next(timeout)
        except OSError as exc:
            raise ControlError(f"the stack at {path} went away: {exc.strerror or exc}") from None
        if reply is None:
            raise ControlError(f"the stack at {path} did not answer within {timeout:g} s")
        try:
            first = parse_reply(json.dumps(reply).encode())
        except RequestError as exc:
            raise ControlError(str(exc)) from None
    except BaseException:
        sock.close()
        raise
    return stream, first
