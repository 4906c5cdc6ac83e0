"""The simulated link: one virtual Ethernet segment, a virtual clock and seeded impairments.

Any number of *nodes* attach to the link (a ``HostStack`` is one: anything with ``handle_frame``,
``handle_timer``, ``frames_to_send`` and ``next_deadline``). A frame one node sends reaches every other node,
as on one shared Ethernet segment; the receivers filter on the destination MAC themselves.

Time: nothing sleeps. The clock jumps to the next frame arrival or node deadline, whichever comes first; a run
of a thousand simulated seconds takes as long as its frames take to process. Events at the same instant are
ordered by a sequence number, and every random draw comes from generators seeded by ``seed``, so a run is
exactly repeatable: the same seed gives the same frames at the same times.

Wire model:

- ``offloads=False`` (default): a real Ethernet. Every frame is made wire-ready when it is sent: TCP
  super-segments are cut into MTU-sized frames and ``csum_partial`` checksums completed (``link.gso``);
  frames shorter than 60 bytes are padded with zeros to the Ethernet minimum, as a NIC does.
  Receivers get plain frames (``csum_valid=False``) and verify checksums themselves. Frames larger than the
  MTU (plus the Ethernet header) are dropped and counted ``dropped_invalid``, as a NIC refuses them.
- ``offloads=True``: two virtio-net devices back to back. A frame passes as it is, its parts joined into one
  buffer as a device reads it; ``csum_partial`` and ``gso_size`` travel with it, as a TAP passes NEEDS_CSUM
  and GSO to its reader. A frame chosen for corruption is first made wire-ready, then one piece corrupted.

Impairments apply per sender (``attach(..., impairments=)``, ``set_impairments``), in this order for each
frame put on the wire: bandwidth (a sender transmits one frame at a time: a frame starts when the previous one
has left, and arrives ``len / bandwidth`` seconds after its start plus the delay), loss, jitter (uniform in
[0, jitter]), reordering (the frame is held back ``reorder_delay`` so later ones overtake it), corruption
(one random bit flipped in a random byte past the Ethernet header), duplication (a second copy right behind).
The Ethernet FCS is not modelled: a corrupted frame stands for one corrupted past it (in a switch's or a
NIC's memory), which only checksums above Ethernet can catch; ARP has none, and takes it as it is.

Timers: a node's ``next_deadline()`` is when it next wants ``handle_timer``; a deadline at or before the
current time is due, and a due node is called at once, at the current instant, after the frames arriving at
that instant are delivered. A node that re-arms a timer "for now" from inside ``handle_timer`` (or while
handling a frame) is therefore called again at the same instant, as a real event loop runs a callback
scheduled for now on its next turn; its later timers keep firing. The link never second-guesses a reported
deadline (a deadline is not an identity: the same value may be a new timer). The other side of that rule is
that a node which keeps reporting a due deadline after every call never lets the clock move: that is a busy
loop in a real runtime too, so after ``MAX_TIMER_ONLY_STEPS`` calls at one instant with no frame sent or
delivered the link raises ``RuntimeError`` naming the node. Each call must make progress: handle the due
work, or send something.

Capture: the pcap records each frame once, in wire form (segmented, checksums complete), stamped with the
virtual time its transmission starts. It is taken at the sender's port, before the medium: lost frames are
in it (a capture that hid them could not explain a retransmission) and corrupted frames appear as sent.
"""

from __future__ import annotations

import heapq
import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol, TypeGuard

from tcpchimney.link.clock import VirtualClock
from tcpchimney.link.gso import segment
from tcpchimney.link.pcap import PcapWriter
from tcpchimney.wire.errors import EmitError
from tcpchimney.wire.ethernet import ETH_HEADER_LEN, ETH_MIN_FRAME, ETHERTYPE_QINQ, ETHERTYPE_VLAN
from tcpchimney.wire.frame import Frame

