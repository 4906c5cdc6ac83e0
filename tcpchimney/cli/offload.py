"""What the commands do with the offload path: the options, an event log, churn and the demo's timeline.

``OffloadControl`` watches the host's offload events (``Offloaded``, ``OffloadRefused``, ``OffloadDeferred``,
``Uploaded``, ``OffloadFault``), writes each as one JSON line when asked (``--events FILE``), keeps them for
the demo's timeline, and drives two deliberate moves:

- **churn** (``--churn SECONDS``): every offloaded connection is uploaded (``Reason.CHURN``) after an
  exponentially distributed time of mean SECONDS (a Poisson process: uploads land at any point of a
  transfer, including right after an offload), runs on the host engine for another such time, and is
  offloaded again;
- **an administrator's upload** (``upload_all``): the demo's mid-transfer upload (``Reason.ADMIN``),
  re-offloaded the same way.

It touches the stack only through its public calls (``upload``, ``offload_now``, ``connections``) and asks
for timers through a ``Scheduler``: the runtime's asyncio loop, or the simulated link's virtual clock.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from tcpchimney.chimney.reason import Reason
from tcpchimney.cli.choices import DEFAULT_MODE, DEFAULT_NIC, MODES, NICS
from tcpchimney.host.events import (
    HostEvent,
    OffloadDeferred,
    Offloaded,
    OffloadFault,
    OffloadRefused,
    Uploaded,
)
from tcpchimney.host.interface import ip_str
from tcpchimney.host.offload import OffloadState
from tcpchimney.host.sockets import TcpSocket
from tcpchimney.host.stack import HostStack
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire.seq import SeqNum

_REOFFLOADABLE = frozenset({TcpState.ESTABLISHED, TcpState.CLOSE_WAIT})
# Uploads this module asks for, and what their re-offload is called in the log.
_OWN_UPLOADS = {Reason.CHURN: "churn", Reason.ADMIN: "admin"}
_PRUNE_EVERY = 256  # events between two clean-ups of per-connection records

__all__ = ["DEFAULT_MODE", "DEFAULT_NIC", "MODES", "NICS", "OffloadControl", "OffloadOptions"]


@dataclass(frozen=True, slots=True)
class OffloadOptions:
    mode: str = DEFAULT_MODE
    churn: float | None = None  # mean seconds between an offload and its churn upload
    events: str | None = None  # JSON-lines file of every offload event
    nic: str = DEFAULT_NIC  # where the target runs: "process" or "inline"
    nic_cpu: int | None = None  # the CPU the NIC process is pinned to (None: not pinned)
    nic_spin_us: float | None = None  # the NIC process's spin before it sleeps (None: NicConfig's default)
    busy_poll_us: float = 0.0  # the host's busy poll of the NIC's rings (api/busy_poll.py)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> OffloadOptions:
        return cls(
            getattr(args, "offload", DEFAULT_MODE),
            getattr(args, "churn", None),
            getattr(args, "events", None),
            getattr(args, "nic", DEFAULT_NIC),
            getattr(args, "nic_cpu", None),
            getattr(args, "nic_spin_us", None),
            getattr(args, "busy_poll_us", None) or 0.0,
        )

    @property
    def enabled(self) -> bool:
        return self.mode != "disabled"


class Handle(Protocol):
    def cancel(self) -> None: ...


class Scheduler(Protocol):
    def call_later(self, delay: float, callback: Callable[[], None]) -> Handle: ...


@dataclass(frozen=True, slots=True)
class OffloadRecord:
    """One offload event as the log and the timeline show it."""

    t: float  # seconds since the control started (the clock it was given)
    event: str  # offloaded | refused | deferred | uploaded | fault
    local: tuple[str, int]
    remote: tuple[str, int]
    reason: str | None = None  # Reason.value
    duration: float | None = None  # initiate / terminate to completion, seconds
    moved: int | None = None  # offloaded: bytes the connection had moved so far (both directions)
    cause: str | None = None  # offloaded: "policy: <mode>", "churn" or "admin"
    detail: str | None = None  # fault: what the target did wrong

    def as_json(self, wall: float) -> dict[str, Any]:
        line: dict[str, Any] = {
            "time": round(wall, 6),
            "t": round(self.t, 6),
            "event": self.event,
            "connection": [*self.local, *self.remote],
            "reason": self.reason,
            "duration": None if self.duration is None else round(self.duration, 6),
        }
        for key in ("moved", "cause", "detail"):
            value = getattr(self, key)
            if value is not None:
                line[key] = value
        return line

    def describe(self) -> str:
        """``offloaded (policy: automatic, 64 KB moved, 0.2 ms)``, ``uploaded (admin, 0.4 ms)``."""
        parts: list[str] = []
        if self.event == "offloaded":
            parts.append(self.cause or "policy")
            if self.moved is not None:
                parts.append(f"{_size(self.moved)} moved")
        elif self.reason is not None:
            parts.append(Reason(self.reason).value.replace("_", " "))
        if self.duration is not None:
            parts.append(f"{self.duration * 1000:.1f} ms")
        if self.detail:
            parts.append(self.detail)
        return f"{self.event} ({', '.join(parts)})" if parts else self.event


def _size(n: int) -> str:
    """Decimal units, as the demo's MB figures."""
    if n >= 1_000_000:
        return f"{n / 1_000_000:.1f} MB"
    return f"{n // 1000} KB" if n >= 1000 else f"{n} B"


