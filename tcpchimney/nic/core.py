"""``NicCore``: the NIC's side of the arena around a ``SoftwareTarget``, without any I/O or clock of its own.

It is what runs in the NIC process (``nic/process.py`` gives it the TAP, the doorbells and the clock), and
what a test pairs with a ``ProcessTarget`` in one process, driven synchronously on a simulated link, so the
whole offload suite runs through the ring transport deterministically.

- ``take_requests``: every request the host published on H2N_CONTROL and H2N_DATA, in the host's order
  (``nic/ordering.py``): messages decoded, SEND descriptors turned into Sends (``nic/nic_data.py``), and
  submitted to the target. A record that does not decode is counted and dropped (the host is trusted; a bad
  record is its bug).
- ``put_outputs``: every completion and indication the target has, in order: as a descriptor on N2H_DATA
  when it can go as one (a receive indication whose bytes are in the RX buffer, a Send's completion), else
  encoded onto N2H_CONTROL.
- the target's host node is the frames ring: every frame the target does not claim goes up N2H_FRAMES
  (a full ring drops it and counts it, as a NIC's receive ring does).
- ``mirror`` (off unless a capture runs, ``chimney capture``): a copy of every frame of an offloaded
  connection, received (those the target claims) or sent, goes up the frames ring flagged as a mirror
  (FRAME_MIRROR_IN/OUT). A copy is put only while the ring is less than half full, so the frames passed up
  for the host keep their room; a copy that does not fit is dropped and counted (``mirror_dropped``): a
  capture that cannot keep up loses frames, it never slows the data path.
- ``publish``: makes the N2H rings' new records visible (control before data, then frames); True if
  anything was new (ring then).
- ``handing_back`` / ``frames_out``: the answer to a terminate is held back until the caller has put every
  frame built before it on the wire (below).

**The order the process keeps** (``nic/process.py``): within one turn of its loop, the control ring is
published *before* any frame of that turn is written to the TAP, and no frame is written while control
records wait for room. So an initiate whose completion the host has not been able to read has not put a
single frame of its connection on the wire: when the NIC dies, the host may fail it truthfully ("the
target kept nothing", chimney-spec 3.1) instead of resetting the connection.

**The order of a hand-back** is the opposite one: the frames the target built for a connection it hands
back (spec 3.5 step 1: the ACK it owes leaves before the state does) must be on the wire before the host
can read the terminate's answer, or the host's first frames of the connection (its FIN, say) overtake the
target's last ones. So a turn takes requests up to the first ``TerminateOffload`` and no further
(``take_requests``); ``put_outputs`` stops before that terminate's answer and holds it (``handing_back``);
the loop writes the turn's frames, and once none waits for the device it calls ``frames_out``, which puts
the answer and what follows it. While an answer is held, no request is taken: a later initiate's frames
would otherwise reach the wire ahead of its answer.
"""

from __future__ import annotations

import logging
from collections import deque

from tcpchimney.chimney import codec
from tcpchimney.chimney.completions import Completion, StateCompletion
from tcpchimney.chimney.errors import CodecError, ContractError
from tcpchimney.chimney.requests import InitiateOffload, Request, TerminateOffload
from tcpchimney.chimney.target import Output
from tcpchimney.nic.arena import Arena
from tcpchimney.nic.commit import Committer
from tcpchimney.nic.crash import CrashPoints
from tcpchimney.nic.descriptors import FRAME_MIRROR_IN, FRAME_MIRROR_OUT, RingId
from tcpchimney.nic.messages import put_frame
from tcpchimney.nic.nic_data import NicDataPath
from tcpchimney.nic.ordering import Item, OrderedReader, OrderedWriter
from tcpchimney.nic.target import SoftwareTarget
from tcpchimney.wire.frame import Frame

log = logging.getLogger(__name__)

CORE_KEYS = (
    "requests",  # requests taken from the host and submitted to the target
    "bad_requests",  # records that did not decode to a request (dropped)
    "outputs",  # completions and indications put on N2H_CONTROL
    "bad_outputs",  # outputs the codec refused (a target bug; dropped)
    "frames_up",  # frames passed up the frames ring
    "frames_up_dropped",  # frames passed up while the frames ring was full
    "handbacks_held",  # terminate answers held until the frames built before them were on the wire
    "mirrored",  # capture copies of offloaded connections' frames put on the frames ring
    "mirror_dropped",  # capture copies dropped: the frames ring was half full
)