COUNTER_KEYS: Final = (
    "tx_frames",  # frames this node put on the wire (after segmentation when offloads=False)
    "tx_bytes",  # their bytes (Ethernet header included; no preamble, FCS or inter-frame gap)
    "dropped_loss",  # of those, lost by the loss impairment
    "dropped_invalid",  # frames the wire cannot carry: above the MTU, or offload flags it cannot complete
    "duplicated",  # extra copies delivered by the duplicate impairment
    "reordered",  # frames held back by the reorder impairment
    "corrupted",  # frames with a bit flipped by the corrupt impairment
    "delivered",  # frames handed to THIS node (it received them)
)

# A run that stays at one instant is a loop: frames bouncing with zero delay forever, or a node whose
# deadline stays due after handle_timer (re-armed for "now" without end). Both bounds are far above any
# finite exchange: a node that re-arms "now" a few times in a row passes.
MAX_STEPS_PER_INSTANT: Final = 1_000_000
MAX_TIMER_ONLY_STEPS: Final = 10_000

_VLAN_TPIDS: Final = (ETHERTYPE_VLAN.to_bytes(2, "big"), ETHERTYPE_QINQ.to_bytes(2, "big"))


class Node(Protocol):
    """What the link drives: the sans-I/O node interface (``HostStack`` is one)."""

    def handle_frame(self, frame: Frame, now: float) -> None: ...
    def handle_timer(self, now: float) -> None: ...
    def frames_to_send(self, now: float) -> list[Frame]: ...
    def next_deadline(self) -> float | None: ...


class SimTimeout(TimeoutError):
    """``run_until``'s condition did not become true within its timeout (virtual seconds)."""


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_probability(name: str, value: object) -> None:
    if not _is_number(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"Impairments.{name} must be a probability in [0, 1], not {value!r}")


def _check_seconds(name: str, value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (math.isfinite(value) and value >= 0)
    ):
        raise ValueError(f"Impairments.{name} must be a finite number of seconds >= 0, not {value!r}")


@dataclass(frozen=True, slots=True)
class Impairments:
    """What the medium does to the frames one node sends. Probabilities are per frame on the wire."""

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_delay: float = 0.001  # seconds a reordered frame is held back
    corrupt: float = 0.0
    delay: float = 0.0  # one-way propagation delay, seconds
    jitter: float = 0.0  # extra delay drawn uniformly from [0, jitter] seconds (may itself reorder)
    bandwidth: float | None = None  # bytes per second the sender can put on the wire; None: unlimited

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder", "corrupt"):
            _check_probability(name, getattr(self, name))
        for name in ("reorder_delay", "delay", "jitter"):
            _check_seconds(name, getattr(self, name))
        bw = self.bandwidth
        if bw is not None and not (_is_number(bw) and math.isfinite(bw) and bw > 0):
            raise ValueError(f"Impairments.bandwidth must be None or bytes per second > 0, not {bw!r}")


NO_IMPAIRMENTS: Final = Impairments()


class _Port:
    """One attached node: its impairments, random source, transmitter state and counters."""

    __slots__ = ("busy_until", "counters", "impairments", "index", "name", "node", "rng")

    def __init__(self, node: Node, name: str, index: int, impairments: Impairments, seed: int) -> None:
        self.node = node
        self.name = name
        self.index = index
        self.impairments = impairments
        # One generator per port, seeded from the link seed and the attach order (never from a hash or an
        # id): the draws for one node's frames do not shift when another node sends more or less.
        self.rng = random.Random(f"tcpchimney-sim:{seed}:{index}")
        self.busy_until = -math.inf  # when the transmitter finishes the frame on the wire
        self.counters = dict.fromkeys(COUNTER_KEYS, 0)


