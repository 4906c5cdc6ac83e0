"""``chimney forward``: port forwarding between the stack and kernel sockets, both ways.

- ``--listen PORT --to HOST:PORT``: the stack listens on its address and PORT; each connection it accepts is
  forwarded to a kernel socket address (a server program on this host: nginx, redis-server, a Java service
  is then published on the stack's address, as ``slirp4netns`` publishes ports);
- ``--listen [HOST:]PORT --connect PEER:PORT``: a kernel socket listens here (127.0.0.1 unless HOST is given)
  and the stack opens a connection to PEER:PORT for each one it accepts (as ``ssh -L`` does).

The two connections are spliced by ``cli.relay``: bytes both ways with backpressure, half-close (FIN) and
resets pass through. A target that refuses (or cannot be reached) resets the accepted connection.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from tcpchimney.cli.common import emit, stop_on_signals
from tcpchimney.cli.offload import OffloadOptions
from tcpchimney.cli.relay import Pipe, RelayStats, kernel_listener
from tcpchimney.cli.wiring import open_session


def run(args: argparse.Namespace) -> int:
    return asyncio.run(forward(args))


async def _listen_on_stack(session: Any, args: argparse.Namespace, stats: RelayStats) -> Any:
    """Stack listener; each accepted connection is forwarded to the kernel address ``args.to``."""
    loop = asyncio.get_running_loop()
    host, port = args.to
    timeout = args.connect_timeout

    async def connect(pipe: Pipe) -> None:
        await asyncio.wait_for(loop.create_connection(lambda: pipe.outbound, host, port), timeout)

    def accepted() -> asyncio.Protocol:
        return Pipe(stats, inbound_kernel=False, connect=connect).inbound

    return await session.runtime.create_server(accepted, port=args.listen[1])


async def _listen_on_kernel(session: Any, args: argparse.Namespace, stats: RelayStats) -> Any:
    """Kernel listener; the stack opens a connection to ``args.connect`` for each one it accepts."""
    host, port = args.connect
    runtime = session.runtime
    timeout = args.connect_timeout

    async def connect(pipe: Pipe) -> None:
        await asyncio.wait_for(runtime.create_connection(lambda: pipe.outbound, host, port), timeout)

    def accepted() -> asyncio.Protocol:
        return Pipe(stats, inbound_kernel=True, connect=connect).inbound

    return await kernel_listener(accepted, *args.listen)


def _endpoints(args: argparse.Namespace, server: Any, reverse: bool) -> dict[str, str]:
    if reverse:
        host = args.listen[0]
        port = server.sockets[0].getsockname()[1]
        return {"listen": f"{host}:{port}", "connect": "{}:{}".format(*args.connect), "direction": "reverse"}
    return {"listen": f"{args.addr.ip}:{server.port}", "to": "{}:{}".format(*args.to), "direction": "forward"}


async def forward(args: argparse.Namespace) -> int:
    stop = stop_on_signals(asyncio.get_running_loop())
    options = OffloadOptions.from_args(args)
    stats = RelayStats()
    reverse = args.connect is not None
    async with open_session(
        args.netns, args.addr, args.peer, args.pcap, args.plain, options, name=args.name
    ) as session:
        listen = _listen_on_kernel if reverse else _listen_on_stack
        server = await listen(session, args, stats)
        endpoints = _endpoints(args, server, reverse)
        if not stop.is_set():
            emit("ready", command="forward", **endpoints, offload=options.mode, **session.ready_fields())
        try:
            await stop.wait()
        finally:
            server.close()
            for pipe in list(stats.live):
                pipe.abort()
            await asyncio.sleep(0)  # the resets reach the engine before the session ends
            counters = session.stack.counters
            offload = session.offload_counters()
    emit(
        "done",
        command="forward",
        **endpoints,
        signal=stop.name,
        forward=stats.as_dict(),
        counters=counters,
        offload=offload,
    )
    return 0
