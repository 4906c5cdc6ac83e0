"""The bounded form of the randomized soak (``offload_soak``): a fixed set of seeds, each a lossy transfer
with random buffer sizes and random hand-offs, about 30 s in all. ``make soak`` runs the long form."""

from __future__ import annotations

import pytest
from offload_soak import MAX_BUF, MIN_BUF, WORKLOADS, draw_case, run_case

CI_SEEDS = range(1, 401)


@pytest.mark.parametrize("seed", CI_SEEDS)
def test_lossy_transfer_with_random_handoffs(seed: int) -> None:
    run_case(draw_case(seed))


def test_the_ci_seeds_cover_the_space() -> None:
    """What the seeds above are worth: every workload, buffers from the bottom to the top of the range on
    both sides, both directions of the open, impairments of every kind, and many hand-off times."""
    cases = [draw_case(seed) for seed in CI_SEEDS]
    assert {c.workload for c in cases} == set(WORKLOADS)
    assert {c.a_client for c in cases} == {True, False}
    for side in ("config_a", "config_b"):
        for buf in ("snd_buf", "rcv_buf"):
            values = [getattr(getattr(c, side), buf) for c in cases]
            assert MIN_BUF <= min(values) < 2 * MIN_BUF and MAX_BUF // 2 < max(values) <= MAX_BUF
    for kind in ("loss", "reorder", "duplicate", "corrupt", "jitter"):
        assert sum(getattr(c.imp, kind) > 0 for c in cases) > len(cases) // 3, kind
    assert sum(len(c.toggles) for c in cases) > 20 * len(cases)
