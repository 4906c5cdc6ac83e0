"""Two connections spliced: the bytes, the FINs and the resets of each go to the other.

Used by ``chimney proxy`` and ``chimney forward`` between a kernel socket (asyncio's transport) and a
connection of the stack (``api.streams.TcpTransport``); both are asyncio transports, so the splice is written
once against that interface:

- **bytes**: each end's ``data_received`` writes to the other end's transport;
- **backpressure**: when the other end's write buffer passes its high-water mark (``pause_writing``), this
  end stops reading until it drains (``resume_writing``), so a fast sender is held back by TCP's own window
  instead of by our memory;
- **half-close**: an end's EOF becomes ``write_eof`` on the other (FIN, or ``shutdown(SHUT_WR)`` on a kernel
  socket); once both directions ended, both are closed;
- **resets**: an end lost with an error (RST, timeout) resets the other: ``abort()`` on the stack sends RST,
  a kernel socket is closed with ``SO_LINGER`` zero, which makes Linux send RST instead of FIN.

A ``Pipe`` is made with the connection that arrived; ``connect`` opens the other one (its failure resets the
first), and reading waits until both exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tcpchimney.cli.common import CommandError

_LINGER_RESET = struct.pack("ii", 1, 0)  # struct linger {l_onoff = 1, l_linger = 0}: close() sends RST


@dataclass(slots=True)
class RelayStats:
    """Counters of every pipe of a command (shown in its done line)."""

    accepted: int = 0
    connected: int = 0
    connect_failed: int = 0
    closed: int = 0  # both directions ended with a FIN
    reset: int = 0  # ended by a reset or an error of either side
    bytes_in: int = 0  # from the connection that arrived to the one opened for it
    bytes_out: int = 0  # the other way
    connect_errors: dict[str, int] = field(default_factory=dict)
    live: set[Pipe] = field(default_factory=set)

    def as_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "connected": self.connected,
            "connect_failed": self.connect_failed,
            "closed": self.closed,
            "reset": self.reset,
            "active": len(self.live),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "connect_errors": dict(sorted(self.connect_errors.items())),
        }

    def note_connect_error(self, exc: BaseException) -> None:
        self.connect_failed += 1
        name = type(exc).__name__
        self.connect_errors[name] = self.connect_errors.get(name, 0) + 1


def reset_transport(transport: asyncio.BaseTransport, kernel: bool) -> None:
    """Abort with RST: the stack's abort() sends one; a kernel socket needs SO_LINGER zero first."""
    if kernel:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()  # type: ignore[attr-defined]


async def kernel_listener(
    factory: Callable[[], asyncio.BaseProtocol], host: str, port: int
) -> asyncio.Server:
    """A listening kernel socket of this host, or the command's one-sentence error."""
    try:
        return await asyncio.get_running_loop().create_server(factory, host, port, reuse_address=True)
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        raise CommandError(f"cannot listen on {host}:{port}: {why}.") from exc


class End(asyncio.Protocol):
    """One side of a pipe: the protocol of its transport."""

    def __init__(self, pipe: Pipe, kernel: bool, inbound: bool) -> None:
        self.pipe = pipe
        self.kernel = kernel  # a kernel socket (resets need SO_LINGER)
        self.inbound = inbound  # the connection that arrived (its bytes count as bytes_in)
        self.transport: asyncio.Transport | None = None
        self.peer: End
        self.eof = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.pause_reading()  # until the other end exists
        self.pipe.made(self)

    def data_received(self, data: bytes) -> None:
        stats = self.pipe.stats
        if self.inbound:
            stats.bytes_in += len(data)
        else:
            stats.bytes_out += len(data)
        peer = self.peer.transport
        if peer is not None and not self.peer.lost:
            peer.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer.transport
        if peer is not None and not self.peer.lost and peer.can_write_eof():
            try:
                peer.write_eof()
            except OSError as exc:  # a kernel socket its peer reset, before asyncio noticed: reset this one
                self.pipe.lost(self.peer, exc)
                return True
        self.pipe.maybe_finish()
        return True  # stay open: the other direction may still carry bytes

    def pause_writing(self) -> None:
        peer = self.peer.transport
        if peer is not None and not peer.is_closing():
            peer.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer.transport
        if peer is not None and not peer.is_closing():
            peer.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.pipe.lost(self, exc)

    def reset(self) -> None:
        if self.transport is not None and not self.lost:
            reset_transport(self.transport, self.kernel)

    def close(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.close()


class Pipe:
    """The connection that arrived (``inbound``) and the one opened for it (``outbound``)."""

    def __init__(
        self,
        stats: RelayStats,
        inbound_kernel: bool,
        connect: Callable[[Pipe], Awaitable[object]] | None = None,
        outbound_kernel: bool | None = None,
    ) -> None:
        self.stats = stats
        self.inbound = End(self, inbound_kernel, inbound=True)
        outbound_kernel = not inbound_kernel if outbound_kernel is None else outbound_kernel
        self.outbound = End(self, outbound_kernel, inbound=False)
        self.inbound.peer, self.outbound.peer = self.outbound, self.inbound
        self._connect = connect
        self._task: asyncio.Task[None] | None = None
        self._ended = False
        self._first = b""  # bytes for the outbound end before anything the inbound end reads
        stats.accepted += 1
        stats.live.add(self)

    def made(self, end: End) -> None:
        if end is self.inbound and self._connect is not None and self._task is None:
            self._task = asyncio.ensure_future(self._open())
        if self.inbound.transport is not None and self.outbound.transport is not None:
            self.stats.connected += 1
            assert self.outbound.transport is not None
            if self._first:
                self.stats.bytes_in += len(self._first)
                self.outbound.transport.write(self._first)
            for side in (self.inbound, self.outbound):
                if side.transport is not None and not side.lost:
                    side.transport.resume_reading()

    def attach_inbound(self, transport: asyncio.Transport, first: bytes = b"") -> None:
        """An inbound transport that had another protocol (the SOCKS negotiation) joins the pipe."""
        self._first = first
        transport.set_protocol(self.inbound)
        self.inbound.connection_made(transport)

    async def _open(self) -> None:
        assert self._connect is not None
        try:
            await self._connect(self)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # refused, unreachable, timed out: the arrived connection is reset
            self.stats.note_connect_error(exc)
            self.inbound.reset()
            self._end(reset=True)

    def lost(self, end: End, exc: Exception | None) -> None:
        if self._ended:
            return
        if end is self.inbound and self._task is not None and not self._task.done():
            self._task.cancel()
        if exc is not None:
            end.peer.reset()
            self._end(reset=True)
        elif end.peer.transport is None or end.peer.lost:
            self._end(reset=False)
        else:
            end.peer.close()  # closed without an error and without our asking: its buffered bytes, then FIN

    def maybe_finish(self) -> None:
        if self.inbound.eof and self.outbound.eof:
            self.inbound.close()
            self.outbound.close()

    def abort(self) -> None:
        """Both ends reset (the command is stopping)."""
        if self._task is not None:
            self._task.cancel()
        self.inbound.reset()
        self.outbound.reset()
        self._end(reset=True)

    def abandon(self) -> None:
        """The outbound connection never came (the SOCKS client got a failure reply instead): no count."""
        self._ended = True
        self.stats.accepted -= 1
        self.stats.live.discard(self)

    def _end(self, reset: bool) -> None:
        if self._ended:
            return
        self._ended = True
        if reset:
            self.stats.reset += 1
        else:
            self.stats.closed += 1
        self.stats.live.discard(self)
