"""Each connection's number and the history of its moves between host and target, kept a while after it
closed (``chimney history``; Windows kept none)."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tcpchimney.host.events import (
    HostEvent,
    OffloadDeferred,
    Offloaded,
    OffloadFault,
    OffloadRefused,
    Uploaded,
)
from tcpchimney.host.sockets import TcpSocket
from tcpchimney.manage.views import addr

KEEP_SECONDS = 300.0  # a closed connection's history is kept this long
MAX_KEPT = 4096  # and at most this many closed connections' histories
MAX_MOVES = 256  # moves kept per connection (the oldest go first)
_NAMES: dict[type, str] = {
    Offloaded: "offloaded",
    OffloadRefused: "refused",
    OffloadDeferred: "deferred",
    Uploaded: "uploaded",
    OffloadFault: "fault",
}


@dataclass(slots=True)
class Entry:
    id: int
    local: str
    remote: str
    opened: float  # wall clock: when the plane first saw the connection
    closed: float | None = None
    moves: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_MOVES))

    @property
    def since(self) -> float:
        """When the connection last moved (or was first seen)."""
        return self.moves[-1]["time"] if self.moves else self.opened

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "local": self.local,
            "remote": self.remote,
            "opened": self.opened,
            "closed": self.closed,
            "moves": list(self.moves),
        }


class Histories:
    """Numbers connections as the plane meets them and records their offload events."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._ids: dict[TcpSocket, Entry] = {}
        self._closed: OrderedDict[int, Entry] = OrderedDict()
        self._next_id = 0

    def entry(self, sock: TcpSocket) -> Entry:
        entry = self._ids.get(sock)
        if entry is None:
            self._next_id += 1
            local, remote = addr(sock.local_ip, sock.local_port), addr(sock.remote_ip, sock.remote_port)
            entry = self._ids[sock] = Entry(self._next_id, local, remote, self._clock())
        return entry

    def on_event(self, ev: HostEvent) -> tuple[Entry, dict[str, Any]] | None:
        """Record an offload event; returns the connection's entry and the move, None for other events."""
        name = _NAMES.get(type(ev))
        if name is None:
            return None
        sock: TcpSocket | None = getattr(ev, "sock", None)
        if sock is None:
            return None
        move: dict[str, Any] = {"time": self._clock(), "event": name}
        reason = getattr(ev, "reason", None)
        move["reason"] = None if reason is None else reason.value
        duration = getattr(ev, "duration", None)
        if duration is not None:
            move["duration_ms"] = round(duration * 1000, 3)
        if isinstance(ev, OffloadFault):
            move["detail"] = ev.detail
        move["bytes_sent"], move["bytes_received"] = sock.bytes_sent, sock.bytes_received
        entry = self.entry(sock)
        entry.moves.append(move)
        return entry, move

    def prune(self, alive: Callable[[TcpSocket], bool]) -> None:
        """Connections the stack no longer holds are closed now; old closed histories go."""
        now = self._clock()
        for sock in [s for s in self._ids if not alive(s)]:
            entry = self._ids.pop(sock)
            entry.closed = now
            self._closed[entry.id] = entry
        while self._closed:
            oldest = next(iter(self._closed.values()))
            if len(self._closed) <= MAX_KEPT and now - (oldest.closed or now) <= KEEP_SECONDS:
                break
            self._closed.popitem(last=False)

    def live(self) -> dict[TcpSocket, Entry]:
        return self._ids

    def closed(self) -> list[Entry]:
        return list(self._closed.values())
