"""The hostile-target harness in its bounded form (``make hostile`` runs it for as long as asked): seeded
sessions of transfers over the simulated link through ``LyingNic``, which replays, reorders, drops,
duplicates and rewrites the real target's answers. What the host owes its applications holds in every
one (hostile_target.py: exact prefixes, no escaped exception, no hang, every reset reported)."""

from __future__ import annotations

import pytest
from hostile_target import describe, run_session

SEEDS = range(1, 101)
# Long-run sessions that found a host bug, each fixed since: a CLOSED upload re-delivering bytes the host
# had (45), a peer FIN never indicated on a connection CLOSED on the target (1000), a rejected query
# answer blocking the terminate (1381), one target handle given to two objects (1501), a probe falling
# inside the peer's window after a lying send completion (1947), an upload trimming by a lying RCV.NXT
# (4435), an initiate answered with no tree left OFFLOADING for ever (3998), a peer FIN indicated on
# another connection taken as its end of stream (9769, 10839), an idle peer left connected to a copy the
# target kept of a connection the host reset (11215), and one on a path nobody released once its last
# connection was reset (22343), a FIN moved onto another connection again (22731).
FOUND = (45, 1000, 1381, 1501, 1947, 3998, 4435, 9769, 10839, 11215, 22343, 22731)
# A session that meets the contract's known limit (an initiate never answered; the target's copy hangs on
# a path whose handle the host never learnt): classified as such, not as a problem, and not hidden.
KNOWN_LIMIT = 21536


@pytest.mark.parametrize("seed", [*SEEDS, *FOUND])
def test_a_lying_target_never_corrupts_hangs_or_crashes_a_connection(seed: int) -> None:
    session = run_session(seed)
    assert not session.problems, describe(session)


def test_the_known_limit_is_reported_apart() -> None:
    session = run_session(KNOWN_LIMIT)
    assert not session.problems, describe(session)
    assert session.known_limits and all("never learnt" in k for k in session.known_limits)
    # An unnamed copy left on the target whose peer the host's reset reached anyway: nothing hangs.
    assert not run_session(20016).known_limits


def test_the_liar_lies() -> None:
    """The harness is not vacuous: across the bounded seeds the target lied in every way, and the host
    caught faults."""
    kinds: set[str] = set()
    faults = 0
    for seed in range(1, 11):
        session = run_session(seed, rate=0.15)
        kinds |= {lie.split()[0] for lie in session.lies}
        faults += len(session.faults)
    assert kinds >= {"drop", "duplicate", "replay", "reorder", "rewrite"}
    assert faults > 0
