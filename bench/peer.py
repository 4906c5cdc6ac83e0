"""What every Linux-side program of the benchmarks needs (they run in a namespace as ``python3 -c`` or
``-m bench...``): standard library only."""

from __future__ import annotations

import json
import socket
import time


def say(**kw: object) -> None:
    """One JSON line on stdout, flushed: the benchmark reads the peer's figures line by line."""
    print(json.dumps(kw), flush=True)


def connect(host: str, port: int, wait: float = 10.0) -> socket.socket:
    """A connection to ``host:port``, retried for ``wait`` seconds while the server is not yet listening."""
    end = time.monotonic() + wait
    while True:
        try:
            return socket.create_connection((host, port))
        except ConnectionRefusedError:
            if time.monotonic() > end:
                raise
            time.sleep(0.01)
