"""Shared set-up of the offload conformance tests (chimney-spec section 9.6) and the differential harness.

    SimLink --- SoftwareTarget -> HostStack a (198.18.0.1; with ``offload=False``: a plain HostStack)
            \\-- Wire(HostStack b) (198.18.0.2, plain peer; every frame it sends and receives is kept)

``a`` is the stack under test, ``b`` the peer. The wire recorder sits in front of ``b``: with no impairments
what ``b`` receives and sends *is* the wire. ``Script`` is a deterministic application workload over one
connection, driven step by step by the link; the same script runs host-only, offloaded and with hand-offs.

Module name chosen so that it cannot clash with the helper modules of other test folders (pytest puts each
test folder on ``sys.path``; there is no package).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw
from stack_pair import OutboxNode, StackPair

from tcpchimney.chimney import build_tree
from tcpchimney.chimney.reason import Reason
from tcpchimney.chimney.requests import InvalidateOffload, TerminateOffload
from tcpchimney.chimney.tree import LinkedObject
from tcpchimney.host.arp import ArpParams
from tcpchimney.host.events import HostEvent
from tcpchimney.host.interface import InterfaceConfig
from tcpchimney.host.offload import OffloadState, SharedObject, _Pending
from tcpchimney.host.policy import OffloadPolicy
from tcpchimney.host.sockets import TcpSocket
from tcpchimney.host.stack import HostStack
from tcpchimney.link.sim import Impairments, SimLink
from tcpchimney.nic.loopback import LoopbackNic
from tcpchimney.nic.table import TcpEntry
from tcpchimney.nic.target import SoftwareTarget
from tcpchimney.tcp.config import TcpConfig
from tcpchimney.tcp.connection import TcpConnection
from tcpchimney.tcp.errors import ConnectionClosedError
from tcpchimney.tcp.events import Closed, ConnectionReset, PeerClosed
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire import checksum, ethernet
from tcpchimney.wire import ipv4 as ipv4_wire
from tcpchimney.wire import tcp as tcp_wire
from tcpchimney.wire.errors import WireError
from tcpchimney.wire.frame import Frame
from tcpchimney.wire.seq import SeqNum
from tcpchimney.wire.tcp import ACK, FIN, RST, SYN, TcpSegment

A_MAC, A_IP = "02:00:00:00:00:01", "198.18.0.1"
B_MAC, B_IP = "02:00:00:00:00:02", "198.18.0.2"
# ``make_net(routed=True)``: b sits on another subnet, reached through router R1 (a's first gateway) or R2.
B_ROUTED_IP = "198.18.1.2"
R1_MAC, R1_IP, R1_IP_B_SIDE = "02:00:00:00:00:f1", "198.18.0.254", "198.18.1.254"
R2_MAC, R2_IP = "02:00:00:00:00:f2", "198.18.0.253"
A_IP_B, B_IP_B = bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2])
PORT = 7
TRANSPORTS = ("inline", "rings")
ENABLED = OffloadPolicy(mode="enabled")
DISABLED = OffloadPolicy(mode="disabled")


class WireSeg(NamedTuple):
    """What the differential harness compares of a TCP segment (no timing, IP ID, window or options)."""

    direction: str  # "a>b" or "b>a"
    flags: int
    seq: int
    ack: int
    length: int


class Wire:
    """A node wrapper in front of the peer: keeps every frame it receives and sends, in order, with time."""

    def __init__(self, node: HostStack) -> None:
        self.node = node
        self.frames: list[tuple[float, bytes]] = []
        self.injected: list[bytes] = []  # frames an Injector put on the link: not the peer's, not recorded
        # What the medium does to the peer's frames before they leave (e.g. set URG on one segment).
        self.rewrite: Callable[[Frame], Frame] | None = None

    def handle_frame(self, frame: Frame, now: float) -> None:
        data = frame.tobytes()
        if not any(data.startswith(x) for x in self.injected):  # padded to the Ethernet minimum on the link
            self.frames.append((now, data))
        self.node.handle_frame(frame, now)

    def handle_timer(self, now: float) -> None:
        self.node.handle_timer(now)

    def frames_to_send(self, now: float) -> list[Frame]:
        out = self.node.frames_to_send(now)
        if self.rewrite is not None:
            out = [self.rewrite(f) for f in out]
        self.frames.extend((now, f.tobytes()) for f in out)
        return out

    def next_deadline(self) -> float | None:
        return self.node.next_deadline()

    def segments(self, verify: bool = False) -> list[tuple[float, str, TcpSegment]]:
        """(time, direction, segment) of every TCP frame seen; ``verify``: only those whose IPv4 and TCP
        checksums hold (a frame the medium corrupted is recorded as b received it, and b dropped it)."""
        out = []
        for t, data in self.frames:
            if len(data) < 34 or data[12:14] != b"\x08\x00":
                continue
            try:
                ip = ipv4_wire.parse_ipv4(data, ethernet.ETH_HEADER_LEN, verify_checksum=verify)
                if ip.proto != ipv4_wire.PROTO_TCP or ip.is_fragment:
                    continue
                base = checksum.pseudo_base_sum(ip.src, ip.dst, ipv4_wire.PROTO_TCP) if verify else None
                seg = tcp_wire.parse_tcp(ip.payload, base)
            except WireError:
                if not verify:
                    raise
                continue
            direction = "a>b" if bytes(ip.src) == A_IP_B else "b>a"
            out.append((t, direction, seg))
        return out

    def trace(self) -> list[WireSeg]:
        return [WireSeg(d, s.flags, int(s.seq), int(s.ack), len(s.payload)) for _, d, s in self.segments()]

    def ip_ids(self, direction: str = "a>b") -> list[int]:
        out = []
        for _, data in self.frames:
            if len(data) < 34 or data[12:14] != b"\x08\x00":
                continue
            ip = ipv4_wire.parse_ipv4(data, ethernet.ETH_HEADER_LEN, verify_checksum=False)
            if ip.proto == ipv4_wire.PROTO_TCP and ("a>b" if bytes(ip.src) == A_IP_B else "b>a") == direction:
                out.append(ip.ident)
        return out


@dataclass
class Net(StackPair):
    link: SimLink
    a: HostStack
    b: HostStack
    wire: Wire
    target: SoftwareTarget | None
    injector: Injector
    log: dict[str, list[HostEvent]] = field(default_factory=lambda: {"a": [], "b": []})
    b_ip: str = B_IP
    routers: dict[str, Router] = field(default_factory=dict)
    signals: set[str] = field(default_factory=set)  # raised by a session's events, awaited by its programs

    @property
    def now(self) -> float:
        return self.link.now

    @property
    def nic(self) -> SoftwareTarget:
        assert self.target is not None, "this net has no offload target"
        return self.target

    def connect(self, a_client: bool = True, port: int = PORT) -> tuple[TcpSocket, TcpSocket]:
        """Returns (a's socket, b's socket), both ESTABLISHED."""
        server_stack, client_stack = (self.b, self.a) if a_client else (self.a, self.b)
        listener = server_stack.listen(port)
        client = client_stack.connect(self.b_ip if a_client else A_IP, port, self.now)
        self.run_until(lambda: listener.pending > 0 and client.state is TcpState.ESTABLISHED, 30.0)
        server = listener.accept()
        assert server is not None
        return (client, server) if a_client else (server, client)

    def offloaded(self, sock: TcpSocket) -> bool:
        return sock.offload_state is OffloadState.OFFLOADED

    def wait_offloaded(self, sock: TcpSocket, timeout: float = 5.0) -> None:
        self.run_until(lambda: self.offloaded(sock), timeout)

    def wait_in_host(self, sock: TcpSocket, timeout: float = 5.0) -> None:
        self.run_until(lambda: sock.offload_state is OffloadState.IN_HOST, timeout)


def make_net(
    seed: int = 1,
    policy: OffloadPolicy | None = ENABLED,
    *,
    offload: bool = True,
    imp_a: Impairments | None = None,
    imp_b: Impairments | None = None,
    config: TcpConfig | None = None,
    config_b: TcpConfig | None = None,
    capacity: int = 64,
    mtu: int = 1500,
    routed: bool = False,
    arp_params: ArpParams | None = None,
    nce_stale: float = 30.0,
    transport: str | None = None,
) -> Net:
    """``offload=False``: ``a`` is a plain HostStack (no target at all), the host-only baseline.
    ``routed``: b is on another subnet behind router R1 (a's gateway); router R2 is on the link too.
    ``arp_params``: a's ARP timers; ``nce_stale``: the target's NceStaleTicks (seconds).
    ``transport``: "inline" (the host calls the SoftwareTarget) or "rings" (the host talks to it through
    the NIC process's arena, rings and codec, both ends in this process: ``nic.loopback``); default
    ``$TCPCHIMNEY_TRANSPORT`` or inline. ``net.target`` is the SoftwareTarget either way."""
    link = SimLink(seed, mtu=mtu)
    mac = bytes.fromhex(A_MAC.replace(":", ""))
    target = SoftwareTarget(capacity=capacity, mac=mac, config=config, nce_stale=nce_stale)
    transport = transport or os.environ.get("TCPCHIMNEY_TRANSPORT", "inline")
    assert transport in TRANSPORTS, transport
    loopback = LoopbackNic(target) if offload and transport == "rings" else None
    b_ip = B_ROUTED_IP if routed else B_IP
    a = HostStack(
        InterfaceConfig.parse(A_MAC, f"{A_IP}/24", gateway=R1_IP if routed else None, mtu=mtu),
        config,
        secret=f"offload-a-{seed}".encode(),
        rng=random.Random(2 * seed + 1),
        arp_params=arp_params,
        target=(loopback.target if loopback is not None else target) if offload else None,
        offload=policy if offload else None,
    )
    b = HostStack(
        InterfaceConfig.parse(B_MAC, f"{b_ip}/24", gateway=R1_IP_B_SIDE if routed else None, mtu=mtu),
        config_b or config,
        secret=f"offload-b-{seed}".encode(),
        rng=random.Random(2 * seed + 2),
    )
    wire = Wire(b)
    if loopback is not None:
        loopback.attach_host(a)
        link.attach(loopback, "a", imp_a)
    elif offload:
        target.attach_host(a)
        link.attach(target, "a", imp_a)
    else:
        link.attach(a, "a", imp_a)
    link.attach(wire, "b", imp_b)
    injector = Injector(wire)
    link.attach(injector, "injector")
    net = Net(link, a, b, wire, target if offload else None, injector, b_ip=b_ip)
    if routed:
        hosts = {A_IP: A_MAC, b_ip: B_MAC}
        net.routers = {
            "r1": Router(R1_MAC, (R1_IP, R1_IP_B_SIDE), hosts),
            "r2": Router(R2_MAC, (R2_IP,), hosts),
        }
        for name, router in net.routers.items():
            link.attach(router, name)
    return net


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


class Stream:
    """One direction of a transfer: writes ``data`` into ``src`` as it accepts, reads ``dst`` into ``got``;
    ``shut``: shut ``src`` down after the last byte."""

    def __init__(self, src: TcpSocket, dst: TcpSocket, data: bytes, shut: bool = False) -> None:
        self.src, self.dst = src, dst
        self.data = memoryview(data)
        self.sent = 0
        self.shut = shut
        self.shut_done = False
        self.got = bytearray()

    def step(self) -> None:
        while self.sent < len(self.data):
            n = self.src.send(self.data[self.sent : self.sent + 64 * 1024])
            if n == 0:
                break
            self.sent += n
        if self.shut and not self.shut_done and self.sent == len(self.data):
            self.src.shutdown()
            self.shut_done = True
        while chunk := self.dst.receive(1 << 20):
            self.got += chunk

    @property
    def done(self) -> bool:
        return len(self.got) >= len(self.data)


def exchange(
    net: Net, streams: list[Stream], timeout: float = 60.0, during: Callable[[], None] | None = None
) -> None:
    """Run until every stream arrived whole; ``during`` is called at each step."""

    def finished() -> bool:
        for s in streams:
            s.step()
        if during is not None:
            during()
        return all(s.done for s in streams)

    net.run_until(finished, timeout)
    for s in streams:
        assert bytes(s.got) == bytes(s.data), f"stream differs: {len(s.got)} of {len(s.data)} bytes"


def read_all(sock: TcpSocket) -> bytes:
    out = bytearray()
    while chunk := sock.receive(1 << 20):
        out += chunk
    return bytes(out)


def ended(net: Net, sock: TcpSocket) -> bool:
    """The application saw the connection end (Closed or ConnectionReset)."""
    return net.has_event(sock, Closed) or net.has_event(sock, ConnectionReset)


def saw_eof(net: Net, sock: TcpSocket) -> bool:
    return net.has_event(sock, PeerClosed) and sock.readable == 0


# ---------------------------------------------------------------------------------------------- scripts


class App:
    """One side of a scripted application: ``program(app)`` is a generator that yields whenever it must
    wait for the network; every byte read is appended to ``got``."""

    def __init__(self, net: Net, sock: TcpSocket, program: Callable[[App], object]) -> None:
        self.net, self.sock = net, sock
        self.got = bytearray()  # every byte read, in order
        self.out = bytearray()  # every byte the socket accepted, in order
        self.done = False
        self.error: str | None = None  # the error that ended the program (a reset connection), if any
        self._gen = program(self)  # type: ignore[assignment]

    def step(self) -> None:
        if not self.done:
            try:
                next(self._gen)  # type: ignore[call-overload]
            except StopIteration:
                self.done = True
            except ConnectionClosedError as e:  # what an application sees of a reset: its call fails
                self.error = type(e).__name__
                self.done = True

    def _read(self) -> None:
        while chunk := self.sock.receive(1 << 20):
            self.got += chunk

    def send_all(self, data: bytes):  # type: ignore[no-untyped-def]
        view, sent = memoryview(data), 0
        while True:
            while sent < len(data):
                n = self.sock.send(view[sent : sent + 64 * 1024])
                if n == 0:
                    break
                self.out += view[sent : sent + n]
                sent += n
            self._read()  # never deadlock against a peer that writes too
            if sent == len(data):
                return
            yield

    def read_exact(self, n: int):  # type: ignore[no-untyped-def]
        """Read ``n`` bytes, or until the connection ended (a reset: no more bytes will come)."""
        want = len(self.got) + n
        while True:
            self._read()
            if len(self.got) >= want or ended(self.net, self.sock):
                return
            yield

    def read_eof(self):  # type: ignore[no-untyped-def]
        while True:
            self._read()
            if saw_eof(self.net, self.sock) or ended(self.net, self.sock):
                return
            yield

    def wait_for(self, signal: str):  # type: ignore[no-untyped-def]
        """Wait until a session event raised ``signal`` (the scenario is ready for what comes next)."""
        while signal not in self.net.signals:
            yield

    def sleep(self, seconds: float):  # type: ignore[no-untyped-def]
        """Do nothing (read nothing: the receive window closes) for ``seconds`` of virtual time."""
        until = self.net.now + seconds
        self.net.injector.wake(until)
        while self.net.now < until:
            yield


def bulk(data: bytes, stall: float = 0.0) -> Program:
    """Idle ``stall`` seconds (no reads, no writes), then write ``data``, shut down, read to EOF, close."""

    def run(app: App) -> Generator[None, None, None]:
        if stall:
            yield from app.sleep(stall)
        yield from app.send_all(data)
        app.sock.shutdown()
        yield from app.read_eof()
        app.sock.close()

    return run


def request_rounds(seed: int, sizes: list[tuple[int, int]], gap: float = 0.0) -> tuple[Program, Program]:
    """(client, server) programs: per (request, response) size pair the client sends a request and reads
    the response, ``gap`` seconds apart; then the client half-closes and both close after EOF."""

    def client(app: App) -> Generator[None, None, None]:
        for i, (req, resp) in enumerate(sizes):
            yield from app.send_all(payload(req, seed * 100 + i))
            yield from app.read_exact(resp)
            if gap:
                yield from app.sleep(gap)
        app.sock.shutdown()
        yield from app.read_eof()
        app.sock.close()

    def server(app: App) -> Generator[None, None, None]:
        for i, (req, resp) in enumerate(sizes):
            yield from app.read_exact(req)
            yield from app.send_all(payload(resp, seed * 100 + 50 + i))
        yield from app.read_eof()
        app.sock.shutdown()
        app.sock.close()

    return client, server


def run_apps(
    net: Net, apps: list[App], timeout: float = 120.0, during: Callable[[], None] | None = None
) -> None:
    def finished() -> bool:
        for app in apps:
            app.step()
        if during is not None:
            during()
        return all(app.done for app in apps)

    net.run_until(finished, timeout)


# ---------------------------------------------------------------------------------------------- routers


class Router(OutboxNode):
    """A next hop on the link: answers ARP for its addresses and forwards every IPv4 frame sent to its MAC
    to the destination host's MAC (``hosts``), unchanged above Ethernet. ``drop_from``: source MACs whose
    frames it no longer forwards (a route that stopped working); ``forwarded`` counts per source MAC."""

    def __init__(self, mac: str, ips: tuple[str, ...], hosts: dict[str, str]) -> None:
        from tcpchimney.host.interface import ip_bytes, mac_bytes

        super().__init__()
        self.mac = mac_bytes(mac)
        self.ips = {ip_bytes(ip) for ip in ips}
        self.hosts = {ip_bytes(ip): mac_bytes(m) for ip, m in hosts.items()}
        self.drop_from: set[bytes] = set()
        self.forwarded: dict[bytes, int] = {}

    def handle_frame(self, frame: Frame, now: float) -> None:
        from tcpchimney.wire import arp as arp_wire

        data = frame.tobytes()
        dst, src, kind = data[:6], data[6:12], int.from_bytes(data[12:14], "big")
        if kind == ethernet.ETHERTYPE_ARP:
            pkt = arp_wire.parse_arp(data, ethernet.ETH_HEADER_LEN)
            if pkt.op == arp_wire.ARP_REQUEST and pkt.tpa in self.ips:
                reply = arp_wire.emit_arp_reply(self.mac, pkt.tpa, pkt.sha, pkt.spa)
                self.outbox.append(Frame(ethernet.emit_ethernet(pkt.sha, self.mac, kind) + reply))
            return
        if dst != self.mac or kind != ethernet.ETHERTYPE_IPV4 or src in self.drop_from:
            return
        host = self.hosts.get(data[30:34])  # the IPv4 destination address
        if host is not None:
            self.forwarded[src] = self.forwarded.get(src, 0) + 1
            self.outbox.append(Frame(host + self.mac + data[12:]))


# ---------------------------------------------------------------------------------------------- injection


class Injector(OutboxNode):
    """A node on the link that puts hand-built frames on it (an attacker, a router's ICMP, a peer's URG), and
    the applications' alarm clock: a sleeping application or a timed event must wake the link up even when
    no stack has anything scheduled."""

    def __init__(self, wire: Wire) -> None:
        super().__init__()
        self.wire = wire
        self.alarms: list[float] = []

    def handle_timer(self, now: float) -> None:
        self.alarms = [t for t in self.alarms if t > now]

    def next_deadline(self) -> float | None:
        return min(self.alarms, default=None)

    def send(self, frame: bytes) -> None:
        self.wire.injected.append(frame)
        super().send(frame)

    def wake(self, at: float) -> None:
        self.alarms.append(at)


def inject(net: Net, inj: Injector, frame: bytes, settle: float = 0.01) -> None:
    """Put ``frame`` on the link and let everything it causes happen (the link collects a node's frames
    when it next steps; the first run only gets it there)."""
    inj.send(frame)
    net.run_for(settle / 2)
    net.run_for(settle / 2)


def add_injector(net: Net) -> Injector:
    return net.injector


def tcp_frame(
    seg: TcpSegment,
    *,
    src_ip: bytes = B_IP_B,
    dst_ip: bytes = A_IP_B,
    src_mac: str = B_MAC,
    dst_mac: str = A_MAC,
) -> bytes:
    """A complete Ethernet + IPv4 + TCP frame with correct checksums (by default from b to a)."""
    from tcpchimney.host.interface import mac_bytes
    from tcpchimney.wire import checksum

    body = tcp_wire.emit_tcp(seg, checksum.pseudo_base_sum(src_ip, dst_ip, ipv4_wire.PROTO_TCP))
    ip = ipv4_wire.emit_ipv4(src_ip, dst_ip, ipv4_wire.PROTO_TCP, len(body), 4242)
    eth = ethernet.emit_ethernet(mac_bytes(dst_mac), mac_bytes(src_mac), ethernet.ETHERTYPE_IPV4)
    return eth + ip + body


def from_b(
    b: TcpSocket, flags: int, payload_: bytes = b"", seq_offset: int = 0, urgent: int = 0
) -> TcpSegment:
    """A segment as b's connection would send it now (its SND.NXT + ``seq_offset``, its RCV.NXT)."""
    from tcpchimney.wire.seq import SeqNum
    from tcpchimney.wire.tcp import TcpOptions

    return TcpSegment(
        b.local_port,
        b.remote_port,
        SeqNum(int(b.conn.snd_nxt) + seq_offset),
        b.conn.rcv_nxt,
        flags,
        65535,
        payload_,
        TcpOptions(),
        urgent,
    )


def frag_needed(a_sock: TcpSocket, seq: int, mtu: int) -> bytes:
    """A router's ICMP fragmentation-needed for a segment ``a_sock`` sent at ``seq`` (RFC 1191)."""
    quoted = bytes(IP(src=A_IP, dst=B_IP, flags="DF") / TCP(sport=a_sock.local_port, dport=a_sock.remote_port,
                                                             seq=seq))[:28]  # fmt: skip
    icmp = ICMP(type=3, code=4, nexthopmtu=mtu) / Raw(quoted)
    return bytes(Ether(src=B_MAC, dst=A_MAC) / IP(src="198.18.0.254", dst=A_IP) / icmp)


def arp_announce(mac: str) -> bytes:
    """A gratuitous ARP: the peer's address is now at ``mac``."""
    pkt = Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=1, hwsrc=mac, psrc=B_IP, hwdst="00:00:00:00:00:00", pdst=B_IP
    )
    return bytes(pkt)


def invalidate_neighbor(net: Net) -> SharedObject:
    """Spec 3.4 router change with the optional invalidate first (the host's own ``set_gateway`` relinks
    without it, see test_spec9_data): the InvalidateOffload of the offloaded neighbor is submitted through
    the contract as the host's manager would, and the manager forgets the neighbor (new offloads get a
    fresh one). Its connections stop and ask for the upload (INVALID_STATE). Returns the old neighbor for
    ``retire_neighbor``."""
    mgr = net.a._offload
    assert mgr is not None
    (neighbor,) = [o for o in mgr._neighbors.values() if o.target_handle is not None]
    tree = build_tree([(LinkedObject(neighbor.target_handle, neighbor.handle), None, None)])
    mgr._submit(InvalidateOffload(mgr._rid(), tree), _Pending("data", None))
    mgr._drop_shared(neighbor)
    return neighbor


def retire_neighbor(net: Net, neighbor: SharedObject) -> bool:
    """Spec 3.4 router change, last step: terminate the invalidated neighbor once no path hangs on it and its
    invalidate completed (False until then)."""
    mgr = net.a._offload
    assert mgr is not None and neighbor.target_handle is not None
    rec = mgr.registry.record(neighbor.handle)
    if rec.dependents or rec.pending_calls:
        return False
    tree = build_tree([(LinkedObject(neighbor.target_handle, neighbor.handle), None, None)])
    mgr._submit(TerminateOffload(mgr._rid(), tree), _Pending("terminate", None, (neighbor,)))
    return True


# ---------------------------------------------------------------------------------------------- sessions
# A session: application programs for each side of one or more connections, timed network/administrative
# events, run host-only ("host": no target), offloaded from establishment ("offload") or with uploads and
# re-offloads at given points ("handoff"). The differential tests compare what the applications saw.

Program = Callable[[App], Generator[None, None, None]]

CLEAN = Impairments(delay=0.002, bandwidth=10e6)
LOSSY = Impairments(loss=0.02, reorder=0.03, duplicate=0.02, delay=0.002, bandwidth=10e6)
PROFILES = {"clean": CLEAN, "lossy": LOSSY}
BIG = TcpConfig()  # 1 MiB buffers
MODES = ("host", "offload", "handoff")


@dataclass
class Ctx:
    """What a session's events act on."""

    net: Net
    mode: str
    profile: str
    pairs: list[tuple[TcpSocket, TcpSocket]]  # (a's socket, b's socket) per connection
    start: float
    notes: dict[str, Any] = field(default_factory=dict)  # what events saw, for the scenario's checks
    pinned: bool = False  # hand-off points wait: the scenario needs the connections where they are

    @property
    def offload(self) -> bool:
        return self.mode != "host"

    def entry(self, i: int = 0) -> TcpEntry | None:
        """The target's entry of connection ``i``, if it holds it."""
        off = self.pairs[i][0].offload
        if self.net.target is None or off is None or off.ctx is None:
            return None
        return self.net.target.table.conns.get(off.ctx)

    def engine(self, i: int = 0) -> TcpConnection:
        """The engine that runs connection ``i`` now: the target's or the host's."""
        entry = self.entry(i)
        return entry.conn if entry is not None else self.pairs[i][0].conn


@dataclass(frozen=True)
class Event:
    at: float  # seconds after the connections were established
    act: Callable[[Ctx], bool | None]  # False: not yet (asked again at each step; later events wait)


@dataclass(frozen=True)
class Session:
    programs: Callable[[int], list[tuple[Program, Program]]]  # from the seed: (a's, b's) per connection
    events: tuple[Event, ...] = ()
    a_client: bool = True
    config: TcpConfig = BIG
    config_b: TcpConfig | None = None
    capacity: int = 64  # entries the target has; it announces 64 (so the host offers, the target refuses)
    policy: OffloadPolicy = ENABLED  # the offload modes' policy


@dataclass
class Outcome:
    mode: str
    net: Net
    apps: list[tuple[App, App]]
    pairs: list[tuple[TcpSocket, TcpSocket]]
    notes: dict[str, Any]
    handoffs: int

    def streams(self) -> list[tuple[bytes, bytes]]:
        """What a and b read, per connection."""
        return [(bytes(x.got), bytes(y.got)) for x, y in self.apps]

    def ends(self) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
        """The end each application saw, per connection: PeerClosed / ConnectionReset / Closed events, then
        the error that stopped its program, if any."""
        return [(self._ends(x), self._ends(y)) for x, y in self.apps]

    def _ends(self, app: App) -> tuple[str, ...]:
        kinds = (PeerClosed, ConnectionReset, Closed)
        seen = tuple(type(e).__name__ for e in self.net.tcp_events(app.sock) if isinstance(e, kinds))
        return seen + ((app.error,) if app.error else ())

    def states(self) -> list[tuple[TcpState, TcpState]]:
        return [(a.state, b.state) for a, b in self.pairs]

    @property
    def trace(self) -> list[WireSeg]:
        return self.net.wire.trace()

    def traces(self) -> list[list[WireSeg]]:
        """The wire trace of each connection."""
        return [
            [WireSeg(d, s.flags, int(s.seq), int(s.ack), len(s.payload)) for d, s in self.segments(a)]
            for a, _ in self.pairs
        ]

    def segments(self, a: TcpSocket, verify: bool = False) -> list[tuple[str, TcpSegment]]:
        """(direction, segment) of the connection of ``a``'s socket, in wire order (``verify``: see
        ``Wire.segments``)."""
        ports = {(a.local_port, a.remote_port): "a>b", (a.remote_port, a.local_port): "b>a"}
        segments = self.net.wire.segments(verify)
        return [(ports[k], s) for _, _, s in segments if (k := (s.src_port, s.dst_port)) in ports]


def run_session(
    session: Session,
    seed: int,
    mode: str,
    profile: str = "clean",
    toggles: tuple[float, ...] = (),
    imp: Impairments | None = None,
    transport: str | None = None,
) -> Outcome:
    """``toggles`` (mode "handoff" only): at each of these times (seconds after establishment) every
    connection of ``a`` that is offloaded is uploaded, every one on the host is offloaded. ``imp``: the
    impairments of both directions instead of the named ``profile``'s. ``transport``: as ``make_net``'s."""
    assert mode in MODES and (mode == "handoff" or not toggles)
    imp = PROFILES[profile] if imp is None else imp
    offload = mode != "host"
    net = make_net(seed, session.policy if offload else DISABLED, offload=offload, imp_a=imp, imp_b=imp,
                   config=session.config, config_b=session.config_b, transport=transport)  # fmt: skip
    if net.target is not None:
        net.target.table.capacity = session.capacity
    programs = session.programs(seed)
    pairs = [net.connect(session.a_client, port=PORT + i) for i in range(len(programs))]
    ctx = Ctx(net, mode, profile, pairs, net.now)
    apps = [(App(net, a, pa), App(net, b, pb)) for (a, b), (pa, pb) in zip(pairs, programs, strict=True)]
    events = sorted(session.events, key=lambda e: e.at)
    points = sorted(toggles)
    for t in [e.at for e in events] + points:
        net.injector.wake(ctx.start + t)
    handoffs = [0]

    def during() -> None:
        while events and net.now - ctx.start >= events[0].at and events[0].act(ctx) is not False:
            events.pop(0)
        while points and net.now - ctx.start >= points[0]:
            points.pop(0)
            if not ctx.pinned:
                handoffs[0] += sum(_toggle(net, a) for a, _ in pairs)

    flat = [app for pair in apps for app in pair]
    run_apps(net, flat, timeout=300.0, during=during)
    net.run_until(lambda: (during(), all(ended(net, app.sock) for app in flat))[1], 300.0)
    assert not events, f"events that never happened: {events}"
    if net.target is not None:
        net.run_until(lambda: len(net.nic.table) == 0, 10.0)  # nothing stays behind on the target
    return Outcome(mode, net, apps, pairs, ctx.notes, handoffs[0])


def _toggle(net: Net, a: TcpSocket) -> int:
    if a.offload_state is OffloadState.OFFLOADED:
        return int(net.a.upload(a, Reason.ADMIN))
    if a.offload_state is OffloadState.IN_HOST and a.state is not TcpState.CLOSED:
        return int(net.a.offload_now(a) is None)
    return 0


def check_streams(o: Outcome, reset: bool = False) -> None:
    """Each side read what the other wrote (``reset``: a prefix of it: a reset discards the rest), every
    connection is CLOSED and ended as it should, and neither stack counted an internal error."""
    for (x, y), ends in zip(o.apps, o.ends(), strict=True):
        if reset:
            assert bytes(y.got) == bytes(x.out[: len(y.got)]) and bytes(x.got) == bytes(y.out[: len(x.got)])
        else:
            assert y.got == x.out, f"b read {len(y.got)} bytes, a wrote {len(x.out)}"
            assert x.got == y.out, f"a read {len(x.got)} bytes, b wrote {len(y.out)}"
            assert ends[0][-1] == "Closed" and ends[1][-1] == "Closed", ends
            assert "ConnectionReset" not in ends[0] + ends[1]
    assert all(s == (TcpState.CLOSED, TcpState.CLOSED) for s in o.states()), o.states()
    assert o.net.a.internal_errors == [] and o.net.b.internal_errors == []


def check_wire_consistent(o: Outcome, resets: bool = False) -> None:
    """Per connection: every payload byte on the wire is the stream's byte at that sequence number; FINs end
    the streams; resets only after the sender's FIN (``resets``: anywhere, the scenario aborts)."""
    for (x, y), (a, _) in zip(o.apps, o.pairs, strict=True):
        segments = o.segments(a, verify=True)  # what the medium corrupted carried nothing
        _check_connection_wire(segments, {"a>b": bytes(x.out), "b>a": bytes(y.out)}, resets)


def _check_connection_wire(
    segments: list[tuple[str, TcpSegment]], streams: dict[str, bytes], resets: bool
) -> None:
    isn: dict[str, SeqNum] = {}
    fin_acked: set[str] = set()  # directions whose FIN the other side has acknowledged
    for direction, seg in segments:
        if seg.flags & SYN:
            isn[direction] = seg.seq
            continue
        data = streams[direction]
        offset = seg.seq.dist(isn[direction] + 1)
        back = "b>a" if direction == "a>b" else "a>b"
        if seg.flags & ACK and back in isn and seg.ack.dist(isn[back] + 1) == len(streams[back]) + 1:
            fin_acked.add(back)
        if seg.flags & RST:
            # Without an abort, only a closed connection answering a late duplicate or reordered segment,
            # after its whole stream and FIN were acknowledged. Its SEQ is the late segment's ACK (RFC 9293
            # 3.10.7.1), which may lie anywhere in the stream when the segment was reordered.
            assert resets or direction in fin_acked, (
                f"{direction} reset the connection at {offset} of {len(data)}"
            )
            assert 0 <= offset <= len(data) + 1, (direction, offset)
            continue
        if not seg.payload and not seg.flags & FIN:
            # An ACK (past our FIN once it is sent), or a zero-window probe at SND.UNA - 1.
            assert -1 <= offset <= len(data) + 1, (direction, offset)
            continue
        assert offset >= 0 and offset + len(seg.payload) <= len(data), (direction, offset, len(seg.payload))
        assert seg.payload == data[offset : offset + len(seg.payload)], (
            f"{direction} bytes differ at {offset}"
        )
        if seg.flags & FIN:
            assert offset + len(seg.payload) == len(data), f"{direction} FIN at {offset + len(seg.payload)}"
