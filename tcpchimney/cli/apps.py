"""The applications ``chimney serve`` runs: echo (RFC 862), discard (RFC 863) and a small HTTP/1.1 server.

They are written against plain asyncio ``StreamReader`` / ``StreamWriter`` (only read, readline, readexactly,
write, drain, close, wait_closed, write_eof, can_write_eof, get_extra_info), so the same code runs on the
stack's streams and on kernel sockets; the unit tests use the latter.

HTTP routes:

- ``GET /bytes/N?seed=S``: N bytes of ``deterministic_bytes(N, S)``, with their SHA-256 in the header
  ``X-Content-SHA256`` (computed by a first pass, cached per (N, S)).
- ``POST /sha256``: the SHA-256 and length of the body (Content-Length or chunked) as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from urllib.parse import parse_qs, urlsplit

from tcpchimney.cli.choices import DISCARD_PORT, ECHO_PORT, HTTP_PORT

BLOCK = 1 << 20
MAX_BYTES = 1 << 40  # largest N served by /bytes/N
_READ_CHUNK = 256 * 1024
_MAX_LINE = 8192
_MAX_HEADERS = 100
_GOLDEN = 0x9E3779B1  # odd multiplier: spreads block indices over the rotation offsets

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


# ====================================================================== deterministic payloads


@functools.lru_cache(maxsize=16)
def _base_block(seed: int) -> bytes:
    return random.Random(seed).randbytes(BLOCK)


def deterministic_bytes(n: int, seed: int = 0) -> Iterator[bytes]:
    """N bytes for ``seed``, in blocks of at most 1 MiB, never all in memory.

    One random 1 MiB block per seed, each following block a rotation of it by an offset derived from its
    index: generating costs one 1 MiB copy per MiB (some GB/s), not a PRNG pass (about 0.5 GB/s).
    """
    if n < 0:
        raise ValueError(f"byte count must be >= 0, got {n}")
    base = _base_block(seed)
    index = 0
    while n > 0:
        k = (index * _GOLDEN) % BLOCK
        block = base[k:] + base[:k] if k else base
        if n < BLOCK:
            block = block[:n]
        yield block
        n -= len(block)
        index += 1


@functools.lru_cache(maxsize=64)
def deterministic_sha256(n: int, seed: int = 0) -> str:
    """The hex SHA-256 of ``deterministic_bytes(n, seed)`` (a first streaming pass, cached)."""
    digest = hashlib.sha256()
    for block in deterministic_bytes(n, seed):
        digest.update(block)
    return digest.hexdigest()


# ====================================================================== statistics


@dataclass(slots=True)
class AppStats:
    """What an application did, for the final counters line."""

    connections: int = 0
    active: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    requests: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()


# ====================================================================== echo and discard


def echo_app(stats: AppStats) -> Handler:
    """RFC 862: send back what arrives; on the peer's FIN, finish sending and half-close in turn."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stats.connections += 1
        stats.active += 1
        try:
            while data := await reader.read(_READ_CHUNK):
                stats.bytes_in += len(data)
                writer.write(data)
                await writer.drain()
                stats.bytes_out += len(data)
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            stats.errors += 1
        finally:
            stats.active -= 1
            await _close(writer)

    return handle


def discard_app(stats: AppStats) -> Handler:
    """RFC 863: read and throw away until the peer's FIN."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stats.connections += 1
        stats.active += 1
        try:
            while data := await reader.read(_READ_CHUNK):
                stats.bytes_in += len(data)
        except (ConnectionError, OSError):
            stats.errors += 1
        finally:
            stats.active -= 1
            await _close(writer)

    return handle


# ====================================================================== HTTP/1.1


class BadRequest(Exception):
    """The request cannot be understood (answered 400, then the connection is closed)."""


@dataclass(slots=True)
class Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", " (RFC 9110 5.3)

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError as exc:
        raise BadRequest("line too long") from exc
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise BadRequest("connection closed inside a request") from exc
        raise EOFError from exc
    if len(line) > _MAX_LINE:
        raise BadRequest("line too long")
    return line.rstrip(b"\r\n")


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """The next request's head, or None at a clean end of the connection."""
    try:
        line = await _read_line(reader)
        while not line:  # RFC 9112 2.2: ignore at least one empty line before a request-line
            line = await _read_line(reader)
    except EOFError:
        return None
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise BadRequest("malformed request line")
    headers: dict[str, str] = {}
    for _ in range(_MAX_HEADERS + 1):
        try:
            raw = await _read_line(reader)
        except EOFError as exc:
            raise BadRequest("connection closed inside the headers") from exc
        if not raw:
            method, target, version = (p.decode("latin-1") for p in parts)
            return Request(method, target, version, headers)
        name, sep, value = raw.partition(b":")
        if not sep or not name or name != name.strip():
            raise BadRequest("malformed header line")
        key = name.decode("latin-1").lower()
        text = value.strip().decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    raise BadRequest("too many headers")


def _persistence(req: Request | None) -> dict[str, str]:
    """The Connection header an answer to ``req`` needs (None: a request that could not be read). An HTTP/1.0
    client keeps the connection only when the answer says ``keep-alive`` (RFC 9112 9.3, C.2.2): without it
    ``ab -k`` waits for the close that delimits the answer while the server waits for the next request."""
    if req is None or not req.keep_alive:
        return {"Connection": "close"}
    return {"Connection": "keep-alive"} if req.version == "HTTP/1.0" else {}


