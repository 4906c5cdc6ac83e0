"""What every ``chimney`` command shares: the availability check, JSON lines, signal handling."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any, TextIO

from tcpchimney.link.signals import install_stop_handlers, signal_name

TUN_PATH = "/dev/net/tun"
EXIT_UNAVAILABLE = 69  # sysexits.h EX_UNAVAILABLE: the network set-up this command needs is not there


class CommandError(Exception):
    """A failure the user can act on: printed as one sentence, exit status ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def network_unavailable_reason(tun_path: str = TUN_PATH) -> str | None:
    """Why a TAP device and a namespace cannot be made here (None: they can)."""
    if os.geteuid() != 0:
        return "this command needs root (CAP_NET_ADMIN) to create a TAP device and a network namespace"
    if not os.path.exists(tun_path):
        return f"{tun_path} does not exist, so no TAP device can be opened (load the tun module)"
    if not os.access(tun_path, os.R_OK | os.W_OK):
        return f"{tun_path} is not readable and writable by this user"
    return None


def emit(event: str, out: TextIO | None = None, /, **fields: Any) -> None:
    """One JSON line on stdout, flushed at once: scripts wait for these."""
    stream = out or sys.stdout
    stream.write(json.dumps({"event": event, **fields}, default=str) + "\n")
    stream.flush()


class StopSignal(asyncio.Event):
    """Set by the first termination signal; ``signum`` says which (None: not set by a signal)."""

    def __init__(self) -> None:
        super().__init__()
        self.signum: int | None = None

    def stop(self, signum: int) -> None:
        if self.signum is None:
            self.signum = signum
        self.set()

    @property
    def name(self) -> str | None:
        return signal_name(self.signum) if self.signum is not None else None


def _forget_parent_signals() -> None:
    """In a forked child (pyroute2 forks to work in a namespace): the loop's signal wake-up socket is the
    parent's, so a signal sent to the child would reach the parent's loop as if sent to the parent (a command
    then stopped right after starting). The child gets its own default handling instead."""
    signal.set_wakeup_fd(-1)
    for signum in _taken:
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)


_at_fork_registered = False
_taken: list[int] = []  # the signals stop_on_signals took over in this process


def stop_on_signals(loop: asyncio.AbstractEventLoop) -> StopSignal:
    """An event set by any termination signal (SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, ...: see
    ``link.signals.termination_signals``), so a command ends through its normal clean-up path whatever signal
    ends it."""
    global _at_fork_registered
    if not _at_fork_registered:
        os.register_at_fork(after_in_child=_forget_parent_signals)
        _at_fork_registered = True
    stop = StopSignal()
    _taken[:] = install_stop_handlers(loop.add_signal_handler, stop.stop)
    return stop
