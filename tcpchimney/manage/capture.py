"""``capture``: a live capture of the real wire into a pcap, offloaded connections' frames included.

The frames come from two places: the device's capture hook (every frame the host process reads from or
writes to the TAP; with the NIC inline that is the whole wire) and, with the NIC in its own process, the
frames ring (the frames it passes up, and the copies it mirrors of the frames its offloaded connections
receive and send, ``nic/core.py``). A simple filter (host, port) is applied before a frame is queued.

The data path only copies a frame into a bounded queue (``QUEUE_BYTES``); a writer thread puts the queue
into the file, so a slow disk never stalls the stack. A frame that finds the queue full is dropped and
counted, as the NIC counts the copies it could not mirror: a capture that cannot keep up loses frames
and says how many, it never slows the data path.

The request opens the stream: the stack (which runs as root) opens FILE itself, answers with the filter
it applies, then sends a ``progress`` line every second until the client sends any line (stop) or goes
away; it ends with a ``summary`` line (frames, bytes, dropped by where). Hand-offs are marked in a side
file, FILE + ``.handoffs.jsonl``: one JSON object per offload or upload of a connection the filter
matches, with the number of the next frame written (docs/manage.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from tcpchimney.host.events import HostEvent, Offloaded, Uploaded
from tcpchimney.link.pcap import PcapWriter
from tcpchimney.manage.protocol import RequestError, Stream, arg, event_line

QUEUE_BYTES = 64 << 20  # frames waiting for the writer thread at most; more are dropped and counted
SNAPLEN = 262_144  # tcpdump's default: a 64 KiB GSO frame is kept whole
PROGRESS_S = 1.0
MARKS_SUFFIX = ".handoffs.jsonl"
_ETH_IPV4, _ETH_ARP = b"\x08\x00", b"\x08\x06"
_TCP, _UDP = 6, 17


class CaptureFilter:
    """``host IP`` (source or destination, ARP's sender or target too) and ``port P`` (TCP or UDP, either
    end): both must match when both are given; none given, every frame matches."""

    def __init__(self, host: str | None = None, port: int | None = None) -> None:
        try:
            self.host = None if host is None else ipaddress.IPv4Address(host).packed
        except ValueError:
            raise RequestError(f"host {host!r} is not an IPv4 address") from None
        if port is not None and not 0 < port < 65536:
            raise RequestError(f"port {port} is not a port (1 to 65535)")
        self.port = port
        self.text = " and ".join(part for part in (host and f"host {host}", port and f"port {port}") if part)

    def __bool__(self) -> bool:
        return self.host is not None or self.port is not None

    def matches(self, frame: bytes | memoryview) -> bool:
        if self.host is None and self.port is None:
            return True
        ethertype = bytes(frame[12:14])
        if ethertype == _ETH_ARP:
            return self.port is None and (self.host is None or self.host in (frame[28:32], frame[38:42]))
        if ethertype != _ETH_IPV4 or len(frame) < 34:
            return False
        if self.host is not None and self.host not in (frame[26:30], frame[30:34]):
            return False
        if self.port is None:
            return True
        if frame[23] not in (_TCP, _UDP) or int.from_bytes(frame[20:22]) & 0x1FFF:
            return False  # not TCP or UDP, or a fragment after the first: no ports here
        at = 14 + (frame[14] & 0x0F) * 4
        ports = (int.from_bytes(frame[at : at + 2]), int.from_bytes(frame[at + 2 : at + 4]))
        return self.port in ports

    def matches_conn(self, local: str, remote: str) -> bool:
        (lip, lport), (rip, rport) = (e.rsplit(":", 1) for e in (local, remote))
        if self.host is not None and self.host not in (_packed(lip), _packed(rip)):
            return False
        return self.port is None or str(self.port) in (lport, rport)


def _packed(ip: str) -> bytes:
    try:
        return ipaddress.IPv4Address(ip).packed
    except ValueError:
        return b""


class CaptureWriter:
    """A pcap fed from the data path (``put``) and written by its own thread."""

    def __init__(self, path: str, filt: CaptureFilter, clock: Callable[[], float] = time.time) -> None:
        try:
            self.pcap = PcapWriter(path, snaplen=SNAPLEN)
        except OSError as exc:
            raise RequestError(f"cannot write the capture file {path}: {exc.strerror or exc}") from None
        self.path, self.filter, self.clock = path, filt, clock
        self.frames = self.bytes = self.dropped = self.filtered = 0
        self._queue: deque[tuple[bytes | memoryview, float]] = deque()
        self._queued = 0  # bytes in the queue
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._open = True
        self.error: str | None = None
        self._thread = threading.Thread(target=self._drain, name="chimney-capture", daemon=True)
        self._thread.start()

    def put(self, data: bytes | memoryview) -> None:
        """One frame seen on the wire (called on the data path: a filter check and a copy, no I/O)."""
        if self.filter and not self.filter.matches(data):
            self.filtered += 1
            return
        size = len(data)
        if not self._open or self._queued + size > QUEUE_BYTES:
            self.dropped += 1
            return
        with self._lock:  # no copy: the callers hand over bytes (or a view of bytes) no one changes
            self._queue.append((data, self.clock()))
            self._queued += size
        self.frames += 1
        self.bytes += size
        self._ready.set()

    def _drain(self) -> None:
        pcap = self.pcap
        while True:
            self._ready.wait(0.2)
            self._ready.clear()
            with self._lock:
                batch, self._queue = self._queue, deque()
                self._queued = 0
            try:
                for data, ts in batch:
                    pcap.write(data, ts)
                pcap.flush()  # a reader (tcpdump -r while it runs) sees whole records
            except OSError as exc:
                self.error = f"writing {self.path} failed: {exc.strerror or exc}"
                self._open = False
            if not self._open and not self._queue:
                return

    def close(self) -> None:
        self._open = False
        self._ready.set()
        self._thread.join()
        with contextlib.suppress(OSError):
            self.pcap.close()


class CaptureTap:
    """Where the frames come from: the device's capture hook (``link/device.py``), and with the NIC in its
    own process its frames ring (``ProcessTarget.mirror``) and its mirror (``NicProcess.set_capture``)."""

    def __init__(self, device: Any, nic: Any = None) -> None:
        self.device, self.nic = device, nic
        self._before: Any = None

    def start(self, put: Callable[[bytes | memoryview], None]) -> dict[str, int]:
        """Attach ``put``; returns the NIC's mirror counters so far (as ``stop``)."""
        before = self._before = self.device.capture  # --pcap's writer keeps its frames
        self.device.capture = put if before is None else _tee(before, put)
        if self.nic is None:
            return {}
        target = self.nic.target
        if target is not None:
            target.mirror = lambda data, inbound: put(data)
        return _mirror_counts(self.nic.set_capture(True))

    def stop(self) -> dict[str, int]:
        """Detach; returns the NIC's mirror counters (``mirrored``, ``mirror_dropped``) when it has one."""
        self.device.capture = self._before
        if self.nic is None:
            return {}
        answer = self.nic.set_capture(False)
        if self.nic.target is not None:
            self.nic.target.mirror = None
        return _mirror_counts(answer)


