"""The Linux side of bench/nic_recovery.py, in the namespace: ``python -m bench.nic_recovery_peer CONFIG``.

Standard library only (it runs the kernel's TCP, nothing of the stack). ``CONFIG`` is JSON: ``host``,
``port`` (the stack's ``chimney serve http``), ``get_bytes`` / ``get_seed`` / ``get_sha256`` (each GET's
size, seed and expected digest), ``post_bytes`` / ``post_seed`` (each POST's size and the seed of the 1 MiB
block its body repeats), ``directions`` (``stack_to_linux``, ``linux_to_stack`` or both), ``margin`` (bytes,
see below) and ``interval`` (seconds between two looks at the sender's progress while a kill is measured).

Two connections, each a continuous stream until ``stop``:

- **stack_to_linux**: pipelined ``GET /bytes/N?seed=S`` (two requests outstanding, so no response waits for a
  request), every body SHA-256 checked against ``get_sha256`` and the server's ``X-Content-SHA256``;
- **linux_to_stack**: pipelined ``POST /sha256`` of N bytes each, every answer checked (digest and length).

Commands on stdin, one JSON line each: ``{"op": "kill", "pid": P, "id": K}`` and ``{"op": "stop"}``. The peer
kills the NIC itself so that what the kernel had at the kill is read immediately before it, in one thread:

- receiving (stack_to_linux): ``received`` = bytes the application read + the socket's queue (FIONREAD):
  everything the kernel had taken in by the kill;
- sending (linux_to_stack): ``sent`` = bytes the stack acknowledged (``tcpi_bytes_acked``) + bytes in
  flight (SIOCOUTQ - SIOCOUTQNSD), i.e. the kernel's SND.NXT: everything it had put on the wire by the kill.

The stream **moves again** at the first look that finds progress beyond that point plus ``margin``: for
stack_to_linux the first ``recv`` whose bytes pass ``received + margin`` (timestamped as it returns); for
linux_to_stack the first look at ``tcpi_bytes_acked`` past ``sent + margin`` (the receiver's own
acknowledgement of a byte Linux sent after the kill; looked at every ``interval`` and after every wake-up).
The margin covers what still comes from before the kill once it is sent: frames the NIC writes into the TAP
between the look and the signal's taking effect (each write one frame of at most 64 KiB, handed to Linux's
TCP in the writer's own system call), and segments Linux sends meanwhile. The peer also measures that amount
at every kill: it waits for the NIC's death (its pidfd) and looks again (``late``: the second look minus the
first); no byte of the host can be in it, since the host rebuilds nothing before it has noticed the death
(the bench checks that the second look came before the host's ``nic_failed`` line). The point past which
the stream moves is the larger of the two, so no byte from before the kill counts, even when ``late``
exceeds the margin. Linux as the sender goes on sending what it had queued for as long as the window the
NIC granted allows (it paces its segments into the TAP's queue, after the look and even after the NIC's
death), so for linux_to_stack the point is at least the right edge of that window (``tcpi_bytes_acked`` +
``tcpi_snd_wnd`` at the second look): an acknowledgement past it is of a byte Linux could only send on a
window the recovered host granted.

Lines on stdout: ``ready`` (local ports), ``killed`` (the kill's wall time, the NIC's death, both looks,
the sockets' retransmission counters and the namespace's TCP counters), ``moving`` (per kill and
direction: seconds after the kill, and the trace of looks until then), ``done`` (the checks).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import select
import signal
import socket
import struct
import sys
import termios
import time
from typing import Any

BLOCK = 1 << 20
SIOCOUTQ = termios.TIOCOUTQ  # bytes in the send queue, sent or not (0x5411)
SIOCOUTQNSD = 0x894B  # bytes in the send queue not yet sent
TRACE_MAX = 4000  # looks kept per kill and direction (a trace of the stall)
IDLE_WAIT = 0.05


def say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def ioctl_int(sock: socket.socket, request: int) -> int:
    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), request, b"\0" * 4))[0])


def tcp_info(sock: socket.socket) -> dict[str, int]:
    """The fields of ``struct tcp_info`` used here (linux/tcp.h offsets; ``total_rto`` since Linux 6.7)."""
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 248)
    (total_retrans,) = struct.unpack_from("<I", raw, 100)
    acked, received = struct.unpack_from("<QQ", raw, 120)
    sent, retrans = struct.unpack_from("<QQ", raw, 200)
    (snd_wnd,) = struct.unpack_from("<I", raw, 228)  # the window the peer granted (bytes, from SND.UNA)
    total_rto = struct.unpack_from("<H", raw, 240)[0] if len(raw) >= 248 else -1
    return {
        "total_retrans": total_retrans,
        "bytes_acked": acked,
        "bytes_received": received,
        "bytes_sent": sent,
        "bytes_retrans": retrans,
        "snd_wnd": snd_wnd,
        "total_rto": total_rto,
    }


# The namespace's TCP counters kept (/proc/net/snmp and /proc/net/netstat reflect the reader's namespace):
# what Linux sent again and why (RTO, loss probe, fast or SACK recovery), and the duplicates it received.
NS_COUNTERS = (
    "RetransSegs",
    "TCPTimeouts",
    "TCPLossProbes",
    "TCPFastRetrans",
    "TCPSlowStartRetrans",
    "TCPSackRecovery",
    "TCPLostRetransmit",
    "TCPSpuriousRTOs",
    "TCPDSACKOldSent",
    "OutRsts",
    "EstabResets",
)


def ns_counters() -> dict[str, int]:
    found: dict[str, int] = {}
    for path in ("/proc/net/snmp", "/proc/net/netstat"):
        with open(path) as f:
            rows = [line.split() for line in f]
        for names, values in zip(rows[::2], rows[1::2], strict=False):
            if names[0] in ("Tcp:", "TcpExt:"):
                pairs = zip(names[1:], values[1:], strict=False)
                found.update((k, int(v)) for k, v in pairs if k in NS_COUNTERS)
    return found


def connect(host: str, port: int) -> socket.socket:
    end = time.monotonic() + 10
    while True:
        try:
            sock = socket.create_connection((host, port))
            break
        except ConnectionRefusedError:
            if time.monotonic() > end:
                raise
            time.sleep(0.01)
    sock.setblocking(False)
    return sock


class Responses:
    """HTTP/1.1 responses as they arrive: the head, then Content-Length bytes of body."""

    def __init__(self) -> None:
        self.head = bytearray()
        self.left = -1  # body bytes still to come; -1: reading a head
        self.headers: dict[str, str] = {}

    def feed(self, data: memoryview, on_body: Any, on_end: Any) -> None:
        while len(data):
            if self.left < 0:
                self.head += data
                end = self.head.find(b"\r\n\r\n")
                if end < 0:
                    return
                rest = memoryview(bytes(self.head[end + 4 :]))
                self._parse(bytes(self.head[:end]))
                self.head = bytearray()
                data = rest
                if self.left == 0:
                    on_end(self.headers)
                    self.left = -1
                continue
            n = min(self.left, len(data))
            on_body(data[:n])
            self.left -= n
            data = data[n:]
            if self.left == 0:
                on_end(self.headers)
                self.left = -1

    def _parse(self, head: bytes) -> None:
        status, *lines = head.decode("latin-1").split("\r\n")
        if status.split()[1] != "200":
            raise SystemExit(f"the server answered {status!r}")
        self.headers = {}
        for line in lines:
            key, _, value = line.partition(":")
            self.headers[key.strip().lower()] = value.strip()
        self.left = int(self.headers.get("content-length", "0"))


class GetStream:
    """stack_to_linux: pipelined GETs, each body hashed and checked."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.sock = connect(cfg["host"], cfg["port"])
        self.request = f"GET /bytes/{cfg['get_bytes']}?seed={cfg['get_seed']} HTTP/1.1\r\nHost: x\r\n\r\n"
        self.want = cfg["get_sha256"]
        self.buf = bytearray(BLOCK)
        self.total = 0  # bytes read from the socket (heads included): the stream's position
        self.outstanding = 0
        self.stopping = False
        self.ok = self.bad = 0
        self.body_bytes = 0
        self.digest = hashlib.sha256()
        self.responses = Responses()
        self.eof = False
        self._ask(2)

    def _ask(self, n: int) -> None:
        data = self.request.encode() * n
        self.sock.setblocking(True)
        self.sock.sendall(data)  # a few dozen bytes: never blocks for long
        self.sock.setblocking(False)
        self.outstanding += n

    def received(self) -> int:
        """Everything the kernel has taken in: read + queued."""
        return self.total + ioctl_int(self.sock, termios.FIONREAD)

    def readable(self) -> int:
        try:
            n = self.sock.recv_into(self.buf)
        except BlockingIOError:
            return 0
        if n == 0:
            self.eof = True
            return 0
        self.total += n
        self.responses.feed(memoryview(self.buf)[:n], self._body, self._end)
        return n

    def _body(self, data: memoryview) -> None:
        self.digest.update(data)
        self.body_bytes += len(data)

    def _end(self, headers: dict[str, str]) -> None:
        digest = self.digest.hexdigest()
        good = digest == self.want and headers.get("x-content-sha256") == self.want
        self.ok, self.bad = self.ok + good, self.bad + (not good)
        self.digest = hashlib.sha256()
        self.outstanding -= 1
        if not self.stopping:
            self._ask(1)

    @property
    def finished(self) -> bool:
        return self.stopping and self.outstanding == 0


