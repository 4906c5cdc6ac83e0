"""Doorbells: no eventfd write while the consumer is awake, one per sleep while it sleeps, the re-check that
closes the race, the bound on a missed wake-up, and a restarted consumer's sleep numbering."""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Iterator

import pytest
from ring_kit import pair

from tcpchimney.nic.arena import Arena
from tcpchimney.nic.descriptors import H2N_SLEEP_OFF, RingId
from tcpchimney.nic.doorbell import Direction, Doorbell, Waiter, make_eventfd


@pytest.fixture
def arenas() -> Iterator[tuple[Arena, Arena, int]]:
    efd = make_eventfd()
    try:
        with pair() as (host, nic):
            yield host, nic, efd
    finally:
        os.close(efd)


def readable(efd: int) -> bool:
    p = select.poll()
    p.register(efd, select.POLLIN)
    return bool(p.poll(0))


def never() -> bool:
    return False


def test_no_eventfd_write_while_the_consumer_is_awake(arenas: tuple[Arena, Arena, int]) -> None:
    host, nic, efd = arenas
    Waiter(nic.words, efd, Direction.H2N)
    bell = Doorbell(host.words, efd, Direction.H2N)
    for _ in range(100):
        assert not bell.ring()
    assert not readable(efd)
    assert bell.counters() == {"doorbells_rung": 0, "doorbells_suppressed": 100}


def test_one_eventfd_write_per_sleep(arenas: tuple[Arena, Arena, int]) -> None:
    host, nic, efd = arenas
    waiter = Waiter(nic.words, efd, Direction.H2N)
    bell = Doorbell(host.words, efd, Direction.H2N)
    for n in range(1, 4):
        assert waiter.begin_sleep(never)
        assert bell.ring()
        assert not bell.ring() and not bell.ring()  # the same sleep: already woken
        assert readable(efd)
        waiter.end_sleep(woken=True)
        assert not readable(efd)  # the count is consumed
        assert not bell.ring()  # awake again
        assert bell.rung == n
    assert waiter.counters()["wakeups"] == 3


def test_work_seen_after_saying_asleep_cancels_the_sleep(arenas: tuple[Arena, Arena, int]) -> None:
    host, nic, efd = arenas
    waiter = Waiter(nic.words, efd, Direction.H2N)
    bell = Doorbell(host.words, efd, Direction.H2N)
    assert not waiter.begin_sleep(lambda: True)  # the producer published just before "asleep"
    assert not bell.ring()  # the word says awake again
    assert waiter.counters()["sleeps_avoided"] == 1 and waiter.sleeps == 0


def test_a_spinning_consumer_picks_up_work_without_sleeping(arenas: tuple[Arena, Arena, int]) -> None:
    host, nic, efd = arenas
    out = host.descriptor_producer(RingId.H2N_DATA)
    ring = nic.descriptor_consumer(RingId.H2N_DATA)
    waiter = Waiter(nic.words, efd, Direction.H2N, spin_s=1.0)
    out.put(1, 0, 0, 0, 0, 0, 0)
    out.publish()
    assert waiter.wait(lambda: ring.available() > 0)
    assert (waiter.spin_hits, waiter.sleeps) == (1, 0)


def test_a_sleep_without_a_doorbell_ends_at_the_bound(arenas: tuple[Arena, Arena, int]) -> None:
    _, nic, efd = arenas
    waiter = Waiter(nic.words, efd, Direction.H2N, spin_s=0, sleep_bound_s=0.002)
    assert not waiter.wait(never, timeout=3600)  # the bound wins over a longer timeout
    assert waiter.counters() == {
        "spins": 1,
        "spin_hits": 0,
        "sleeps": 1,
        "sleeps_avoided": 0,
        "wakeups": 0,
        "wakeup_timeouts": 1,
        "late_wakeups": 0,
    }
    assert not nic.load(H2N_SLEEP_OFF) & 1  # awake after the sleep


