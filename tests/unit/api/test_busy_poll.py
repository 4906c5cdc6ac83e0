"""api/busy_poll.py: the look runs one loop callback at a time, finds work that appears within its budget,
lets other callbacks run between looks, and stops once the budget is spent."""

from __future__ import annotations

import asyncio

from tcpchimney.api.busy_poll import BusyPoller


class Source:
    """Becomes pending at the ``ready_at``-th look (None: never)."""

    def __init__(self, ready_at: int | None) -> None:
        self.ready_at = ready_at
        self.looks = 0

    def pending(self) -> bool:
        self.looks += 1
        return self.ready_at is not None and self.looks >= self.ready_at


def test_work_that_appears_within_the_budget_is_found_between_other_callbacks() -> None:
    async def main() -> tuple[list[str], dict[str, int]]:
        loop = asyncio.get_running_loop()
        order: list[str] = []
        counters: dict[str, int] = {}
        source = Source(ready_at=5)
        poller = BusyPoller(loop, source, lambda: order.append("ready"), 1.0, counters)
        poller.arm()
        for i in range(3):
            loop.call_soon(order.append, f"app{i}")
        await asyncio.sleep(0.05)
        return order, counters

    order, counters = asyncio.run(main())
    assert order[0] == "app0" and order.count("ready") == 1  # the application ran before the first look
    assert counters == {"busy_poll_looks": 5, "busy_poll_hits": 1}


def test_the_poll_stops_when_its_budget_is_spent() -> None:
    async def main() -> tuple[int, dict[str, int]]:
        loop = asyncio.get_running_loop()
        counters: dict[str, int] = {}
        source = Source(ready_at=None)
        BusyPoller(loop, source, lambda: None, 0.002, counters).arm()
        await asyncio.sleep(0.05)
        looks = source.looks
        await asyncio.sleep(0.02)
        assert source.looks == looks  # nothing looks any more
        return looks, counters

    looks, counters = asyncio.run(main())
    assert looks >= 1 and counters["busy_poll_hits"] == 0 and counters["busy_poll_looks"] == looks


def test_cancel_stops_a_poll_in_flight() -> None:
    async def main() -> int:
        loop = asyncio.get_running_loop()
        source = Source(ready_at=None)
        poller = BusyPoller(loop, source, lambda: None, 10.0, {})
        poller.arm()
        await asyncio.sleep(0.005)
        poller.cancel()
        looks = source.looks
        await asyncio.sleep(0.01)
        return source.looks - looks

    assert asyncio.run(main()) == 0
