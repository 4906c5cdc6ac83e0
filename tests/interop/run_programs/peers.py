"""Linux-side peers for ``test_interop_run.py``, run with ``ip netns exec`` in the test's namespace.

python3 peers.py echo PORT      echo each connection's bytes until EOF, then close
python3 peers.py silent PORT    accept and never send
python3 peers.py reset PORT     accept, read one byte, reset (SO_LINGER 0)
python3 peers.py asyncio-echo PORT   the echo server written against asyncio only (run under chimney run)
python3 peers.py echo-client HOST PORT N   N random bytes to an echo server (retried while refused)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import struct
import sys
import threading
import time


def _serve(port: int, handle: object) -> None:
    server = socket.create_server(("0.0.0.0", port), reuse_port=False)
    print("listening", flush=True)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()  # type: ignore[arg-type]


def echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)


def silent(conn: socket.socket) -> None:
    conn.recv(1)
    conn.close()


def reset(conn: socket.socket) -> None:
    conn.recv(1)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


async def asyncio_echo(port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "0.0.0.0", port)
    print("listening", server.sockets[0].getsockname(), flush=True)
    async with server:
        await server.serve_forever()


def echo_client(host: str, port: int, n: int) -> None:
    data = os.urandom(n)
    deadline = time.monotonic() + 15
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=10)
            break
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    got = bytearray()
    sender = threading.Thread(target=lambda: (sock.sendall(data), sock.shutdown(socket.SHUT_WR)))
    sender.start()
    while chunk := sock.recv(65536):
        got += chunk
    sender.join()
    sock.close()
    print(json.dumps({"sent": hashlib.sha256(data).hexdigest(), "got": hashlib.sha256(got).hexdigest()}))


if __name__ == "__main__":
    if sys.argv[1] == "echo-client":
        echo_client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        sys.exit(0)
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "asyncio-echo":
        asyncio.run(asyncio_echo(port))
    else:
        _serve(port, {"echo": echo, "silent": silent, "reset": reset}[mode])