class PostStream:
    """linux_to_stack: pipelined POSTs of a repeated block, each answer checked."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.sock = connect(cfg["host"], cfg["port"])
        self.size = int(cfg["post_bytes"])
        self.block = random.Random(cfg["post_seed"]).randbytes(BLOCK)
        digest = hashlib.sha256()
        for offset in range(0, self.size, BLOCK):
            digest.update(self.block[: min(BLOCK, self.size - offset)])
        self.want = {"sha256": digest.hexdigest(), "length": self.size}
        self.head = f"POST /sha256 HTTP/1.1\r\nHost: x\r\nContent-Length: {self.size}\r\n\r\n".encode()
        self.pending = memoryview(b"")  # the current request's head still to send
        self.body_left = 0
        self.started = 0
        self.stopping = False
        self.ok = self.bad = 0
        self.answers = Responses()
        self.answer = bytearray()
        self.buf = bytearray(65536)
        self.eof = False

    def sent(self) -> int:
        """The kernel's SND.NXT, counted as bytes: acknowledged + in flight."""
        info = tcp_info(self.sock)
        in_flight = ioctl_int(self.sock, SIOCOUTQ) - ioctl_int(self.sock, SIOCOUTQNSD)
        return info["bytes_acked"] + in_flight

    def window_end(self) -> int:
        """The right edge of the window the receiver granted (SND.UNA + SND.WND), counted as ``sent``:
        Linux sends nothing past it until the receiver grants more."""
        info = tcp_info(self.sock)
        return info["bytes_acked"] + info["snd_wnd"]

    def acked(self) -> int:
        return tcp_info(self.sock)["bytes_acked"]

    @property
    def wants_write(self) -> bool:
        return bool(self.pending) or self.body_left > 0 or not self.stopping

    def writable(self) -> None:
        while True:
            if not self.pending and self.body_left == 0:
                if self.stopping:
                    return
                self.pending, self.body_left = memoryview(self.head), self.size
                self.started += 1
            if self.pending:
                data = self.pending
            else:
                offset = (self.size - self.body_left) % BLOCK
                data = memoryview(self.block)[offset : offset + min(self.body_left, BLOCK - offset)]
            try:
                n = self.sock.send(data)
            except BlockingIOError:
                return
            if self.pending:
                self.pending = self.pending[n:]
            else:
                self.body_left -= n

    def readable(self) -> None:
        try:
            n = self.sock.recv_into(self.buf)
        except BlockingIOError:
            return
        if n == 0:
            self.eof = True
            return
        self.answers.feed(memoryview(self.buf)[:n], self._body, self._end)

    def _body(self, data: memoryview) -> None:
        self.answer += data

    def _end(self, headers: dict[str, str]) -> None:
        good = json.loads(bytes(self.answer)) == self.want
        self.ok, self.bad = self.ok + good, self.bad + (not good)
        self.answer = bytearray()

    @property
    def finished(self) -> bool:
        return self.stopping and self.ok + self.bad == self.started


