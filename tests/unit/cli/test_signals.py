"""A forked child (pyroute2 forks to work inside a namespace) must not stop the parent's command when it is
signalled: it shares the loop's signal wake-up socket unless the child forgets it."""

from __future__ import annotations

import asyncio
import os
import signal

from tcpchimney.cli.common import stop_on_signals


def test_a_signal_to_a_forked_child_does_not_stop_the_parent() -> None:
    async def body() -> bool:
        stop = stop_on_signals(asyncio.get_running_loop())
        ready_r, ready_w = os.pipe()
        hold_r, hold_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child says it runs, then waits to be terminated, as pyroute2's helper does
            os.close(ready_r)
            os.close(hold_w)
            os.write(ready_w, b"!")
            os.read(hold_r, 1)  # EOF once the parent closes its end (if SIGTERM did not end us first)
            os._exit(0)
        os.close(ready_w)
        os.close(hold_r)
        os.read(ready_r, 1)
        os.kill(pid, signal.SIGTERM)
        await asyncio.sleep(0.05)  # the loop would have read a forwarded signal by now
        os.close(hold_w)
        os.close(ready_r)
        os.waitpid(pid, 0)
        return stop.is_set()

    assert asyncio.run(body()) is False


def test_a_signal_to_the_command_itself_still_stops_it() -> None:
    async def body() -> bool:
        stop = stop_on_signals(asyncio.get_running_loop())
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(stop.wait(), 2)
        return stop.is_set()

    assert asyncio.run(body()) is True