class SimLink:
    """A virtual Ethernet segment joining any number of nodes, stepped on a virtual clock."""

    def __init__(
        self,
        seed: int = 0,
        *,
        start: float = 0.0,
        pcap: str | os.PathLike[str] | None = None,
        offloads: bool = False,
        mtu: int = 1500,
    ) -> None:
        if not 68 <= mtu <= 65535:
            raise ValueError(f"MTU {mtu} out of range [68, 65535]")
        self.seed = seed
        self.offloads = offloads
        self.mtu = mtu
        self._clock = VirtualClock(start)
        self._ports: list[_Port] = []
        self._by_name: dict[str, _Port] = {}
        self._queue: list[tuple[float, int, int, Frame]] = []  # (arrival, seq, sender index, wire frame)
        self._seq = 0
        self._pcap = PcapWriter(pcap) if pcap is not None else None
        self._capture: list[tuple[float, int, bytes]] = []  # (transmit start, seq, bytes): written in order
        self._instant_steps = 0
        self._timer_only_steps = 0
        self._instant_activity: dict[str, int] = {}  # frames sent + timer calls per node at this instant

    # ------------------------------------------------------------------------------------------ set-up

    def attach(self, node: Node, name: str | None = None, impairments: Impairments | None = None) -> str:
        """Connect ``node`` to the segment; ``impairments`` apply to the frames it sends. Returns its name."""
        if any(p.node is node for p in self._ports):
            raise ValueError("this node is already attached")
        index = len(self._ports)
        name = f"node{index}" if name is None else name
        if name in self._by_name:
            raise ValueError(f"a node named {name!r} is already attached")
        port = _Port(node, name, index, impairments or NO_IMPAIRMENTS, self.seed)
        self._ports.append(port)
        self._by_name[name] = port
        return name

    def set_impairments(self, name: str, impairments: Impairments) -> None:
        """Change what happens to the frames ``name`` sends from now on (frames in flight keep theirs)."""
        self._port(name).impairments = impairments

    def impairments(self, name: str) -> Impairments:
        return self._port(name).impairments

    def _port(self, name: str) -> _Port:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no node named {name!r} on this link") from None

    @property
    def names(self) -> list[str]:
        """The attached nodes' names, in attach order."""
        return [p.name for p in self._ports]

    @property
    def now(self) -> float:
        return self._clock.now

    @property
    def counters(self) -> dict[str, dict[str, int]]:
        """Per node name: a copy of its ``COUNTER_KEYS`` counters."""
        return {p.name: dict(p.counters) for p in self._ports}

    # ------------------------------------------------------------------------------------------ running

    def step(self) -> bool:
        """Process the next instant at which something happens: deliver the frames due then, fire the due
        node timers, collect what the nodes send. False when nothing is scheduled (the clock stays put)."""
        t = self._next_time()
        if t is None:
            return False
        self._process(t)
        return True

    def run_until(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Step until ``predicate()`` holds, checking it first and after every step. Raises ``SimTimeout``
        when it is still false once the next event lies more than ``timeout`` virtual seconds ahead (the
        clock is then left at the timeout) or nothing is scheduled any more."""
        if not (math.isfinite(timeout) and timeout >= 0):
            raise ValueError(f"timeout must be a finite number of seconds >= 0, not {timeout!r}")
        start = self.now
        end = start + timeout
        if predicate():
            return
        while True:
            t = self._next_time()
            if t is None or t > end:
                self._advance(end)
                why = "nothing is scheduled" if t is None else f"the next event is at t={t:.9f}"
                raise SimTimeout(
                    f"condition not met within {timeout} virtual seconds of t={start:.9f} "
                    f"(now t={self.now:.9f}; {why}); link counters: {self.counters}"
                )
            self._process(t)
            if predicate():
                return

    def run_for(self, duration: float) -> None:
        """Process every event of the next ``duration`` virtual seconds; the clock then reads now+duration."""
        if not (math.isfinite(duration) and duration >= 0):
            raise ValueError(f"duration must be a finite number of seconds >= 0, not {duration!r}")
        end = self.now + duration
        while (t := self._next_time()) is not None and t <= end:
            self._process(t)
        self._advance(end)

    def _next_time(self) -> float | None:
        """Collect pending output (an application may have sent since the last step), then the time of the
        earliest frame arrival or node deadline (never before now: a past deadline is due now)."""
        self._collect()
        best = self._queue[0][0] if self._queue else None
        for port in self._ports:
            deadline = port.node.next_deadline()
            if deadline is None:
                continue
            if best is None or deadline < best:
                best = deadline
        return None if best is None else max(best, self.now)

    def _process(self, t: float) -> None:
        if t > self.now:
            self._advance(t)
        queue = self._queue
        delivered = 0
        while queue and queue[0][0] <= t:
            _, _, sender, frame = heapq.heappop(queue)
            self._deliver(sender, frame, t)
            delivered += 1
        timers = self._fire_timers(t)
        sent = self._collect()
        self._check_progress(delivered + sent, timers)

    def _deliver(self, sender: int, frame: Frame, now: float) -> None:
        data, partial, gso = frame.headers, frame.csum_partial, frame.gso_size
        for port in self._ports:
            if port.index != sender:
                port.counters["delivered"] += 1
                port.node.handle_frame(Frame(data, b"", partial, False, gso), now)

    def _fire_timers(self, t: float) -> int:
        """handle_timer(t) once for each node whose deadline is due (at or before t)."""
        fired = 0
        for port in self._ports:
            deadline = port.node.next_deadline()
            if deadline is None or deadline > t:
                continue
            port.node.handle_timer(t)
            self._instant_activity[port.name] = self._instant_activity.get(port.name, 0) + 1
            fired += 1
        return fired

    def _collect(self) -> int:
        """Take every node's output at the current instant and put it on the wire. Returns the frame count."""
        now = self.now
        total = 0
        for port in self._ports:
            frames = port.node.frames_to_send(now)
            if frames:
                total += len(frames)
                self._instant_activity[port.name] = self._instant_activity.get(port.name, 0) + len(frames)
                for frame in frames:
                    self._transmit(port, frame, now)
        return total

    def _advance(self, t: float) -> None:
        if t > self.now:
            self._clock.advance_to(t)
            self._instant_steps = 0
            self._timer_only_steps = 0
            self._instant_activity.clear()
        self._flush_capture(self.now)

    def _check_progress(self, moved: int, timers: int) -> None:
        self._instant_steps += 1
        self._timer_only_steps = 0 if moved else self._timer_only_steps + (1 if timers else 0)
        if self._timer_only_steps > MAX_TIMER_ONLY_STEPS:
            raise RuntimeError(
                f"simulated link stuck at t={self.now!r}: node {self._busiest()!r} keeps reporting a due "
                f"deadline after handle_timer ({self._timer_only_steps} timer-only steps at this instant)"
            )
        if self._instant_steps > MAX_STEPS_PER_INSTANT:
            raise RuntimeError(
                f"simulated link stuck at t={self.now!r}: {self._instant_steps} steps without the clock "
                f"moving; node {self._busiest()!r} is the most active (a zero-delay frame loop?)"
            )

    def _busiest(self) -> str:
        # max() keeps the first of equals; the dict is in insertion order, so the answer is deterministic.
        return max(self._instant_activity, key=self._instant_activity.__getitem__, default="?")

    # ------------------------------------------------------------------------------------------ the wire

    def _transmit(self, port: _Port, frame: Frame, now: float) -> None:
        if self.offloads:
            data = frame.tobytes()
            if not frame.gso_size and len(data) > self.mtu + _l2_len(data):
                port.counters["dropped_invalid"] += 1
                return
            unit = Frame(data, b"", frame.csum_partial, False, frame.gso_size)
            self._send_unit(port, unit, now)
            return
        for piece in self._wire_ready(port, frame):
            self._send_unit(port, piece, now)

    def _wire_ready(self, port: _Port, frame: Frame) -> list[Frame]:
        """The frames a real NIC puts on the wire for ``frame``: segmented, checksums complete, one buffer."""
        if frame.gso_size or frame.csum_partial:
            try:
                pieces = segment(frame, self.mtu)
            except EmitError:
                port.counters["dropped_invalid"] += 1
                return []
        else:
            pieces = [frame]
        out = []
        for piece in pieces:
            data = piece.tobytes()
            if len(data) > self.mtu + _l2_len(data):
                port.counters["dropped_invalid"] += 1
                continue
            out.append(Frame(_pad(data)))
        return out

    def _send_unit(self, port: _Port, unit: Frame, now: float) -> None:
        imp = port.impairments
        rng = port.rng
        c = port.counters
        size = len(unit.headers)
        c["tx_frames"] += 1
        c["tx_bytes"] += size
        start = done = now
        if imp.bandwidth is not None:
            start = max(now, port.busy_until)
            done = port.busy_until = start + size / imp.bandwidth
        if self._pcap is not None:
            self._record(start, unit)
        if imp.loss and rng.random() < imp.loss:
            c["dropped_loss"] += 1
            return
        arrival = done + imp.delay
        if imp.jitter:
            arrival += rng.uniform(0.0, imp.jitter)
        if imp.reorder and rng.random() < imp.reorder:
            arrival += imp.reorder_delay
            c["reordered"] += 1
        copies = [unit]
        if imp.corrupt and rng.random() < imp.corrupt:
            copies = self._corrupt(port, unit)
            c["corrupted"] += 1
        if imp.duplicate and rng.random() < imp.duplicate:
            copies += copies
            c["duplicated"] += 1
        for copy in copies:
            self._seq += 1
            heapq.heappush(self._queue, (arrival, self._seq, port.index, copy))

    def _corrupt(self, port: _Port, unit: Frame) -> list[Frame]:
        """Flip one bit of one wire frame; an offload-flagged frame is made wire-ready first (bits flip on a
        wire, not in a device's buffer)."""
        pieces = self._wire_ready(port, unit) if unit.csum_partial or unit.gso_size else [unit]
        if not pieces:
            return []
        rng = port.rng
        victim = rng.randrange(len(pieces))
        data = bytearray(pieces[victim].headers)
        if data:
            lo = ETH_HEADER_LEN if len(data) > ETH_HEADER_LEN else 0
            data[rng.randrange(lo, len(data))] ^= 1 << rng.randrange(8)
        pieces[victim] = Frame(bytes(data))
        return pieces

    # ------------------------------------------------------------------------------------------ capture

    def _record(self, ts: float, unit: Frame) -> None:
        if unit.csum_partial or unit.gso_size:
            try:
                wire = [_pad(p.tobytes()) for p in segment(unit, self.mtu)]
            except EmitError:
                wire = [bytes(unit.headers)]  # record what was sent, even if no wire could carry it
        else:
            wire = [bytes(unit.headers)]
        for data in wire:
            self._seq += 1
            heapq.heappush(self._capture, (ts, self._seq, data))

    def _flush_capture(self, until: float) -> None:
        # Records wait in a heap until the clock passes their time: a sender queued behind its bandwidth
        # stamps frames in the future, and another node may send earlier in the meantime.
        pcap, capture = self._pcap, self._capture
        if pcap is None:
            return
        while capture and capture[0][0] <= until:
            ts, _, data = heapq.heappop(capture)
            pcap.write(data, ts)

    def close(self) -> None:
        """Write out and close the capture (frames still queued for the future are written too)."""
        if self._pcap is not None:
            self._flush_capture(math.inf)
            self._pcap.close()
            self._pcap = None

    def __enter__(self) -> SimLink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SimLink(seed={self.seed}, now={self.now!r}, nodes={self.names}, offloads={self.offloads})"


def _pad(data: bytes) -> bytes:
    """A NIC pads frames shorter than the IEEE 802.3 minimum (60 bytes without the FCS) with zeros."""
    return data + bytes(ETH_MIN_FRAME - len(data)) if len(data) < ETH_MIN_FRAME else data


def _l2_len(data: bytes) -> int:
    """Ethernet header length with its VLAN tags (up to two), for the MTU check."""
    n = ETH_HEADER_LEN
    while n < ETH_HEADER_LEN + 8 and data[n - 2 : n] in _VLAN_TPIDS:
        n += 4
    return n
