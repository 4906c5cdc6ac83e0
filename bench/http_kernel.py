"""bench/http.py's kernel reference: ``chimney serve http``'s application (``cli.apps.HttpApp``, the same
code) under ``asyncio.start_server`` on kernel sockets, one Python process with one loop as the stack's.

``python -m bench.http_kernel HOST PORT`` prints ``{"ready": true}`` once listening; each line on stdin
asks for the application's counters since the last ask (one JSON line); it ends when stdin closes.
"""

from __future__ import annotations

import asyncio
import sys

from bench.peer import say
from tcpchimney.cli.apps import AppStats, HttpApp

BACKLOG = 128  # as the stack's listener: ab without keep-alive keeps `concurrency` connects in flight


async def serve(host: str, port: int) -> None:
    app = HttpApp(AppStats())
    server = await asyncio.start_server(app, host, port, backlog=BACKLOG)
    say(ready=True)
    loop = asyncio.get_running_loop()
    last = app.stats.as_dict()
    while await loop.run_in_executor(None, sys.stdin.readline):
        now = (
            app.stats.as_dict()
        )  # differences: a kept connection counts into the one AppStats it started with
        say(**{k: v - last[k] for k, v in now.items()})
        last = now
    server.close()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], int(sys.argv[2])))
