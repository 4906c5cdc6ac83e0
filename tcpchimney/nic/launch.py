"""``NicProcess``: the host's handle on its NIC process: start, liveness, counters, end.

``start`` creates the arena (sealed memfd) and the two doorbell eventfds if not yet made, spawns
``python -m tcpchimney.nic`` (``subprocess`` execs at once: no fork of this possibly threaded process runs
Python) with one end of a socketpair as its only inherited descriptor, says so (``on_spawned``: the run
record notes it, so that ``chimney cleanup`` kills a NIC its host left), hands it the arena, the eventfds and
a descriptor of the TAP (``send_arena``), and waits for its ``ready`` line. A NIC that cannot start raises
``NicStartError`` with one sentence.

Liveness (``attach`` registers both with the event loop): the process's pidfd becomes readable when it dies
(about 1 ms after a ``kill -9``, reference nic-process.md), and the socketpair reads end of file when it
exits or closes it. Either way the host fences it (SIGKILL through the pidfd, then reaps it: never two
writers in the arena), tells the ``ProcessTarget`` (which answers for the dead NIC, process_target.py), and
reports ``nic_failed``.

A NIC that hangs (stopped, or stuck in a loop) neither dies nor closes anything: the watchdog finds it. The
NIC stores a new heartbeat in the arena every turn of its loop, and an idle NIC wakes at least every 50 ms
(its sleep bound), so a heartbeat that has not moved for ``hang_bound`` seconds (1 s by default) means it
no longer runs its loop. The host looks at the word every quarter of the bound from its event loop; a look
that comes later than the bound (the host itself did not run, so neither may have the NIC on a starved
machine) starts the count again instead of convicting. A hung NIC is fenced (SIGKILL, which also ends a
stopped process) and reaped before anything else, then fails as a dead one does.

After a failure the ``ProcessTarget`` rebuilds the NIC's connections on the host
(``nic/process_recovery.py``) and, once attached to an event loop with ``restart`` true (the default), a new
NIC is started after a hold-down: ``RESTART_DELAY``, doubled for each NIC in a row that failed within
``RESTART_YOUNG`` of its start or never started, at most ``RESTART_MAX_DELAY`` (a NIC that cannot run is
not restarted in a tight loop). The rings are emptied, the epoch is one more, its handles are numbered apart;
it is spawned without blocking the host's loop (its ``ready`` line is read from the loop), then attached to
the same ``ProcessTarget`` (``TargetResumed``: the policy may offload again) and watched as the first was.

``close`` asks the NIC to stop (its last turn sends what the host asked last, e.g. an abort's RST), kills it
if it does not exit within a second, reaps it and closes every descriptor: however the command ends, no NIC
process is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from tcpchimney.chimney.indications import TargetCapabilities
from tcpchimney.nic.affinity import check_cpu, pin
from tcpchimney.nic.arena import Arena, ArenaConfig, nic_rings, send_arena
from tcpchimney.nic.doorbell import Direction, Doorbell, make_eventfd
from tcpchimney.nic.process import NicConfig
from tcpchimney.nic.process_target import ProcessTarget

START_TIMEOUT = 20.0  # seconds for the interpreter to start and say ready (a loaded 2-vCPU machine)
STOP_TIMEOUT = 1.0
COUNTERS_TIMEOUT = 2.0
HANG_BOUND = 1.0  # seconds without a heartbeat that make a NIC hung (it beats at least every 50 ms)
RESTART_DELAY = 0.1  # seconds from a failure to the next NIC's start (the hold-down)
RESTART_YOUNG = 0.5  # a NIC that fails sooner than this after its start doubles the next hold-down
RESTART_MAX_DELAY = 30.0

# The control rings are large: this transport still carries Send and receive data through them.
PROCESS_ARENA = ArenaConfig(
    max_conns=1024,
    pool_size=256 << 20,  # RX buffers as large as receive buffers (1 MiB by default): 256 protected
    chunk_size=64 << 10,
    rings=nic_rings(control=8 << 20, descriptors=4096, frames=16 << 20),
)

NicEvent = Callable[[str, dict[str, Any]], None]


class NicStartError(Exception):
    """The NIC process could not be started; the message says why, to follow "cannot start the NIC
    process: "."""


