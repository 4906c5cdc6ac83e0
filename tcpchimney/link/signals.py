"""Termination signals turned into exceptions, so that ``with`` and ``finally`` blocks undo what they made.

A signal whose disposition is still the default ends a Python process at once, without running a single
``finally``: a namespace or TAP made by the process stays behind. ``terminate_on_signals()`` makes every such
signal raise ``Terminated`` in the main thread instead (SIGINT keeps raising ``KeyboardInterrupt``), and
``deferred_signals()`` holds a signal back while a resource is being made or removed, so it is never made and
then forgotten: the signal is delivered again the moment the section ends.

``Terminated`` is a ``SystemExit`` with status 128 + the signal number: uncaught, it ends the program silently
with the status a shell expects of a program killed by that signal, and ``except Exception`` does not stop it.

SIGPIPE is on the list but left alone while Python ignores it (as it does from start-up): a closed pipe is
then an ``EPIPE`` error where it happens rather than a signal. SIGKILL and SIGSTOP cannot be caught; what a
``kill -9`` leaves is found by the run records (``link.runs``) and removed by ``chimney cleanup``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

_NAMES = (
    "SIGHUP",
    "SIGINT",
    "SIGQUIT",
    "SIGTERM",
    "SIGUSR1",
    "SIGUSR2",
    "SIGPIPE",
    "SIGALRM",
    "SIGVTALRM",
    "SIGPROF",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGIO",
    "SIGPWR",
    "SIGSTKFLT",
)


def termination_signals() -> tuple[int, ...]:
    """Every catchable signal whose default action ends the process: the named ones and the real-time
    signals. Faults raised by the processor (SIGSEGV, SIGBUS, SIGFPE, SIGILL) and SIGABRT/SIGTRAP/SIGSYS are
    not among them: they report a broken process, and no clean-up code should run in one."""
    named = [int(getattr(signal, name)) for name in _NAMES if hasattr(signal, name)]
    realtime = list(range(signal.SIGRTMIN, signal.SIGRTMAX + 1)) if hasattr(signal, "SIGRTMIN") else []
    return tuple(dict.fromkeys(named + realtime))


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIGRTMIN+{signum - signal.SIGRTMIN}" if signum >= signal.SIGRTMIN else f"signal {signum}"


def is_default(handler: Any) -> bool:
    """True for a disposition that would end the process without clean-up (Python's SIGINT handler raises
    KeyboardInterrupt, which unwinds like any exception, so it counts as default too)."""
    return handler in (signal.SIG_DFL, signal.default_int_handler)


class Terminated(SystemExit):
    """Raised in the main thread by a termination signal while ``terminate_on_signals`` is active."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"ended by {signal_name(self.signum)}"


class _State:
    """Process-wide: signal dispositions belong to the process, and only the main thread may change them."""

    def __init__(self) -> None:
        self.pid = os.getpid()  # the process the handlers were installed for
        self.depth = 0  # nested terminate_on_signals() blocks
        self.saved: dict[int, Any] = {}  # signal -> the disposition it had before the outermost block
        self.deferring = 0  # nested deferred_signals() sections
        self.pending: list[int] = []  # signals that arrived while deferring, in order


_state = _State()


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _forget_in_child() -> None:
    """A forked child (pyroute2 forks helpers and stops them with SIGTERM) must not unwind its copy of the
    parent's ``with`` blocks, which would remove the parent's namespace: it gets the old dispositions back."""
    for signum, previous in _state.saved.items():
        signal.signal(signum, previous)
    _state.__init__()  # type: ignore[misc]


os.register_at_fork(after_in_child=_forget_in_child)


def _handler(signum: int, frame: FrameType | None) -> None:
    if os.getpid() != _state.pid:  # a child forked by other means than os.fork: die as by default
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if _state.deferring:
        if signum not in _state.pending:
            _state.pending.append(signum)
        return
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


@contextlib.contextmanager
def terminate_on_signals() -> Iterator[None]:
    """While the body runs, every termination signal left at its default raises ``Terminated`` (SIGINT:
    ``KeyboardInterrupt``) in the main thread; the previous dispositions come back afterwards. Signals a
    program handles itself (an asyncio loop's handlers, for one) are not touched. Off the main thread (where
    dispositions cannot be changed) this does nothing: the main thread owns signals there."""
    if not _in_main_thread():
        yield
        return
    if _state.depth == 0:
        _state.pid = os.getpid()
        for signum in termination_signals():
            previous = signal.getsignal(signum)
            if is_default(previous):
                _state.saved[signum] = previous
                signal.signal(signum, _handler)
    _state.depth += 1
    try:
        yield
    finally:
        _state.depth -= 1
        if _state.depth == 0:
            saved, _state.saved = _state.saved, {}
            for signum, previous in saved.items():
                if signal.getsignal(signum) is _handler:
                    signal.signal(signum, previous)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """The body runs to its end before a termination signal takes effect; a signal that came meanwhile is
    sent again when the outermost section ends. Only meaningful on the main thread, where signals are handled;
    elsewhere a no-op."""
    if not _in_main_thread():
        yield
        return
    _state.deferring += 1
    try:
        yield
    finally:
        _state.deferring -= 1
        if _state.deferring == 0 and _state.pending:
            pending, _state.pending = _state.pending, []
            for signum in pending:  # handled as soon as this returns: by _handler, or the restored default
                os.kill(os.getpid(), signum)


def install_stop_handlers(add: Callable[..., object], stop: Callable[[int], object]) -> list[int]:
    """``add(signum, stop, signum)`` (an event loop's ``add_signal_handler``) for every termination signal
    left at its default or to ``terminate_on_signals``; returns the signals it took."""
    taken = []
    for signum in termination_signals():
        current = signal.getsignal(signum)
        if is_default(current) or current is _handler:
            add(signum, stop, signum)
            taken.append(signum)
    return taken