def test_work_published_without_a_doorbell_is_found_at_the_bound(arenas: tuple[Arena, Arena, int]) -> None:
    _, nic, efd = arenas
    waiter = Waiter(nic.words, efd, Direction.H2N, spin_s=0, sleep_bound_s=0.05)
    work = threading.Event()
    threading.Timer(0.005, work.set).start()  # a producer that "forgets" to ring
    deadline = time.monotonic() + 30
    while not waiter.wait(work.is_set):
        assert time.monotonic() < deadline
    assert waiter.late_wakeups == 1 and waiter.wakeups == 0


def test_a_producer_thread_wakes_a_sleeping_consumer(arenas: tuple[Arena, Arena, int]) -> None:
    host, nic, efd = arenas
    out = host.descriptor_producer(RingId.H2N_DATA)
    ring = nic.descriptor_consumer(RingId.H2N_DATA)
    waiter = Waiter(nic.words, efd, Direction.H2N, spin_s=0, sleep_bound_s=60)
    bell = Doorbell(host.words, efd, Direction.H2N)

    def produce() -> None:
        while not nic.load(H2N_SLEEP_OFF) & 1:
            time.sleep(0.001)
        out.put(1, 0, 0, 0, 0, 0, 0)
        out.publish()
        bell.ring()

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        assert waiter.wait(lambda: ring.available() > 0)
    finally:
        producer.join(timeout=30)
    assert (waiter.wakeups, waiter.timeouts, bell.rung) == (1, 0, 1)


def test_a_restarted_consumer_continues_the_sleep_numbering(arenas: tuple[Arena, Arena, int]) -> None:
    host, nic, efd = arenas
    bell = Doorbell(host.words, efd, Direction.H2N)
    first = Waiter(nic.words, efd, Direction.H2N)
    assert first.begin_sleep(never)
    assert bell.ring()
    # That consumer dies asleep; its successor maps the same arena.
    second = Waiter(nic.words, efd, Direction.H2N)
    assert not nic.load(H2N_SLEEP_OFF) & 1
    assert not bell.ring()
    os.eventfd_read(efd)
    assert second.begin_sleep(never)
    assert bell.ring()  # a new sleep, not the one already rung for
    bell.kick()  # after a restart the host rings once whatever the word says
    assert bell.rung == 3


def test_work_found_by_the_recheck_after_asleep_makes_the_next_wait_spin(
    arenas: tuple[Arena, Arena, int],
) -> None:
    """An idle consumer whose re-check after saying "asleep" finds work is working again: its next wait
    spins first, as after any other work (the case a timer raced in the test below)."""
    _, nic, efd = arenas
    waiter = Waiter(nic.words, efd, Direction.H2N, spin_s=0.001, sleep_bound_s=0.001)
    assert not waiter.wait(never)  # idle now: the next wait goes straight to the re-check
    calls = [0]

    def at_the_recheck() -> bool:
        calls[0] += 1
        return calls[0] >= 1  # the first look of this wait is the re-check after "asleep"

    spins = waiter.spins
    assert waiter.wait(at_the_recheck) and waiter.sleeps_avoided == 1
    assert waiter.wait(lambda: True) and waiter.spins == spins + 1


def test_only_a_consumer_that_just_worked_spins(arenas: tuple[Arena, Arena, int]) -> None:
    _, nic, efd = arenas
    waiter = Waiter(nic.words, efd, Direction.H2N, spin_s=0.001, sleep_bound_s=0.001)
    for _ in range(3):
        assert not waiter.wait(never)
    assert (waiter.spins, waiter.sleeps) == (1, 3)  # an idle wake-up goes straight back to sleep
    work = [False]
    threading.Timer(0.0005, lambda: work.__setitem__(0, True)).start()
    deadline = time.monotonic() + 30
    while not waiter.wait(lambda: work[0]):
        assert time.monotonic() < deadline
    assert waiter.wait(lambda: True) and waiter.spins == 2  # after work, the spin is back
