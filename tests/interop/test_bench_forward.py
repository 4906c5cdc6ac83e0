"""bench/forward.py once in a tiny configuration, so its code cannot rot between the runs that measure: both
figures come out with the direct path beside them. Speed is not asserted (bench/README.md has the figures).
Without root or /dev/net/tun the real run skips with the reason (it fails with TCPCHIMNEY_REQUIRE_NET=1), and
the module's own skip lines are checked instead."""

from __future__ import annotations

import pytest
from relay_kit import need

from bench import forward, nic


@pytest.mark.net
def test_bench_forward_gives_both_figures_and_their_ratios(require_net: None) -> None:
    need("wrk")
    lines = list(forward.run(runs=1, seconds=1, connections=2, small=100, big=100_000))
    assert [line["bench"] for line in lines] == list(forward.NAMES)
    for line in lines:
        assert "skipped" not in line, line
        for key in ("value", "direct", "ratio_to_direct"):
            assert isinstance(line[key], float) and line[key] > 0, (key, line)
        assert line["runs"] == 1 and len(line["each"]) == len(line["direct_each"]) == 1


def test_without_a_tap_each_figure_says_why_it_was_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nic, "unavailable_reason", lambda: "needs root (CAP_NET_ADMIN)")
    assert list(forward.run()) == [
        {"bench": n, "skipped": "needs root (CAP_NET_ADMIN)"} for n in forward.NAMES
    ]
