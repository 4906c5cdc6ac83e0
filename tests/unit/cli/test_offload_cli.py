"""The commands' offload options, the event log and timeline, churn and the demo's midway upload.

The moves run for real: the simulated-link demo with the server stack behind a SoftwareTarget, timers on the
link's virtual clock (no network, no sleeping).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from rich.progress import Progress

from tcpchimney.chimney.reason import Reason
from tcpchimney.cli import main
from tcpchimney.cli.offload import OffloadControl, OffloadOptions, OffloadRecord, timeline_lines
from tcpchimney.cli.simdemo import SEED_DOWN, SEED_UP, SimExchange, VirtualScheduler


@pytest.mark.parametrize(
    "argv",
    [["serve", "echo", "--netns", "x"], ["nc", "-l", "7", "--netns", "x"], ["demo"]],
)
def test_offload_defaults(argv: list[str]) -> None:
    args = main.parse_args(argv)
    assert (args.offload, args.churn, args.events) == ("automatic", None, None)
    assert OffloadOptions.from_args(args) == OffloadOptions("automatic", None, None)


def test_offload_flags() -> None:
    argv = ["serve", "http", "--netns", "x", "--offload", "enabled", "--churn", "0.05", "--events", "e.jsonl"]
    args = main.parse_args(argv)
    assert OffloadOptions.from_args(args) == OffloadOptions("enabled", 0.05, "e.jsonl")
    assert main.parse_args(["demo", "--offload", "disabled"]).offload == "disabled"


@pytest.mark.parametrize(
    "extra",
    [
        ["--offload", "always"],
        ["--churn", "0"],
        ["--churn", "-1"],
        ["--churn", "soon"],
        ["--churn", "inf"],
        ["--churn", "nan"],
        ["--offload", "disabled", "--churn", "0.1"],  # nothing to move
    ],
)
def test_bad_offload_flags(extra: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main.parse_args(["serve", "echo", "--netns", "x", *extra])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and "--help" in err


def test_record_json_and_description() -> None:
    rec = OffloadRecord(0.0125, "offloaded", ("198.18.0.2", 80), ("198.18.0.1", 41234), None, 0.0003, 65536)
    rec = OffloadRecord(**{**{s: getattr(rec, s) for s in rec.__slots__}, "cause": "policy: automatic"})
    line = rec.as_json(1700000000.5)
    assert line == {
        "time": 1700000000.5,
        "t": 0.0125,
        "event": "offloaded",
        "connection": ["198.18.0.2", 80, "198.18.0.1", 41234],
        "reason": None,
        "duration": 0.0003,
        "moved": 65536,
        "cause": "policy: automatic",
    }
    assert rec.describe() == "offloaded (policy: automatic, 65 KB moved, 0.3 ms)"
    up = OffloadRecord(0.3, "uploaded", ("198.18.0.2", 80), ("198.18.0.1", 41234), "admin", 0.0004)
    assert up.describe() == "uploaded (admin, 0.4 ms)"
    assert "t=+0.300s  198.18.0.1:41234 -> :80  uploaded (admin" in timeline_lines([up])[0]


def test_a_long_timeline_is_cut_and_counted() -> None:
    def rec(i: int) -> OffloadRecord:
        event, reason = ("uploaded", "churn") if i % 2 else ("offloaded", None)
        return OffloadRecord(
            i / 100, event, ("198.18.0.2", 80), ("198.18.0.1", 1000), reason, 0.001, 0, "churn"
        )

    records = [rec(i) for i in range(100)]
    lines = timeline_lines(records, head=6, tail=2)
    assert len(lines) == 9
    assert lines[6] == "... 92 more: 46 offloaded (churn), 46 uploaded (churn)"
    assert lines[-1].startswith("t=+0.990s")
    assert timeline_lines(records[:9], head=6, tail=2) == [timeline_lines([r])[0] for r in records[:9]]


def test_virtual_scheduler_fires_in_order_and_honours_cancel() -> None:
    now = [0.0]
    sched = VirtualScheduler(lambda: now[0])
    fired: list[str] = []
    sched.call_later(0.2, lambda: fired.append("b"))
    sched.call_later(0.1, lambda: fired.append("a"))
    sched.call_later(0.15, lambda: fired.append("x")).cancel()
    sched.run_due()
    assert fired == []
    now[0] = 0.2
    sched.run_due()
    assert fired == ["a", "b"]


def _run(options: OffloadOptions, n: int = 3_000_000) -> SimExchange:
    run = SimExchange(options=options)
    with Progress(disable=True) as progress:
        down = run.transfer("GET", n, SEED_DOWN, True, progress)
        up = run.transfer("POST", n, SEED_UP, False, progress)
    assert down.ok and up.ok
    return run


def test_sim_demo_midway_upload_and_reoffload() -> None:
    run = _run(OffloadOptions("enabled"))
    control = run.control
    assert control is not None
    per_conn: dict[int, list[str]] = {}
    for r in control.records:
        per_conn.setdefault(r.remote[1], []).append(f"{r.event}:{r.reason or r.cause}")
    assert len(per_conn) == 2
    for events in per_conn.values():
        # Offloaded once established, back on the host halfway, offloaded again at once.
        assert events[:3] == ["offloaded:policy: enabled", "uploaded:admin", "offloaded:admin"], events
    assert control.stats.admin_uploads == 2 and control.stats.reoffloads == 2
    assert run.server.counters["offload"]["uploaded_admin"] == 2


def test_sim_churn_keeps_the_bytes_and_logs_every_move(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    run = _run(OffloadOptions("enabled", churn=0.00005, events=str(events)), n=8_000_000)
    control = run.control
    assert control is not None
    control.close()
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    assert len(lines) == len(control.records)
    churned = [x for x in lines if x["event"] == "uploaded" and x["reason"] == Reason.CHURN.value]
    assert len(churned) >= 10, f"only {len(churned)} churn uploads"
    assert control.stats.churn_uploads >= len(churned)
    reoffloads = [x for x in lines if x["event"] == "offloaded" and x.get("cause") == "churn"]
    readmin = [x for x in lines if x["event"] == "offloaded" and x.get("cause") == "admin"]
    assert len(reoffloads) + len(readmin) == control.stats.reoffloads
    assert control.as_dict()["faults"] == 0


def test_disabled_has_no_target_and_no_control() -> None:
    run = _run(OffloadOptions("disabled"), n=200_000)
    assert run.target is None and run.control is None
    assert "offload" not in run.server.counters


def test_close_stops_the_moves() -> None:
    run = SimExchange(options=OffloadOptions("enabled", churn=0.001))
    control = run.control
    assert isinstance(control, OffloadControl)
    control.close()
    with Progress(disable=True) as progress:
        assert run.transfer("GET", 500_000, SEED_DOWN, True, progress).ok
    assert control.stats.churn_uploads == 0 and control.stats.offloads >= 1


def _agreement(lines: list[dict[str, Any]], host: dict[str, int], nic: dict[str, int]) -> None:
    """One story: every upload and offload is an event, the host counts what the events say, the target
    counts the same, and waiting for the automatic threshold is never a refusal."""
    events = Counter(x["event"] for x in lines)
    assert events["uploaded"] == host.get("uploaded", 0) == nic["uploads"]
    assert sum(v for k, v in host.items() if k.startswith("uploaded_")) == host.get("uploaded", 0)
    assert events["offloaded"] == host.get("offloaded", 0) == nic["offloads"]
    assert events["refused"] == sum(v for k, v in host.items() if k.startswith("refused_"))
    assert events["deferred"] == sum(v for k, v in host.items() if k.startswith("deferred_"))
    offloaded = {tuple(x["connection"]) for x in lines if x["event"] == "offloaded"}
    refused = [x for x in lines if x["event"] == "refused" and tuple(x["connection"]) in offloaded]
    assert refused == [], "a connection that offloaded later was counted as refused"


@pytest.mark.parametrize("mode", ["enabled", "automatic"])
def test_events_host_and_target_counters_agree_on_a_simulated_run(mode: str, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    # Automatic mode looks every 0.1 s: the transfers must last longer than that on the 10 Gb/s link.
    run = _run(OffloadOptions(mode, events=str(events)), n=3_000_000 if mode == "enabled" else 20_000_000)
    control, target = run.control, run.target
    assert control is not None and target is not None
    assert len(target.table) == 0  # every connection ended and was handed back
    control.close()
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    host = run.server.counters["offload"]
    _agreement(lines, host, target.counters.lifecycle)
    # Each connection: offloaded once established (automatic: after waiting), up and back at the midway
    # admin upload, and handed back once more when it ends: two uploads, at least one after its close.
    assert host["offloaded"] == 4 and host["uploaded_admin"] == 2 and host["uploaded"] == 4
    if mode == "automatic":
        # A connection is judged first at a re-examination: deferred (once) only if it was still below
        # the threshold then (tests/unit/host/test_offload_policy.py pins both cases). Either way each
        # deferral is of a connection that offloaded later, and none is reported twice.
        deferred = [tuple(x["connection"]) for x in lines if x["event"] == "deferred"]
        offloaded = {tuple(x["connection"]) for x in lines if x["event"] == "offloaded"}
        assert len(deferred) == len(set(deferred)) and set(deferred) <= offloaded
        assert len(deferred) == host.get("deferred_below_automatic_threshold", 0)
    assert not [k for k in host if k.startswith("refused_")]
