"""``chimney stats``: the stack's counters as ``nstat`` shows the kernel's.

By default each call shows what grew since the previous call on this stack: the client keeps the values it
last showed in a history file next to the control socket (``RUN_DIR/NAME.nstat``, replaced atomically; the
stack removes it when it ends). The history belongs to one run of the stack (its pid): a new stack under the
same name starts afresh, and a counter smaller than its history (reset) is shown as it is. ``-a`` shows the
absolute values (and still updates the history, as nstat does), ``-s`` does not update it, ``-r`` forgets
it first, ``-z`` also shows counters that are zero (or did not change). ``-j`` prints the same figures as
JSON: ``{"host": {...}, "nic": {...}, "offload": {...}, "control": {...}}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Any

from tcpchimney.manage.mib import GAUGES

SECTIONS = ("host", "nic", "offload")
HISTORY_SUFFIX = ".nstat"


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-a", "--ignore", dest="absolute", action="store_true", help="absolute values")
    parser.add_argument("-z", "--zeros", action="store_true", help="show zero counters too")
    parser.add_argument("-s", "--no-update", action="store_true", help="do not update the history")
    parser.add_argument("-r", "--reset", action="store_true", help="forget the history first")


def history_path(control_path: str) -> str:
    base = control_path[:-4] if control_path.endswith(".ctl") else control_path
    return base + HISTORY_SUFFIX


def _load(path: str, pid: Any) -> dict[str, dict[str, int]]:
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(saved, dict) or saved.get("pid") != pid or not isinstance(saved.get("values"), dict):
        return {}
    values: dict[str, dict[str, int]] = saved["values"]
    return values


def _save(path: str, pid: Any, values: dict[str, dict[str, int]]) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"pid": pid, "values": values}, f)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        print(f"chimney: cannot keep the stats history in {path}: {exc.strerror or exc}", file=sys.stderr)


def figures(args: argparse.Namespace, result: dict[str, Any]) -> dict[str, dict[str, int]]:
    """The values to show (deltas or absolute, zeros filtered unless -z); updates the history."""
    current: dict[str, dict[str, int]] = {k: dict(v) for k, v in result.get("mib", {}).items()}
    path = history_path(args.control_path)
    pid = result.get("pid")
    old = {} if args.reset else _load(path, pid)
    if not args.no_update:
        _save(path, pid, current)
    shown: dict[str, dict[str, int]] = {}
    for section, values in current.items():
        before = old.get(section, {})
        out: dict[str, int] = {}
        for name, value in values.items():
            prev = before.get(name)
            delta = value if args.absolute or name in GAUGES or prev is None or value < prev else value - prev
            if delta or args.zeros:
                out[name] = delta
        shown[section] = out
    return shown


def shape(args: argparse.Namespace, result: dict[str, Any]) -> dict[str, Any]:
    """``stats -j``: the figures the text would show, as JSON, and the control socket's requests by command
    (``control``, absolute: what a script waiting for a client to connect looks at)."""
    return {**figures(args, result), "control": result.get("control", {})}


def print_stats(args: argparse.Namespace, result: dict[str, Any]) -> None:
    shown = figures(args, result)
    for section in SECTIONS:
        if section not in shown:
            continue
        print(f"#{section}")
        for name, value in shown[section].items():
            print(f"{name:<40}{value:>16}")
