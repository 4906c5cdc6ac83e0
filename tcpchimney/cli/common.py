"""What every ``chimney`` command shares: the availability check, JSON lines, signal handling."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any, TextIO

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


def _forget_parent_signals() -> None:
    """In a forked child (pyroute2 forks to work in a namespace): the loop's signal wake-up socket is the
    parent's, so a signal sent to the child would reach the parent's loop as if sent to the parent (a command
    then stopped right after starting). The child gets its own default handling instead."""
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)


_at_fork_registered = False


def stop_on_signals(loop: asyncio.AbstractEventLoop) -> asyncio.Event:
    """An event set by SIGINT or SIGTERM, so a command ends through its normal clean-up path."""
    global _at_fork_registered
    if not _at_fork_registered:
        os.register_at_fork(after_in_child=_forget_parent_signals)
        _at_fork_registered = True
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop
