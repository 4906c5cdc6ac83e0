"""Doorbells: how a consumer sleeps when its rings are empty and how a producer wakes it, cheaply.

One eventfd per direction (host -> NIC, NIC -> host) and one *sleep word* per direction in the arena, written
only by that direction's consumer: an even value means awake, odd means asleep (or about to be), and every
transition adds one, so each sleep has its own number.

Consumer (``Waiter``), after its last work:

1. spins for ``spin_s`` (default 75 us) re-checking its rings: a wake-up through the kernel costs 35-110 us
   across cores here, a spin catches the next message of a burst at a few us. Each turn of the spin yields
   the CPU (``sched_yield``): when host and NIC share a core (2 vCPUs and a busy machine), a spin that does
   not yield holds off the very producer it waits for until its time slice ends (measured: a ping-pong of
   2 ms instead of 15 us);
2. stores an odd sleep word, fences, and re-checks its rings (closing the race with a producer that published
   just before the store): work found -> stores the next even word and goes on;
3. blocks on the eventfd (plus whatever fds its loop also polls) for at most ``sleep_bound_s``; then stores
   the next even word and drains the eventfd.

Producer (``Doorbell``), after publishing a batch: fences, loads the sleep word, and writes the eventfd only
if the word is odd and is not a sleep it already rang for. An awake or spinning consumer costs the producer
one fence and one load, no system call.

Memory ordering (x86-64 only; not valid on ARM): the words are aligned 8-byte values stored and loaded as
items of a ``memoryview`` cast to ``"Q"``, which CPython does with one 8-byte memcpy (``PACK_SINGLE`` /
``UNPACK_SINGLE`` in ``memoryobject.c``) -- one move, never torn. (Not ``struct.pack_into``: it zeroes the
destination first, see descriptors.py.) x86-64 is TSO: stores become visible
in program order and loads are not reordered with other loads, so "write the slot, then store head" and "load
head, then read the slot" need no fence. The one reordering TSO allows is a later load passing an earlier
store (the store buffer), which is exactly the Dekker pattern above (consumer: store sleep word, load head;
producer: store head, load sleep word). ``fence()`` closes it: acquiring and releasing a CPython lock
executes locked read-modify-write instructions (glibc's semaphore / mutex paths), and on x86 a locked
instruction is a full barrier that drains the store buffer. That is an implementation detail of CPython and
glibc, not a language guarantee, so the sleep is also bounded: a wake-up missed anyway costs at most
``sleep_bound_s`` (50 ms by default), and ``late_wakeups`` counts timeouts that found work waiting. (Measured
here: no late wake-up in 40,000 sleeping round trips, with the fence or without it, so the window is narrow;
the fence costs 0.2 us per sleep and per ring.) The bound is also the idle cost: a wake-up of a sleeping
process costs about 45-100 us of CPU on this VM, so an idle consumer spends about 0.2% of a CPU at 50 ms, 0.4%
at 10 ms and 3% at 1 ms (bench/rings.py). A wake-up that finds nothing goes back to sleep without spinning.
"""

from __future__ import annotations

import _thread
import contextlib
import math
import os
import select
import time
from collections.abc import Callable
from enum import IntEnum

from tcpchimney.nic.descriptors import H2N_SLEEP_OFF, N2H_SLEEP_OFF
from tcpchimney.nic.spin import DEFAULT_SPIN_US, MAX_SPIN_US

_FENCE = _thread.allocate_lock()


def fence() -> None:
    """A full memory barrier on x86-64 (see the module docstring), about 0.2 us."""
    _FENCE.acquire()
    _FENCE.release()


__all__ = ["DEFAULT_SPIN_US", "MAX_SPIN_US", "Doorbell"]


class Direction(IntEnum):
    H2N = 0  # host produces, NIC consumes and sleeps
    N2H = 1  # NIC produces, host consumes and sleeps


SLEEP_WORD = {Direction.H2N: H2N_SLEEP_OFF, Direction.N2H: N2H_SLEEP_OFF}


def make_eventfd() -> int:
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