def _tee(before: Any, put: Callable[[bytes], None]) -> Callable[[bytes], None]:
    def both(data: bytes) -> None:
        if hasattr(before, "write"):
            before.write(data, time.time())
        else:
            before(data)
        put(data)

    return both


def _mirror_counts(answer: dict[str, Any]) -> dict[str, int]:
    return {k: int(answer[k]) for k in ("mirrored", "mirror_dropped", "epoch") if k in answer}


class CaptureStream(Stream):
    """One running capture, the stream of its control connection (module docstring)."""

    def __init__(self, owner: Captures, writer: CaptureWriter, marks: Any) -> None:
        self.owner, self.writer, self.marks = owner, writer, marks
        self.started = time.time()
        self.nic_at_start = owner.tap.start(writer.put)
        self.first = {"file": writer.path, "filter": writer.filter.text or None, "marks": marks.name}
        self._summary: dict[str, Any] | None = None

    def on_event(self, ev: Offloaded | Uploaded, entry: Any) -> None:
        if not self.writer.filter.matches_conn(entry.local, entry.remote):
            return
        mark: dict[str, Any] = {
            "time": time.time(),
            "frame": self.writer.frames + 1,
            "event": "offloaded" if isinstance(ev, Offloaded) else "uploaded",
            "id": entry.id,
            "local": entry.local,
            "remote": entry.remote,
        }
        if isinstance(ev, Uploaded):
            mark["reason"] = ev.reason.value
        mark["duration_ms"] = round(ev.duration * 1000, 3)
        with contextlib.suppress(OSError, ValueError):
            self.marks.write(json.dumps(mark) + "\n")
            self.marks.flush()

    async def run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            stop = asyncio.ensure_future(reader.readline())  # any line, or the client's end: stop
            while not stop.done():
                await asyncio.wait([stop], timeout=PROGRESS_S)
                if not stop.done():
                    writer.write(event_line("progress", **self._counts()))
                    await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            stop.cancel()
            summary = self.finish()
        with contextlib.suppress(ConnectionError, RuntimeError):
            writer.write(event_line("summary", **summary))
            await writer.drain()

    def _counts(self) -> dict[str, Any]:
        w = self.writer
        return {"frames": w.frames, "bytes": w.bytes, "dropped": w.dropped, "filtered": w.filtered}

    def finish(self) -> dict[str, Any]:
        """Stop the capture (once) and close its files; the summary."""
        if self._summary is not None:
            return self._summary
        nic = self.owner.tap.stop()
        self.owner.running = None
        self.writer.close()
        with contextlib.suppress(OSError):
            self.marks.close()
        counts = self._counts()
        # A NIC restarted during the capture counts from 0 (the copies its predecessor dropped are lost).
        start = self.nic_at_start if self.nic_at_start.get("epoch") == nic.get("epoch") else {}
        nic_dropped = nic.get("mirror_dropped", 0) - start.get("mirror_dropped", 0)
        self._summary = {
            **counts,
            "dropped": counts["dropped"] + nic_dropped,
            "dropped_queue": counts["dropped"],
            "dropped_nic": nic_dropped,
            "nic_mirrored": nic.get("mirrored", 0) - start.get("mirrored", 0),
            "seconds": round(time.time() - self.started, 3),
            "file": self.writer.path,
            "error": self.writer.error,
        }
        return self._summary


