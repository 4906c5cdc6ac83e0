"""Shared set-up of the host offload tests: a host stack behind the software target on one side of a
simulated link, a plain host stack on the other (docs/offload-design.md "Wiring"), an event log, a two-way
transfer helper, and a wrapper that makes the target answer outside the contract.

    SimLink --- SoftwareTarget("a") -> HostStack a (198.18.0.1, offload)
            \\-- HostStack b (198.18.0.2, plain peer)
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import pytest
from stack_pair import StackPair

from tcpchimney.chimney.completions import StateCompletion
from tcpchimney.chimney.requests import Request
from tcpchimney.chimney.target import Output
from tcpchimney.chimney.tree import BlockList, Layer
from tcpchimney.host.events import HostEvent, IncomingConnection, OffloadFault
from tcpchimney.host.interface import InterfaceConfig, mac_bytes
from tcpchimney.host.offload import OffloadState
from tcpchimney.host.policy import OffloadPolicy
from tcpchimney.host.sockets import TcpSocket
from tcpchimney.host.stack import HostStack
from tcpchimney.link.sim import Impairments, SimLink
from tcpchimney.nic.target import SoftwareTarget
from tcpchimney.tcp.config import TcpConfig
from tcpchimney.tcp.errors import ConnectionResetByPeerError
from tcpchimney.tcp.events import Closed, ConnectionReset, PeerClosed
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire.frame import Frame

A_MAC, A_IP = "02:00:00:00:00:01", "198.18.0.1"
B_MAC, B_IP = "02:00:00:00:00:02", "198.18.0.2"
PORT = 7
ENABLED = OffloadPolicy(mode="enabled")


class TamperingTarget:
    """A SoftwareTarget whose outputs pass through ``tamper`` before the host sees them: a faulty target.
    ``tamper`` returns the outputs to deliver instead (none, the same, changed ones, or extra ones)."""

    def __init__(self, inner: SoftwareTarget) -> None:
        self.inner = inner
        self.tamper: Callable[[Output], list[Output]] | None = None
        self._queue: list[Output] = []

    @property
    def capabilities(self):  # type: ignore[no-untyped-def]
        return self.inner.capabilities

    def submit(self, request: Request, now: float) -> None:
        self.inner.submit(request, now)

    def poll(self) -> Output | None:
        while not self._queue:
            out = self.inner.poll()
            if out is None:
                return None
            self._queue = [out] if self.tamper is None else self.tamper(out)
        return self._queue.pop(0)

    def inject(self, out: Output) -> None:
        self._queue.append(out)


@dataclass
class OffloadNet(StackPair):
    link: SimLink
    a: HostStack
    b: HostStack
    target: SoftwareTarget
    log: dict[str, list[HostEvent]] = field(default_factory=lambda: {"a": [], "b": []})

    def connect(self, port: int = PORT, a_listens: bool = False) -> tuple[TcpSocket, TcpSocket]:
        """Returns (a's socket, b's socket), both ESTABLISHED. ``a_listens``: b connects to a."""
        server_stack, client_stack = (self.a, self.b) if a_listens else (self.b, self.a)
        listener = server_stack.listen(port)
        dst = A_IP if a_listens else B_IP
        client = client_stack.connect(dst, port, self.link.now)
        self.run_until(lambda: listener.pending > 0 and client.state is TcpState.ESTABLISHED, 30.0)
        server = listener.accept()
        assert server is not None
        assert any(isinstance(ev, IncomingConnection) for ev in self.log["a" if a_listens else "b"])
        return (server, client) if a_listens else (client, server)

    def offloaded(self, sock: TcpSocket) -> bool:
        return sock.offload_state is OffloadState.OFFLOADED

    def wait_offloaded(self, sock: TcpSocket, timeout: float = 5.0) -> None:
        self.run_until(lambda: self.offloaded(sock), timeout)

    def wait_in_host(self, sock: TcpSocket, timeout: float = 5.0) -> None:
        self.run_until(lambda: sock.offload_state is OffloadState.IN_HOST, timeout)


def make_offload_net(
    seed: int = 1,
    policy: OffloadPolicy | None = ENABLED,
    *,
    imp_a: Impairments | None = None,
    imp_b: Impairments | None = None,
    config: TcpConfig | None = None,
    capacity: int = 64,
    tamper: bool = False,
    mtu: int = 1500,
) -> OffloadNet:
    link = SimLink(seed, mtu=mtu)
    soft = SoftwareTarget(capacity=capacity, mac=mac_bytes(A_MAC), config=config)
    target: SoftwareTarget | TamperingTarget = TamperingTarget(soft) if tamper else soft
    a = HostStack(
        InterfaceConfig.parse(A_MAC, f"{A_IP}/24", mtu=mtu),
        config,
        secret=f"offload-a-{seed}".encode(),
        rng=random.Random(2 * seed + 1),
        target=target,  # type: ignore[arg-type]
        offload=policy,
    )
    b = HostStack(
        InterfaceConfig.parse(B_MAC, f"{B_IP}/24", mtu=mtu),
        config,
        secret=f"offload-b-{seed}".encode(),
        rng=random.Random(2 * seed + 2),
    )
    soft.attach_host(a)
    link.attach(soft, "a", imp_a)
    link.attach(b, "b", imp_b)
    net = OffloadNet(link, a, b, soft)
    net.tamperer = target if tamper else None  # type: ignore[attr-defined]
    return net


class Stream:
    """One direction of a transfer: writes ``data`` into ``src`` as it accepts, reads ``dst`` into ``got``."""

    def __init__(self, src: TcpSocket, dst: TcpSocket, data: bytes) -> None:
        self.src, self.dst = src, dst
        self.data = memoryview(data)
        self.sent = 0
        self.got = bytearray()

    def step(self) -> None:
        while self.sent < len(self.data):
            n = self.src.send(self.data[self.sent : self.sent + 64 * 1024])
            if n == 0:
                break
            self.sent += n
        while chunk := self.dst.receive(1 << 20):
            self.got += chunk

    @property
    def done(self) -> bool:
        return len(self.got) >= len(self.data)


def exchange(
    net: OffloadNet,
    streams: list[Stream],
    timeout: float = 60.0,
    during: Callable[[], None] | None = None,
) -> None:
    """Run until every stream arrived whole; ``during`` is called at each step (e.g. to upload midway)."""

    def finished() -> bool:
        for s in streams:
            s.step()
        if during is not None:
            during()
        return all(s.done for s in streams)

    net.run_until(finished, timeout)
    for s in streams:
        assert bytes(s.got) == bytes(s.data), f"stream differs: {len(s.got)} of {len(s.data)} bytes"


def tampering_net(seed: int, **options: Any) -> tuple[OffloadNet, TamperingTarget]:
    """make_offload_net(seed, **options) behind a TamperingTarget, and that target."""
    net = make_offload_net(seed, tamper=True, **options)
    return net, net.tamperer  # type: ignore[attr-defined]


_Out = TypeVar("_Out", bound=Output)


def tamper_first(
    kind: type[_Out], change: Callable[[_Out], list[Output]], seen: list[_Out]
) -> Callable[[Output], list[Output]]:
    """A ``tamper`` that delivers ``change(out)`` instead of the first output of ``kind`` (kept in ``seen``,
    so a test can tell it happened) and lets every other output through."""

    def tamper(out: Output) -> list[Output]:
        if isinstance(out, kind) and not seen:
            seen.append(out)
            return change(out)
        return [out]

    return tamper


def drop_first(kind: type[_Out], dropped: list[_Out]) -> Callable[[Output], list[Output]]:
    """A ``tamper`` that loses the first output of ``kind``: the host never sees it."""
    return tamper_first(kind, lambda out: [], dropped)


def map_tcp_blocks(out: Output, fn: Callable[[BlockList], BlockList]) -> Output:
    """The state completion ``out`` with every TCP block of its tree replaced by ``fn(block)``."""
    assert isinstance(out, StateCompletion)

    def visit(block: BlockList) -> BlockList:
        if block.layer is Layer.TCP:
            return fn(block)
        return block.with_dependents(tuple(visit(d) for d in block.dependents))

    return replace(out, tree=tuple(visit(b) for b in out.tree))


def faults_of(net: OffloadNet, sock: TcpSocket | None) -> list[OffloadFault]:
    """The OffloadFault events reported for ``sock`` (None: those for no connection)."""
    return [f for f in net.events(OffloadFault) if f.sock is sock]  # type: ignore[attr-defined,misc]


def ends_with_reset(net: OffloadNet, sock: TcpSocket) -> None:
    """The application saw a reset, then Closed (never a clean EOF), and every call says so."""
    kinds = [type(e) for e in net.tcp_events(sock) if isinstance(e, ConnectionReset | Closed | PeerClosed)]
    assert kinds == [ConnectionReset, Closed]
    assert sock.state is TcpState.CLOSED
    with pytest.raises(ConnectionResetByPeerError):
        sock.send(b"lost")
    assert sock.receive(100) == b""


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def frames_of(net: OffloadNet) -> Callable[[Frame], None]:  # pragma: no cover - debugging aid
    return lambda frame: None
