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

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from stack_pair import StackPair

from tcpchimney.host.arp import ArpParams
from tcpchimney.host.events import HostEvent
from tcpchimney.host.interface import InterfaceConfig
from tcpchimney.host.offload import OffloadState
from tcpchimney.host.policy import OffloadPolicy
from tcpchimney.host.sockets import TcpSocket
from tcpchimney.host.stack import HostStack
from tcpchimney.link.sim import Impairments, SimLink
from tcpchimney.nic.target import SoftwareTarget
from tcpchimney.tcp.config import TcpConfig
from tcpchimney.tcp.events import Closed, ConnectionReset, PeerClosed
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire import ethernet
from tcpchimney.wire import ipv4 as ipv4_wire
from tcpchimney.wire import tcp as tcp_wire
from tcpchimney.wire.frame import Frame
from tcpchimney.wire.tcp import TcpSegment

A_MAC, A_IP = "02:00:00:00:00:01", "198.18.0.1"
B_MAC, B_IP = "02:00:00:00:00:02", "198.18.0.2"
# ``make_net(routed=True)``: b sits on another subnet, reached through router R1 (a's first gateway) or R2.
B_ROUTED_IP = "198.18.1.2"
R1_MAC, R1_IP, R1_IP_B_SIDE = "02:00:00:00:00:f1", "198.18.0.254", "198.18.1.254"
R2_MAC, R2_IP = "02:00:00:00:00:f2", "198.18.0.253"
A_IP_B, B_IP_B = bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2])
PORT = 7
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

    def handle_frame(self, frame: Frame, now: float) -> None:
        self.frames.append((now, frame.tobytes()))
        self.node.handle_frame(frame, now)

    def handle_timer(self, now: float) -> None:
        self.node.handle_timer(now)

    def frames_to_send(self, now: float) -> list[Frame]:
        out = self.node.frames_to_send(now)
        self.frames.extend((now, f.tobytes()) for f in out)
        return out

    def next_deadline(self) -> float | None:
        return self.node.next_deadline()

    def segments(self) -> list[tuple[float, str, TcpSegment]]:
        """(time, direction, segment) of every TCP frame seen, checksums not verified."""
        out = []
        for t, data in self.frames:
            if len(data) < 34 or data[12:14] != b"\x08\x00":
                continue
            ip = ipv4_wire.parse_ipv4(data, ethernet.ETH_HEADER_LEN, verify_checksum=False)
            if ip.proto != ipv4_wire.PROTO_TCP or ip.is_fragment:
                continue
            direction = "a>b" if bytes(ip.src) == A_IP_B else "b>a"
            out.append((t, direction, tcp_wire.parse_tcp(ip.payload)))
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
    log: dict[str, list[HostEvent]] = field(default_factory=lambda: {"a": [], "b": []})
    b_ip: str = B_IP
    routers: dict[str, Router] = field(default_factory=dict)

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
) -> Net:
    """``offload=False``: ``a`` is a plain HostStack (no target at all), the host-only baseline.
    ``routed``: b is on another subnet behind router R1 (a's gateway); router R2 is on the link too.
    ``arp_params``: a's ARP timers; ``nce_stale``: the target's NceStaleTicks (seconds)."""
    link = SimLink(seed, mtu=mtu)
    mac = bytes.fromhex(A_MAC.replace(":", ""))
    target = SoftwareTarget(capacity=capacity, mac=mac, config=config, nce_stale=nce_stale)
    b_ip = B_ROUTED_IP if routed else B_IP
    a = HostStack(
        InterfaceConfig.parse(A_MAC, f"{A_IP}/24", gateway=R1_IP if routed else None, mtu=mtu),
        config,
        secret=f"offload-a-{seed}".encode(),
        rng=random.Random(2 * seed + 1),
        arp_params=arp_params,
        target=target if offload else None,
        offload=policy if offload else None,
    )
    b = HostStack(
        InterfaceConfig.parse(B_MAC, f"{b_ip}/24", gateway=R1_IP_B_SIDE if routed else None, mtu=mtu),
        config_b or config,
        secret=f"offload-b-{seed}".encode(),
        rng=random.Random(2 * seed + 2),
    )
    wire = Wire(b)
    if offload:
        target.attach_host(a)
        link.attach(target, "a", imp_a)
    else:
        link.attach(a, "a", imp_a)
    link.attach(wire, "b", imp_b)
    net = Net(link, a, b, wire, target if offload else None, b_ip=b_ip)
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
        self._gen = program(self)  # type: ignore[assignment]

    def step(self) -> None:
        if not self.done:
            try:
                next(self._gen)  # type: ignore[call-overload]
            except StopIteration:
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
        want = len(self.got) + n
        while True:
            self._read()
            if len(self.got) >= want:
                return
            yield

    def read_eof(self):  # type: ignore[no-untyped-def]
        while True:
            self._read()
            if saw_eof(self.net, self.sock) or ended(self.net, self.sock):
                return
            yield


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


class Router:
    """A next hop on the link: answers ARP for its addresses and forwards every IPv4 frame sent to its MAC
    to the destination host's MAC (``hosts``), unchanged above Ethernet. ``drop_from``: source MACs whose
    frames it no longer forwards (a route that stopped working); ``forwarded`` counts per source MAC."""

    def __init__(self, mac: str, ips: tuple[str, ...], hosts: dict[str, str]) -> None:
        from tcpchimney.host.interface import ip_bytes, mac_bytes

        self.mac = mac_bytes(mac)
        self.ips = {ip_bytes(ip) for ip in ips}
        self.hosts = {ip_bytes(ip): mac_bytes(m) for ip, m in hosts.items()}
        self.drop_from: set[bytes] = set()
        self.forwarded: dict[bytes, int] = {}
        self.outbox: list[Frame] = []

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

    def handle_timer(self, now: float) -> None:
        pass

    def frames_to_send(self, now: float) -> list[Frame]:
        out, self.outbox = self.outbox, []
        return out

    def next_deadline(self) -> float | None:
        return None


# ---------------------------------------------------------------------------------------------- injection


class Injector:
    """A node on the link that puts hand-built frames on it (an attacker, a router's ICMP, a peer's URG)."""

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


def inject(net: Net, inj: Injector, frame: bytes, settle: float = 0.01) -> None:
    """Put ``frame`` on the link and let everything it causes happen (the link collects a node's frames
    when it next steps; the first run only gets it there)."""
    inj.send(frame)
    net.run_for(settle / 2)
    net.run_for(settle / 2)


def add_injector(net: Net) -> Injector:
    inj = Injector()
    net.link.attach(inj, "injector")
    return inj


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
