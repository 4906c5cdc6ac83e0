"""``LoopbackNic``: a ``SoftwareTarget`` behind the ring transport with both ends in this process, as one node
of a (simulated) link: the conformance and differential suites run through the same arena, rings, codec
and failure handling as a NIC process, deterministically, on a virtual clock.

The host stack sees a ``ProcessTarget``; the target runs in a ``NicCore`` over a second mapping of the same
arena. Where the NIC process runs its loop when the doorbell rings, this pairing runs the core's exchange
synchronously at each publish, so a request is handled at the instant it is made, as by an in-process
target. Frames follow the process's paths: frames from the wire go to the target, those it does not claim
up the frames ring to the host; the host's own frames leave without crossing the NIC.

``fail("killed")`` plays the NIC's death: the core is dropped and the host end fails as it does when the
process dies (then the host reads the wire itself); a crash point armed on ``core.crash`` kills it there,
in the middle of a turn. ``restart()`` plays the next NIC: the rings emptied, a new target numbering its
objects apart, the host end attached to it (``TargetResumed``). ``frozen = True`` plays a stopped NIC
(SIGSTOP): it takes no request, sends nothing, and frames from the wire are lost.

The order of a turn is the process's: the frames the target built leave only after the turn's outputs and
records are committed and published (the crash rules, ``nic/commit.py``).
"""

from __future__ import annotations

import os

from tcpchimney.nic.arena import Arena, ArenaConfig, nic_rings
from tcpchimney.nic.core import NicCore
from tcpchimney.nic.crash import CrashPoints
from tcpchimney.nic.process_target import ProcessTarget, UpperNode
from tcpchimney.nic.target import SoftwareTarget
from tcpchimney.wire.frame import Frame

# Small enough for many arenas per test run (the memory is touched only where used), with control rings
# that cut a large terminate state into several records.
LOOPBACK_ARENA = ArenaConfig(
    max_conns=256,
    pool_size=64 << 20,  # RX buffers as large as the connections' receive buffers (1 MiB by default)
    chunk_size=16 << 10,
    rings=nic_rings(control=256 << 10, descriptors=64, frames=4 << 20),
)


class NicDied(Exception):
    """A crash point was reached: the NIC dies on the spot."""


def _die() -> None:
    raise NicDied


class LoopbackNic:
    def __init__(self, target: SoftwareTarget, config: ArenaConfig = LOOPBACK_ARENA) -> None:
        self.arena = Arena.create(config)
        self.arena.set_epoch(1)
        self.nic_arena = Arena.attach(os.dup(self.arena.fd))
        self.core: NicCore | None = NicCore(self.nic_arena, target, CrashPoints(_die))
        self.software = target
        self.target = ProcessTarget(
            self.arena,
            target.capabilities,
            on_publish=self._nic_turn,
            on_poll=lambda: self._nic_turn(self._now),
            clock=lambda: self._now,
        )
        self._now = 0.0  # the last instant an entry point was given (the NIC has no clock of its own)
        self.frozen = False  # a stopped NIC (SIGSTOP): it reads, handles and sends nothing
        self._unsent: list[Frame] = []  # frames built while control records waited for room

    def _nic_turn(self, now: float) -> None:
        core = self.core
        if core is None or self.frozen:
            return
        try:
            core.pump(now)
            # A hand-back whose connection left no frame to send is answered at once, as the NIC process
            # does when its turn wrote everything; the requests that waited behind it are taken then.
            while core.handing_back and not self.software.owes_frames:
                core.frames_out()
                core.pump(now)
        except NicDied:
            self.fail("killed at a crash point")

    def attach_host(self, host: UpperNode) -> None:
        self.target.attach_host(host)

    def fail(self, cause: str = "killed") -> None:
        """The NIC dies here: nothing more runs on its side; the host end finds out at once."""
        self.core = None
        self._unsent = []  # never written
        self.target.fail(cause)

    def restart(self) -> None:
        """The next NIC, after a death: a new target behind the same arena, its rings emptied."""
        assert self.core is None, "the NIC still runs"
        old = self.software
        epoch = self.arena.epoch + 1
        self.arena.reset_rings()
        self.arena.set_epoch(epoch)
        self.software = SoftwareTarget(
            old.features,
            capacity=old.capabilities.capacity,
            config=old.config,
            mac=old.mac,
            handle_base=(epoch - 1) << 32,
        )
        self.core = NicCore(self.nic_arena, self.software, CrashPoints(_die))
        self.target.attach_nic(self.software.capabilities)

    # ------------------------------------------------------------------ node

    def handle_frame(self, frame: Frame, now: float) -> None:
        self._now = now
        if self.core is None:  # the NIC is gone: the host reads its own descriptor of the device
            self.target.handle_frame(frame, now)
            return
        if not self.frozen:
            self.core.handle_frame(frame, now)  # a frozen NIC reads nothing: the frame is lost
        self._exchange(now)

    def handle_timer(self, now: float) -> None:
        self._exchange(now)
        self.target.handle_timer(now)  # the host first, as a SoftwareTarget in front of it does
        if self.core is not None and not self.frozen:
            self.core.handle_timer(now)
        self._exchange(now)

    def frames_to_send(self, now: float) -> list[Frame]:
        # What the target said outside an exchange (a test's fault knob) reaches the host's next look at
        # its rings, as an in-process target's outputs reach its next poll.
        self._exchange(now)
        early = self._hand_back(now)
        out = early + self.target.frames_to_send(now)
        core = self.core
        if core is not None and not self.frozen:
            try:
                built = core.frames_to_send(now)
                core.put_outputs()
                core.commit()
                core.crash.hit("after_commit")
                core.publish()
                core.crash.hit("after_publish")
            except NicDied:
                self.fail("killed at a crash point")  # the turn's frames never leave
                return out + self.target.frames_to_send(now)
            self._unsent.extend(built)
            if not core.outputs.blocked:  # as the NIC process: no frame while control records wait
                out += self._unsent
                self._unsent = []
        self._exchange(now)
        return out

    def _hand_back(self, now: float) -> list[Frame]:
        """The frames the target built outside ``frames_to_send`` (a terminate's last ACK) are on the wire
        first, as the NIC process writes them; only then may the host read the answer it held back
        (``NicCore.frames_out``), so the host's first frames of that connection follow them."""
        core = self.core
        if core is None or self.frozen:
            return []
        early = self.software.early_frames()
        if core.handing_back:
            core.frames_out()
            core.publish()
            self._exchange(now)
        return early

    def next_deadline(self) -> float | None:
        self._nic_turn(self._now)
        if self.core is not None and not self.frozen and self.core.handing_back:
            return self._now  # the frames ahead of a held answer leave at the next call of frames_to_send
        if self._unsent:
            return self._now + 1e-4  # frames that waited for room in N2H_CONTROL: looked at again soon
        best = self.target.next_deadline()
        if self.core is not None and not self.frozen:
            own = self.core.next_deadline()
            if own is not None and (best is None or own < best):
                best = own
        return best

    def _exchange(self, now: float) -> None:
        """The core's outputs onto the rings, then the frames it passed up to the host."""
        self._now = now
        target = self.target
        while self.core is not None and not self.frozen:
            try:
                self.core.pump(now)
            except NicDied:
                self.fail("killed at a crash point")
                break
            if not self.core.outputs.blocked:
                break
            target.prefetch()  # the host reads what is there: room for the records that wait
        while (frame := target.read()) is not None:
            target.handle_frame(frame, now)

    def close(self) -> None:
        self.core = None
        self.nic_arena.close()
        self.arena.close()
