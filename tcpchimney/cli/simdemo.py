"""The demo's exchanges between two stacks over the simulated link (where no TAP device can be made).

The "server" stack (198.18.0.2) and the "client" stack (198.18.0.1) share one ``SimLink``. Like the TAP demo,
the client first downloads N bytes from the server, then uploads N bytes; each side hashes what it received
and the digests are compared with ``deterministic_sha256``. The link's clock is virtual, so the figures are
the CPU cost of two stacks in one process, not a network's speed.

With offload not disabled the server stack sits behind a ``SoftwareTarget`` (the emulated NIC) and, as in the
TAP demo, an administrator's upload halfway through each transfer brings its connection back to the host,
which offloads it again; churn timers run on the link's virtual clock.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import Progress

from tcpchimney.cli.apps import deterministic_bytes, deterministic_sha256
from tcpchimney.cli.offload import OffloadControl, OffloadOptions, timeline_lines
from tcpchimney.cli.report import (
    ConnectionRow,
    DemoResult,
    Transfer,
    add_new_rows,
    connection_row,
    with_final_states,
)
from tcpchimney.host.events import ConnectionEvent, IncomingConnection
from tcpchimney.host.interface import InterfaceConfig
from tcpchimney.host.sockets import TcpSocket
from tcpchimney.host.stack import HostStack
from tcpchimney.link.sim import Impairments
from tcpchimney.tcp.events import PeerClosed

if TYPE_CHECKING:
    from tcpchimney.nic.target import SoftwareTarget

SERVER_ADDR = "198.18.0.2/24"
CLIENT_ADDR = "198.18.0.1/24"
PORT = 80
SEED_DOWN = 1
SEED_UP = 2
_STEP_TIMEOUT = 60.0  # virtual seconds a transfer may take
_CLOSE_TIMEOUT = 180.0  # virtual seconds until the server has no connection left (TIME-WAIT is 2 MSL)
SIM_LAN = Impairments(delay=50e-6)
SIM_CHECK_INTERVAL = 0.001  # automatic offload mode: seconds between looks at the connections


class Sender:
    """Feeds ``deterministic_bytes`` into a socket as fast as its send buffer accepts, then shuts down."""

    def __init__(self, sock: TcpSocket, n: int, seed: int) -> None:
        self.sock = sock
        self.blocks: Iterator[bytes] = deterministic_bytes(n, seed)
        self.pending = memoryview(b"")
        self.finished = False

    def step(self) -> None:
        while not self.finished:
            if not self.pending:
                block = next(self.blocks, None)
                if block is None:
                    self.sock.shutdown()
                    self.finished = True
                    return
                self.pending = memoryview(block)
            accepted = self.sock.send(self.pending)
            if accepted == 0:
                return
            self.pending = self.pending[accepted:]


class Receiver:
    def __init__(self, sock: TcpSocket) -> None:
        self.sock = sock
        self.digest = hashlib.sha256()
        self.received = 0

    def step(self) -> None:
        while data := self.sock.receive(1 << 20):
            self.digest.update(data)
            self.received += len(data)


@dataclass(order=True, slots=True)
class _Timer:
    due: float
    seq: int
    callback: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class VirtualScheduler:
    """``call_later`` on the link's virtual clock; ``run_due`` fires what is due (from the step loop)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._heap: list[_Timer] = []
        self._seq = itertools.count()

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Timer:
        timer = _Timer(self.clock() + delay, next(self._seq), callback)
        heapq.heappush(self._heap, timer)
        return timer

    def run_due(self) -> None:
        now = self.clock()
        while self._heap and self._heap[0].due <= now:
            timer = heapq.heappop(self._heap)
            if not timer.cancelled:
                timer.callback()


