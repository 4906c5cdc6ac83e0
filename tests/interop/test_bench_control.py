"""bench/control.py once in a tiny configuration, so its code cannot rot between the runs that measure:
every figure comes out for both variants, watched and unwatched, and the watcher really scraped /metrics and
ran chimney netstat during each watched measurement. Speed is not asserted (bench/README.md has the
figures)."""

from __future__ import annotations

from typing import Any

import pytest

from bench import control

MB = 1_000_000


@pytest.mark.net
def test_bench_control_gives_every_figure_watched_and_not(require_net: None) -> None:
    lines: list[dict[str, Any]] = list(control.run(2 * MB, seconds=0.5, runs=1))
    assert all("skipped" not in line for line in lines), lines
    got = {(line["bench"], line["variant"], line.get("direction")) for line in lines}
    assert got == {
        (bench, variant, direction)
        for variant in control.CONTROL_VARIANTS
        for bench, direction in (
            ("control_bulk", "linux_to_stack"),
            ("control_bulk", "stack_to_linux"),
            ("control_connections_per_s", None),
        )
    }
    for line in lines:
        assert line["value"] > 0 and line["unwatched"] > 0 and line["ratio"] > 0, line
        assert line["scrapes"][0] >= 1, "the watcher scraped /metrics"
        assert line["netstats"][0] >= 1, "the watcher ran chimney netstat"


def test_bench_control_skips_with_the_reason_without_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        control, "skipped", lambda names: [{"bench": n, "skipped": "no TAP here"} for n in names]
    )
    assert list(control.run()) == [{"bench": n, "skipped": "no TAP here"} for n in control.NAMES]
