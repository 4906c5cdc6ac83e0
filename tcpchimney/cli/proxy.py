"""``chimney proxy``: a SOCKS5 server on a kernel socket whose outgoing connections are the stack's.

Any client with SOCKS support (``curl --socks5-hostname``, ``ssh -o ProxyCommand``, ``git``), or any client
wrapped by ``proxychains4``, then reaches the peer's network through the user-space stack. The negotiation
is ``api.socks5``; once the stack's connection is open the two are spliced by ``cli.relay`` (half-close,
resets, backpressure). Names are looked up in the hosts file given with ``--hosts`` (the stack has no
resolver).

A failed connection answers with RFC 1928's reply codes: refused (RST to the SYN) 05, no ARP answer
(EHOSTUNREACH) or a name the hosts file does not know 04, an address off the stack's subnet (ENETUNREACH)
03, SYN retries exhausted or the ``--connect-timeout`` reached 06 ("TTL expired", the code RFC 1928 has for
a connection that took too long), anything else 01.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
from collections import Counter
from typing import Any

from tcpchimney.api.socks5 import Reply, Request, Socks5Server
from tcpchimney.cli.common import emit, stop_on_signals
from tcpchimney.cli.hostsfile import resolve
from tcpchimney.cli.offload import OffloadOptions
from tcpchimney.cli.relay import Pipe, RelayStats, kernel_listener
from tcpchimney.cli.wiring import open_session

DEFAULT_CONNECT_TIMEOUT = 10.0
_REPLIES = {
    errno.ECONNREFUSED: Reply.CONNECTION_REFUSED,
    errno.EHOSTUNREACH: Reply.HOST_UNREACHABLE,
    errno.ENETUNREACH: Reply.NETWORK_UNREACHABLE,
    errno.ETIMEDOUT: Reply.TTL_EXPIRED,
}


def reply_for(exc: BaseException) -> Reply:
    """The SOCKS reply for a failed outgoing connection."""
    if isinstance(exc, TimeoutError) and not getattr(exc, "errno", None):
        return Reply.TTL_EXPIRED  # our own --connect-timeout
    if isinstance(exc, OSError) and exc.errno in _REPLIES:
        return _REPLIES[exc.errno]
    return Reply.GENERAL_FAILURE


class ProxyState:
    """What every client connection of one proxy shares: the runtime, the names, the users, the counters."""

    def __init__(self, runtime: Any, names: dict[str, str], users: dict[str, str], timeout: float) -> None:
        self.runtime = runtime
        self.names = names
        self.users = users
        self.timeout = timeout
        self.stats = RelayStats()
        self.clients = 0
        self.replies: Counter[str] = Counter()  # SOCKS reply code (hex) -> count
        self.refused: Counter[str] = Counter()  # negotiations closed without a request, by reason
        self.negotiating: set[SocksClient] = set()

    def as_dict(self) -> dict[str, Any]:
        return {
            "clients": self.clients,
            "replies": dict(sorted(self.replies.items())),
            "refused": dict(sorted(self.refused.items())),
            "relay": self.stats.as_dict(),
        }


class SocksClient(asyncio.Protocol):
    """A client's kernel connection while it negotiates; it joins a Pipe once the stack's side is open."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state
        self.socks = Socks5Server(state.users)
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.state.clients += 1
        self.state.negotiating.add(self)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        step = self.socks.receive(data)
        if step.send:
            self.transport.write(step.send)
        if step.close:
            self.state.refused[step.error or "closed"] += 1
            if step.reply is not None:
                self.state.replies[f"{step.reply:#04x}"] += 1
            self.transport.close()
        elif step.request is not None:
            self.transport.pause_reading()
            self.task = asyncio.ensure_future(self._connect(step.request))

    def eof_received(self) -> bool:
        return False  # a client that ends before its request is done with: close

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.negotiating.discard(self)
        if self.task is not None and not self.task.done():
            self.task.cancel()

    async def _connect(self, request: Request) -> None:
        assert self.transport is not None
        state = self.state
        address = resolve(state.names, request.host)
        if address is None:
            self._fail(Reply.HOST_UNREACHABLE, "unknown name")
            return
        pipe = Pipe(state.stats, inbound_kernel=True)
        try:
            transport, _ = await asyncio.wait_for(
                state.runtime.create_connection(lambda: pipe.outbound, address, request.port), state.timeout
            )
        except asyncio.CancelledError:  # the client went away while the connection was being opened
            pipe.abandon()
            raise
        except Exception as exc:
            state.stats.note_connect_error(exc)
            pipe.abandon()
            self._fail(reply_for(exc), type(exc).__name__)
            return
        state.negotiating.discard(self)
        if self.transport.is_closing():  # the client went away meanwhile
            pipe.abort()
            return
        host, port = transport.get_extra_info("sockname")
        self.transport.write(self.socks.succeeded(host, port))
        state.replies[f"{Reply.SUCCEEDED:#04x}"] += 1
        pipe.attach_inbound(self.transport, self.socks.leftover)

    def _fail(self, reply: Reply, why: str) -> None:
        assert self.transport is not None
        self.state.replies[f"{reply:#04x}"] += 1
        self.state.refused[why] += 1
        if not self.transport.is_closing():
            self.transport.write(self.socks.failed(reply))
            self.transport.close()


def run(args: argparse.Namespace) -> int:
    return asyncio.run(proxy(args))


async def proxy(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = stop_on_signals(loop)
    options = OffloadOptions.from_args(args)
    host, port = args.listen
    async with open_session(
        args.netns, args.addr, args.peer, args.pcap, args.plain, options, name=args.name
    ) as session:
        state = ProxyState(session.runtime, args.names, args.users, args.connect_timeout)
        server = await kernel_listener(lambda: SocksClient(state), host, port)
        if not stop.is_set():
            emit(
                "ready",
                command="proxy",
                listen=f"{host}:{server.sockets[0].getsockname()[1]}",
                auth="username/password" if args.users else "none",
                names=len(args.names),
                offload=options.mode,
                **session.ready_fields(),
            )
        try:
            await stop.wait()
        finally:
            server.close()
            for pipe in list(state.stats.live):
                pipe.abort()
            for client in list(state.negotiating):
                if client.transport is not None:
                    client.transport.abort()
            await asyncio.sleep(0)  # the resets reach the engine before the session ends
            counters = session.stack.counters
            offload = session.offload_counters()
    emit(
        "done",
        command="proxy",
        signal=stop.name,
        proxy=state.as_dict(),
        counters=counters,
        offload=offload,
    )
    return 0