class _FramesUp:
    """The target's host node inside the NIC: what it passes up goes to the frames ring."""

    def __init__(self, core: NicCore) -> None:
        self._core = core

    def handle_frame(self, frame: Frame, now: float) -> None:
        self._core.frame_up(frame)

    def handle_timer(self, now: float) -> None:
        pass

    def frames_to_send(self, now: float) -> list[Frame]:
        return []  # the host writes its own frames to its own TAP descriptor

    def next_deadline(self) -> float | None:
        return None


class NicCore:
    def __init__(self, arena: Arena, target: SoftwareTarget, crash: CrashPoints | None = None) -> None:
        self.arena = arena
        self.target = target
        self.crash = crash or CrashPoints()
        self.committer = Committer(arena, target.table)
        self.committer.before_commit = lambda: self.crash.hit("after_place")
        target.receive_hook = self.committer.place
        self.requests = OrderedReader(
            arena.byte_consumer(RingId.H2N_CONTROL),
            arena.descriptor_consumer(RingId.H2N_DATA),
            accept_binds=True,
        )
        self.outputs = OrderedWriter(
            arena.byte_producer(RingId.N2H_CONTROL), arena.descriptor_producer(RingId.N2H_DATA), arena.epoch
        )
        self.data = NicDataPath(arena, self.committer)
        self._initiates: set[int] = set()  # request ids of the initiates whose completion is still to come
        self.frames = arena.byte_producer(RingId.N2H_FRAMES)
        self.counters: dict[str, int] = dict.fromkeys(CORE_KEYS, 0)
        self._later: deque[Item] = deque()  # requests taken from the rings, submitted after a hand-back
        self._terminates: set[int] = set()  # request ids of terminates whose answers are not put yet
        self._held: Output | None = None  # a terminate's answer, put by ``frames_out``
        self.mirror = False  # a capture runs: offloaded connections' frames are copied up (module docstring)
        self._passed_up = False
        target.attach_host(_FramesUp(self))

    # ------------------------------------------------------------------ rings

    def frame_up(self, frame: Frame) -> None:
        self._passed_up = True
        if put_frame(self.frames, frame):
            self.counters["frames_up"] += 1
        else:
            self.counters["frames_up_dropped"] += 1

    def take_requests(self, now: float) -> int:
        """Submit the requests the host published (messages and SEND descriptors, in its order), up to the
        first terminate (the rest wait for the next turn), none while a terminate's answer is held; returns
        how many were taken from the rings."""
        if self._held is not None:
            return 0
        later = self._later
        messages = self.requests.take()
        binds, committer = self.requests.binds, self.committer
        for bind in binds:  # each comes before its initiate: applied before that initiate is submitted
            committer.bind(*bind)
            self.data.bind(bind[0], bind[1])
        binds.clear()
        self.requests.release()  # also the records of a message not complete yet: they were copied out
        later.extend(messages)
        submitted = 0
        while later:
            submitted += 1
            if self._submit(later.popleft(), now):
                break
        return max(submitted, len(messages))

    def _submit(self, item: Item, now: float) -> bool:
        """Decode and submit one request; True if it was a terminate (the turn takes no more)."""
        try:
            request: Request = codec.decode(item) if isinstance(item, bytes) else self.data.send(item)
            if isinstance(request, InitiateOffload):
                self.committer.expect(request)
                self._initiates.add(request.request_id)
            self.target.submit(request, now)
        except (CodecError, ContractError) as exc:  # not a request (e.g. a completion): dropped
            self.counters["bad_requests"] += 1
            log.warning("NIC: dropped a host request: %s", exc)
            return False
        self.counters["requests"] += 1
        if isinstance(request, InitiateOffload):
            self.crash.hit("mid_initiate")
        elif isinstance(request, TerminateOffload):
            self._terminates.add(request.request_id)
            self.crash.hit("mid_terminate")
            return True
        return False

    @property
    def pending(self) -> bool:
        """Requests taken from the ring and not submitted yet (they follow a terminate)."""
        return bool(self._later)

    def put_outputs(self) -> None:
        """The target's completions and indications in order, as descriptors on N2H_DATA where they can go
        as one, else onto N2H_CONTROL (the backlog when full), up to a terminate's answer: that one is held
        until ``frames_out``."""
        counters, outputs, target = self.counters, self.outputs, self.target
        outputs.flush()
        while self._held is None and (out := target.poll()) is not None:
            if isinstance(out, Completion) and out.request_id in self._terminates:
                self._terminates.discard(out.request_id)
                self._held = out
                counters["handbacks_held"] += 1
                break
            self._send(out)

    def _send(self, out: Output) -> None:
        if isinstance(out, StateCompletion) and out.request_id in self._initiates:
            self._initiates.discard(out.request_id)
            self.data.initiated(out)  # before any Send on its connections can come
        if self.data.descriptor_for(out, self.outputs):
            self.counters["outputs"] += 1
            return
        try:
            self.outputs.send(out)
        except CodecError as exc:
            self.counters["bad_outputs"] += 1
            log.error("NIC: cannot encode %s: %s", type(out).__name__, exc)
            return
        self.counters["outputs"] += 1

    @property
    def handing_back(self) -> bool:
        """A terminate's answer waits for the frames built before it to be on the wire."""
        return self._held is not None

    def frames_out(self) -> None:
        """Every frame built so far is on the wire: the held answer goes onto the ring, then what follows."""
        held, self._held = self._held, None
        if held is not None:
            self._send(held)
            self.put_outputs()

    def commit(self) -> int:
        """Commit the records of the connections whose numbers moved (before this turn's frames leave)."""
        return self.committer.commit_all()

    def publish(self) -> bool:
        control = self.outputs.publish()  # control, then data (nic/ordering.py)
        frames = self.frames.publish()
        return control or frames

    def pump(self, now: float) -> bool:
        """Requests in, outputs out, published: one exchange with the host. True if anything was published."""
        self.take_requests(now)
        self.put_outputs()
        self.commit()
        return self.publish()

    # ------------------------------------------------------------------ the target as the wire's node

    def handle_frame(self, frame: Frame, now: float) -> None:
        if not self.mirror:
            self.target.handle_frame(frame, now)
            return
        self._passed_up = False
        self.target.handle_frame(frame, now)
        if not self._passed_up:  # the target claimed it: the host sees it only through the mirror
            self._mirror(frame, FRAME_MIRROR_IN)

    def handle_timer(self, now: float) -> None:
        self.target.handle_timer(now)

    def frames_to_send(self, now: float) -> list[Frame]:
        frames = self.target.frames_to_send(now)
        if self.mirror:
            for frame in frames:  # every frame the target builds is an offloaded connection's
                self._mirror(frame, FRAME_MIRROR_OUT)
        return frames

    def _mirror(self, frame: Frame, flags: int) -> None:
        ring = self.frames
        # Half the ring stays for the frames the host needs: a copy never takes their room.
        if ring.used() + len(frame) + 64 <= ring.max_payload and put_frame(ring, frame, flags):
            self.counters["mirrored"] += 1
        else:
            self.counters["mirror_dropped"] += 1

    def next_deadline(self) -> float | None:
        return self.target.next_deadline()

    def snapshot(self) -> dict[str, object]:
        """The target's counters, and this transport's under ``"transport"``."""
        transport: dict[str, int] = dict(self.counters)
        transport.update(
            control_records=self.outputs.records,
            control_backlogged=self.outputs.backlogged,
            control_stalls=self.outputs.stalls,
            data_descriptors=self.outputs.descriptors,
            data_marks=self.outputs.marks,
            data_stalls=self.outputs.data_stalls,
            data_waits=self.requests.waits,
            frames_stalls=self.frames.stalls,
        )
        transport.update(self.committer.counters)
        transport.update(self.data.counters)
        return {**self.target.counters.snapshot(), "transport": transport}