class Watch:
    """One kill: where each stream stood, the looks at it until it moved past that (+ the margin), and
    then, until the next kill, its longest stall (the longest time between two looks that found progress)."""

    def __init__(self, kill_id: int, t: float, marks: dict[str, int], points: dict[str, int]) -> None:
        self.id, self.t, self.marks, self.points = kill_id, t, marks, points  # points: marks + margin or more
        self.traces: dict[str, list[tuple[float, int]]] = {d: [] for d in marks}
        self.moved: dict[str, float] = {}
        self.last: dict[str, tuple[float, int]] = {}  # after moving: the last look that found progress
        self.stall: dict[str, tuple[float, float]] = {d: (0.0, 0.0) for d in marks}  # (length, start)

    def look(self, direction: str, now: float, position: int) -> None:
        if direction not in self.marks:
            return
        if direction in self.moved:
            since, before = self.last[direction]
            if position > before:
                if now - since > self.stall[direction][0]:
                    self.stall[direction] = (now - since, since - self.t)
                self.last[direction] = (now, position)
            return
        beyond = position - self.marks[direction]
        trace = self.traces[direction]
        moved = position > self.points[direction]
        if len(trace) < TRACE_MAX and (not trace or trace[-1][1] != beyond or moved):
            trace.append((round(now - self.t, 6), beyond))
        if moved:
            self.moved[direction] = now - self.t
            self.last[direction] = (now, position)
            say(event="moving", id=self.id, direction=direction, after_s=round(now - self.t, 6), trace=trace)

    def close(self, now: float) -> None:
        """The next kill (or the end): the longest stall after moving again, per direction."""
        stalls = {}
        for d, (length, start) in self.stall.items():
            if d in self.last:  # a stall still going on at the close counts up to it
                since, _ = self.last[d]
                if now - since > length:
                    length, start = now - since, since - self.t
            stalls[d] = {"stall_s": round(length, 6), "at_s": round(start, 6)}
        say(event="settled", id=self.id, until_s=round(now - self.t, 6), stalls=stalls)


