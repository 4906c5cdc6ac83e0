"""The control socket: ``RUN_DIR/NAME.ctl``, a Unix stream socket (mode 0660: root and its group) that
answers newline-delimited JSON requests with ``ControlPlane`` (manage.protocol gives the format).

A client's bad request gets an error reply and never disturbs the stack; a request that fails inside the
plane is answered with its sentence. The socket is noted in the run's record before it exists, so that
``chimney cleanup`` removes what a killed run left, and removed when the command ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from tcpchimney.link import runs
from tcpchimney.manage.paths import SUFFIX, is_live
from tcpchimney.manage.plane import ControlPlane
from tcpchimney.manage.protocol import MAX_LINE, RequestError, Stream, parse_request, reply_line, stream_line

MODE = 0o660


class ControlSocketError(Exception):
    """The control socket cannot be made; the message is one sentence."""


class ControlServer:
    def __init__(self, plane: ControlPlane, path: str) -> None:
        self.plane = plane
        self.path = path
        self.errors = 0  # requests answered with an error
        self._server: asyncio.AbstractServer | None = None
        self._resource = runs.Resource(runs.PATH, path)
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        directory = os.path.dirname(self.path)
        try:
            os.makedirs(directory, mode=0o755, exist_ok=True)
        except OSError as exc:
            raise ControlSocketError(f"cannot make {directory}: {exc.strerror}") from exc
        if os.path.exists(self.path):
            if is_live(self.path):
                name = os.path.basename(self.path)[: -len(SUFFIX)]
                raise ControlSocketError(f"another running stack is named {name} ({self.path}): give --name")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)  # a dead run's leftover
        try:
            runs.register(self._resource)
            self._server = await asyncio.start_unix_server(self._serve, self.path, limit=MAX_LINE)
            os.chmod(self.path, MODE)
        except OSError as exc:
            runs.unregister(self._resource)
            raise ControlSocketError(f"cannot make the control socket {self.path}: {exc.strerror}") from exc

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._clients):
            task.cancel()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            runs.unregister(self._resource)
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._clients.discard(task)
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the client is gone or must be."""
        try:
            line = await reader.readline()
        except (asyncio.LimitOverrunError, ValueError):
            self.errors += 1
            writer.write(reply_line(None, error=f"a request is at most {MAX_LINE} bytes"))
            await writer.drain()
            return False
        if not line:
            return False
        request_id: Any = None
        try:
            request = parse_request(line)
            request_id = request.id
            result = await self.plane.handle(request)
            if isinstance(result, AsyncIterator):  # events --follow: one line per event
                await self._stream(request_id, result, reader, writer)
                return False
            if isinstance(result, Stream):  # the connection is the stream's from here on
                writer.write(reply_line(request_id, result.first))
                await writer.drain()
                await result.run(reader, writer)
                return False
            reply = reply_line(request_id, result)
        except RequestError as exc:
            self.errors += 1
            reply = reply_line(request_id, error=str(exc))
        except Exception as exc:  # a bug in a command: the client hears of it, the stack runs on
            self.errors += 1
            reply = reply_line(request_id, error=f"the command failed inside the stack: {exc!r}")
        writer.write(reply)
        await writer.drain()
        return True

    async def _stream(
        self,
        request_id: Any,
        lines: AsyncIterator[Any],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """Send each line of ``lines`` until the client closes its end (it sends nothing more)."""
        gone = asyncio.ensure_future(reader.read(1))
        try:
            while True:
                line = asyncio.ensure_future(anext(lines))
                await asyncio.wait({line, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not line.done():
                    line.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await line
                    return
                writer.write(stream_line(request_id, line.result()))
                await writer.drain()
        finally:
            gone.cancel()
            await lines.aclose()  # type: ignore[attr-defined]
