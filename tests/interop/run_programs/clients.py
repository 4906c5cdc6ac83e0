"""Unmodified client programs that ``tests/interop/test_interop_run.py`` runs under ``chimney run``.

Written only against the standard library (and ``requests`` for ``requests``), as any program is: nothing
here knows about tcpchimney. Each prints one JSON line with what it got, for the test to check.

    python3 clients.py urllib URL            sha256 and length of the body
    python3 clients.py requests URL          the same through requests/urllib3
    python3 clients.py aiohttp URL           the same through aiohttp's client
    python3 clients.py asyncio HOST PORT N   N random bytes through an echo server, sha256 both ways
    python3 clients.py selectors HOST PORT N the same with a non-blocking socket and selectors
    python3 clients.py errors HOST PORTS     what CPython raises: refused, reset, timeouts, unsupported
    python3 clients.py exit N                exit with status N

Several in one process: ``clients.py urllib URL + asyncio HOST PORT N`` (one JSON line each, in order).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import os
import selectors
import socket
import sys
import tempfile
import urllib.request


def out(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def fetch_urllib(url: str) -> None:
    with urllib.request.urlopen(url, timeout=20) as reply:
        body = reply.read()
    out(sha256=hashlib.sha256(body).hexdigest(), length=len(body), status=reply.status)


def fetch_aiohttp(url: str) -> None:
    import aiohttp

    async def get() -> bytes:
        async with aiohttp.ClientSession() as session, session.get(url) as reply:
            return await reply.read()

    body = asyncio.run(get())
    out(sha256=hashlib.sha256(body).hexdigest(), length=len(body))


def fetch_requests(url: str) -> None:
    import requests

    with requests.Session() as session:
        first = session.get(url, timeout=20)
        second = session.get(url, timeout=20)  # the same connection again (urllib3's pool)
    out(
        sha256=hashlib.sha256(first.content).hexdigest(),
        length=len(first.content),
        same=first.content == second.content,
        status=first.status_code,
    )


async def _echo(host: str, port: int, n: int) -> None:
    data = os.urandom(n)
    reader, writer = await asyncio.open_connection(host, port)
    sockname = writer.get_extra_info("sockname")

    async def send() -> None:
        for i in range(0, n, 65536):
            writer.write(data[i : i + 65536])
            await writer.drain()
        writer.write_eof()

    sender = asyncio.ensure_future(send())
    got = await reader.read()  # until the server's EOF, which follows ours
    await sender
    writer.close()
    await writer.wait_closed()
    out(
        sent=hashlib.sha256(data).hexdigest(),
        got=hashlib.sha256(got).hexdigest(),
        length=len(got),
        sockname=list(sockname),
        peername=list(writer.get_extra_info("peername")),
    )


def echo_selectors(host: str, port: int, n: int) -> None:
    data = memoryview(os.urandom(n))
    sock = socket.socket()
    sock.setblocking(False)
    assert sock.connect_ex((host, port)) == errno.EINPROGRESS
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_WRITE)
    sel.select(10)
    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    peer = sock.getpeername()
    sent, got, eof_sent = 0, bytearray(), False
    sel.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    while True:
        for _key, events in sel.select(10):
            if events & selectors.EVENT_WRITE:
                with contextlib.suppress(BlockingIOError):
                    sent += sock.send(data[sent : sent + 65536])
                if sent == n and not eof_sent:
                    sock.shutdown(socket.SHUT_WR)
                    eof_sent = True
                    sel.modify(sock, selectors.EVENT_READ)
            if events & selectors.EVENT_READ:
                chunk = sock.recv(65536)
                if not chunk:
                    sock.close()
                    out(
                        connect_error=error,
                        peer=list(peer),
                        sent=hashlib.sha256(data).hexdigest(),
                        got=hashlib.sha256(got).hexdigest(),
                        length=len(got),
                    )
                    return
                got += chunk


def _raised(call: object) -> list[object]:
    try:
        call()  # type: ignore[operator]
    except OSError as exc:
        return [type(exc).__name__, exc.errno, str(exc)]
    return ["nothing", None, ""]


def errors(host: str, refused: int, silent: int, reset: int, absent: str) -> None:
    results: dict[str, object] = {}
    results["refused"] = _raised(lambda: socket.create_connection((host, refused), timeout=5))
    results["connect_timeout"] = _raised(lambda: socket.create_connection((absent, 80), timeout=0.5))

    quiet = socket.create_connection((host, silent), timeout=5)
    quiet.settimeout(0.3)
    results["recv_timeout"] = _raised(lambda: quiet.recv(10))
    results["sockname"] = list(quiet.getsockname())
    results["peername"] = list(quiet.getpeername())
    results["nodelay"] = [
        quiet.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
        quiet.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
    ]
    results["unknown_option"] = _raised(lambda: quiet.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 16))
    quiet.close()

    rst = socket.create_connection((host, reset), timeout=5)
    rst.sendall(b"x")
    results["reset"] = _raised(lambda: [rst.recv(10) for _ in range(100)])
    results["after_reset"] = _raised(lambda: rst.send(b"y"))
    rst.close()

    async def asyncio_reset() -> None:
        reader, writer = await asyncio.open_connection(host, reset)
        writer.write(b"x")
        await reader.read()  # the RST: asyncio's transport gets ECONNRESET from recv

    results["asyncio_reset"] = _raised(lambda: asyncio.run(asyncio_reset()))

    payload = os.urandom(300_000)
    with tempfile.TemporaryFile() as file, socket.create_connection((host, 7), timeout=10) as echo:
        file.write(payload)
        file.seek(0)
        sent = echo.sendfile(file)
        echo.shutdown(socket.SHUT_WR)
        back = b"".join(iter(lambda: echo.recv(65536), b""))
    results["sendfile"] = [sent, hashlib.sha256(back).hexdigest() == hashlib.sha256(payload).hexdigest()]

    six = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    results["ipv6"] = _raised(lambda: six.connect(("2001:db8::1", 80)))
    six.close()

    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    results["udp"] = _raised(lambda: udp.sendto(b"x", (host, 9)))
    udp.close()
    results["unconnected_send"] = _raised(lambda: socket.socket().send(b"x"))
    results["getpeername_unconnected"] = _raised(lambda: socket.socket().getpeername())
    out(**results)


def main(argv: list[str]) -> None:
    while "+" in argv:
        i = argv.index("+")
        main(argv[:i])
        argv = argv[i + 1 :]
    mode, args = argv[0], argv[1:]
    if mode == "urllib":
        fetch_urllib(args[0])
    elif mode == "requests":
        fetch_requests(args[0])
    elif mode == "aiohttp":
        fetch_aiohttp(args[0])
    elif mode == "asyncio":
        asyncio.run(_echo(args[0], int(args[1]), int(args[2])))
    elif mode == "selectors":
        echo_selectors(args[0], int(args[1]), int(args[2]))
    elif mode == "exit":
        sys.exit(int(args[0]))
    elif mode == "errors":
        errors(args[0], int(args[1]), int(args[2]), int(args[3]), args[4])
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1:])
