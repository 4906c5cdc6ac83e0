"""The demo's exchanges between two stacks over the simulated link (where no TAP device can be made).

The "server" stack (198.18.0.2) and the "client" stack (198.18.0.1) share one ``SimLink``. Like the TAP demo,
the client first downloads N bytes from the server, then uploads N bytes; each side hashes what it received
and the digests are compared with ``deterministic_sha256``. The link's clock is virtual, so the figures are
the CPU cost of two stacks in one process, not a network's speed.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Iterator

from rich.console import Console
from rich.progress import Progress

from tcpchimney.cli.apps import deterministic_bytes, deterministic_sha256
from tcpchimney.cli.report import ConnectionRow, DemoResult, Transfer
from tcpchimney.host.events import ConnectionEvent, IncomingConnection
from tcpchimney.host.interface import InterfaceConfig, ip_str
from tcpchimney.host.sockets import TcpSocket
from tcpchimney.host.stack import HostStack
from tcpchimney.tcp.events import PeerClosed

SERVER_ADDR = "198.18.0.2/24"
CLIENT_ADDR = "198.18.0.1/24"
PORT = 80
SEED_DOWN = 1
SEED_UP = 2
_STEP_TIMEOUT = 60.0  # virtual seconds a transfer may take


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


class SimExchange:
    def __init__(self, seed: int = 1) -> None:
        from tcpchimney.link.sim import SimLink

        self.server = _stack(SERVER_ADDR, "02:00:00:00:00:02", seed)
        self.client = _stack(CLIENT_ADDR, "02:00:00:00:00:01", seed + 1)
        self.link = SimLink(seed=seed)
        self.link.attach(self.server)
        self.link.attach(self.client)
        self.listener = self.server.listen(PORT)
        self.peer_closed: set[TcpSocket] = set()
        self.busiest: list[ConnectionRow] = []

    def _events(self) -> None:
        for stack in (self.server, self.client):
            while (event := stack.next_event()) is not None:
                if isinstance(event, ConnectionEvent) and isinstance(event.tcp_event, PeerClosed):
                    self.peer_closed.add(event.sock)
                elif isinstance(event, IncomingConnection):
                    pass  # accepted by polling the listener

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

        def done() -> bool:
            self._events()
            sender.step()
            receiver.step()
            now = time.perf_counter()
            if now - last_tick[0] > 0.1:
                last_tick[0] = now
                progress.update(task, completed=receiver.received)
                self._sample_rows()
            return dst in self.peer_closed and dst.readable == 0 and receiver.received >= n

        self.link.run_until(done, timeout=_STEP_TIMEOUT)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        progress.update(task, completed=receiver.received)
        dst.close()
        self.link.run_until(self._all_closed, timeout=_STEP_TIMEOUT)
        got = receiver.digest.hexdigest() if receiver.received == n else f"length {receiver.received}"
        return Transfer(name, n, wall, cpu, deterministic_sha256(n, seed), got)

    def _all_closed(self) -> bool:
        self._events()
        return not self.server.connections()

    def _sample_rows(self) -> None:
        rows = [
            ConnectionRow(
                f"{ip_str(s.local_ip)}:{s.local_port}", f"{ip_str(s.remote_ip)}:{s.remote_port}", s.state.name
            )
            for stack in (self.server, self.client)
            for s in stack.connections()
        ]
        if len(rows) >= len(self.busiest):
            self.busiest = rows


def _stack(address: str, mac: str, seed: int) -> HostStack:
    iface = InterfaceConfig.parse(mac, address)
    return HostStack(iface, secret=seed.to_bytes(8, "big") + b"sim-demo", rng=random.Random(seed))


def sim_demo(n: int, console: Console) -> DemoResult:
    run = SimExchange()
    with Progress(console=console) as progress:
        transfers = [
            run.transfer("GET  (server stack -> client stack)", n, SEED_DOWN, True, progress),
            run.transfer("POST (client stack -> server stack)", n, SEED_UP, False, progress),
        ]
    return DemoResult("sim", transfers, run.busiest, run.server.counters)