class Peer:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        directions = set(cfg["directions"])
        self.get = GetStream(cfg) if "stack_to_linux" in directions else None
        self.post = PostStream(cfg) if "linux_to_stack" in directions else None
        self.watches: list[Watch] = []
        self.inbox = b""
        self.stopping = False
        self.stopped_at = 0.0
        self.interval = float(cfg["interval"])

    def ports(self) -> dict[str, int | None]:
        return {
            "stack_to_linux": self.get.sock.getsockname()[1] if self.get else None,
            "linux_to_stack": self.post.sock.getsockname()[1] if self.post else None,
        }

    def marks(self) -> dict[str, int]:
        """Where each stream stands in the kernel now."""
        marks: dict[str, int] = {}
        if self.get is not None:
            marks["stack_to_linux"] = self.get.received()
        if self.post is not None:
            marks["linux_to_stack"] = self.post.sent()
        return marks

    def kill(self, pid: int, kill_id: int) -> None:
        pidfd = os.pidfd_open(pid)  # before the signal: this process, whatever reuses the pid later
        try:
            counters: dict[str, Any] = {"ns": ns_counters()}
            for name, stream in (("stack_to_linux", self.get), ("linux_to_stack", self.post)):
                if stream is not None:
                    counters[name] = tcp_info(stream.sock)
            marks = self.marks()
            t = time.time()
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            after = time.time()
            dead = bool(select.select([pidfd], [], [], 5.0)[0])  # readable once it has exited
            died = time.time()
            again = self.marks()
            edge = self.post.window_end() if self.post is not None else 0
            looked = time.time()
        finally:
            os.close(pidfd)
        margin = int(self.cfg["margin"])
        points = {d: max(marks[d] + margin, again[d]) for d in marks}
        if self.post is not None:  # an acknowledgement past the old window: of a byte sent on a new one
            points["linux_to_stack"] = max(points["linux_to_stack"], edge)
        if self.watches:
            self.watches[-1].close(t)
        self.watches.append(Watch(kill_id, t, marks, points))
        late = {d: again[d] - marks[d] for d in marks}
        say(
            event="killed",
            id=kill_id,
            pid=pid,
            time=t,
            after=after,
            died=died if dead else None,
            looked=looked,
            marks=marks,
            points=points,
            late=late,
            counters=counters,
        )

    def command(self) -> None:
        data = os.read(sys.stdin.fileno(), 65536)
        if not data:
            self.stop()
            return
        self.inbox += data
        while b"\n" in self.inbox:
            line, self.inbox = self.inbox.split(b"\n", 1)
            cmd = json.loads(line)
            if cmd["op"] == "kill":
                self.kill(int(cmd["pid"]), int(cmd["id"]))
            elif cmd["op"] == "stop":
                self.stop()

    def stop(self) -> None:
        self.stopping = True
        self.stopped_at = time.time()
        for stream in (self.get, self.post):
            if stream is not None:
                stream.stopping = True

    def finished(self) -> bool:
        return self.stopping and all(s is None or s.finished for s in (self.get, self.post))

    def turn(self, poller: select.poll) -> None:
        events = poller.poll((self.interval if self.watches else IDLE_WAIT) * 1000)
        for fd, _ in events:
            if fd == sys.stdin.fileno():
                self.command()
            elif self.get is not None and fd == self.get.sock.fileno():
                self.get.readable()
            elif self.post is not None and fd == self.post.sock.fileno():
                self.post.readable()
                self.post.writable()
        if self.watches:
            now, watch = time.time(), self.watches[-1]
            if self.get is not None:
                watch.look("stack_to_linux", now, self.get.total)
            if self.post is not None:
                watch.look("linux_to_stack", now, self.post.acked())
        if self.post is not None:
            mask = select.POLLIN | (select.POLLOUT if self.post.wants_write else 0)
            poller.modify(self.post.sock, mask)
        for stream in (self.get, self.post):
            if stream is not None and stream.eof and not stream.finished:
                raise SystemExit("the stack closed a connection in the middle of a stream")

    def run(self) -> None:
        poller = select.poll()
        poller.register(sys.stdin.fileno(), select.POLLIN)
        if self.get is not None:
            poller.register(self.get.sock, select.POLLIN)
        if self.post is not None:
            poller.register(self.post.sock, select.POLLIN | select.POLLOUT)
        say(event="ready", ports=self.ports())
        while not self.finished():
            self.turn(poller)
        self.report()

    def report(self) -> None:
        if self.watches:
            self.watches[-1].close(self.stopped_at)
        counters: dict[str, Any] = {"ns": ns_counters()}
        checks: dict[str, Any] = {}
        if self.get is not None:
            counters["stack_to_linux"] = tcp_info(self.get.sock)
            checks["stack_to_linux"] = {"ok": self.get.ok, "bad": self.get.bad, "bytes": self.get.body_bytes}
        if self.post is not None:
            counters["linux_to_stack"] = tcp_info(self.post.sock)
            post = self.post
            checks["linux_to_stack"] = {"ok": post.ok, "bad": post.bad, "bytes": post.ok * post.size}
        for stream in (self.get, self.post):
            if stream is not None:
                stream.sock.close()
        say(event="done", counters=counters, checks=checks)


def main(argv: list[str]) -> int:
    Peer(json.loads(argv[0])).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
