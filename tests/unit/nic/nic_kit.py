"""A bench for the software target: a peer HostStack and a local HostStack behind a SoftwareTarget on one
simulated link. The test plays the host's offload role itself (the local stack only set the connection up):
it exports the local engine, offloads it, talks to the target with contract messages, and after an upload
puts the rebuilt engine back into the local socket."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tcpchimney.chimney import (
    BlockList,
    InitiateOffload,
    Layer,
    NeighborCached,
    NeighborConst,
    NeighborState,
    NewObject,
    PathCached,
    PathConst,
    PathState,
    ReceiveIndication,
    ReturnReceive,
    StateCompletion,
    TcpDelegated,
    TcpSnapshot,
    TerminateOffload,
    build_tree,
    walk,
)
from tcpchimney.chimney.target import Output
from tcpchimney.chimney.tree import LinkedObject, Role
from tcpchimney.host.interface import InterfaceConfig
from tcpchimney.host.sockets import TcpSocket
from tcpchimney.host.stack import HostStack
from tcpchimney.link.sim import Impairments, SimLink
from tcpchimney.nic.target import SoftwareTarget
from tcpchimney.tcp.config import TcpConfig
from tcpchimney.tcp.snapshot import export_snapshot, rebuild
from tcpchimney.wire.frame import DeviceFeatures, Frame

PEER_MAC = bytes.fromhex("020000000001")
LOCAL_MAC = bytes.fromhex("020000000002")
PEER_IP = bytes([198, 18, 0, 1])
LOCAL_IP = bytes([198, 18, 0, 2])
PORT = 80


class Recorder:
    """A node wrapper that keeps every frame the wrapped node received."""

    def __init__(self, node: HostStack) -> None:
        self.node = node
        self.frames: list[bytes] = []

    def handle_frame(self, frame: Frame, now: float) -> None:
        self.frames.append(frame.tobytes())
        self.node.handle_frame(frame, now)

    def handle_timer(self, now: float) -> None:
        self.node.handle_timer(now)

    def frames_to_send(self, now: float) -> list[Frame]:
        return self.node.frames_to_send(now)

    def next_deadline(self) -> float | None:
        return self.node.next_deadline()


def make_stack(mac: bytes, ip: bytes, features: DeviceFeatures, seed: int, config: TcpConfig) -> HostStack:
    iface = InterfaceConfig(mac=mac, ip=ip, prefix_len=24, features=features)
    return HostStack(iface, config, secret=b"nic-test-secret", rng=random.Random(seed))


@dataclass
class Offloaded:
    sock: TcpSocket
    snapshot: TcpSnapshot
    neighbor: int  # target handles
    path: int
    ctx: int
    host_handle: int


@dataclass
class Bench:
    features: DeviceFeatures = field(default_factory=DeviceFeatures)
    capacity: int = 16
    seed: int = 1
    config: TcpConfig = field(default_factory=lambda: TcpConfig(rcv_buf=256 * 1024, snd_buf=256 * 1024))

    def __post_init__(self) -> None:
        self.link = SimLink(self.seed)
        self.peer = make_stack(PEER_MAC, PEER_IP, self.features, 11, self.config)
        self.host = make_stack(LOCAL_MAC, LOCAL_IP, self.features, 12, self.config)
        self.target = SoftwareTarget(self.features, capacity=self.capacity, config=self.host.tcp_config)
        self.target.attach_host(self.host)
        self.wire = Recorder(self.peer)
        self.link.attach(self.wire, "peer")
        self.link.attach(self.target, "nic")
        self.listener = self.peer.listen(PORT)
        self.outputs: list[Output] = []
        self._request_id = 0
        self._handles = 100

    @property
    def now(self) -> float:
        return self.link.now

    def rid(self) -> int:
        self._request_id += 1
        return self._request_id

    def submit(self, request: Any) -> None:
        self.target.submit(request, self.now)
        self.collect()

    def collect(self) -> list[Output]:
        new = self.target.drain()
        self.outputs.extend(new)
        return new

    def take(self, kind: type) -> list[Any]:
        """Every output of ``kind`` so far (removed from the list)."""
        self.collect()
        found = [o for o in self.outputs if isinstance(o, kind)]
        self.outputs = [o for o in self.outputs if not isinstance(o, kind)]
        return found

    def completion(self, request_id: int) -> Any:
        self.collect()
        for o in self.outputs:
            if getattr(o, "request_id", None) == request_id:
                self.outputs.remove(o)
                return o
        return None

    def run_until(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        def check() -> bool:
            self.collect()
            return predicate()

        self.link.run_until(check, timeout)

    def connect(self) -> tuple[TcpSocket, TcpSocket]:
        pending = self.listener.pending
        sock = self.host.connect(PEER_IP, PORT, self.now)
        self.link.run_until(lambda: self.listener.pending > pending, 5.0)
        server = self.listener.accept()
        assert server is not None
        self.link.run_for(1.0)  # delayed ACKs out: the local engine is quiet when it is exported
        return sock, server

    def offload(self, sock: TcpSocket, neighbor: int | None = None, path: int | None = None) -> Offloaded:
        """Initiate with new (or linked) neighbor and path objects; asserts success."""
        result = self.try_offload(sock, neighbor, path)
        assert isinstance(result, Offloaded), result
        return result

    def try_offload(
        self, sock: TcpSocket, neighbor: int | None = None, path: int | None = None
    ) -> Offloaded | StateCompletion:
        snap = export_snapshot(sock.conn, self.now)
        self._handles += 3
        h = self._handles
        n_node: Any = (
            LinkedObject(neighbor)
            if neighbor
            else NewObject(h, NeighborState(NeighborConst(), NeighborCached(PEER_MAC)))
        )
        p_node: Any = (
            LinkedObject(path)
            if path
            else NewObject(h + 1, PathState(PathConst(LOCAL_IP, PEER_IP), PathCached()))
        )
        tree = build_tree([(n_node, p_node, NewObject(h + 2, snap))])
        rid = self.rid()
        self.submit(InitiateOffload(rid, tree))
        done = self.completion(rid)
        assert isinstance(done, StateCompletion)
        handles = {b.layer: b.target_handle for b in walk(done.tree)}
        tcp = next(b for b in walk(done.tree) if b.layer is Layer.TCP)
        if not tcp.status.ok:
            return done
        return Offloaded(
            sock, snap, handles[Layer.NEIGHBOR] or 0, handles[Layer.PATH] or 0, tcp.target_handle or 0, h + 2
        )

    def terminate(self, off: Offloaded, with_path: bool = False) -> TcpDelegated:
        """Upload the connection (and its path and neighbor when asked); returns the delegated state."""
        tcp_block = BlockList(Layer.TCP, Role.LINKER, off.host_handle, off.ctx)
        if with_path:
            path = BlockList(Layer.PATH, Role.LINKER, None, off.path, dependents=(tcp_block,))
            tree = (BlockList(Layer.NEIGHBOR, Role.LINKER, None, off.neighbor, dependents=(path,)),)
        else:
            path = BlockList(Layer.PATH, Role.PLACEHOLDER, dependents=(tcp_block,))
            tree = (BlockList(Layer.NEIGHBOR, Role.PLACEHOLDER, dependents=(path,)),)
        rid = self.rid()
        self.submit(TerminateOffload(rid, tree))
        done = self.completion(rid)
        assert isinstance(done, StateCompletion), done
        block = next(b for b in walk(done.tree) if b.layer is Layer.TCP)
        assert isinstance(block.state, TcpDelegated), block
        return block.state

    def upload_into_host(self, off: Offloaded, delegated: TcpDelegated) -> None:
        """The host's half of an upload: its socket continues on an engine rebuilt from the returned state."""
        snap = TcpSnapshot(off.snapshot.const, off.snapshot.cached, delegated)
        off.sock.conn = rebuild(snap, self.host.tcp_config, self.now)
        off.sock.configure()  # no option changed: marks the socket for output

    def answer_indications(self, off: Offloaded, sink: bytearray, take: int | None = None) -> None:
        """Accept every ReceiveIndication (``take`` bytes of each, or all)."""
        for ind in self.take(ReceiveIndication):
            n = len(ind.data) if take is None else min(take, len(ind.data))
            sink += ind.data[:n]
            self.target.submit(ReturnReceive(self.rid(), off.ctx, ind.indication_id, n), self.now)
            self.collect()

    def set_impairments(self, name: str, impairments: Impairments) -> None:
        self.link.set_impairments(name, impairments)


def read_all(sock: TcpSocket) -> bytes:
    out = bytearray()
    while chunk := sock.receive(1 << 20):
        out += chunk
    return bytes(out)