class MovedBytes:
    """Bytes each connection moved (ACKed sent + received in order), followed from event to event.

    The host engine is rebuilt on every upload and forgets its ISS/IRS, so the count starts from the
    sequence numbers the offload record kept when the connection was established (``una0`` / ``rcv0``,
    unchanged until the first upload, and the first offload event comes before it) and adds the progress
    between two looks (each well under 2 GiB, the reach of a sequence-number distance)."""

    def __init__(self) -> None:
        self._seen: dict[TcpSocket, tuple[SeqNum, SeqNum, int]] = {}

    def update(self, sock: TcpSocket) -> int | None:
        off, conn = sock.offload, sock.conn
        if off is None:
            return None
        una, rcv = conn.snd_una, conn.rcv_nxt
        last_una, last_rcv, total = self._seen.get(sock, (off.una0, off.rcv0, 0))
        total += max(0, una.dist(last_una)) + max(0, rcv.dist(last_rcv))
        self._seen[sock] = (una, rcv, total)
        return total

    def forget_all_but(self, alive: set[TcpSocket]) -> None:
        for sock in [s for s in self._seen if s not in alive]:
            del self._seen[sock]


@dataclass(slots=True)
class _Stats:
    offloads: int = 0
    uploads: int = 0
    refusals: int = 0
    deferrals: int = 0  # not eligible yet (automatic threshold): waited, not refused
    faults: int = 0
    churn_uploads: int = 0  # churn uploads asked for
    admin_uploads: int = 0
    reoffloads: int = 0  # offloaded again after one of our uploads: completed cycles
    by_reason: Counter[str] = field(default_factory=Counter)