def _response_head(status: int, reason: str, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class HttpApp:
    """``GET /bytes/N?seed=S`` and ``POST /sha256`` with keep-alive; one instance serves all connections."""

    def __init__(self, stats: AppStats | None = None) -> None:
        self.stats = stats or AppStats()

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stats = self.stats
        stats.connections += 1
        stats.active += 1
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, OSError):
            stats.errors += 1
        finally:
            stats.active -= 1
            await _close(writer)

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; False when the connection must end."""
        try:
            request = await read_request(reader)
            if request is None:
                return False
            self.stats.requests += 1
            return await self._route(request, reader, writer)
        except BadRequest as exc:
            self.stats.errors += 1
            await self._simple(writer, 400, "Bad Request", {"error": str(exc)}, None)
            return False

    async def _route(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        url = urlsplit(req.target)
        if url.path.startswith("/bytes/"):
            if req.method not in ("GET", "HEAD"):
                return await self._not_allowed(req, reader, writer, "GET, HEAD")
            return await self._get_bytes(req, url.path[len("/bytes/") :], url.query, writer)
        if url.path == "/sha256":
            if req.method != "POST":
                return await self._not_allowed(req, reader, writer, "POST")
            return await self._post_sha256(req, reader, writer)
        await _discard_body(req, reader)
        await self._simple(writer, 404, "Not Found", {"error": f"no route for {url.path}"}, req)
        return req.keep_alive

    async def _not_allowed(
        self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, allow: str
    ) -> bool:
        await _discard_body(req, reader)
        body = {"error": f"{req.method} not allowed"}
        await self._simple(writer, 405, "Method Not Allowed", body, req, {"Allow": allow})
        return req.keep_alive

    async def _get_bytes(self, req: Request, count: str, query: str, writer: asyncio.StreamWriter) -> bool:
        n, seed = _parse_bytes_args(count, query)
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(n),
            "X-Content-SHA256": deterministic_sha256(n, seed),
            **_persistence(req),
        }
        writer.write(_response_head(200, "OK", headers))
        if req.method == "GET":
            for block in deterministic_bytes(n, seed):
                writer.write(block)
                await writer.drain()
                self.stats.bytes_out += len(block)
        await writer.drain()
        return req.keep_alive

    async def _post_sha256(
        self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        if req.headers.get("expect", "").lower() == "100-continue":  # RFC 9110 10.1.1 (curl sends it)
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        digest = hashlib.sha256()
        length = 0
        async for chunk in _body_chunks(req, reader):
            digest.update(chunk)
            length += len(chunk)
            self.stats.bytes_in += len(chunk)
        await self._simple(writer, 200, "OK", {"sha256": digest.hexdigest(), "length": length}, req)
        return req.keep_alive

    async def _simple(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        reason: str,
        body: Mapping[str, object],
        req: Request | None,
        extra: dict[str, str] | None = None,
    ) -> None:
        payload = (json.dumps(body) + "\n").encode()
        length = str(len(payload))
        headers = {"Content-Type": "application/json", "Content-Length": length, **(extra or {})}
        headers.update(_persistence(req))
        writer.write(_response_head(status, reason, headers) + payload)
        await writer.drain()
        self.stats.bytes_out += len(payload)


def _parse_bytes_args(count: str, query: str) -> tuple[int, int]:
    if not count.isdigit():
        raise BadRequest(f"byte count must be a decimal integer, got {count!r}")
    n = int(count)
    if n > MAX_BYTES:
        raise BadRequest(f"at most {MAX_BYTES} bytes")
    try:
        params = parse_qs(query, strict_parsing=bool(query), max_num_fields=8)
    except ValueError as exc:
        raise BadRequest(f"bad query: {exc}") from exc
    seeds = params.get("seed", ["0"])
    try:
        seed = int(seeds[-1])
    except ValueError as exc:
        raise BadRequest(f"seed must be an integer, got {seeds[-1]!r}") from exc
    return n, seed


async def _body_chunks(req: Request, reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """The request body, de-chunked (RFC 9112 6.1, 7.1); raises BadRequest on a framing error."""
    coding = req.headers.get("transfer-encoding", "").lower()
    if coding:
        if coding != "chunked":
            raise BadRequest(f"unsupported transfer coding {coding!r}")
        async for chunk in _chunked(reader):
            yield chunk
        return
    length_text = req.headers.get("content-length", "0")
    if not length_text.isdigit():
        raise BadRequest(f"bad Content-Length {length_text!r}")
    remaining = int(length_text)
    while remaining:
        data = await reader.read(min(remaining, _READ_CHUNK))
        if not data:
            raise BadRequest("connection closed inside the body")
        remaining -= len(data)
        yield data


async def _chunked(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    while True:
        try:
            line = await _read_line(reader)
        except EOFError as exc:
            raise BadRequest("connection closed inside a chunked body") from exc
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError as exc:
            raise BadRequest(f"bad chunk size {size_text!r}") from exc
        if size < 0:
            raise BadRequest("negative chunk size")
        if size == 0:
            while await _read_line(reader):  # trailer fields, up to the empty line
                pass
            return
        while size:
            data = await reader.read(min(size, _READ_CHUNK))
            if not data:
                raise BadRequest("connection closed inside a chunk")
            size -= len(data)
            yield data
        try:
            if await reader.readexactly(2) != b"\r\n":
                raise BadRequest("chunk not followed by CRLF")
        except asyncio.IncompleteReadError as exc:
            raise BadRequest("connection closed inside a chunked body") from exc


async def _discard_body(req: Request, reader: asyncio.StreamReader) -> None:
    async for _ in _body_chunks(req, reader):
        pass


APPS: dict[str, tuple[int, Callable[[AppStats], Handler]]] = {
    "echo": (ECHO_PORT, echo_app),
    "discard": (DISCARD_PORT, discard_app),
    "http": (HTTP_PORT, HttpApp),
}
"""name -> (default port, factory of a connection handler given the shared statistics)."""
