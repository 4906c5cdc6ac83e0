"""The kernel server of bench/forward.py: HTTP/1.1 with keep-alive, ``GET /N`` answers N bytes.

Run by the Linux side's ``python3`` (standard library only): ``python3 bench/forward_server.py HOST PORT``;
prints ``listening`` once it accepts. One asyncio loop; the body is a slice of one preallocated buffer, so
the server's own cost per request is small next to what the paths under test add.
"""

from __future__ import annotations

import asyncio
import sys

BODY = bytes(range(256)) * (64 << 12)  # 64 MiB: the largest answer
HEAD = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n"


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            request = await reader.readuntil(b"\r\n\r\n")
            path = request.split(b" ", 2)[1]
            size = min(int(path.lstrip(b"/") or b"0"), len(BODY))
            writer.write(HEAD.format(size).encode())
            writer.write(memoryview(BODY)[:size])
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError, IndexError):
        pass
    finally:
        writer.close()


async def main(host: str, port: int) -> None:
    server = await asyncio.start_server(serve, host, port, backlog=1024)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