class OffloadControl:
    """Event log, churn and administrator uploads for one stack (see the module docstring)."""

    def __init__(
        self,
        stack: HostStack,
        options: OffloadOptions,
        scheduler: Scheduler,
        clock: Callable[[], float],
        *,
        wake: Callable[[], None] = lambda: None,
        rng: random.Random | None = None,
    ) -> None:
        self.stack = stack
        self.options = options
        self.scheduler = scheduler
        self.clock = clock
        self.wake = wake  # the stack acted outside a frame or timer: let its output leave
        self.rng = rng or random.Random()
        self.start = clock()
        self.records: list[OffloadRecord] = []
        self.stats = _Stats()
        self._file: IO[str] | None = open(options.events, "w", buffering=1) if options.events else None  # noqa: SIM115
        self._timers: dict[TcpSocket, Handle] = {}
        self._asked: dict[TcpSocket, str] = {}  # sockets we re-offload: the cause to log
        self._admin_asked: set[TcpSocket] = set()  # sockets upload_all took back (re-offloaded once back)
        self._moved = MovedBytes()
        self._closed = False
        self.nic_events: list[tuple[str, dict[str, Any]]] = []

    # ------------------------------------------------------------------ events

    def on_event(self, ev: HostEvent) -> None:
        """Give every host event here (``Runtime.add_event_handler`` or a simulation's event loop)."""
        if not isinstance(ev, Offloaded | Uploaded | OffloadRefused | OffloadDeferred | OffloadFault):
            return
        if ev.sock is not None:
            self._moved.update(ev.sock)
        if len(self.records) % _PRUNE_EVERY == 0:
            self._prune()
        if isinstance(ev, Offloaded):
            self._on_offloaded(ev)
        elif isinstance(ev, Uploaded):
            self._on_uploaded(ev)
        elif isinstance(ev, OffloadRefused):
            self.stats.refusals += 1
            self._asked.pop(ev.sock, None)
            self._record("refused", ev.sock, reason=ev.reason)
        elif isinstance(ev, OffloadDeferred):
            self.stats.deferrals += 1
            self._record("deferred", ev.sock, reason=ev.reason)
        elif isinstance(ev, OffloadFault):
            self.stats.faults += 1
            if ev.sock is not None:
                self._record("fault", ev.sock, reason=ev.reason, detail=ev.detail)

    def _on_offloaded(self, ev: Offloaded) -> None:
        sock = ev.sock
        self.stats.offloads += 1
        cause = self._asked.pop(sock, None)
        if cause is not None:
            self.stats.reoffloads += 1
        policy = self.stack.offload_policy
        mode = policy.mode.value if policy is not None else "?"
        self._record(
            "offloaded",
            sock,
            duration=ev.duration,
            moved=self._moved.update(sock),
            cause=cause or f"policy: {mode}",
        )
        if self.options.churn is not None and not self._closed:
            delay = self.rng.expovariate(1.0 / self.options.churn)
            self._set_timer(sock, self.scheduler.call_later(delay, lambda: self._churn(sock)))

    def _on_uploaded(self, ev: Uploaded) -> None:
        sock = ev.sock
        self.stats.uploads += 1
        self.stats.by_reason[ev.reason.value] += 1
        self._cancel_timer(sock)
        self._record("uploaded", sock, reason=ev.reason, duration=ev.duration)
        cause = _OWN_UPLOADS.get(ev.reason)
        if ev.reason is Reason.ADMIN and sock not in self._admin_asked:
            cause = None  # an administrator's upload through the control socket: it stays on the host
        self._admin_asked.discard(sock)
        if cause is None or self._closed:
            return
        self._asked[sock] = cause
        if ev.reason is Reason.CHURN and self.options.churn is not None:
            # A while on the host engine too (same mean): both engines carry the connection's data in turn.
            delay = self.rng.expovariate(1.0 / self.options.churn)
            self._set_timer(sock, self.scheduler.call_later(delay, lambda: self._reoffload(sock)))
        else:
            self._reoffload(sock)  # at once: the event says it is back on the host

    def _record(self, event: str, sock: TcpSocket, reason: Reason | None = None, **extra: Any) -> None:
        rec = OffloadRecord(
            self.clock() - self.start,
            event,
            (ip_str(sock.local_ip), sock.local_port),
            (ip_str(sock.remote_ip), sock.remote_port),
            None if reason is None else reason.value,
            **extra,
        )
        self.records.append(rec)
        if self._file is not None:
            self._file.write(json.dumps(rec.as_json(time.time())) + "\n")

    def on_nic_event(self, name: str, fields: dict[str, Any]) -> None:
        """A NIC process started or failed (``nic_started``: pid, epoch; ``nic_failed``: pid, epoch, cause,
        how and when it was detected): one line in the events file, as the offload events."""
        self.nic_events.append((name, dict(fields)))
        if self._file is not None:
            line = {"time": round(time.time(), 6), "t": round(self.clock() - self.start, 6), "event": name}
            line.update(fields)
            self._file.write(json.dumps(line) + "\n")

    # ------------------------------------------------------------------ moves

    def upload_all(self, reason: Reason = Reason.ADMIN) -> int:
        """Upload every offloaded connection now (re-offloaded once back for ADMIN and CHURN)."""
        count = 0
        for sock in self.stack.connections():
            if sock.offload_state is OffloadState.OFFLOADED and self.stack.upload(sock, reason):
                count += 1
                if reason is Reason.ADMIN:
                    self.stats.admin_uploads += 1
                    self._admin_asked.add(sock)
        self.wake()
        return count

    def _churn(self, sock: TcpSocket) -> None:
        self._timers.pop(sock, None)
        if self._closed or sock.offload_state is not OffloadState.OFFLOADED:
            return  # moving or back for another reason: the next Offloaded schedules it again
        if self.stack.upload(sock, Reason.CHURN):
            self.stats.churn_uploads += 1
            self.wake()

    def _reoffload(self, sock: TcpSocket) -> None:
        self._timers.pop(sock, None)
        alive = sock.state in _REOFFLOADABLE and self.stack.holds(sock)
        if self._closed or not alive or sock.offload_state is not OffloadState.IN_HOST:
            self._asked.pop(sock, None)
            return
        self.stack.offload_now(sock)  # refusals come back as OffloadRefused events
        self.wake()

    def _prune(self) -> None:
        """Forget connections the stack no longer has (a long-running serve sees many)."""
        alive = set(self.stack.connections())
        self._moved.forget_all_but(alive)
        for sock in [s for s in self._asked if s not in alive]:
            del self._asked[sock]
        self._admin_asked &= alive

    def _set_timer(self, sock: TcpSocket, handle: Handle) -> None:
        self._cancel_timer(sock)
        self._timers[sock] = handle

    def _cancel_timer(self, sock: TcpSocket) -> None:
        handle = self._timers.pop(sock, None)
        if handle is not None:
            handle.cancel()

    def close(self) -> None:
        """No more moves (the session is ending); the log is flushed and closed."""
        self._closed = True
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        if self._file is not None:
            self._file.close()
            self._file = None

    def as_dict(self) -> dict[str, Any]:
        s = self.stats
        return {
            "mode": self.options.mode,
            "churn_mean_s": self.options.churn,
            "offloads": s.offloads,
            "uploads": s.uploads,
            "refusals": s.refusals,
            "deferrals": s.deferrals,
            "faults": s.faults,
            "churn_uploads": s.churn_uploads,
            "admin_uploads": s.admin_uploads,
            "cycles": s.reoffloads,
            "uploads_by_reason": dict(s.by_reason),
            "nic_failures": sum(1 for name, _ in self.nic_events if name == "nic_failed"),
        }


# ====================================================================== the demo's timeline


def timeline_lines(records: list[OffloadRecord], head: int = 12, tail: int = 4) -> list[str]:
    """``t=+0.012s  198.18.0.1:41234 -> :80  offloaded (policy: automatic, 64 KB moved, 0.3 ms)``; a long
    log (churn) keeps its first ``head`` and last ``tail`` lines and counts what it left out."""
    lines = [_line(r) for r in records]
    if len(lines) > head + tail + 1:
        left = Counter(
            f"{r.event} ({(r.reason or r.cause or '').replace('_', ' ')})" for r in records[head:-tail]
        )
        summary = ", ".join(f"{n} {what}" for what, n in left.most_common())
        lines = [*lines[:head], f"... {len(records) - head - tail} more: {summary}", *lines[-tail:]]
    return lines


def _line(r: OffloadRecord) -> str:
    return f"t=+{r.t:.3f}s  {r.remote[0]}:{r.remote[1]} -> :{r.local[1]}  {r.describe()}"
