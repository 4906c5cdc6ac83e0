"""bench.capture runs once in a tiny configuration, so its code cannot rot between the runs that measure:
every row it promises comes out with a figure, and the capture it times wrote every frame. Speed is not
asserted (bench/README.md has the figures)."""

from __future__ import annotations

import pytest

from bench import capture

MB = 1_000_000


@pytest.mark.net
def test_bench_capture_gives_every_row(require_net: None) -> None:
    lines = list(capture.run(2 * MB, runs=1, names=("process",)))
    assert not [line for line in lines if "skipped" in line]
    bulk = {(x["direction"], x["capture"]): x for x in lines if x["bench"] == "capture_bulk"}
    assert set(bulk) == {(d, s) for d in ("linux_to_stack", "stack_to_linux") for s in ("off", "on")}
    for (_, state), line in bulk.items():
        assert line["value"] > 0
        if state == "on":
            assert line["frames"] > 0 and line["bytes"] > 2 * MB and line["dropped"] >= 0
    cost = [x for x in lines if x["bench"] == "capture_cost"]
    assert len(cost) == 2 and all(x["value"] > 0 for x in cost)
