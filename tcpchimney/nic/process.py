"""``python -m tcpchimney.nic``: the NIC process, the software target on its own event loop and its own core.

The host starts it (``nic/launch.py``: spawned, never forked from a threaded process) with one end of a
socketpair, over which it receives the arena, the two doorbell eventfds and a descriptor of the TAP
(``arena.receive_arena``), then says ``ready`` (one JSON line with its pid, epoch and capabilities). From
then on it is the only reader of the TAP. One turn of its loop:

1. frames from the TAP (at most ``READ_BATCH``) to the target: those of offloaded connections to their
   engines, the others up the frames ring (``nic/core.py``);
2. requests from H2N_CONTROL, decoded and submitted, up to the first terminate; the target's timers when
   due;
3. the target's frames built, its completions and indications onto N2H_CONTROL (up to a terminate's
   answer, which is held), the records of the connections whose numbers moved committed
   (``nic/commit.py``: the received bytes are in host memory before any ACK of them leaves); both N2H rings
   published, the host's doorbell rung if it may be asleep;
4. only then the frames written to the TAP, and none while control records wait for room (the order that
   lets the host fail an unanswered initiate truthfully, ``nic/core.py``); once all are written, the held
   terminate answer published (the order of a hand-back: the connection's last frames ahead of the host's);
5. one heartbeat (``Arena.beat``), then, if the turn found nothing to do: spin briefly on the H2N ring and
   the TAP, then sleep on the H2N doorbell, the TAP and the control socket, at most until the target's next
   deadline (``doorbell.Waiter``).

Timestamps: ``time.monotonic``, the host's clock too, so both sides' ``now`` are one time line (the engines'
timestamp clocks are derived from it).

The control socket carries JSON lines: ``{"op": "counters"}`` (answered with the counters),
``{"op": "crash", "point": P, "after": N}`` (arms a crash point, ``nic/crash.py``; answered ``armed`` or
``error``), ``{"op": "fault", "name": N, ...}`` (a fault knob of the target, ``nic/faults.py``; answered
``applied`` or ``error``), ``{"op": "capture", "on": BOOL}`` (mirrors the offloaded connections' frames up
the frames ring, or stops; answered ``capture`` with the mirror's counters, ``nic/core.py``) and
``{"op": "stop"}`` (a last turn, the target closed, the counters, exit 0).
Its end of file means the host is gone: the process exits. It also dies with the host
(``PR_SET_PDEATHSIG``), so it never outlives it.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import select
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from tcpchimney.nic.arena import Arena, receive_arena
from tcpchimney.nic.core import NicCore
from tcpchimney.nic.descriptors import ArenaError
from tcpchimney.nic.doorbell import DEFAULT_SPIN_US, Direction, Doorbell, Waiter
from tcpchimney.nic.faults import apply_fault
from tcpchimney.nic.target import SoftwareTarget
from tcpchimney.tcp.config import TcpConfig
from tcpchimney.wire.errors import EmitError, WireError
from tcpchimney.wire.frame import DeviceFeatures, Frame
from tcpchimney.wire.vnet import frame_from_read, tx_header

READ_BATCH = 128  # TAP frames per turn (bounds how long requests wait behind a flood)
READ_SIZE = 65_600  # a 64 KiB GSO frame and its headers (link/device.py)
RETRY_S = 0.001  # a full N2H ring or TAP queue is retried this often
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class NicConfig:
    """What the host tells a NIC process at start (``--config``, JSON): the device's stateless offloads,
    the interface's MAC and the engine settings the host's own engines use."""

    mac: str  # "02:00:..."
    features: dict[str, Any] = field(default_factory=dict)  # DeviceFeatures fields
    mss: int = 1460
    max_segment_payload: int = 0
    capacity: int = 1024
    vnet_hdr: int = 10  # virtio-net header size on the TAP (0: plain frames)
    spin_us: float = DEFAULT_SPIN_US
    handle_base: int = 0  # the target's handles start after it: a restarted NIC's differ from the last's
    # A restarted NIC reads the TAP only once the host says {"op": "go"}: until the host has switched to the
    # NIC's frames ring it reads the TAP itself, and two readers would reorder the peer's segments.
    wait_go: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> NicConfig:
        """Raises ValueError (with what is wrong) for anything that is not a config."""
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("the config is not a JSON object")
        unknown = set(raw) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ValueError(f"unknown config fields: {', '.join(sorted(unknown))}")
        try:
            config = cls(**raw)
            DeviceFeatures(**config.features)
            bytes.fromhex(config.mac.replace(":", ""))
        except TypeError as exc:
            raise ValueError(str(exc)) from None
        if config.vnet_hdr not in (0, 10, 12):
            raise ValueError(f"vnet_hdr {config.vnet_hdr}: a virtio-net header is 0, 10 or 12 bytes")
        return config

    def target(self) -> SoftwareTarget:
        features = DeviceFeatures(**self.features)
        engine = replace(TcpConfig(), mss=self.mss, max_segment_payload=self.max_segment_payload)
        mac = bytes.fromhex(self.mac.replace(":", ""))
        return SoftwareTarget(
            features, capacity=self.capacity, config=engine, mac=mac, handle_base=self.handle_base
        )


class TapIo:
    """The NIC's descriptor of the TAP: one frame per read and per write, the virtio-net header kept."""

    def __init__(self, fd: int, vnet_hdr: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.vnet_hdr = vnet_hdr
        self.counters: dict[str, int] = {"rx_frames": 0, "tx_frames": 0, "tx_eagain": 0}
        self.drops: dict[str, int] = {}

    def read(self) -> Frame | None:
        while True:
            try:
                buf = os.read(self.fd, READ_SIZE)
            except BlockingIOError:
                return None
            self.counters["rx_frames"] += 1
            if not self.vnet_hdr:
                return Frame(buf)
            try:
                return frame_from_read(buf, self.vnet_hdr)
            except WireError as exc:
                self._drop(exc.reason)

    def write(self, frame: Frame) -> bool:
        """False: the queue is full (try again); a frame the kernel refuses is dropped and counted."""
        try:
            parts = [frame.headers, frame.payload] if frame.payload else [frame.headers]
            if self.vnet_hdr:
                parts.insert(0, tx_header(frame, self.vnet_hdr))
            os.writev(self.fd, parts)
        except BlockingIOError:
            self.counters["tx_eagain"] += 1
            return False
        except (OSError, EmitError) as exc:
            self._drop(f"tx_{getattr(exc, 'errno', None) or type(exc).__name__}")
            return True
        self.counters["tx_frames"] += 1
        return True

    def _drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1


class NicLoop:
    def __init__(
        self,
        arena: Arena,
        sock: socket.socket,
        efds: tuple[int, int],
        tap: TapIo,
        target: SoftwareTarget,
        spin_s: float = DEFAULT_SPIN_US / 1e6,
    ) -> None:
        self.arena = arena
        self.sock = sock
        self.core = NicCore(arena, target)
        self.tap = tap
        self.waiter = Waiter(arena.words, efds[0], Direction.H2N, spin_s=spin_s)
        self.bell = Doorbell(arena.words, efds[1], Direction.N2H)
        self._h2n_efd = efds[0]
        self._poll = select.poll()
        for fd in (efds[0], tap.fd, sock.fileno()):
            self._poll.register(fd, select.POLLIN)
        self._quick = select.poll()  # what a spin looks at besides the H2N ring
        for fd in (tap.fd, sock.fileno()):
            self._quick.register(fd, select.POLLIN)
        self._tx: deque[Frame] = deque()
        self._inbox = b""
        self._worked = False
        self.running = True
        self.turns = 0

    def run(self) -> int:
        if self._inbox:  # what came with the host's "go" (a capture a restarted NIC is to resume)
            self._take_lines()
        while self.running:
            self._worked = self.turn()
            self.arena.beat()
            if self.running:
                self._wait()
        return 0

    def turn(self) -> bool:
        now = time.monotonic()
        core = self.core
        work = self._read_tap(now)
        work += core.take_requests(now)
        deadline = core.next_deadline()
        if deadline is not None and deadline <= now:
            core.handle_timer(now)
            work += 1
        frames = core.frames_to_send(now)
        core.put_outputs()
        core.commit()  # every ACK and window of this turn's frames is covered (nic/commit.py)
        crash = core.crash
        crash.hit("after_commit")
        if core.publish():
            self.bell.ring()
        crash.hit("after_publish")
        self._tx.extend(frames)
        if self._tx and not core.outputs.blocked:
            self._write_tap()
            crash.hit("after_tap_write")
        self._hand_back()
        self.turns += 1
        return bool(work or frames)

    def _hand_back(self) -> None:
        """A terminate's answer is published only once every frame built before it is on the wire (the
        connection's last ACK ahead of the host's first frames of it, ``nic/core.py``)."""
        core = self.core
        if core.handing_back and not self._tx and not core.outputs.blocked:
            core.frames_out()
            if core.publish():
                self.bell.ring()

    def _read_tap(self, now: float) -> int:
        core, tap = self.core, self.tap
        n = 0
        while n < READ_BATCH and (frame := tap.read()) is not None:
            core.handle_frame(frame, now)
            n += 1
        return n

    def _write_tap(self) -> None:
        tx, tap = self._tx, self.tap
        while tx:
            if not tap.write(tx[0]):
                self._poll.modify(tap.fd, select.POLLIN | select.POLLOUT)
                return
            tx.popleft()
        self._poll.modify(tap.fd, select.POLLIN)

    def _has_work(self) -> bool:
        return self._requests_waiting() or bool(self._quick.poll(0))

    def _requests_waiting(self) -> bool:
        """Requests a turn would take now (none while a hand-back waits for the device)."""
        core = self.core
        return not core.handing_back and (core.pending or core.requests.available())

    def _wait(self) -> None:
        waiter = self.waiter
        if self._worked and waiter.spin(self._has_work):
            return
        if not waiter.begin_sleep(self._requests_waiting):
            return
        timeout = waiter.sleep_bound_s
        deadline = self.core.next_deadline()
        if deadline is not None:
            timeout = min(timeout, max(0.0, deadline - time.monotonic()))
        if self.core.outputs.blocked or self._tx:
            timeout = min(timeout, RETRY_S)
        events = self._poll.poll(max(0, int(timeout * 1000 + 0.999)))
        waiter.end_sleep(any(fd == self._h2n_efd for fd, _ in events))
        if any(fd == self.sock.fileno() for fd, _ in events):
            self._on_control()

    # ------------------------------------------------------------------ the control socket

    def take_inbox(self, data: bytes) -> None:
        """Control lines the host sent before the loop ran: handled as it starts."""
        self._inbox = data + self._inbox

    def _on_control(self) -> None:
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, TimeoutError):
            return
        except OSError:
            data = b""
        if not data:
            self.running = False  # the host is gone
            return
        self._inbox += data
        self._take_lines()

    def _take_lines(self) -> None:
        *lines, self._inbox = self._inbox.split(b"\n")
        for line in lines:
            try:
                message = json.loads(line)
                op = message.get("op")
            except (ValueError, AttributeError):
                message, op = {}, None
            if op == "crash":
                self._arm_crash(message)
            elif op == "fault":
                self._fault(message)
            elif op == "counters":
                self._say({"event": "counters", "counters": self.snapshot()})
            elif op == "capture":
                self.core.mirror = bool(message.get("on"))
                counters = self.core.counters
                self._say(
                    {
                        "event": "capture",
                        "on": self.core.mirror,
                        "mirrored": counters["mirrored"],
                        "mirror_dropped": counters["mirror_dropped"],
                    }
                )
            elif op == "stop":
                self.turn()  # what the host asked last (an abort's RST) leaves first
                self.core.target.close()
                self._say({"event": "stopped", "counters": self.snapshot()})
                self.running = False

    def _fault(self, message: dict[str, Any]) -> None:
        try:
            apply_fault(self.core.target, message)
        except (KeyError, ValueError) as exc:
            self._say({"event": "error", "message": str(exc).strip("'\"")})
            return
        self._say({"event": "applied", "name": message.get("name")})

    def _arm_crash(self, message: dict[str, Any]) -> None:
        try:
            self.core.crash.arm(str(message.get("point")), int(message.get("after", 1)))
        except (TypeError, ValueError) as exc:
            self._say({"event": "error", "message": str(exc)})
            return
        self._say({"event": "armed", "point": message.get("point")})

    def _say(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(json.dumps(message).encode() + b"\n")

    def snapshot(self) -> dict[str, Any]:
        out = self.core.snapshot()
        process: dict[str, int] = {"turns": self.turns, **self.tap.counters}
        process.update(self.waiter.counters())
        process.update(self.bell.counters())
        process.update((f"tap_drop_{k}", v) for k, v in sorted(self.tap.drops.items()))
        out["process"] = process
        return out


def _die_with(host_pid: int) -> None:
    """Never outlive the host: the kernel kills this process when its parent dies (and it may have died
    before this call: then the parent is another process already)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if host_pid and os.getppid() != host_pid:
        os._exit(1)


def _say(sock: socket.socket, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(json.dumps(message).encode() + b"\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tcpchimney.nic", description=__doc__.split("\n")[0])
    parser.add_argument("--fd", type=int, required=True, help="the socketpair end the host passed")
    parser.add_argument("--host-pid", type=int, default=0, help="exit at once if this is not the parent")
    parser.add_argument("--config", default="{}", help="NicConfig as JSON")
    args = parser.parse_args(argv)
    _die_with(args.host_pid)
    try:
        sock = socket.socket(fileno=args.fd)
    except OSError as exc:
        print(f"tcpchimney.nic: --fd {args.fd} is not a socket: {exc.strerror}", file=sys.stderr)
        return 2
    sock.settimeout(5.0)
    try:
        config = NicConfig.from_json(args.config)
        arena, fds = receive_arena(sock)
        if len(fds) != 3:
            for fd in fds:
                os.close(fd)
            raise ArenaError("handoff", f"{len(fds)} descriptors besides the arena, expected 3")
        target = config.target()
        loop = NicLoop(
            arena, sock, (fds[0], fds[1]), TapIo(fds[2], config.vnet_hdr), target, config.spin_us / 1e6
        )
    except (ValueError, OSError, ArenaError) as exc:
        _say(sock, {"event": "error", "message": str(exc)})
        return 2
    arena.announce()
    caps = target.capabilities
    ready = {"event": "ready", "pid": os.getpid(), "epoch": arena.epoch}
    ready["capabilities"] = {
        "ipv4": caps.ipv4,
        "ipv6": caps.ipv6,
        "sack": caps.sack,
        "capacity": caps.capacity,
    }
    _say(sock, ready)
    if config.wait_go:
        after = _await_go(sock)
        if after is None:
            return 0  # the host went away first
        loop.take_inbox(after)
        sock.settimeout(5.0)
    return loop.run()


def _await_go(sock: socket.socket) -> bytes | None:
    """Wait for the host's ``{"op": "go"}``; returns what came after it (None: the host's socket ended)."""
    inbox = b""
    sock.settimeout(None)
    while True:
        try:
            data = sock.recv(65536)
        except OSError:
            return None
        if not data:
            return None
        inbox += data
        while b"\n" in inbox:
            line, inbox = inbox.split(b"\n", 1)
            with contextlib.suppress(ValueError, AttributeError):
                if json.loads(line).get("op") == "go":
                    return inbox
