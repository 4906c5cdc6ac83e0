"""bench/run.py once in a tiny configuration, so its code cannot rot between the runs that measure: every row
it promises comes out with a figure (its transfers check their byte counts and the echo its bytes). Speed is
not asserted (bench/README.md has the figures). Without root or /dev/net/tun the real run skips with the
reason (it fails with TCPCHIMNEY_REQUIRE_NET=1), and the module's own skip lines are checked instead."""

from __future__ import annotations

from typing import Any

import pytest

from bench import run as bench_run


@pytest.mark.net
def test_bench_run_gives_every_variant_and_ratio(require_net: None) -> None:
    rows: dict[str, list[dict[str, Any]]] = {}
    for line in bench_run.run(nbytes=2_000_000, seconds=0.2, runs=1):
        assert "skipped" not in line, line
        rows.setdefault(line["bench"], []).append(line)
    assert set(rows) == set(bench_run.NAMES)
    bulk = {(r["variant"], r["direction"]) for r in rows["run_bulk"]}
    assert bulk == {(v, d) for v in bench_run.VARIANTS for d in bench_run.FIGURES[:2]}
    assert sorted(r["variant"] for r in rows["run_requests_per_s"]) == sorted(bench_run.VARIANTS)
    assert sorted(r["figure"] for r in rows["run_overhead_ratio"]) == sorted(bench_run.FIGURES)
    for line in [*rows["run_bulk"], *rows["run_requests_per_s"], *rows["run_overhead_ratio"]]:
        assert isinstance(line["value"], int | float) and line["value"] > 0, line


def test_without_a_tap_each_row_says_why_it_was_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_run, "unavailable_reason", lambda: "needs root (CAP_NET_ADMIN)")
    assert list(bench_run.run()) == [
        {"bench": name, "skipped": "needs root (CAP_NET_ADMIN)"} for name in bench_run.NAMES
    ]
