"""The control socket's format: one JSON object per line each way, a request answered by one reply.

A request is ``{"v": 1, "id": ANY, "command": NAME, "args": {...}}`` (``id`` and ``args`` optional); its
reply ``{"v": 1, "id": ANY, "ok": true, "result": ...}`` or ``{"v": 1, "id": ANY, "ok": false, "error":
SENTENCE}``. A streamed answer (``events`` with ``follow``) is a line ``{"v": 1, "id": ANY, "ok": true,
"event": {...}}`` per event until the client closes the connection. A line that is not such a request gets
an error reply and the connection stays usable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

VERSION = 1
MAX_LINE = 64 * 1024  # a request longer than this is refused (and the connection closed)


class RequestError(Exception):
    """A request the plane cannot take; the message is the one sentence the client shows."""


@dataclass(frozen=True, slots=True)
class Request:
    command: str
    args: dict[str, Any] = field(default_factory=dict)
    id: Any = None
    version: int = VERSION


class Stream:
    """A command's result that keeps the connection: the server sends ``first`` as the reply, then hands
    the connection to ``run``, which sends event lines (``{"v": 1, "event": NAME, ...}``) until it ends
    (the client said stop, went away, or the stack closes). The connection is closed after it."""

    first: Any = None

    async def run(self, reader: Any, writer: Any) -> None:
        raise NotImplementedError


def event_line(event: str, **fields: Any) -> bytes:
    return json.dumps({"v": VERSION, "event": event, **fields}, default=str).encode() + b"\n"


def parse_request(line: bytes) -> Request:
    """One request line, or RequestError saying what is wrong with it."""
    try:
        raw = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise RequestError("the request is not a JSON object") from None
    if not isinstance(raw, dict):
        raise RequestError("the request is not a JSON object")
    version = raw.get("v", VERSION)
    if version != VERSION:
        raise RequestError(f"protocol version {version!r} is not spoken here (this stack speaks {VERSION})")
    command, args = raw.get("command"), raw.get("args", {})
    if not isinstance(command, str) or not command:
        raise RequestError('the request names no "command"')
    if not isinstance(args, dict):
        raise RequestError('"args" must be a JSON object')
    return Request(command, args, raw.get("id"), version)


def request_line(command: str, args: dict[str, Any] | None = None, id: Any = None) -> bytes:
    message: dict[str, Any] = {"v": VERSION, "id": id, "command": command, "args": args or {}}
    return json.dumps(message).encode() + b"\n"


def reply_line(request_id: Any, result: Any = None, error: str | None = None) -> bytes:
    reply: dict[str, Any] = {"v": VERSION, "id": request_id, "ok": error is None}
    if error is None:
        reply["result"] = result
    else:
        reply["error"] = error
    return json.dumps(reply, default=str).encode() + b"\n"


def stream_line(request_id: Any, event: Any) -> bytes:
    """One line of a streamed answer (``events`` with ``follow``): as many as there are, no final reply
    until the stream ends."""
    return (
        json.dumps({"v": VERSION, "id": request_id, "ok": True, "event": event}, default=str).encode() + b"\n"
    )


def parse_reply(line: bytes) -> Any:
    """The result of a reply line; RequestError with the stack's sentence for an error reply."""
    try:
        raw = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise RequestError("the stack answered something that is not JSON") from None
    if not isinstance(raw, dict) or "ok" not in raw:
        raise RequestError("the stack answered something that is not a reply")
    if not raw["ok"]:
        raise RequestError(str(raw.get("error") or "the stack refused the request"))
    return raw.get("result")


def arg(args: dict[str, Any], name: str, kind: Any, default: Any = None) -> Any:
    """``args[name]`` checked against ``kind`` (a type or a union; ``default`` when absent), or RequestError
    naming it. JSON's true/false are not numbers here."""
    value = args.get(name, default)
    if value is None:
        return value
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        expected = getattr(kind, "__name__", "a number")
        raise RequestError(f'"{name}" must be {expected}, not {type(value).__name__}')
    return value