class Doorbell:
    """The producer's side of one direction."""

    def __init__(self, words: memoryview, efd: int, direction: Direction) -> None:
        self._words = words  # the arena's word view (Arena.words)
        self._efd = efd
        self._word = SLEEP_WORD[direction] // 8
        self._rang_for = -1  # the sleep (odd word) this side already woke
        self.rung = 0  # eventfd writes
        self.suppressed = 0  # ring() calls that found the consumer awake, or already woken

    def ring(self) -> bool:
        """After publishing: wake the consumer if it sleeps. True if the eventfd was written."""
        fence()
        word: int = self._words[self._word]
        if word & 1 and word != self._rang_for:
            self._rang_for = word
            self.kick()
            return True
        self.suppressed += 1
        return False

    def kick(self) -> None:
        """Write the eventfd whatever the sleep word says (e.g. once after a new NIC started)."""
        os.eventfd_write(self._efd, 1)
        self.rung += 1

    def counters(self) -> dict[str, int]:
        return {"doorbells_rung": self.rung, "doorbells_suppressed": self.suppressed}


class Waiter:
    """The consumer's side of one direction: spin, then sleep on the eventfd."""

    def __init__(
        self,
        words: memoryview,
        efd: int,
        direction: Direction,
        spin_s: float = DEFAULT_SPIN_US / 1e6,
        sleep_bound_s: float = 0.050,
    ) -> None:
        self._words = words  # the arena's word view (Arena.words)
        self._efd = efd
        self._word = SLEEP_WORD[direction] // 8
        # Continue the numbering of an earlier consumer of this direction (a NIC before a restart), so a
        # producer that remembers having rung sleep n never mistakes this process's sleep n for it.
        previous: int = words[self._word]
        self._seq = previous + 2 - (previous & 1)
        self._store()
        self._poll = select.poll()
        self._poll.register(efd, select.POLLIN)
        self._idle = False  # the last sleep ended with no work
        self.spin_s = spin_s
        self.sleep_bound_s = sleep_bound_s
        self.spins = 0  # spin phases started
        self.spin_hits = 0  # spin phases that found work
        self.sleeps = 0  # blocking waits
        self.sleeps_avoided = 0  # the re-check after "asleep" found work
        self.wakeups = 0  # woken by the eventfd
        self.timeouts = 0  # woken by the bound or the caller's timeout
        self.late_wakeups = 0  # timeouts that found work (a missed doorbell, or work due anyway)

    def fileno(self) -> int:
        return self._efd

    def _store(self) -> None:
        self._words[self._word] = self._seq

    def spin(self, has_work: Callable[[], bool]) -> bool:
        """Re-check for ``spin_s``; True as soon as there is work."""
        self.spins += 1
        deadline = time.perf_counter() + self.spin_s
        while True:
            if has_work():
                self.spin_hits += 1
                return True
            if time.perf_counter() >= deadline:
                return False
            os.sched_yield()

    def begin_sleep(self, has_work: Callable[[], bool]) -> bool:
        """Say "asleep", then look once more. False: work arrived, do not block (already awake again)."""
        self._seq += 1
        self._store()
        fence()
        if has_work():
            self._seq += 1
            self._store()
            self.sleeps_avoided += 1
            return False
        self.sleeps += 1
        return True

    def end_sleep(self, woken: bool) -> None:
        """After blocking: say "awake" and consume the eventfd's count."""
        self._seq += 1
        self._store()
        if woken:
            self.wakeups += 1
            with contextlib.suppress(BlockingIOError):  # another wake-up already consumed the count
                os.eventfd_read(self._efd)
        else:
            self.timeouts += 1

    def wait(self, has_work: Callable[[], bool], timeout: float | None = None) -> bool:
        """Spin (unless the last sleep found nothing: the spin is for bursts), then sleep until rung,
        ``timeout`` or the bound, whichever comes first. True if there is work."""
        if not self._idle and self.spin(has_work):
            return True
        if not self.begin_sleep(has_work):
            self._idle = False  # work came after all: the next wait spins again
            return True
        bound = self.sleep_bound_s if timeout is None else min(timeout, self.sleep_bound_s)
        woken = bool(self._poll.poll(max(0, math.ceil(bound * 1000))))
        self.end_sleep(woken)
        work = has_work()
        if work and not woken:
            self.late_wakeups += 1
        self._idle = not work  # nothing came: no spin before the next sleep, an idle wake-up stays cheap
        return work

    def counters(self) -> dict[str, int]:
        return {
            "spins": self.spins,
            "spin_hits": self.spin_hits,
            "sleeps": self.sleeps,
            "sleeps_avoided": self.sleeps_avoided,
            "wakeups": self.wakeups,
            "wakeup_timeouts": self.timeouts,
            "late_wakeups": self.late_wakeups,
        }
