"""The commands of one running stack's control socket (docs/admin.md lists them with their fields).

``ControlPlane`` answers ``Request`` objects; it touches the stack only through its public calls
(``connections``, ``listeners``, ``offload_policy``, ``plan_offload_policy``, ``set_offload_policy``,
``inspect``, ``offload_now``, ``upload``) and is fed every stack event by the runtime (``on_event``).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from tcpchimney.chimney.reason import Reason
from tcpchimney.host.events import HostEvent, Offloaded, Uploaded
from tcpchimney.host.offload_state import OffloadState
from tcpchimney.host.policy import OffloadMode, OffloadPolicy, OffloadRule, RuleAction, RuleKind
from tcpchimney.host.sockets import TcpSocket
from tcpchimney.host.stack import HostStack
from tcpchimney.manage import mib
from tcpchimney.manage.history import Entry, Histories
from tcpchimney.manage.latency import Histogram, nstat_names
from tcpchimney.manage.protocol import VERSION, Request, RequestError, arg
from tcpchimney.manage.views import (
    OFFLOAD_STATE_NAMES,
    connection_row,
    internals,
    internals_dict,
    listener_row,
)

RECENT_EVENTS = 1000  # events kept for `chimney events` without --follow
FOLLOW_QUEUE = 10_000  # events a slow follower may lag behind before it loses some (counted)
PRUNE_EVERY = 4096  # events between two looks for closed connections (the histories stay bounded)
INSPECT_WAIT = 1.0  # at most how long netstat -i waits for the target's answers about offloaded connections
Handler = Callable[[dict[str, Any]], Any]


@dataclass(frozen=True, slots=True)
class Command:
    handler: Handler
    help: str


class ControlPlane:
    """The control socket's commands over ``stack``. ``identity`` goes into ``hello`` (name, command,
    addresses); ``nic`` says where the target runs ("process", "inline" or None); ``counters`` returns the
    session's counters; ``wake`` lets the stack's output leave after a command acted on it."""

    def __init__(
        self,
        stack: HostStack,
        identity: dict[str, Any],
        *,
        nic: str | None = None,
        counters: Callable[[], dict[str, Any]] = dict,
        target_info: Callable[[], dict[str, Any] | None] = lambda: None,
        wake: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stack = stack
        self.identity = identity
        self.nic = nic
        self.counters = counters
        self.target_info = target_info
        self.wake = wake
        self.clock = clock
        self.histories = Histories()
        self.requests: Counter[str] = Counter()
        self.handoffs = {"offload": Histogram(), "upload": Histogram()}  # hand-off durations (seconds)
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)
        self.followers: list[Follower] = []
        self._events_seen = 0
        self.commands: dict[str, Command] = {
            "hello": Command(self._hello, "who this stack is and the protocol it speaks"),
            "list-commands": Command(self._list_commands, "the commands and what they do"),
            "netstat": Command(self._netstat, "one row per connection and listener (args: internals, all)"),
            "show-global": Command(self._show_global, "the offload mode, its thresholds and rules"),
            "set-global": Command(
                self._set_global,
                "change the offload mode or thresholds (args: chimney, min_bytes, max_rtt_ms, dry_run)",
            ),
            "why": Command(self._why, "why a connection is where it is (args: conn)"),
            "history": Command(self._history, "a connection's moves between host and NIC (args: conn)"),
            "offload": Command(self._offload, "offload a connection now (args: conn)"),
            "upload": Command(self._upload, "bring a connection, or all (args: conn or all), to the host"),
            "stats": Command(self._stats, "the stack's counters, with the Linux MIB names under mib"),
            "show-target": Command(self._show_target, "the offload target: capabilities, capacity, health"),
            "rule-add": Command(
                self._rule_add, "add an offload rule (args: action, remote, remote_port, local_port, dry_run)"
            ),
            "rule-del": Command(self._rule_del, "remove an offload rule (args: number, dry_run)"),
            "rule-show": Command(self._rule_show, "the offload rules in order, with their hits"),
            "events": Command(
                self._events, "recent offload events, or every one as it happens (args: follow, conn)"
            ),
        }

    # ------------------------------------------------------------------ entry points

    def on_event(self, ev: HostEvent) -> None:
        if isinstance(ev, Offloaded):
            self.handoffs["offload"].observe(ev.duration)
        elif isinstance(ev, Uploaded):
            self.handoffs["upload"].observe(ev.duration)
        recorded = self.histories.on_event(ev)
        if recorded is None:
            return
        entry, move = recorded
        line = {"id": entry.id, "connection": f"{entry.local}-{entry.remote}", **move}
        self.recent.append(line)
        for follower in self.followers:
            follower.put(line)
        self._events_seen += 1
        if self._events_seen % PRUNE_EVERY == 0:
            self.histories.prune(self.stack.holds)

    def note(self, event: str, fields: dict[str, Any]) -> None:
        """An event of the stack that is no connection's (the NIC process started or failed)."""
        line = {"id": None, "connection": None, "time": time.time(), "event": event, **fields}
        self.recent.append(line)
        for follower in self.followers:
            follower.put(line)

    async def handle(self, request: Request) -> Any:
        """The result of ``request``; RequestError (one sentence) when it cannot be done."""
        command = self.commands.get(request.command)
        if command is None:
            raise RequestError(f"unknown command {request.command!r} (list-commands lists them)")
        self.requests[request.command] += 1
        result = command.handler(request.args)
        if isinstance(result, Awaitable):
            result = await result
        return result

    # ------------------------------------------------------------------ connections

    def _rows(self) -> list[tuple[TcpSocket, Entry]]:
        stack = self.stack
        self.histories.prune(stack.holds)
        return [(sock, self.histories.entry(sock)) for sock in stack.connections()]

    def find(self, spec: Any) -> tuple[TcpSocket, Entry]:
        """The live connection ``spec`` names: its number (``12`` or ``"#12"``), ``"REMOTE_IP:PORT"`` or
        ``"LOCAL_IP:PORT-REMOTE_IP:PORT"``."""
        if not isinstance(spec, int | str) or isinstance(spec, bool) or spec == "":
            raise RequestError('"conn" names a connection: its number, REMOTE:PORT or LOCAL:PORT-REMOTE:PORT')
        rows = self._rows()
        text = str(spec).lstrip("#")
        if text.isdigit():
            found = [(s, e) for s, e in rows if e.id == int(text)]
        elif "-" in text:
            found = [(s, e) for s, e in rows if f"{e.local}-{e.remote}" == text]
        else:
            found = [(s, e) for s, e in rows if e.remote == text]
        if not found:
            raise RequestError(f"no connection {spec} on this stack (chimney netstat lists them)")
        if len(found) > 1:
            ids = ", ".join(f"#{e.id}" for _, e in found)
            raise RequestError(f"{spec} names {len(found)} connections ({ids}): give its number")
        return found[0]

    def _closed_entry(self, spec: Any) -> Entry | None:
        text = str(spec).lstrip("#")
        for entry in self.histories.closed():
            if (text.isdigit() and entry.id == int(text)) or text in (
                entry.remote,
                f"{entry.local}-{entry.remote}",
            ):
                return entry
        return None

    async def _netstat(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        want_internals = bool(arg(args, "internals", bool, False))
        rows = self._rows()
        if want_internals:
            await self._inspect([sock for sock, _ in rows])
        now = self.clock()
        out: list[dict[str, Any]] = []
        if arg(args, "all", bool, True):
            out += [listener_row(li, self.stack.iface.ip) for li in self.stack.listeners()]
        for sock, entry in rows:
            row = connection_row(sock, entry.id, self.nic, entry.since)
            if want_internals:
                row["internals"] = internals_dict(internals(sock, now))
            out.append(row)
        return out

    async def _inspect(self, socks: list[TcpSocket]) -> None:
        """Ask the target about every offloaded connection and wait (briefly) for its answers."""
        start = self.clock()
        asked = [s for s in socks if self.stack.inspect(s)]
        if not asked:
            return
        self.wake()
        deadline = start + INSPECT_WAIT
        while self.clock() < deadline:
            if all(_answered(s, start) for s in asked):
                return
            await asyncio.sleep(0.002)

    # ------------------------------------------------------------------ policy

    def _policy(self) -> OffloadPolicy:
        policy = self.stack.offload_policy
        if policy is None:
            raise RequestError(
                "this stack runs without an offload target (it was started with --offload "
                "disabled): there is no mode to show or set"
            )
        return policy

    def _show_global(self, args: dict[str, Any]) -> dict[str, Any]:
        policy = self.stack.offload_policy
        states = Counter(OFFLOAD_STATE_NAMES[s.offload_state] for s in self.stack.connections())
        return {
            "chimney": "disabled" if policy is None else policy.mode.value,
            "target": self.nic,
            "min_bytes": None if policy is None else policy.min_bytes,
            "max_rtt_ms": None if policy is None else policy.max_rtt * 1000,
            "check_interval_s": None if policy is None else policy.check_interval,
            "rules": 0 if policy is None else len(policy.rules),
            "connections": {
                name: states.get(name, 0) for name in ("InHost", "Offloading", "Offloaded", "Uploading")
            },
        }

    def _set_global(self, args: dict[str, Any]) -> dict[str, Any]:
        old = self._policy()
        mode = arg(args, "chimney", str)
        min_bytes = arg(args, "min_bytes", int)
        max_rtt_ms = arg(args, "max_rtt_ms", int | float)
        changes: dict[str, Any] = {}
        if mode is not None:
            if mode not in {m.value for m in OffloadMode}:
                raise RequestError(f"chimney={mode}: give disabled, enabled or automatic")
            changes["mode"] = OffloadMode(mode)
        if min_bytes is not None:
            changes["min_bytes"] = min_bytes
        if max_rtt_ms is not None:
            changes["max_rtt"] = max_rtt_ms / 1000
        if not changes:
            raise RequestError("nothing to set: give chimney=, min-bytes= or max-rtt=")
        try:
            new = replace(old, **changes)
        except ValueError:
            raise RequestError("min-bytes must be 0 or more and max-rtt more than 0") from None
        return self._new_policy(new, args)

    def _move_row(self, sock: TcpSocket, action: str, reason: Reason | None) -> dict[str, Any]:
        entry = self.histories.entry(sock)
        return {
            "id": entry.id,
            "local": entry.local,
            "remote": entry.remote,
            "action": action,
            "reason": None if reason is None else reason.value,
        }

    # ------------------------------------------------------------------ rules

    def _rule_show(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        policy, hits = self._policy(), self.stack.offload_rule_hits()
        return [_rule_row(n, rule, hits.get(rule, 0)) for n, rule in enumerate(policy.rules, 1)]

    def _rule_add(self, args: dict[str, Any]) -> dict[str, Any]:
        policy = self._policy()
        try:
            rule = OffloadRule(
                RuleKind.POLICY,
                remote=arg(args, "remote", str),
                remote_port=arg(args, "remote_port", int),
                local_port=arg(args, "local_port", int),
                action=RuleAction(arg(args, "action", str, "never")),
            )
        except ValueError as exc:
            raise RequestError(_rule_error(exc)) from None
        if rule in policy.rules:
            raise RequestError("the same rule is there already (chimney rule show)")
        return self._new_policy(replace(policy, rules=(*policy.rules, rule)), args)

    def _rule_del(self, args: dict[str, Any]) -> dict[str, Any]:
        policy = self._policy()
        number = arg(args, "number", int)
        if number is None or not 1 <= number <= len(policy.rules):
            raise RequestError(f"no rule {number} (there are {len(policy.rules)}: chimney rule show)")
        rules = policy.rules[: number - 1] + policy.rules[number:]
        return self._new_policy(replace(policy, rules=rules), args)

    def _new_policy(self, new: OffloadPolicy, args: dict[str, Any]) -> dict[str, Any]:
        """Apply (or, dry run, only plan) a new policy; the moves it makes, each with its reason."""
        moves = [self._move_row(s, a, r) for s, a, r in self.stack.plan_offload_policy(new)]
        dry_run = bool(arg(args, "dry_run", bool, False))
        if not dry_run:
            self.stack.set_offload_policy(new)
            self.wake()
        return {"applied": not dry_run, "moves": moves, "global": self._show_global({})}

    # ------------------------------------------------------------------ one connection

    def _why(self, args: dict[str, Any]) -> dict[str, Any]:
        sock, entry = self.find(args.get("conn"))
        off, policy = sock.offload, self.stack.offload_policy
        reason = None if off is None else off.reason
        answer: dict[str, Any] = {
            "id": entry.id,
            "local": entry.local,
            "remote": entry.remote,
            "state": sock.state.name,
            "offload_state": OFFLOAD_STATE_NAMES[sock.offload_state],
            "mode": "disabled" if policy is None else policy.mode.value,
            "reason": None if reason is None else reason.value,
            "reason_text": None if reason is None else reason.description,
            "opted_out": not sock.offload_allowed,
        }
        info = self.stack.offload_info(sock)
        # The thresholds judge a connection on the host engine (what it moved there); once away they no
        # longer apply: automatic mode does not upload what crossed them once.
        if policy is not None and info is not None and sock.offload_state is OffloadState.IN_HOST:
            answer["thresholds"] = {
                "min_bytes": policy.min_bytes,
                "moved_bytes": info.bytes_moved,
                "max_rtt_ms": policy.max_rtt * 1000,
                "srtt_ms": None if info.srtt is None else info.srtt * 1000,
                "met": policy.meets_threshold(info),
            }
        rule = None if policy is None or info is None else policy.matching(info)
        answer["rule"] = (
            None if rule is None or policy is None else _rule_row(policy.rules.index(rule) + 1, rule, 0)
        )
        answer["verdict"] = _verdict(answer)
        return answer

    def _history(self, args: dict[str, Any]) -> dict[str, Any]:
        spec = args.get("conn")
        try:
            return self.find(spec)[1].as_dict()
        except RequestError:
            entry = self._closed_entry(spec)
            if entry is None:
                raise
            return entry.as_dict()

    def _offload(self, args: dict[str, Any]) -> dict[str, Any]:
        self._policy()
        sock, entry = self.find(args.get("conn"))
        if sock.offload_state is OffloadState.OFFLOADED:
            raise RequestError(f"connection #{entry.id} is offloaded already")
        reason = self.stack.offload_now(sock)
        self.wake()
        return {"id": entry.id, "started": reason is None, "reason": None if reason is None else reason.value}

    def _upload(self, args: dict[str, Any]) -> dict[str, Any]:
        self._policy()
        if arg(args, "all", bool, False):
            count = self.stack.upload_all(Reason.ADMIN)
            self.wake()
            return {"uploads": count}
        sock, entry = self.find(args.get("conn"))
        if sock.offload_state is not OffloadState.OFFLOADED:
            raise RequestError(
                f"connection #{entry.id} is not offloaded ({OFFLOAD_STATE_NAMES[sock.offload_state]})"
            )
        started = self.stack.upload(sock, Reason.ADMIN)
        self.wake()
        return {"id": entry.id, "uploads": int(started)}

    # ------------------------------------------------------------------ events

    def _events(self, args: dict[str, Any]) -> Any:
        spec = args.get("conn")
        wanted = None if spec is None else self._event_filter(spec)
        if not arg(args, "follow", bool, False):
            return [e for e in self.recent if wanted is None or wanted(e)]
        return self._follow(wanted)

    def _event_filter(self, spec: Any) -> Callable[[dict[str, Any]], bool]:
        """Events of the connection ``spec`` names (live or closed), matched by number."""
        try:
            conn_id = self.find(spec)[1].id
        except RequestError:
            entry = self._closed_entry(spec)
            if entry is None:
                raise
            conn_id = entry.id
        return lambda e: e["id"] == conn_id

    async def _follow(self, wanted: Callable[[dict[str, Any]], bool] | None) -> AsyncIterator[dict[str, Any]]:
        follower = Follower(wanted)
        self.followers.append(follower)
        try:
            while True:
                yield await follower.get()
        finally:
            self.followers.remove(follower)

    # ------------------------------------------------------------------ the rest

    def _hello(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"protocol": VERSION, "pid": os.getpid(), **self.identity, "commands": sorted(self.commands)}

    def _list_commands(self, args: dict[str, Any]) -> list[dict[str, str]]:
        return [{"name": name, "help": c.help} for name, c in sorted(self.commands.items())]

    def _stats(self, args: dict[str, Any]) -> dict[str, Any]:
        host, session = self.stack.counters, self.counters()
        return {
            "pid": os.getpid(),
            "host": host,
            "session": session,
            "control": dict(self.requests),
            "internal_errors": self.stack.internal_errors,
            "mib": self.mib(host, session),
        }

    def mib(self, host: dict[str, Any], session: dict[str, Any]) -> dict[str, dict[str, int]]:
        """``chimney stats``'s counters (manage/mib.py): {"host": ..., "nic": ..., "offload": ...}."""
        in_host = [s.state for s in self.stack.connections() if s.offload is None or s.offload.in_host]
        away = [s.state for s in self.stack.connections() if s.offload is not None and not s.offload.in_host]
        out = {"host": mib.host_mib(host, mib.current_established(in_host))}
        nic = session.get("nic")
        if isinstance(nic, dict):
            out["nic"] = mib.nic_mib(nic, mib.current_established(away))
            lifecycle = mib.offload_mib(host.get("offload", {}), nic)
            for direction, histogram in self.handoffs.items():
                lifecycle.update(nstat_names(direction, histogram))
            out["offload"] = lifecycle
        return out

    def _show_target(self, args: dict[str, Any]) -> dict[str, Any]:
        info = self.target_info()
        if info is None:
            raise RequestError(
                "this stack runs without an offload target (it was started with --offload disabled)"
            )
        states = Counter(OFFLOAD_STATE_NAMES[s.offload_state] for s in self.stack.connections())
        used = states["Offloaded"] + states["Offloading"] + states["Uploading"]
        capacity = info.get("capabilities", {}).get("capacity")
        handoff = {
            direction: {
                "count": h.count,
                "p50_ms": _ms(h.quantile(0.5)),
                "p99_ms": _ms(h.quantile(0.99)),
            }
            for direction, h in self.handoffs.items()
        }
        by_state = {name: states.get(name, 0) for name in ("Offloading", "Offloaded", "Uploading")}
        use = {"connections": used, "capacity": capacity, **by_state}
        return {**info, "use": use, "handoff": handoff}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


class Follower:
    """One ``events --follow`` client's queue: a client that lags too far loses events, counted in the
    ``dropped`` line it is sent when it catches up, never slowing the stack."""

    def __init__(self, wanted: Callable[[dict[str, Any]], bool] | None) -> None:
        self.wanted = wanted
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(FOLLOW_QUEUE)
        self.dropped = 0

    def put(self, line: dict[str, Any]) -> None:
        if self.wanted is not None and not self.wanted(line):
            return
        try:
            self.queue.put_nowait(line)
        except asyncio.QueueFull:
            self.dropped += 1

    async def get(self) -> dict[str, Any]:
        if self.dropped and self.queue.empty():
            dropped, self.dropped = self.dropped, 0
            return {"id": None, "connection": None, "time": time.time(), "event": "dropped", "count": dropped}
        return await self.queue.get()


def _answered(sock: TcpSocket, since: float) -> bool:
    off = sock.offload
    return off is None or not off.querying or (off.inspected is not None and off.inspected.at >= since)


def _rule_row(number: int, rule: OffloadRule, hits: int) -> dict[str, Any]:
    return {
        "number": number,
        "kind": rule.kind.value,
        "action": rule.action.value if rule.kind is RuleKind.POLICY else None,
        "remote": rule.remote,
        "remote_port": rule.remote_port,
        "local_port": rule.local_port,
        "keeps_on_host": rule.keeps_on_host,
        "hits": hits,
    }


def _rule_error(exc: ValueError) -> str:
    text = str(exc)
    if "RuleAction" in text:
        return "action must be never, always or policy"
    if "must be in 1..65535" in text:
        return "a port is 1 to 65535"
    return f"not an IPv4 address or network: {text}"


def _verdict(why: dict[str, Any]) -> str:
    """One sentence: where the connection is and why."""
    where = why["offload_state"]
    if why["opted_out"]:
        return f"{where}: the application opted the socket out of offload"
    rule = why.get("rule")
    if where == "Offloaded":
        by = (
            f"rule {rule['number']} ({rule['action']})"
            if rule and rule["action"] == "always"
            else "the policy"
        )
        return f"Offloaded: {by} let it go and the target took it"
    if why["mode"] == "disabled":
        return f"{where}: offload is disabled (chimney set global chimney=enabled)"
    if rule and rule["keeps_on_host"]:
        what = rule["action"] or "sees every packet"
        return f"{where}: rule {rule['number']} ({rule['kind']}, {what}) keeps it on the host"
    t = why.get("thresholds")
    if why["mode"] == "automatic" and t is not None and not t["met"]:
        rtt = "no RTT sample yet" if t["srtt_ms"] is None else f"RTT {t['srtt_ms']:.1f} ms"
        return (
            f"{where}: below automatic mode's threshold ({t['moved_bytes']} of {t['min_bytes']} bytes moved, "
            f"{rtt}, limit {t['max_rtt_ms']:.0f} ms)"
        )
    if why["reason_text"]:
        return f"{where}: {why['reason_text']}"
    return f"{where}: not examined yet"
