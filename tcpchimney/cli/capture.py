"""``chimney capture -w FILE [host IP] [port P]``: the live wire of a running stack into a pcap, offloaded
connections' frames included (tcpchimney/manage/capture.py does the capturing; docs/manage.md).

The stack writes FILE itself; this client holds the control connection open while the capture runs and
ends it on Ctrl-C (or SIGTERM, or after ``--duration``) with one summary line: frames, bytes, dropped.
A client that goes away ends the capture too.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from tcpchimney.cli.common import CommandError

VERB = "capture"


def add_command(sub: Any, name_option: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        VERB,
        help="capture the live wire (offloaded connections too) into a pcap: -w FILE [host IP] [port P]",
        description="A live capture of a running stack's wire into a pcap that tcpdump -r and tshark read, "
        "including the frames of offloaded connections in both directions (the NIC mirrors them). "
        "Ctrl-C ends it with a summary: frames, bytes, dropped (docs/manage.md).",
    )
    p.add_argument("-w", "--write", required=True, metavar="FILE", help="the pcap to write")
    p.add_argument(
        "filter",
        nargs="*",
        metavar="FILTER",
        help="host IP and/or port P (both given: both must match)",
    )
    p.add_argument(
        "--duration", type=float, metavar="SECONDS", help="stop after this long (default: at Ctrl-C)"
    )
    name_option(p)
    p.add_argument("-j", "--json", action="store_true", help="print the summary as JSON")


def parse_filter(words: list[str]) -> dict[str, Any]:
    """``host IP`` and ``port P`` (with an optional ``and`` between them) as request arguments."""
    out: dict[str, Any] = {}
    items = [w for w in words if w != "and"]
    if len(items) % 2:
        raise CommandError(f"the filter {' '.join(words)!r}: give host IP and/or port P.")
    for key, value in zip(items[::2], items[1::2], strict=True):
        if key == "host" and "host" not in out:
            out["host"] = value
        elif key == "port" and "port" not in out:
            if not value.isdigit() or not 0 < int(value) < 65536:
                raise CommandError(f"port {value!r} is not a port (1 to 65535).")
            out["port"] = int(value)
        else:
            raise CommandError(f"the filter {' '.join(words)!r}: give host IP and/or port P, once each.")
    return out


def _check_writable(path: str) -> None:
    """The file is one this user may write (the stack, as root, could write where the user may not)."""
    try:
        with open(path, "wb"):
            pass
    except OSError as exc:
        raise CommandError(f"cannot write the capture file {path}: {exc.strerror or exc}.") from None


def run(args: argparse.Namespace) -> int:
    from tcpchimney.manage.client import ControlError, find

    request = {"file": os.path.abspath(args.write), **parse_filter(args.filter)}
    try:
        path = find(args.name)
    except ControlError as exc:
        raise CommandError(f"{exc}.") from None
    _check_writable(request["file"])
    summary = _capture(path, request, args.duration)
    _print_summary(args, summary)
    return 1 if summary.get("error") or summary.get("gone") else 0


def _capture(path: str, request: dict[str, Any], duration: float | None) -> dict[str, Any]:
    from tcpchimney.manage.client import ControlError, open_stream

    try:
        stream, first = open_stream(path, "capture", request)
    except ControlError as exc:
        raise CommandError(f"{exc}.") from None
    with stream:
        where = f" ({first['filter']})" if first.get("filter") else ""
        last: dict[str, Any] = {"frames": 0, "bytes": 0, "dropped": 0}
        deadline = None if duration is None else time.monotonic() + duration
        try:  # from the line on: a Ctrl-C right after it must still stop the capture cleanly
            line = f"chimney: capturing into {first['file']}{where}; Ctrl-C stops"
            print(line, file=sys.stderr, flush=True)
            while True:
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                event = stream.next(timeout)
                if event is None:  # --duration is over
                    break
                if event.get("event") == "summary":
                    return event
                last = event
        except (KeyboardInterrupt, SystemExit):
            pass  # Ctrl-C (SIGTERM: Terminated): end the capture, report it
        except ConnectionError:
            return {**last, "gone": True}
        return _stop(stream, last)


def _stop(stream: Any, last: dict[str, Any]) -> dict[str, Any]:
    with contextlib.suppress(OSError):
        stream.send_line(b'{"command": "stop"}\n')
    try:
        while True:
            event = stream.next(10.0)
            if event is None or event.get("event") == "summary":
                return event or {**last, "gone": True}
    except (ConnectionError, TimeoutError):
        return {**last, "gone": True}


def _print_summary(args: argparse.Namespace, s: dict[str, Any]) -> None:
    if args.json:
        import json

        json.dump(s, sys.stdout)
        sys.stdout.write("\n")
    if s.get("gone"):
        print(
            f"chimney: the stack went away; {s.get('frames', 0)} frames were captured into {args.write}.",
            file=sys.stderr,
        )
        return
    if s.get("error"):
        print(f"chimney: {s['error']}.", file=sys.stderr)
    if not args.json:
        print(
            f"{s['frames']} frames, {s['bytes']} bytes captured in {s['seconds']:.1f} s; "
            f"{s['dropped']} dropped ({s['dropped_nic']} by the NIC's mirror, {s['dropped_queue']} by the "
            f"writer's queue); {s['filtered']} filtered out"
        )
