"""The serve applications on kernel localhost sockets (the same code runs on the stack's streams)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from tcpchimney.cli.apps import (
    BLOCK,
    AppStats,
    HttpApp,
    deterministic_bytes,
    deterministic_sha256,
    discard_app,
    echo_app,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


async def serving(handler: Handler, body: Callable[[int], Awaitable[Any]]) -> Any:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        return await body(port)
    finally:
        server.close()
        await server.wait_closed()


# ---------------------------------------------------------------- deterministic bytes


@pytest.mark.parametrize("n", [0, 1, 1000, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 17])
def test_deterministic_bytes_length_and_chunking(n: int) -> None:
    blocks = list(deterministic_bytes(n, 5))
    assert sum(map(len, blocks)) == n
    assert all(0 < len(b) <= BLOCK for b in blocks)


def test_deterministic_bytes_repeat_for_a_seed_and_differ_across_seeds() -> None:
    a = b"".join(deterministic_bytes(2 * BLOCK + 5, 1))
    assert a == b"".join(deterministic_bytes(2 * BLOCK + 5, 1))
    assert a != b"".join(deterministic_bytes(2 * BLOCK + 5, 2))
    assert a[:BLOCK] != a[BLOCK : 2 * BLOCK]  # blocks are not one block repeated
    assert b"".join(deterministic_bytes(100, 1)) == a[:100]  # a prefix does not depend on the total


def test_deterministic_sha256_matches_the_bytes() -> None:
    n = BLOCK + 12345
    assert deterministic_sha256(n, 9) == hashlib.sha256(b"".join(deterministic_bytes(n, 9))).hexdigest()


def test_negative_count_is_refused() -> None:
    with pytest.raises(ValueError):
        next(deterministic_bytes(-1, 0))


# ---------------------------------------------------------------- echo and discard


def test_echo_returns_everything_then_half_closes() -> None:
    stats = AppStats()
    payload = b"".join(deterministic_bytes(3 * BLOCK + 7, 3))

    async def client(port: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)

        async def feed() -> None:
            writer.write(payload)
            await writer.drain()
            writer.write_eof()  # half-close: echo must still send back everything

        feeding = asyncio.create_task(feed())
        got = await reader.read()  # until the server's FIN
        await feeding
        writer.close()
        await writer.wait_closed()
        return got

    assert run(serving(echo_app(stats), client)) == payload
    assert stats.bytes_in == stats.bytes_out == len(payload)
    assert stats.connections == 1


def test_discard_counts_and_closes_at_eof() -> None:
    stats = AppStats()

    async def client(port: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"x" * 100_000)
        writer.write_eof()
        got = await reader.read()
        writer.close()
        return got

    assert run(serving(discard_app(stats), client)) == b""
    assert stats.bytes_in == 100_000


# ---------------------------------------------------------------- HTTP through an independent client


def test_http_get_bytes_digest_header_matches_body() -> None:
    async def client(port: int) -> tuple[str, bytes, int]:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}/bytes/{2 * BLOCK + 3}?seed=42"
            async with session.get(url) as resp:
                return resp.headers["X-Content-SHA256"], await resp.read(), resp.status

    digest, body, status = run(serving(HttpApp(), client))
    assert status == 200
    assert len(body) == 2 * BLOCK + 3
    assert hashlib.sha256(body).hexdigest() == digest
    assert body == b"".join(deterministic_bytes(2 * BLOCK + 3, 42))


def test_http_post_sha256_content_length_and_chunked() -> None:
    data = b"".join(deterministic_bytes(BLOCK + 999, 7))

    async def gen() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 65536):
            yield data[i : i + 65536]

    async def client(port: int) -> list[dict[str, Any]]:
        out = []
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}/sha256"
            async with session.post(url, data=data) as resp:
                out.append(await resp.json())
            async with session.post(url, data=gen()) as resp:  # no length known: chunked
                assert resp.request_info.headers.get("Transfer-Encoding") == "chunked"
                out.append(await resp.json())
        return out

    stats = AppStats()
    answers = run(serving(HttpApp(stats), client))
    expected = {"sha256": hashlib.sha256(data).hexdigest(), "length": len(data)}
    assert answers == [expected, expected]
    assert stats.bytes_in == 2 * len(data)


# ---------------------------------------------------------------- HTTP on the raw wire


async def exchange(port: int, request: bytes) -> bytes:
    """Send raw bytes, half-close, return everything the server sent until it closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    writer.write_eof()
    got = await reader.read()
    writer.close()
    return got


def raw(request: bytes, app: HttpApp | None = None) -> bytes:
    async def client(port: int) -> bytes:
        return await exchange(port, request)

    return run(serving(app or HttpApp(), client))  # type: ignore[no-any-return]


