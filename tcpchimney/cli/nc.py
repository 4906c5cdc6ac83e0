"""``chimney nc HOST PORT`` / ``chimney nc -l PORT``: netcat on the stack.

stdin goes to the connection and the connection to stdout; stdin's EOF half-closes (FIN), and the command ends
when both directions have ended. stdout carries the connection's bytes, so the ready and done JSON lines go to
stderr here.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from tcpchimney.cli.common import emit, stop_on_signals
from tcpchimney.cli.offload import OffloadOptions
from tcpchimney.cli.wiring import open_session

_CHUNK = 65536


def run(args: argparse.Namespace) -> int:
    return asyncio.run(netcat(args))


async def netcat(args: argparse.Namespace) -> int:
    stop = stop_on_signals(asyncio.get_running_loop())
    options = OffloadOptions.from_args(args)
    async with open_session(
        args.netns, args.addr, args.peer, args.pcap, args.plain, options, name=args.name, metrics=args.metrics
    ) as session:
        fields = session.ready_fields()
        if args.listen:
            accepted: asyncio.Queue[tuple[Any, Any]] = asyncio.Queue()

            async def on_accept(reader: Any, writer: Any) -> None:
                await accepted.put((reader, writer))
                await writer.wait_closed()  # keep the handler alive while the pumps run

            server = await session.runtime.start_server(on_accept, port=args.port)
            emit("ready", sys.stderr, command="nc", listen=args.port, **fields)
            reader, writer = await _first(accepted.get(), stop)
            server.close()
        else:
            emit("ready", sys.stderr, command="nc", connect=f"{args.host}:{args.port}", **fields)
            reader, writer = await _first(session.runtime.open_connection(str(args.host), args.port), stop)
        sent, received = await _pump(reader, writer, stop)
        counters = session.stack.counters
        offload = session.offload_counters()
    emit(
        "done",
        sys.stderr,
        command="nc",
        bytes_sent=sent,
        bytes_received=received,
        counters=counters,
        offload=offload,
    )
    return 0


async def _first(awaitable: Any, stop: asyncio.Event) -> Any:
    """The awaitable's result, or an exit with 128 + N (the connection's set-up abandoned; the session's
    clean-up runs on the way out) when signal N comes first."""
    task = asyncio.ensure_future(awaitable)
    stopper = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task not in done:
        task.cancel()
        raise SystemExit(128 + (getattr(stop, "signum", None) or 2))  # as a shell reports the signal
    return task.result()


async def _pump(reader: Any, writer: Any, stop: asyncio.Event) -> tuple[int, int]:
    loop = asyncio.get_running_loop()
    counts = [0, 0]

    async def upstream() -> None:
        stdin: Any = sys.stdin.buffer
        while data := await loop.run_in_executor(None, stdin.read1, _CHUNK):
            writer.write(data)
            await writer.drain()
            counts[0] += len(data)
        writer.write_eof()  # half-close: the peer may still answer

    async def downstream() -> None:
        out = sys.stdout.buffer
        while data := await reader.read(_CHUNK):
            out.write(data)
            out.flush()
            counts[1] += len(data)

    both: asyncio.Future[Any] = asyncio.gather(upstream(), downstream())
    stopper: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    await asyncio.wait({both, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if not both.done():
        both.cancel()
    writer.close()
    return counts[0], counts[1]
