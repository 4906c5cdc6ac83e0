"""The collector setting a long-running stack wants (``tune_gc``): applied by ``Runtime.start`` and the bench.

CPython runs a cycle collection every 700 net container allocations (generation 0), and a full one, which
visits every tracked object, whenever the long-lived generation has grown by a quarter. The stack allocates
containers per segment and per hand-off (frames, segments, state objects), nearly all freed by reference
counting, and holds many long-lived ones per connection (engine, buffers, offload record, the target's
entry). With the default threshold, measured on the simulated link (``bench``): a 64 KB bulk transfer spends
about a tenth of its time in young collections, offloading 10,000 connections spends over 40 % in full ones,
and an offload + upload round trip with 10,000 connections open has a p99 of about 58 ms (one full
collection) instead of 0.3 ms.

``tune_gc`` raises the generation-0 threshold so that young collections run a fourteenth as often (each
takes longer, but the cycles they look for are rare here), and moves what exists at start-up (imports,
configuration, the listening sockets) to the permanent generation (``gc.freeze``) so that full collections
no longer walk it. Reference cycles are still collected. An application embedding the stack may skip it
(``Runtime(tune_gc=False)``) when it manages the collector itself.
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 10_000
_tuned = False


def tune_gc(threshold0: int = GEN0_THRESHOLD) -> None:
    """Raise the young-generation threshold (never lower it) and freeze what survives a collection now.
    Once per process: later runtimes find it done."""
    global _tuned
    if _tuned:
        return
    _tuned = True
    gen0, gen1, gen2 = gc.get_threshold()
    if gen0 and gen0 < threshold0:  # 0: the collector is disabled on purpose; leave it so
        gc.set_threshold(threshold0, gen1, gen2)
    gc.collect()  # garbage frozen now would never be freed
    gc.freeze()
