"""``chimney top``: a live view of a running stack, refreshed every ``--interval`` seconds.

The header has the mode, the target, the connections per offload state and the moves per second; then one
row per connection with its offload state and its rates each way (from the bytes between two frames); then
the last moves between host and NIC with their reasons. Keys: ``q`` quits, ``s`` cycles the sort (rate,
number, state), ``f`` cycles the filter (all, offloaded, in host), ``p`` pauses. ``--once`` prints one frame
(after two looks an interval apart, for the rates) and exits, for scripts. It only reads: every frame is
three control requests.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

SORTS = ("rate", "id", "state")
FILTERS = ("all", "offloaded", "in host")
MOVES_SHOWN = 8
_STYLE = {"Offloaded": "green", "Offloading": "yellow", "Uploading": "yellow", "InHost": "cyan"}


@dataclass(slots=True)
class View:
    """What the keys changed, and the last frame's byte counts (rates are their differences)."""

    sort: str = "rate"
    filter: str = "all"
    paused: bool = False
    last: dict[int, tuple[float, int, int]] = field(default_factory=dict)  # id -> (time, sent, received)
    rates: dict[int, tuple[float, float]] = field(default_factory=dict)  # id -> bytes/s (sent, received)
    looked: dict[str, Any] = field(default_factory=dict)  # the last look: rows, global, events

    def key(self, ch: str) -> bool:
        """Apply one key; False for q (quit)."""
        if ch in ("q", "Q", "\x03"):
            return False
        if ch == "s":
            self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        elif ch == "f":
            self.filter = FILTERS[(FILTERS.index(self.filter) + 1) % len(FILTERS)]
        elif ch == "p":
            self.paused = not self.paused
        return True

    def update_rates(self, rows: list[dict[str, Any]], now: float) -> None:
        seen: dict[int, tuple[float, int, int]] = {}
        for row in rows:
            conn_id, sent, received = row["id"], row["bytes_sent"], row["bytes_received"]
            seen[conn_id] = (now, sent, received)
            before = self.last.get(conn_id)
            if before is not None and now > before[0]:
                span = now - before[0]
                self.rates[conn_id] = ((sent - before[1]) / span, (received - before[2]) / span)
        self.last = seen
        self.rates = {k: v for k, v in self.rates.items() if k in seen}


def run(args: argparse.Namespace) -> int:
    from tcpchimney.manage.client import find

    path = find(args.name)
    view = View()
    if args.once:  # two looks an interval apart: the frame has rates
        _frame(path, view)
        time.sleep(args.interval)
        out = Console()
        Console(width=max(out.width, 150) if not out.is_terminal else None).print(_frame(path, view))
        return 0
    console = Console()
    with _keys() as keys, Live(console=console, auto_refresh=False, screen=console.is_terminal) as live:
        while True:
            if not view.paused:
                live.update(_frame(path, view), refresh=True)
            deadline = time.monotonic() + args.interval
            while (left := deadline - time.monotonic()) > 0:
                ch = keys(left)
                if ch is None:
                    continue
                if not view.key(ch):
                    return 0
                live.update(_frame(path, view, look=False), refresh=True)


@contextlib.contextmanager
def _keys() -> Iterator[Any]:
    """A reader of single key presses (stdin in cbreak mode while it is a terminal); None on timeout."""
    fd = sys.stdin.fileno() if sys.stdin is not None else -1
    saved = termios.tcgetattr(fd) if fd >= 0 and os.isatty(fd) else None
    if saved is not None:
        tty.setcbreak(fd)

    def read(timeout: float) -> str | None:
        if fd < 0:
            time.sleep(timeout)
            return None
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return None
        data = os.read(fd, 1)
        if not data:  # stdin closed: only the timer drives the view
            time.sleep(timeout)
            return None
        return data.decode(errors="replace")

    try:
        yield read
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _frame(path: str, view: View, look: bool = True) -> Group:
    """One frame; ``look``: ask the stack again (a key press redraws the last look)."""
    from tcpchimney.manage.client import call

    seen = view.looked
    if look or not seen:
        now = time.monotonic()
        seen["rows"] = [r for r in call(path, "netstat", {}) if r["id"] is not None]
        seen["global"] = call(path, "show-global")
        seen["events"] = call(path, "events")
        view.update_rates(seen["rows"], now)
    return Group(
        _header(seen["global"], seen["events"], view), _table(seen["rows"], view), _moves(seen["events"])
    )


def _header(g: dict[str, Any], events: list[dict[str, Any]], view: View) -> Text:
    counts = "  ".join(f"{k} {v}" for k, v in g["connections"].items())
    recent = [e for e in events if e["time"] >= time.time() - 10 and e["event"] in ("offloaded", "uploaded")]
    text = Text.assemble(
        ("chimney top", "bold"),
        f"  mode {g['chimney']}  target {g['target'] or 'none'}  |  {counts}  |  ",
        f"moves/s {len(recent) / 10:.1f}  |  sort {view.sort}  filter {view.filter}",
        ("  PAUSED" if view.paused else ""),
    )
    return text


def _table(rows: list[dict[str, Any]], view: View) -> Table:
    table = Table(expand=True, show_edge=False)
    for name in ("ID", "LOCAL", "REMOTE", "STATE", "OFFLOAD", "NIC", "REASON", "OUT/s", "IN/s"):
        # Addresses and the offload state are never cut short: on a narrow terminal the others give way.
        width = {"LOCAL": 21, "REMOTE": 21, "OFFLOAD": 10, "ID": 3}.get(name)
        table.add_column(
            name, no_wrap=True, min_width=width, justify="right" if name.endswith("/s") else "left"
        )
    chosen = [r for r in rows if _passes(r, view.filter)]
    chosen.sort(key=lambda r: _sort_key(r, view))
    for r in chosen:
        out_rate, in_rate = view.rates.get(r["id"], (0.0, 0.0))
        table.add_row(
            str(r["id"]), r["local"], r["remote"], r["state"],
            Text(r["offload_state"], style=_STYLE.get(r["offload_state"], "")),
            r["nic"] or "-", r["reason"] or "-", _rate(out_rate), _rate(in_rate),
        )  # fmt: skip
    return table


def _passes(row: dict[str, Any], which: str) -> bool:
    if which == "offloaded":
        return bool(row["offload_state"] == "Offloaded")
    if which == "in host":
        return bool(row["offload_state"] == "InHost")
    return True


def _sort_key(row: dict[str, Any], view: View) -> Any:
    if view.sort == "id":
        return row["id"]
    if view.sort == "state":
        return (row["offload_state"], row["state"], row["id"])
    out_rate, in_rate = view.rates.get(row["id"], (0.0, 0.0))
    return (-(out_rate + in_rate), row["id"])


def _rate(bps: float) -> str:
    if bps >= 1e6:
        return f"{bps / 1e6:.1f} MB"
    return f"{bps / 1e3:.1f} KB" if bps >= 1e3 else f"{bps:.0f} B"


def _moves(events: list[dict[str, Any]]) -> Table:
    table = Table(title="last moves", expand=True, show_edge=False)
    for name in ("TIME", "CONN", "EVENT", "REASON", "MS"):
        table.add_column(name, no_wrap=True)
    for e in events[-MOVES_SHOWN:]:
        stamp = time.strftime("%H:%M:%S", time.localtime(e["time"]))
        ms = e.get("duration_ms")
        table.add_row(
            stamp, "-" if e["id"] is None else f"#{e['id']}", e["event"], e.get("reason") or "-",
            "-" if ms is None else f"{ms:.1f}",
        )  # fmt: skip
    return table