class SimExchange:
    def __init__(self, seed: int = 1, options: OffloadOptions | None = None) -> None:
        from tcpchimney.link.sim import SimLink

        options = options or OffloadOptions("disabled")
        self.link = SimLink(seed=seed)
        self.server, self.target = _server(SERVER_ADDR, "02:00:00:00:00:02", seed, options)
        self.client = _stack(CLIENT_ADDR, "02:00:00:00:00:01", seed + 1)
        # A 10 Gb/s LAN with 50 us one way: time passes while data flows, so the offload policy's timer and
        # the midway upload land inside a transfer rather than after it.
        self.link.attach(self.target or self.server, impairments=SIM_LAN)
        self.link.attach(self.client, impairments=SIM_LAN)
        self.listener = self.server.listen(PORT)
        self.peer_closed: set[TcpSocket] = set()
        self.rows: list[ConnectionRow] = []  # each connection as it was at its transfer's midpoint
        self.scheduler = VirtualScheduler(lambda: self.link.now)
        self.control: OffloadControl | None = None
        if self.target is not None:
            self.control = OffloadControl(
                self.server, options, self.scheduler, lambda: self.link.now, rng=random.Random(seed)
            )

    def _events(self) -> None:
        self.scheduler.run_due()
        for stack in (self.server, self.client):
            while (event := stack.next_event()) is not None:
                if isinstance(event, ConnectionEvent) and isinstance(event.tcp_event, PeerClosed):
                    self.peer_closed.add(event.sock)
                elif isinstance(event, IncomingConnection):
                    pass  # accepted by polling the listener
                if self.control is not None and stack is self.server:
                    self.control.on_event(event)

    def _connect(self) -> tuple[TcpSocket, TcpSocket]:
        client_sock = self.client.connect(SERVER_ADDR.split("/")[0], PORT, self.link.now)
        accepted: list[TcpSocket] = []

        def ready() -> bool:
            self._events()
            if not accepted and (sock := self.listener.accept()) is not None:
                accepted.append(sock)
            return bool(accepted) and client_sock.state.name == "ESTABLISHED"

        self.link.run_until(ready, timeout=_STEP_TIMEOUT)
        return client_sock, accepted[0]

    def transfer(self, name: str, n: int, seed: int, download: bool, progress: Progress) -> Transfer:
        client_sock, server_sock = self._connect()
        src, dst = (server_sock, client_sock) if download else (client_sock, server_sock)
        sender, receiver = Sender(src, n, seed), Receiver(dst)
        task = progress.add_task(name, total=n)
        wall, cpu = time.perf_counter(), time.process_time()
        last_tick = [wall]
        midway = [False]

        def done() -> bool:
            self._events()
            sender.step()
            receiver.step()
            if not midway[0] and receiver.received * 2 >= n:
                midway[0] = True
                add_new_rows(self.rows, self._rows())  # before the upload: the state the data moved in
                if self.control is not None:
                    self.control.upload_all()  # the administrator's upload, as in the TAP demo
            now = time.perf_counter()
            if now - last_tick[0] > 0.1:
                last_tick[0] = now
                progress.update(task, completed=receiver.received)
            return dst in self.peer_closed and dst.readable == 0 and receiver.received >= n

        self.link.run_until(done, timeout=_STEP_TIMEOUT)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        progress.update(task, completed=receiver.received)
        dst.close()
        self.link.run_until(self._all_closed, timeout=_CLOSE_TIMEOUT)
        got = receiver.digest.hexdigest() if receiver.received == n else f"length {receiver.received}"
        return Transfer(name, n, wall, cpu, deterministic_sha256(n, seed), got)

    def _all_closed(self) -> bool:
        self._events()
        return not self.server.connections()

    def open_connections(self) -> list[TcpSocket]:
        return [*self.server.connections(), *self.client.connections()]

    def _rows(self) -> list[ConnectionRow]:
        return [connection_row(sock) for sock in self.open_connections()]


def _stack(address: str, mac: str, seed: int) -> HostStack:
    iface = InterfaceConfig.parse(mac, address)
    return HostStack(iface, secret=seed.to_bytes(8, "big") + b"sim-demo", rng=random.Random(seed))


def _server(
    address: str, mac: str, seed: int, options: OffloadOptions
) -> tuple[HostStack, SoftwareTarget | None]:
    """The server stack and the SoftwareTarget in front of it (None: offload disabled)."""
    if not options.enabled:
        return _stack(address, mac, seed), None
    from tcpchimney.host.policy import OffloadMode, OffloadPolicy
    from tcpchimney.nic.target import SoftwareTarget
    from tcpchimney.tcp.config import TcpConfig

    iface = InterfaceConfig.parse(mac, address)
    config = replace(TcpConfig(), mss=iface.mss, max_segment_payload=iface.max_segment_payload)
    target = SoftwareTarget(iface.features, mac=iface.mac, config=config)
    stack = HostStack(
        iface,
        secret=seed.to_bytes(8, "big") + b"sim-demo",
        rng=random.Random(seed),
        target=target,
        # The virtual link moves megabytes in milliseconds: automatic mode looks every millisecond, not
        # every 100 ms, or a transfer would end before its first look.
        offload=OffloadPolicy(mode=OffloadMode(options.mode), check_interval=SIM_CHECK_INTERVAL),
    )
    target.attach_host(stack)
    return stack, target


def sim_demo(n: int, console: Console, options: OffloadOptions | None = None) -> DemoResult:
    run = SimExchange(options=options)
    with Progress(console=console) as progress:
        transfers = [
            run.transfer("GET  (server stack -> client stack)", n, SEED_DOWN, True, progress),
            run.transfer("POST (client stack -> server stack)", n, SEED_UP, False, progress),
        ]
    rows = with_final_states(run.rows, run.open_connections())
    result = DemoResult("sim", transfers, rows, run.server.counters)
    if run.control is not None:
        run.control.close()
        result.timeline = timeline_lines(run.control.records)
        nic = run.target.counters.snapshot() if run.target is not None else {}
        result.offload = {**run.control.as_dict(), "host": run.server.counters.get("offload", {}), "nic": nic}
    else:
        result.offload = {"mode": "disabled"}
    return result
