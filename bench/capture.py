"""What ``chimney capture`` costs: bulk throughput with a capture of the whole wire running against the same
transfer without, the NIC in its own process (its mirror copies the offloaded connections' frames up the
frames ring) and inline (the device's capture hook sees them), each direction, on a TAP against the Linux
kernel.

``python -m bench.capture [--mb N] [--runs R] [--variants process,inline]`` prints one JSON line per figure:

- ``capture_bulk``: one line per (``variant``, ``direction``, ``capture``): ``value`` MB/s by wall time, the
  median of ``runs`` runs (``runs_mb_s``). ``capture`` is ``off`` or ``on`` (every frame into a pcap in
  the temporary directory, no filter); ``direction`` as bench/nic.py (``linux_to_stack``,
  ``stack_to_linux``). With ``on``: ``frames``, ``bytes`` and ``dropped`` (by the NIC's mirror and by the
  writer's queue) of the last run's capture.
- ``capture_cost``: per (``variant``, ``direction``), MB/s with the capture on / off (``value``), the median
  over the runs of that run's ratio; a run measures off and on back to back in one session (the order
  alternating from run to run), so a ratio never compares figures taken minutes apart on a shared machine.

Every transfer is offloaded (checked) and checked for its bytes (the count, SHA-256 the other way).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

from bench.nic import DIRECTIONS, MB, Variant, median, nic_pid, offloads, receive, send, session_for, skipped
from bench.tap import expected_sha256

NAMES = ("capture_bulk", "capture_cost")
VARIANTS = ("process", "inline")


class RunningCapture:
    """``chimney capture`` as its client does it, over the session's control socket (blocking calls: run
    them on a thread, the stack answers on the loop)."""

    def __init__(self, control: str, path: str) -> None:
        from tcpchimney.manage.client import open_stream

        self.stream, self.first = open_stream(control, "capture", {"file": path})

    def stop(self) -> dict[str, Any]:
        self.stream.send_line(b'{"command": "stop"}\n')
        try:
            while True:
                event = self.stream.next(30.0)
                if event is None:
                    raise RuntimeError("the capture's summary did not come within 30 s")
                if event.get("event") == "summary":
                    return event
        finally:
            self.stream.close()


async def one(session: Any, direction: str, nbytes: int, expected: str, pcap: str | None) -> dict[str, Any]:
    """One transfer (with a capture into ``pcap`` when given): its MB/s, and the capture's summary."""
    capture = None
    if pcap is not None:
        capture = await asyncio.to_thread(RunningCapture, session.control_path, pcap)
    pid = nic_pid(session)
    try:
        if direction == "linux_to_stack":
            meter = await receive(session, nbytes, pid)
        else:
            meter = await send(session, nbytes, pid, expected)
    finally:
        summary = {} if capture is None else await asyncio.to_thread(capture.stop)
    if pcap is not None:
        os.unlink(pcap)
        os.unlink(pcap + ".handoffs.jsonl")
    return {"mb_s": nbytes / MB / meter.wall, "summary": summary}


Runs = list[dict[tuple[str, str, str], dict[str, Any]]]  # per run: (variant, direction, capture) -> result


async def measure(chosen: Sequence[str], nbytes: int, runs: int) -> Runs:
    expected = expected_sha256(nbytes)
    out: Runs = []
    with tempfile.TemporaryDirectory(prefix="bench-capture-") as tmp:
        for i in range(runs):
            results: dict[tuple[str, str, str], dict[str, Any]] = {}
            for name in chosen:
                async with session_for(Variant(name, name), prefix="bc") as session:
                    before = offloads(session)
                    for direction in DIRECTIONS:
                        order = ("off", "on") if i % 2 == 0 else ("on", "off")
                        for state in order:
                            pcap = os.path.join(tmp, "wire.pcap") if state == "on" else None
                            results[(name, direction, state)] = await one(
                                session, direction, nbytes, expected, pcap
                            )
                    moved = offloads(session) - before
                want = 2 * len(DIRECTIONS)
                if moved < want:
                    raise RuntimeError(f"{name}: only {moved} of {want} transfers were offloaded")
            out.append(results)
    return out


def lines(runs: Runs, nbytes: int) -> Iterator[dict[str, Any]]:
    for key in runs[0]:
        name, direction, state = key
        values = [r[key]["mb_s"] for r in runs]
        line: dict[str, Any] = {
            "bench": "capture_bulk",
            "variant": name,
            "direction": direction,
            "capture": state,
            "value": round(median(values), 1),
            "unit": "MB/s",
            "mb": nbytes // MB,
            "runs_mb_s": [round(v, 1) for v in values],
        }
        if state == "on":
            s = runs[-1][key]["summary"]
            line.update(frames=s["frames"], bytes=s["bytes"], dropped=s["dropped"])
            line.update(dropped_nic=s["dropped_nic"], dropped_queue=s["dropped_queue"])
        yield line
    for name, direction, state in runs[0]:
        if state != "on":
            continue
        ratios = [r[(name, direction, "on")]["mb_s"] / r[(name, direction, "off")]["mb_s"] for r in runs]
        yield {
            "bench": "capture_cost",
            "variant": name,
            "direction": direction,
            "value": round(median(ratios), 3),
            "unit": "ratio",
            "runs_ratio": [round(x, 3) for x in ratios],
        }


def run(nbytes: int = 200 * MB, runs: int = 3, names: Sequence[str] = VARIANTS) -> Iterator[dict[str, Any]]:
    skip = skipped(NAMES)
    if skip is not None:
        yield from skip
        return
    yield from lines(asyncio.run(measure(names, nbytes, runs)), nbytes)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200, help="MB per bulk transfer")
    parser.add_argument("--runs", type=int, default=3, help="runs (medians are reported)")
    parser.add_argument(
        "--variants",
        type=lambda t: tuple(t.split(",")),
        default=VARIANTS,
        help="process and/or inline (default both)",
    )
    args = parser.parse_args(argv)
    bad = set(args.variants) - set(VARIANTS)
    if bad:
        parser.error(f"--variants: {', '.join(sorted(bad))} is not one of {', '.join(VARIANTS)}")
    for line in run(args.mb * MB, args.runs, args.variants):
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
