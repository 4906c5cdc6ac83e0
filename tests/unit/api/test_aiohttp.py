"""An unmodified aiohttp.web application served by the stack, requested from a second stack."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os

from aiohttp import web
from test_runtime import A_IP, run

from tcpchimney.api.runtime import Runtime


def make_app() -> web.Application:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"hello {request.match_info['name']}")

    async def digest(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({"length": len(body), "sha256": hashlib.sha256(body).hexdigest()})

    app = web.Application()
    app.router.add_get("/hello/{name}", hello)
    app.router.add_post("/sha256", digest)
    return app


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        if line:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers["content-length"]))
    return int(status_line.split()[1]), headers, body


def test_aiohttp_application_on_the_stack() -> None:
    upload = os.urandom(500_000)

    async def body(a: Runtime, b: Runtime) -> None:
        runner = web.AppRunner(make_app())
        await runner.setup()
        assert runner.server is not None
        server = await a.create_server(runner.server, port=80)
        try:
            reader, writer = await b.open_connection(A_IP, 80)
            # Two requests on one keep-alive connection, then a POST that aiohttp must read in full.
            writer.write(f"GET /hello/stack HTTP/1.1\r\nHost: {A_IP}\r\n\r\n".encode())
            status, _, text = await read_response(reader)
            assert (status, text) == (200, b"hello stack")
            (served,) = server._transports
            assert served.tcp_socket.conn.config.nodelay  # aiohttp's TCP_NODELAY reached the engine
            writer.write(f"GET /missing HTTP/1.1\r\nHost: {A_IP}\r\n\r\n".encode())
            status, _, _ = await read_response(reader)
            assert status == 404
            writer.write(
                f"POST /sha256 HTTP/1.1\r\nHost: {A_IP}\r\nContent-Length: {len(upload)}\r\n"
                "Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n".encode()
            )
            writer.write(upload)
            await writer.drain()
            status, headers, answer = await read_response(reader)
            assert status == 200 and headers["content-type"].startswith("application/json")
            assert json.loads(answer) == {
                "length": len(upload),
                "sha256": hashlib.sha256(upload).hexdigest(),
            }
            assert await reader.read() == b""  # Connection: close -> aiohttp closes
            writer.close()
        finally:
            server.close()
            await runner.cleanup()

    run(body)
