"""``ProcessTarget``: the host's end of a NIC that runs in another process, behind the arena's rings.

To the host stack it is an offload target like any other (``chimney.target.OffloadTarget``: ``submit``,
``poll``, ``capabilities``), so ``host/`` does not change with the transport; to the runtime it is the node
in front of the stack (``handle_frame`` / ``handle_timer`` / ``frames_to_send`` / ``next_deadline``, the
stack attached with ``attach_host``) and the source of its received frames (``fileno`` / ``read``): the NIC
process is the only reader of the TAP, and what it does not claim comes up the frames ring. The host
writes its own frames straight to its own descriptor of the TAP, so they never cross the NIC.

The transport: requests, completions and indications go through the codec on the control rings
(``nic/messages.py``), except the data path's: a Send's payload goes into its connection's TX buffer in
the arena with a SEND descriptor on H2N_DATA, and a receive indication's bytes are read from the RX buffer
the NIC placed them in, named by a RECEIVE_PLACED descriptor on N2H_DATA; a Send's completion comes as a
SEND_DONE descriptor (``nic/host_data.py``). Each direction's two rings are one ordered stream
(``nic/ordering.py``): nothing overtakes the data it follows.

**Wake-ups.** The host is the consumer of the N2H rings and sleeps in its event loop on the N2H eventfd.
It tells the NIC it may be asleep by keeping its sleep word odd, and renumbers it (+2) each time it has
emptied the rings, *before* looking at them a last time (with a fence between): a NIC that publishes after
that look sees a sleep it has not rung for and rings. A missed wake-up anyway (``doorbell.py`` on what the
fence rests on) costs at most ``sleep_bound`` seconds: the node's deadline looks at the rings that often.

**A dead or broken NIC** (``fail``). What the NIC published before it died is read first (it completed those
calls; not from a broken NIC). Then ``Recovery`` (``nic/process_recovery.py``) answers for it: every
connection it held is asked back (``UploadRequest(NIC_FAILED)``) and its terminate answered here with the
state rebuilt from the arena (its record and RX buffer) and what crossed the rings (``nic/recovery.py``,
``nic/shadows.py``), so nothing is lost; one that cannot be rebuilt is reset as by corrupt hardware. An
initiate the NIC never completed fails truthfully: the NIC keeps control records ahead of its frames
(``nic/core.py``), so it put nothing of that connection on the wire. ``attach_nic`` then puts a new NIC
behind the same arena.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from tcpchimney.chimney import codec
from tcpchimney.chimney.completions import Completion, StateCompletion, completion_for
from tcpchimney.chimney.errors import ContractError
from tcpchimney.chimney.indications import (
    TargetCapabilities,
    TargetResumed,
)
from tcpchimney.chimney.reason import Reason
from tcpchimney.chimney.requests import InitiateOffload, Request, Send, TerminateOffload
from tcpchimney.chimney.status import Status
from tcpchimney.chimney.target import Output
from tcpchimney.chimney.tree import Layer, walk
from tcpchimney.nic.arena import Arena
from tcpchimney.nic.descriptors import FRAME_MIRROR, FRAME_MIRROR_IN, N2H_SLEEP_OFF, ArenaError, RingId
from tcpchimney.nic.doorbell import Doorbell, fence
from tcpchimney.nic.host_data import HostDataPath
from tcpchimney.nic.messages import frame_of_record
from tcpchimney.nic.ordering import OrderedReader, OrderedWriter
from tcpchimney.nic.process_recovery import Recovery
from tcpchimney.wire.errors import WireError
from tcpchimney.wire.frame import Frame
from tcpchimney.wire.vnet import VNET_HDR_LEN

READ_BATCH = 64  # frames taken from the ring per take (each is copied out, then the space is released)
RETRY_S = 0.001  # requests waiting for room in a full H2N ring are retried this often

_DEAD = Reason.TARGET_HARDWARE_FAILURE


class UpperNode(Protocol):
    """The host stack, as the node behind this one."""

    def handle_frame(self, frame: Frame, now: float) -> None: ...
    def handle_timer(self, now: float) -> None: ...
    def frames_to_send(self, now: float) -> list[Frame]: ...
    def next_deadline(self) -> float | None: ...


TRANSPORT_KEYS = (
    "requests",  # requests submitted to the NIC
    "outputs",  # completions and indications read from it
    "frames",  # frames read from the frames ring
    "bad_frames",  # frames whose virtio-net header made no sense (dropped)
    "wakeups",  # renumbered sleeps: the host emptied the rings and waits for the doorbell
    "bound_checks",  # looks at the rings at the sleep bound
    "late_frames",  # frames found by those looks (a wake-up the doorbell did not give)
    "answered_dead",  # calls the host made after the NIC failed, answered here
    "mirrored",  # capture copies of offloaded connections' frames read from the frames ring
)


class ProcessTarget:
    def __init__(
        self,
        arena: Arena,
        capabilities: TargetCapabilities,
        *,
        doorbell: Doorbell | None = None,
        wake_fd: int = -1,
        on_publish: Callable[[float], object] | None = None,
        on_poll: Callable[[], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep_bound: float = 0.050,
    ) -> None:
        """``doorbell`` rings the NIC after each publish (its H2N eventfd); ``wake_fd`` is the N2H eventfd the
        host sleeps on. A test pairing this end with a ``NicCore`` in one process passes ``on_publish``
        instead: called with ``now`` after each publish, it runs the NIC there and then; and ``on_poll``,
        called when ``poll`` has nothing queued, so the NIC's outputs are there whenever the host looks."""
        self.arena = arena
        self._capabilities = capabilities
        self.requests, self.outputs = self._rings()
        self._frames = arena.byte_consumer(RingId.N2H_FRAMES)
        self._doorbell = doorbell
        self._wake_fd = wake_fd
        self._on_publish = on_publish
        self._on_poll = on_poll
        self._clock = clock
        self._sleep_bound = sleep_bound if on_publish is None else math.inf
        self._next_look: float | None = None  # when the rings are looked at without a doorbell
        self._sleep_word = N2H_SLEEP_OFF // 8
        self._sleep_seq = 1  # odd: the host may be asleep whenever it is not reading (see module docstring)
        arena.words[self._sleep_word] = self._sleep_seq
        self.host: UpperNode | None = None
        self._out: deque[Output] = deque()
        self._rx: deque[Frame] = deque()
        self._pending: dict[int, Request] = {}  # request id -> request, until its completion is read
        self._offloaded: dict[int, int] = {}  # the NIC's handle -> the host's, of the connections it holds
        self.failed: str | None = None  # why the NIC is gone; None while it runs
        self.restarts = 0  # NICs attached after the first
        self.on_broken: Callable[[str], None] = lambda cause: None  # fence a NIC that broke the protocol
        self.counters: dict[str, int] = dict.fromkeys(TRANSPORT_KEYS, 0)
        self.bad_frames: dict[str, int] = {}
        self.recovery = Recovery(arena, clock)
        self.data = HostDataPath(arena, self.recovery, arena.epoch)
        # A capture's hook (``chimney capture``): every frame read from the frames ring, passed up or a copy
        # the NIC mirrored, as the wire carries it (a view of the record, no virtio-net header; ``inbound``
        # False for a frame an offloaded connection sent).
        self.mirror: Callable[[memoryview, bool], None] | None = None

    def _rings(self) -> tuple[OrderedWriter, OrderedReader]:
        arena = self.arena
        return (
            OrderedWriter(
                arena.byte_producer(RingId.H2N_CONTROL),
                arena.descriptor_producer(RingId.H2N_DATA),
                arena.epoch,
            ),
            OrderedReader(
                arena.byte_consumer(RingId.N2H_CONTROL), arena.descriptor_consumer(RingId.N2H_DATA)
            ),
        )

    # ================================================================== the offload target contract

    @property
    def capabilities(self) -> TargetCapabilities:
        return self._capabilities

    def submit(self, request: Request, now: float) -> None:
        recovery = self.recovery
        if recovery.claims(request):  # it names what a dead NIC held: answered here
            self._out.extend(recovery.answer(request))
            if isinstance(request, TerminateOffload):
                self._forget(request)
            return
        if self.failed is not None:
            self.counters["answered_dead"] += 1
            self._answer_dead(request)
            return
        if isinstance(request, InitiateOffload):
            for bind in recovery.shadows.bind(request, now):  # each ahead of the initiate, on one ring
                self.requests.send_bind(*bind)
        recovery.shadows.on_submit(request)
        if not (isinstance(request, Send) and self.data.send(request, self.requests)):
            self.requests.send(request)  # CodecError for what is not a request: the caller's bug, raised
        self._pending[request.request_id] = request
        self.counters["requests"] += 1
        self._publish(now)

    def poll(self) -> Output | None:
        if not self._out and self.failed is None:
            if self._on_poll is not None:
                self._on_poll()
            self._read_outputs()
        return self._out.popleft() if self._out else None

    def _publish(self, now: float) -> None:
        if not self.requests.publish():
            return
        if self._on_publish is None:
            if self._doorbell is not None:
                self._doorbell.ring()
            return
        self._on_publish(now)
        while self.requests.blocked:  # paired in one process: the NIC took all of it, the rest fits now
            self.requests.flush()
            if not self.requests.publish():
                break  # nothing moved (the NIC is gone)
            self._on_publish(now)

    def _flush_requests(self, now: float) -> None:
        if self.requests.blocked and self.failed is None:
            self.requests.flush()
            self._publish(now)

    def _read_outputs(self) -> None:
        try:
            if not self.outputs.moved():
                return
            data, pending = self.data, self._pending
            for item in self.outputs.take():
                message = codec.decode(item) if isinstance(item, bytes) else data.output(item, pending)
                self._note(message)
                self._out.append(message)
            self.outputs.release()
        except (ArenaError, ContractError) as exc:  # CodecError, and a descriptor that builds no message
            self._broken(f"{type(exc).__name__}: {exc}")

    def prefetch(self) -> None:
        """Read what the NIC published into the local queue now (``poll`` returns it in order), so a NIC
        waiting for room in a full N2H_CONTROL ring can go on."""
        if self.failed is None:
            self._read_outputs()

    def _note(self, message: object) -> None:
        """Follow which connections the NIC holds (what a failure must reset) and which calls are open."""
        self.counters["outputs"] += 1
        shadows = self.recovery.shadows
        if isinstance(message, Completion):
            request = self._pending.pop(message.request_id, None)
            shadows.on_output(message, request)
            if isinstance(message, StateCompletion):
                self.recovery.note_state(message, request)
            if isinstance(request, InitiateOffload) and isinstance(message, StateCompletion):
                for block in walk(message.tree):
                    if block.layer is Layer.TCP and block.status.ok and block.target_handle is not None:
                        assert block.host_handle is not None  # a NEW block always names the host's handle
                        self._offloaded[block.target_handle] = block.host_handle
            elif isinstance(request, TerminateOffload):
                self._forget(request)
        elif isinstance(message, TargetResumed):
            self._capabilities = message.capabilities
        else:
            shadows.on_output(message, None)

    def _forget(self, request: TerminateOffload) -> None:
        for block in walk(request.tree):
            if block.layer is Layer.TCP and block.target_handle is not None:
                self._offloaded.pop(block.target_handle, None)

    # ================================================================== failure

    def _broken(self, cause: str) -> None:
        """The NIC wrote something that breaks the protocol: fence it first, then fail (nothing more of what
        it wrote is read)."""
        self.on_broken(cause)
        self.fail(f"broken: {cause}", drain=False)

    def fail(self, cause: str, drain: bool = True) -> bool:
        """The NIC is gone (dead and reaped, or fenced): answer for it from now on. ``drain``: first read
        what it published while it was alive. False if it had failed already."""
        if self.failed is not None:
            return False
        if drain:
            self._read_outputs()
            self._take_frames(limit=None)
        if self.failed is not None:  # what it published was broken
            return False
        self.failed = cause
        pending, self._pending = self._pending, {}
        self._out.extend(self.recovery.fail(pending, dict(self._offloaded)))
        for request in pending.values():
            if isinstance(request, TerminateOffload):
                self._forget(request)
        now, host = self._clock(), self.host
        while self._rx and host is not None:  # what it passed up: from now on the host reads the device
            host.handle_frame(self._rx.popleft(), now)
        return True

    def _answer_dead(self, request: Request) -> None:
        if isinstance(request, TerminateOffload):
            self._forget(request)
        status = Status.FAILURE if hasattr(request, "tree") else Status.REQUEST_ABORTED
        self._out.append(completion_for(request, status))

    def attach_nic(
        self, capabilities: TargetCapabilities, doorbell: Doorbell | None = None, wake_fd: int = -1
    ) -> None:
        """A new NIC runs behind the same arena (its rings emptied, ``Arena.reset_rings``, before it
        started): requests go to it from now on, and the host hears ``TargetResumed``. Calls naming the
        dead NIC's objects are still answered here (``Recovery``)."""
        arena = self.arena
        self.requests, self.outputs = self._rings()
        self.data.epoch = arena.epoch
        self._frames = arena.byte_consumer(RingId.N2H_FRAMES)
        self._doorbell, self._wake_fd = doorbell, wake_fd
        self._capabilities = capabilities
        self._offloaded = {t: h for t, h in self._offloaded.items() if t in self.recovery.stale}
        self._next_look = None
        self.failed = None
        self.restarts += 1
        self._out.append(TargetResumed(capabilities))
        if doorbell is not None:
            doorbell.kick()  # a NIC that sleeps before its first look finds the ring rung once

    # ================================================================== node in front of the stack

    def attach_host(self, host: UpperNode) -> None:
        self.host = host

    def handle_frame(self, frame: Frame, now: float) -> None:
        if self.host is not None:
            self.host.handle_frame(frame, now)

    def handle_timer(self, now: float) -> None:
        self._flush_requests(now)
        look = self._next_look
        if look is not None and now >= look:
            self._next_look = None
            self._look_at_bound(now)
        if self.host is not None:
            self.host.handle_timer(now)

    def frames_to_send(self, now: float) -> list[Frame]:
        self._flush_requests(now)
        return self.host.frames_to_send(now) if self.host is not None else []

    def next_deadline(self) -> float | None:
        best = self.host.next_deadline() if self.host is not None else None
        extra = self._bound_deadline()
        if self.requests.blocked and self.failed is None:
            extra = min(extra, self._clock() + RETRY_S)
        if extra != math.inf and (best is None or extra < best):
            best = extra
        return best

    def _bound_deadline(self) -> float:
        """The next multiple of the sleep bound (a fixed grid: the runtime's timer is not re-armed on every
        flush), or infinity when there is no bound (synchronous pairing, or the NIC is gone)."""
        bound = self._sleep_bound
        if bound == math.inf or self.failed is not None:
            return math.inf
        if self._next_look is None:
            self._next_look = (math.floor(self._clock() / bound) + 1) * bound
        return self._next_look

    def _look_at_bound(self, now: float) -> None:
        self.counters["bound_checks"] += 1
        found = self._take_frames(limit=None)
        self.counters["late_frames"] += found
        host = self.host
        while self._rx and host is not None:
            host.handle_frame(self._rx.popleft(), now)

    # ================================================================== received frames (runtime source)

    def fileno(self) -> int:
        return self._wake_fd

    def pending(self) -> bool:
        """Frames or messages wait (memory loads only: what the runtime's busy poll looks at)."""
        if self._rx or self._out:
            return True
        return self.failed is None and (self._frames.moved() or self.outputs.moved())

    def read(self) -> Frame | None:
        """The next frame the NIC passed up, or None once the rings are empty (then the host may sleep: the
        NIC rings). Completions and indications are read by ``poll``, which the stack calls after this."""
        if self._rx or self._take_frames():
            return self._rx.popleft()
        if self.failed is None and self._control_waiting():
            return None  # the eventfd stays readable: the runtime calls again once poll has read them
        self._renumber_sleep()
        if self._take_frames():
            return self._rx.popleft()
        return None

    def _control_waiting(self) -> bool:
        try:
            return self.outputs.available()
        except ArenaError as exc:
            self._broken(f"{type(exc).__name__}: {exc}")
            return False

    def _renumber_sleep(self) -> None:
        if self._wake_fd >= 0:
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(self._wake_fd)
        self._sleep_seq += 2
        self.arena.words[self._sleep_word] = self._sleep_seq
        fence()  # the store above is seen before the rings are looked at again (doorbell.py)
        self.counters["wakeups"] += 1

    def _take_frames(self, limit: int | None = READ_BATCH) -> int:
        """Frames from the ring into the local queue; returns how many (capture copies the NIC mirrored go
        to the capture's hook, not to the queue: batches of copies alone are read on until a frame comes or
        the ring is empty, so no frame waits behind them for the next doorbell)."""
        while True:
            taken, queued = self._take_batch(limit)
            if queued or not taken:
                return queued

    def _take_batch(self, limit: int | None) -> tuple[int, int]:
        try:
            records = self._frames.take(limit)  # one validated read of the head; none when it is empty
            if not records:
                return 0, 0
            self._frames.release()  # each record was copied out
        except ArenaError as exc:
            if self.failed is None:
                self._broken(f"{type(exc).__name__}: {exc}")
            return 0, 0
        mirror, queued, copies = self.mirror, 0, 0
        for record in records:
            if record.flags & FRAME_MIRROR:  # not parsed: the capture wants the bytes alone
                copies += 1
                if mirror is not None:
                    mirror(memoryview(record.data)[VNET_HDR_LEN:], bool(record.flags & FRAME_MIRROR_IN))
                continue
            try:
                frame = frame_of_record(record.kind, record.data)
            except (WireError, ArenaError) as exc:
                reason = getattr(exc, "reason", "ring_record")
                self.counters["bad_frames"] += 1
                self.bad_frames[reason] = self.bad_frames.get(reason, 0) + 1
                continue
            self._rx.append(frame)
            queued += 1
            if mirror is not None:
                mirror(memoryview(record.data)[VNET_HDR_LEN:], True)
        self.counters["frames"] += len(records) - copies
        self.counters["mirrored"] += copies
        return len(records), queued

    def transport_counters(self) -> dict[str, int]:
        out = dict(self.counters)
        out.update(
            control_stalls=self.requests.stalls,
            control_backlogged=self.requests.backlogged,
            data_stalls=self.requests.data_stalls,
            data_marks=self.requests.marks,
            data_waits=self.outputs.waits,
            pending_calls=len(self._pending),
            held_connections=len(self._offloaded),  # the NIC holds (or held when it failed, until terminated)
        )
        out.update(self.recovery.counters)
        out.update(self.data.counters)
        out.update(
            restarts=self.restarts,
            unbound=self.recovery.shadows.unbound,
            last_recovery_us=int(self.recovery.last_recovery_s * 1e6),
        )
        if self._doorbell is not None:
            out.update(self._doorbell.counters())
        out.update((f"bad_frame_{k}", v) for k, v in sorted(self.bad_frames.items()))
        return out
