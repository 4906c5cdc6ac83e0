"""What the scenario, host-offload and offload-harness kits share: two host stacks ``a`` and ``b`` on one
simulated link, every host event logged as an application would read it, and waits on the virtual clock."""

from __future__ import annotations

from collections.abc import Callable

from tcpchimney.host.events import ConnectionEvent, HostEvent
from tcpchimney.host.sockets import TcpSocket
from tcpchimney.host.stack import HostStack
from tcpchimney.link.sim import SimLink
from tcpchimney.tcp.events import TcpEvent
from tcpchimney.wire.frame import Frame


class StackPair:
    """Mixed into each kit's dataclass, which provides ``link``, ``a``, ``b`` and ``log``."""

    link: SimLink
    a: HostStack
    b: HostStack
    log: dict[str, list[HostEvent]]

    def pump(self) -> None:
        """Move the stacks' pending host events into ``log`` (the owner must read them, as an app would)."""
        for name, stack in (("a", self.a), ("b", self.b)):
            while (ev := stack.next_event()) is not None:
                self.log[name].append(ev)

    def run_until(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        def check() -> bool:
            self.pump()
            return predicate()

        self.link.run_until(check, timeout)
        self.pump()

    def run_for(self, duration: float) -> None:
        self.link.run_for(duration)
        self.pump()

    def events(self, kind: type, side: str = "a") -> list[HostEvent]:
        return [ev for ev in self.log[side] if isinstance(ev, kind)]

    def tcp_events(self, sock: TcpSocket) -> list[TcpEvent]:
        """The engine events the host reported for ``sock``, in order."""
        return [
            ev.tcp_event
            for evs in self.log.values()
            for ev in evs
            if isinstance(ev, ConnectionEvent) and ev.sock is sock
        ]

    def has_event(self, sock: TcpSocket, kind: type) -> bool:
        return any(isinstance(ev, kind) for ev in self.tcp_events(sock))


class OutboxNode:
    """A link node that only puts frames on the link (``send``): an attacker, a router, an injector. It
    ignores what it receives and has no timers unless a subclass says otherwise."""

    def __init__(self) -> None:
        self.outbox: list[Frame] = []

    def handle_frame(self, frame: Frame, now: float) -> None:
        pass

    def handle_timer(self, now: float) -> None:
        pass

    def frames_to_send(self, now: float) -> list[Frame]:
        out, self.outbox = self.outbox, []
        return out

    def next_deadline(self) -> float | None:
        return None

    def send(self, frame: bytes) -> None:
        self.outbox.append(Frame(frame))