def responses(stream: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split a byte stream of responses by their Content-Length (all of ours carry one)."""
    out = []
    while stream:
        head, _, rest = stream.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:])
        status = int(lines[0].split()[1])
        n = 0 if status == 100 else int(headers["Content-Length"])
        out.append((status, headers, rest[:n]))
        stream = rest[n:]
    return out


def statuses(stream: bytes) -> list[int]:
    return [status for status, _, _ in responses(stream)]


def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    app = HttpApp()
    got = raw(
        b"GET /bytes/10?seed=1 HTTP/1.1\r\nHost: x\r\n\r\nGET /bytes/5 HTTP/1.1\r\nHost: x\r\n\r\n", app
    )
    (_, _, first), (_, _, second) = responses(got)
    assert first == b"".join(deterministic_bytes(10, 1))
    assert second == b"".join(deterministic_bytes(5, 0))
    assert app.stats.requests == 2 and app.stats.connections == 1


def test_expect_100_continue_is_answered_before_the_body() -> None:
    got = raw(b"POST /sha256 HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc")
    (cont, _, _), (ok, _, payload) = responses(got)
    assert (cont, ok) == (100, 200)
    body = json.loads(payload)
    assert body == {"sha256": hashlib.sha256(b"abc").hexdigest(), "length": 3}


def test_chunked_with_extensions_and_trailers() -> None:
    got = raw(
        b"POST /sha256 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2;x=y\r\nab\r\n1\r\nc\r\n0\r\nT: 1\r\n\r\n"
    )
    assert json.loads(got.split(b"\r\n\r\n", 1)[1]) == {
        "sha256": hashlib.sha256(b"abc").hexdigest(),
        "length": 3,
    }


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /bytes/10 HTTP/1.1\r\nNoColonHere\r\n\r\n",
        b"GET /bytes/abc HTTP/1.1\r\n\r\n",
        b"GET /bytes/10?seed=x HTTP/1.1\r\n\r\n",
        b"GET /bytes/99999999999999999 HTTP/1.1\r\n\r\n",
        b"POST /sha256 HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST /sha256 HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc",
        b"POST /sha256 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /sha256 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXX0\r\n\r\n",
        b"POST /sha256 HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 70000 + b"\r\n\r\n",
    ],
)
def test_bad_requests_get_400_and_a_close(request_bytes: bytes) -> None:
    app = HttpApp()
    got = raw(request_bytes, app)
    assert statuses(got) == [400]
    assert b"Connection: close" in got
    assert app.stats.errors == 1


def test_unknown_path_404_and_wrong_method_405_keep_the_connection() -> None:
    got = raw(
        b"GET /nope HTTP/1.1\r\n\r\n"
        b"PUT /sha256 HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi"
        b"GET /bytes/1 HTTP/1.1\r\n\r\n"
    )
    assert statuses(got) == [404, 405, 200]


def test_http_1_0_and_connection_close_end_the_connection() -> None:
    assert statuses(raw(b"GET /bytes/1 HTTP/1.0\r\n\r\nGET /bytes/1 HTTP/1.0\r\n\r\n")) == [200]
    assert statuses(
        raw(b"GET /bytes/1 HTTP/1.1\r\nConnection: close\r\n\r\nGET /bytes/1 HTTP/1.1\r\n\r\n")
    ) == [200]


def test_http_1_0_keep_alive_is_confirmed_in_every_answer() -> None:
    """An HTTP/1.0 client (``ab -k``) keeps the connection only when the answer says ``keep-alive``; without
    the header it waits for the close that would end the answer, and the server for its next request."""
    ask = b"Connection: Keep-Alive\r\n\r\n"
    got = raw(
        b"GET /bytes/3 HTTP/1.0\r\n"
        + ask
        + b"GET /nope HTTP/1.0\r\n"
        + ask
        + b"POST /sha256 HTTP/1.0\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\nx"
        + b"GET /bytes/1 HTTP/1.0\r\n\r\n"
    )
    answers = responses(got)
    assert [status for status, _, _ in answers] == [200, 404, 200, 200]
    assert [h.get("Connection") for _, h, _ in answers] == ["keep-alive"] * 3 + ["close"]
    eleven = responses(raw(b"GET /bytes/1 HTTP/1.1\r\n\r\n"))
    assert "Connection" not in eleven[0][1]  # HTTP/1.1 persists without saying so


def test_head_sends_headers_only() -> None:
    got = raw(b"HEAD /bytes/1000 HTTP/1.1\r\n\r\n")
    head, _, body = got.partition(b"\r\n\r\n")
    assert b"Content-Length: 1000" in head and body == b""
