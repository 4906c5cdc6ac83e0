"""``chimney serve {echo,discard,http}``: one application on the stack until a termination signal."""

from __future__ import annotations

import argparse
import asyncio

from tcpchimney.cli.apps import APPS, AppStats
from tcpchimney.cli.common import emit, stop_on_signals
from tcpchimney.cli.offload import OffloadOptions
from tcpchimney.cli.wiring import open_session


def run(args: argparse.Namespace) -> int:
    return asyncio.run(serve(args))


async def serve(args: argparse.Namespace) -> int:
    stop = stop_on_signals(asyncio.get_running_loop())
    stats = AppStats()
    handler = APPS[args.app][1](stats)
    options = OffloadOptions.from_args(args)
    async with open_session(
        args.netns, args.addr, args.peer, args.pcap, args.plain, options, name=args.name, metrics=args.metrics
    ) as session:
        server = await session.runtime.start_server(handler, port=args.port)
        if not stop.is_set():  # a signal during the set-up: no ready line, straight to the clean-up
            emit(
                "ready",
                command="serve",
                app=args.app,
                port=args.port,
                offload=options.mode,
                **session.ready_fields(),
            )
        try:
            await stop.wait()
        finally:
            server.close()
            counters = session.stack.counters
            offload = session.offload_counters()
    emit(
        "done",
        command="serve",
        app=args.app,
        signal=stop.name,
        app_counters=stats.as_dict(),
        counters=counters,
        offload=offload,
    )
    return 0
