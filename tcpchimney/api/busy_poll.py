"""Busy polling of a frame source that can be looked at without a system call (the NIC process's rings).

Linux's ``net.core.busy_poll`` in the shape of an asyncio loop: after the runtime handled what the source
gave it, or sent something (an answer is then due), it keeps looking at the source for ``budget_s`` instead of
letting the loop sleep on the source's descriptor, whose wake-up through the kernel costs 35-110 us here
(docs/nic-process.md). The look is one loop callback at a time (``call_soon``), never a busy wait inside one:
the application's callbacks, e.g. the task that answers the request just read, run between two looks, in
order, and the loop's ``select`` is then called with a zero timeout. Each look yields the CPU
(``sched_yield``), which matters when the NIC process shares a core with this loop.

Costs CPU for as long as it polls after every burst of traffic: off by default (0), like Linux's
(bench/spin.py measures the trade-off).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Protocol


class Pollable(Protocol):
    def pending(self) -> bool:
        """Whether frames or messages wait (cheap: memory loads, no system call)."""
        ...


class BusyPoller:
    """Looks at ``source`` for ``budget_s`` after each ``arm()``; calls ``on_ready`` when it has work."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        source: Pollable,
        on_ready: Callable[[], None],
        budget_s: float,
        counters: dict[str, int],
    ) -> None:
        self._loop = loop
        self._source = source
        self._on_ready = on_ready
        self.budget_s = budget_s
        self._until = 0.0
        self._handle: asyncio.Handle | None = None
        # busy_poll_looks, and busy_poll_hits: looks that found work (a wake-up through the kernel saved)
        self._counters = counters
        counters.setdefault("busy_poll_looks", 0)
        counters.setdefault("busy_poll_hits", 0)

    def arm(self) -> None:
        """Poll (again) for a whole budget from now."""
        self._until = time.perf_counter() + self.budget_s
        if self._handle is None:
            self._handle = self._loop.call_soon(self._look)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _look(self) -> None:
        self._handle = None
        self._counters["busy_poll_looks"] += 1
        if self._source.pending():
            self._counters["busy_poll_hits"] += 1
            self._on_ready()  # which arms again: the next message of a burst is polled for too
            return
        if time.perf_counter() < self._until:
            os.sched_yield()
            self._handle = self._loop.call_soon(self._look)