def _exit_cause(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return f"killed by {signal.Signals(sig).name}" if sig in signal.valid_signals() else f"signal {sig}"
    if os.WIFEXITED(status):
        return f"exited with status {os.WEXITSTATUS(status)}"
    return f"status {status}"


class NicProcess:
    def __init__(
        self,
        config: NicConfig,
        tap_fd: int,
        *,
        arena_config: ArenaConfig = PROCESS_ARENA,
        on_event: NicEvent | None = None,
        on_spawned: Callable[[int], None] = lambda pid: None,
        on_reaped: Callable[[int], None] = lambda pid: None,
        hang_bound: float = HANG_BOUND,
        cpu: int | None = None,
    ) -> None:
        """``on_spawned(pid)`` is called as soon as the process exists, ``on_reaped(pid)`` once it is gone
        (e.g. to note it in the run record, so that ``chimney cleanup`` kills a NIC its host left).
        ``hang_bound``: seconds without a heartbeat after which the NIC is declared hung and killed; it
        must exceed the NIC's sleep bound (50 ms), else an idle NIC would be convicted. ``cpu``: pin the NIC
        process to that CPU (nic/affinity.py; ValueError with one sentence for a CPU it may not use)."""
        if not hang_bound > 0.050:
            raise ValueError(f"hang_bound {hang_bound}: it must exceed the NIC's sleep bound of 50 ms")
        self.cpu = None if cpu is None else check_cpu(cpu)
        self.hang_bound = hang_bound
        self.config = config
        self._on_spawned, self._on_reaped = on_spawned, on_reaped
        # Its own descriptor of the device: every NIC it starts (a restart too) gets this one, whatever the
        # caller does with its own meanwhile.
        self.tap_fd = os.dup(tap_fd)
        self.on_event: NicEvent = on_event or (lambda name, fields: None)
        self.events: list[tuple[str, dict[str, Any]]] = []  # every event so far (for a late listener)
        self.arena = Arena.create(arena_config)
        self.efds = (make_eventfd(), make_eventfd())  # H2N (the NIC sleeps on it), N2H (the host does)
        self.epoch = 0
        self.pid: int | None = None
        self.target: ProcessTarget | None = None
        self.last_counters: dict[str, Any] = {}
        self.failures = 0
        self._popen: subprocess.Popen[bytes] | None = None
        self._pidfd = -1
        self._sock: socket.socket | None = None
        self._inbox = b""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: Callable[[], None] = lambda: None
        self._on_failed: Callable[[], None] = lambda: None
        self._watchdog: asyncio.TimerHandle | None = None
        self._on_restarted: Callable[[], None] = lambda: None
        self.restart = True  # start a new NIC after a failure (once attached to a loop)
        self.restarts = 0
        self._young_failures = 0  # NICs in a row that failed soon after they started
        self._ready_at: float | None = None
        self._restart_timer: asyncio.TimerHandle | None = None
        self._starting: float | None = None  # a restart waits for its ready line since then
        self._beat = (0, 0.0, 0.0)  # the heartbeat last seen, when it last moved, when it was last looked at
        self.heartbeat_looks = 0
        self.capturing = False  # a capture runs: every NIC started (a restarted one too) mirrors its frames

    # ------------------------------------------------------------------ start

    def start(self, timeout: float = START_TIMEOUT) -> ProcessTarget:
        """Start the NIC; returns the host's target for it. Raises NicStartError."""
        self._launch()
        try:
            ready = self._await_ready(timeout)
        except BaseException:
            self._kill_and_reap()
            raise
        self.pid = int(ready["pid"])
        caps = TargetCapabilities(**ready["capabilities"])
        doorbell = Doorbell(self.arena.words, self.efds[0], Direction.H2N)
        self.target = ProcessTarget(self.arena, caps, doorbell=doorbell, wake_fd=self.efds[1])
        self.target.on_broken = self._fence_broken
        self._ready_at = time.monotonic()
        self._event("nic_started", pid=self.pid, epoch=self.epoch)
        return self.target

    def _launch(self) -> None:
        """Spawn the next NIC (a new epoch, its handles numbered apart) and hand it the arena."""
        self.epoch += 1
        self.arena.set_epoch(self.epoch)
        self._inbox = b""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            config = replace(self.config, handle_base=(self.epoch - 1) << 32, wait_go=self.epoch > 1)
            self._spawn(child, config)
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        self._sock = parent
        try:
            send_arena(parent, self.arena, [*self.efds, self.tap_fd])
        except BaseException:
            self._kill_and_reap()
            raise

    def _spawn(self, child: socket.socket, config: NicConfig) -> None:
        argv = [sys.executable, "-m", "tcpchimney.nic", "--fd", str(child.fileno())]
        argv += ["--host-pid", str(os.getpid()), "--config", config.to_json()]
        env = dict(os.environ)
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        try:
            self._popen = subprocess.Popen(
                argv, pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, env=env
            )
        except OSError as exc:
            raise NicStartError(f"cannot run {sys.executable}: {exc.strerror}") from exc
        if self._pidfd >= 0:
            os.close(self._pidfd)  # the previous NIC's, reaped
            self._pidfd = -1
        try:
            self._pidfd = os.pidfd_open(self._popen.pid)
        except OSError as exc:
            self._popen.kill()  # no pidfd to kill it through: it must not run unwatched
            self._popen.wait()
            raise NicStartError(f"cannot watch it: {exc.strerror or exc}") from exc
        self._on_spawned(self._popen.pid)
        if self.cpu is not None:
            try:
                pin(self._popen.pid, self.cpu)
            except OSError as exc:
                self._kill_and_reap()
                raise NicStartError(f"cannot pin it to CPU {self.cpu}: {exc.strerror or exc}") from exc

    def _await_ready(self, timeout: float) -> dict[str, Any]:
        assert self._sock is not None
        end = time.monotonic() + timeout
        while True:
            line = self._line(block=False)
            if line is not None:
                message: dict[str, Any] = json.loads(line)
                if message.get("event") == "ready":
                    return message
                raise NicStartError(f"it said: {message.get('message', line)}")
            left = end - time.monotonic()
            if left <= 0:
                raise NicStartError(f"it did not say it was ready within {timeout:.0f} s")
            sock = self._sock.fileno()
            readable, _, _ = select.select([sock, self._pidfd], [], [], left)
            if self._pidfd in readable and sock not in readable:
                status = self._reap()
                raise NicStartError(f"it {_exit_cause(status)} before it was ready")
            if sock in readable and not self._receive():
                status = self._reap()
                raise NicStartError(f"it {_exit_cause(status)} before it was ready")

    def _receive(self) -> bool:
        """Read what the socket has into the inbox; False at end of file."""
        assert self._sock is not None
        try:
            data = self._sock.recv(65536)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        self._inbox += data
        return bool(data)

    def _line(self, block: bool, timeout: float = COUNTERS_TIMEOUT) -> str | None:
        end = time.monotonic() + timeout
        while b"\n" not in self._inbox:
            if not block or self._sock is None:
                return None
            left = end - time.monotonic()
            if left <= 0:
                return None
            readable, _, _ = select.select([self._sock], [], [], left)
            if readable and not self._receive():
                return None
        line, self._inbox = self._inbox.split(b"\n", 1)
        return line.decode()

    # ------------------------------------------------------------------ liveness

    def attach(
        self,
        loop: asyncio.AbstractEventLoop,
        wake: Callable[[], None],
        on_failed: Callable[[], None] = lambda: None,
        on_restarted: Callable[[], None] = lambda: None,
    ) -> None:
        """Watch the NIC from ``loop``: ``wake()`` after it failed (the host stack has outputs to read),
        ``on_failed()`` each time one fails (e.g. the runtime reads the TAP itself from then on),
        ``on_restarted()`` each time a new one runs (the runtime reads the target's frames again)."""
        self._loop, self._wake, self._on_failed = loop, wake, on_failed
        self._on_restarted = on_restarted
        self._watch()

    def _watch(self) -> None:
        loop = self._loop
        if self._sock is not None and loop is not None:
            self._sock.setblocking(False)
            loop.add_reader(self._pidfd, self._on_pidfd)
            loop.add_reader(self._sock.fileno(), self._on_socket)
            now = time.monotonic()
            self._beat = (self.arena.nic_words()[2], now, now)
            self._watchdog = loop.call_later(self.hang_bound / 4, self._on_watchdog)

    @property
    def alive(self) -> bool:
        return self._popen is not None and self.target is not None and self.target.failed is None

    def _on_pidfd(self) -> None:
        detected = time.time()
        status = self._reap()
        self._failed(_exit_cause(status), "pidfd", detected)

    def _on_socket(self) -> None:
        if self._receive():
            return  # a late answer (counters): nothing to do with it here
        detected = time.time()
        # A dying process closes its descriptors before it becomes a zombie: give it a moment to be one,
        # to tell a death (the usual end of file) from a NIC that only closed its end.
        dead = bool(select.select([self._pidfd], [], [], 0.05)[0])
        status = self._kill_and_reap()
        cause = _exit_cause(status) if dead else f"closed its socket, then was {_exit_cause(status)}"
        self._failed(cause, "socket", detected)

    def _on_watchdog(self) -> None:
        self._watchdog = None
        if self._loop is None:
            return
        self.heartbeat_looks += 1
        now = time.monotonic()
        beat, moved, looked = self._beat
        current = self.arena.nic_words()[2]
        if current != beat or now - looked > self.hang_bound:
            moved = now  # it beat, or the host did not look for a whole bound: count from here
        elif now - moved >= self.hang_bound:
            self._on_hung(now - moved)
            return
        self._beat = (current, moved, now)
        self._watchdog = self._loop.call_later(self.hang_bound / 4, self._on_watchdog)

    def _on_hung(self, silent: float) -> None:
        """No heartbeat for a whole bound: kill it (the fence) and reap it before the host reads the arena."""
        detected = time.time()
        status = self._kill_and_reap()
        cause = f"hung (no heartbeat for {silent:.1f} s), then was {_exit_cause(status)}"
        self._failed(cause, "heartbeat", detected)

    def _fence_broken(self, cause: str) -> None:
        """The NIC broke the protocol: kill it before the host reads any more of the arena."""
        detected = time.time()
        self._kill_and_reap()
        self._failed(f"broke the protocol ({cause})", "arena", detected, fail_target=False)

    def _failed(self, cause: str, by: str, detected: float, fail_target: bool = True) -> None:
        self._unwatch()
        self.failures += 1
        if fail_target and self.target is not None:
            self.target.fail(cause)
        self._event(
            "nic_failed", pid=self.pid, epoch=self.epoch, cause=cause, detected_by=by, detected=detected
        )
        self._close_sock()
        self._on_failed()
        self._wake()
        self._schedule_restart()

    def _unwatch(self) -> None:
        loop = self._loop
        if loop is None:
            return
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(self._pidfd)
        if self._sock is not None:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(self._sock.fileno())

    # ------------------------------------------------------------------ restart

    def _schedule_restart(self) -> None:
        """The next NIC after the hold-down, doubled for each NIC in a row that died young."""
        loop = self._loop
        if not self.restart or loop is None or self.target is None:
            return
        ready_at, self._ready_at = self._ready_at, None
        young = ready_at is None or time.monotonic() - ready_at < RESTART_YOUNG
        self._young_failures = self._young_failures + 1 if young else 0
        delay = min(RESTART_MAX_DELAY, RESTART_DELAY * 2 ** max(0, self._young_failures - 1))
        self._restart_timer = loop.call_later(delay, self._restart_now)

    def _restart_now(self) -> None:
        self._restart_timer = None
        loop = self._loop
        if loop is None:
            return
        self.arena.reset_rings()  # the dead NIC's rings were read; the records stay for the recovery
        try:
            self._launch()
        except (NicStartError, OSError) as exc:
            self._start_failed(f"could not be started: {exc}")
            return
        assert self._sock is not None
        self._sock.setblocking(False)
        loop.add_reader(self._sock.fileno(), self._on_start_line)
        loop.add_reader(self._pidfd, self._on_start_death)
        self._restart_timer = loop.call_later(START_TIMEOUT, self._on_start_timeout)

    def _on_start_line(self) -> None:
        if not self._receive():
            self._start_failed("closed its socket before it was ready")
            return
        line = self._line(block=False)
        if line is None:
            return
        try:
            message: dict[str, Any] = json.loads(line)
        except ValueError:
            message = {"message": line}
        if message.get("event") == "ready":
            self._started(message)
        else:
            self._start_failed(f"said: {message.get('message', line)}")

    def _on_start_death(self) -> None:
        self._start_failed(f"{_exit_cause(self._reap())} before it was ready")

    def _on_start_timeout(self) -> None:
        self._restart_timer = None
        self._start_failed(f"did not say it was ready within {START_TIMEOUT:.0f} s")

    def _cancel_start(self) -> None:
        if self._restart_timer is not None:
            self._restart_timer.cancel()
            self._restart_timer = None
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(self._pidfd)
            if self._sock is not None:
                with contextlib.suppress(ValueError, OSError):
                    loop.remove_reader(self._sock.fileno())

    def _start_failed(self, cause: str) -> None:
        self._cancel_start()
        popen = self._popen
        self._kill_and_reap()
        self.failures += 1
        pid = popen.pid if popen is not None else None
        self._event(
            "nic_failed", pid=pid, epoch=self.epoch, cause=cause, detected_by="start", detected=time.time()
        )
        self._close_sock()
        self._schedule_restart()

    def _started(self, ready: dict[str, Any]) -> None:
        self._cancel_start()
        assert self.target is not None
        self.pid = int(ready["pid"])
        caps = TargetCapabilities(**ready["capabilities"])
        doorbell = Doorbell(self.arena.words, self.efds[0], Direction.H2N)
        self.target.attach_nic(caps, doorbell, self.efds[1])
        self.restarts += 1
        self._ready_at = time.monotonic()
        self._event("nic_started", pid=self.pid, epoch=self.epoch, restart=True)
        self._watch()
        self._on_restarted()  # the runtime reads the NIC's frames ring from now on, not the TAP
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.sendall(b'{"op":"go"}\n')  # so the NIC may read the TAP: one reader at a time
                if self.capturing:  # its answer is read (and skipped) with the next one asked for
                    self._sock.sendall(b'{"op":"capture","on":true}\n')
        self._wake()

    def arm_crash(self, point: str, after: int = 1) -> None:
        """Arm a crash point of the running NIC (``nic/crash.py``). Raises ValueError with its answer when
        it refuses, RuntimeError when none runs or it does not answer."""
        self._ask({"op": "crash", "point": point, "after": after}, "armed")

    def fault(self, name: str, **args: Any) -> None:
        """Apply a fault knob of the running NIC's target (``nic/faults.py``), e.g. ``fault("fail_hardware",
        lost=[handle])``. Raises ValueError with its answer when it refuses, RuntimeError when none runs."""
        self._ask({"op": "fault", "name": name, **args}, "applied")

    def set_capture(self, on: bool) -> dict[str, Any]:
        """Start (or stop) mirroring the offloaded connections' frames up the frames ring (``nic/core.py``),
        in this NIC and in every one started after it; returns the NIC's answer (its mirror counters, with
        the NIC's ``epoch``: a restarted NIC counts from 0), or {} when none runs now."""
        self.capturing = on
        try:  # a restarted NIC's answer to the resume may come first: the one wanted says "on": on
            answer = self._ask({"op": "capture", "on": on}, "capture", lambda r: r.get("on") == on)
        except (RuntimeError, OSError, ValueError):
            return {}
        return {**answer, "epoch": self.epoch}

    def _ask(
        self, message: dict[str, Any], answer: str, wanted: Callable[[dict[str, Any]], bool] = lambda r: True
    ) -> dict[str, Any]:
        if not self.alive or self._sock is None:
            raise RuntimeError("no NIC process runs")
        self._sock.sendall(json.dumps(message).encode() + b"\n")
        while (line := self._line(block=True)) is not None:
            reply: dict[str, Any] = json.loads(line)
            if reply.get("event") == answer and wanted(reply):
                return reply
            if reply.get("event") == "error":
                raise ValueError(reply.get("message", line))
        raise RuntimeError("the NIC process did not answer")

    # ------------------------------------------------------------------ counters and the end

    def counters(self) -> dict[str, Any]:
        """The NIC's counters (asked over the socket; the last ones it gave once it is gone), with the
        host end's transport counters under ``"host_transport"``."""
        if self.alive and self._sock is not None:
            with contextlib.suppress(OSError, ValueError):
                self._sock.sendall(b'{"op":"counters"}\n')
                while (line := self._line(block=True)) is not None:
                    message = json.loads(line)
                    if message.get("event") == "counters":
                        self.last_counters = message["counters"]
                        break
        out = dict(self.last_counters)
        out["nic_process"] = {
            "pid": self.pid,
            "epoch": self.epoch,
            "failures": self.failures,
            "restarts": self.restarts,
            "heartbeat_looks": self.heartbeat_looks,
        }
        if self.target is not None:
            out["host_transport"] = self.target.transport_counters()
        return out

    def close(self) -> None:
        """Stop the NIC (or kill it), reap it, close every descriptor. Idempotent."""
        self._unwatch()
        self._cancel_start()
        self._loop = None
        if self._popen is not None and self._popen.returncode is None:
            stopped = False
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.setblocking(True)
                    self._sock.sendall(b'{"op":"stop"}\n')
                    stopped = bool(select.select([self._pidfd], [], [], STOP_TIMEOUT)[0])
            if stopped:
                self._reap()
            else:
                self._kill_and_reap()
        self._close_sock()
        for fd in (self._pidfd, *self.efds, self.tap_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._pidfd, self.efds, self.tap_fd = -1, (-1, -1), -1
        with contextlib.suppress(BufferError, ValueError):
            self.arena.close()

    def _close_sock(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _kill_and_reap(self) -> int:
        if self._popen is None or self._popen.returncode is not None:
            return self._popen.returncode if self._popen is not None else 0
        with contextlib.suppress(ProcessLookupError, OSError):
            signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
        return self._reap()

    def _reap(self) -> int:
        """Wait for the process (it has ended or is ending); its wait status."""
        popen = self._popen
        if popen is None:
            return 0
        if popen.returncode is None:
            _, status = os.waitpid(popen.pid, 0)
            popen.returncode = os.waitstatus_to_exitcode(status)
            self._on_reaped(popen.pid)
        else:
            status = _status_of(popen.returncode)
        return status

    def _event(self, name: str, **fields: Any) -> None:
        self.events.append((name, fields))
        self.on_event(name, fields)


def _status_of(returncode: int) -> int:
    """A wait status from ``Popen.returncode`` (negative: the signal that killed it)."""
    return -returncode if returncode < 0 else returncode << 8