class Captures:
    """The ``capture`` command of one stack: one capture at a time."""

    def __init__(self, tap: CaptureTap, entry: Callable[[Any], Any]) -> None:
        self.tap = tap
        self.entry = entry  # the plane's numbering of a connection (manage/history.py)
        self.running: CaptureStream | None = None

    def on_event(self, ev: HostEvent) -> None:
        if self.running is not None and isinstance(ev, Offloaded | Uploaded):
            self.running.on_event(ev, self.entry(ev.sock))

    def command(self, args: dict[str, Any]) -> CaptureStream:
        path = arg(args, "file", str)
        if not path:
            raise RequestError('"file" names the capture file to write')
        if not os.path.isabs(path):
            raise RequestError(f"the capture file {path!r} must be an absolute path")
        if self.running is not None:
            raise RequestError(f"a capture is running already (into {self.running.writer.path})")
        filt = CaptureFilter(arg(args, "host", str), arg(args, "port", int))
        writer = CaptureWriter(path, filt)
        try:
            marks = open(path + MARKS_SUFFIX, "w")  # noqa: SIM115 -- closed when the capture ends
        except OSError as exc:
            writer.close()
            raise RequestError(f"cannot write {path + MARKS_SUFFIX}: {exc.strerror or exc}") from None
        self.running = CaptureStream(self, writer, marks)
        return self.running

    def close(self) -> None:
        if self.running is not None:
            self.running.finish()


def install(plane: Any, device: Any, nic: Any, add_event_handler: Callable[[Any], None]) -> Captures:
    """Give ``plane`` (a ControlPlane) the ``capture`` command over ``device`` and ``nic`` (a NicProcess, or
    None when the NIC runs inline or not at all)."""
    from tcpchimney.manage.plane import Command

    captures = Captures(CaptureTap(device, nic), plane.histories.entry)
    plane.commands["capture"] = Command(
        captures.command, "stream the wire into a pcap the stack writes (args: file, host, port)"
    )
    add_event_handler(captures.on_event)
    return captures
