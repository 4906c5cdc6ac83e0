"""Shared set-up of the scenario tests: host stacks on one ``SimLink``, event logs, a two-way bulk transfer,
and an off-path attacker node that puts hand-built frames on the link.

Module name chosen so that it cannot clash with the plain helper modules of other test folders (pytest puts
each test folder on ``sys.path``; there is no package).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from stack_pair import OutboxNode, StackPair

from tcpchimney.host.events import HostEvent, IncomingConnection
from tcpchimney.host.interface import InterfaceConfig, ip_bytes, mac_bytes
from tcpchimney.host.listener import Listener
from tcpchimney.host.sockets import TcpSocket
from tcpchimney.host.stack import HostStack
from tcpchimney.link.sim import Impairments, SimLink
from tcpchimney.tcp.config import TcpConfig
from tcpchimney.tcp.events import PeerClosed
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire import checksum, ethernet
from tcpchimney.wire import ipv4 as ipv4_wire
from tcpchimney.wire import tcp as tcp_wire
from tcpchimney.wire.frame import DeviceFeatures, Frame
from tcpchimney.wire.seq import SeqNum
from tcpchimney.wire.tcp import TcpOptions, TcpSegment

A_MAC, A_IP = "02:00:00:00:00:01", "198.18.0.1"
B_MAC, B_IP = "02:00:00:00:00:02", "198.18.0.2"
EVIL_MAC, EVIL_IP = "02:00:00:00:00:66", "198.18.0.66"
PORT = 7
MB = 1 << 20


def make_stack(
    mac: str,
    ip: str,
    seed: int,
    config: TcpConfig | None = None,
    features: DeviceFeatures | None = None,
    mtu: int = 1500,
    **kwargs: object,
) -> HostStack:
    iface = InterfaceConfig.parse(mac, f"{ip}/24", mtu=mtu, features=features)
    secret = f"scenario-{ip}-{seed}".encode()
    return HostStack(iface, config, secret=secret, rng=random.Random(seed), **kwargs)  # type: ignore[arg-type]


@dataclass
class Net(StackPair):
    """Two stacks ``a`` (198.18.0.1) and ``b`` (198.18.0.2) on one link; every host event is logged."""

    link: SimLink
    a: HostStack
    b: HostStack
    log: dict[str, list[HostEvent]] = field(default_factory=lambda: {"a": [], "b": []})

    def connect(self, port: int = PORT, listener: Listener | None = None) -> tuple[TcpSocket, TcpSocket]:
        """``a`` connects to ``b``; returns (client, server), both ESTABLISHED."""
        if listener is None:
            listener = self.b.listen(port)
        client = self.a.connect(B_IP, port, self.link.now)
        self.run_until(lambda: listener.pending > 0 and client.state is TcpState.ESTABLISHED, 60.0)
        server = listener.accept()
        assert server is not None
        assert any(isinstance(ev, IncomingConnection) for ev in self.log["b"])
        return client, server

    def drops(self, stack: HostStack) -> dict[str, int]:
        """Every drop counter of ``stack`` that is non-zero, as 'layer.name'."""
        return {
            f"{layer}.{k}": v
            for layer, cs in stack.counters.items()
            for k, v in cs.items()
            if (k.startswith("drop") or k.startswith("engine_drop")) and v
        }


def make_net(
    seed: int,
    imp_a: Impairments | None = None,
    imp_b: Impairments | None = None,
    *,
    offloads: bool = False,
    mtu: int = 1500,
    config: TcpConfig | None = None,
    config_b: TcpConfig | None = None,
    features: DeviceFeatures | None = None,
    pcap: Path | None = None,
    **stack_kwargs: object,
) -> Net:
    link = SimLink(seed, offloads=offloads, mtu=mtu, pcap=pcap)
    a = make_stack(A_MAC, A_IP, 2 * seed + 1, config, features, mtu, **stack_kwargs)
    b = make_stack(B_MAC, B_IP, 2 * seed + 2, config_b or config, features, mtu, **stack_kwargs)
    link.attach(a, "a", imp_a)
    link.attach(b, "b", imp_b)
    return Net(link, a, b)


# ---------------------------------------------------------------------------------------------- bulk


class Pipe:
    """One direction of a transfer: writes ``data`` into ``src`` as the send buffer allows, shuts ``src``
    down after the last byte, and reads ``dst`` into ``got``."""

    def __init__(self, src: TcpSocket, dst: TcpSocket, data: bytes) -> None:
        self.src, self.dst = src, dst
        self.data = memoryview(data)
        self.sent = 0
        self.shut = False
        self.got = bytearray()

    def step(self) -> None:
        while self.sent < len(self.data):
            n = self.src.send(self.data[self.sent : self.sent + 256 * 1024])
            if n == 0:
                break
            self.sent += n
        if self.sent == len(self.data) and not self.shut:
            self.src.shutdown()
            self.shut = True
        while chunk := self.dst.receive(1 << 20):
            self.got += chunk


def two_way_bulk(
    net: Net, client: TcpSocket, server: TcpSocket, size: int, seed: int, timeout: float
) -> None:
    """Each side sends ``size`` random bytes to the other at the same time, then shuts down; asserts that
    both streams arrive byte-exact and both sides saw the other's FIN (end of stream after the last byte)."""
    rnd = random.Random(seed)
    up, down = rnd.randbytes(size), rnd.randbytes(size)
    pipes = (Pipe(client, server, up), Pipe(server, client, down))

    def finished() -> bool:
        for p in pipes:
            p.step()
        return all(net.has_event(p.dst, PeerClosed) and p.dst.readable == 0 for p in pipes)

    net.run_until(finished, timeout)
    for p, want in zip(pipes, (up, down), strict=True):
        assert len(p.got) == len(want), f"{len(p.got)} bytes arrived, {len(want)} were sent"
        assert p.got == want, f"first difference at byte {_first_diff(p.got, want)}"


def _first_diff(a: bytes | bytearray, b: bytes | bytearray) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


# ---------------------------------------------------------------------------------------------- attacker


class Attacker(OutboxNode):
    """A node that sends what the test tells it to and records everything it sees (it is on the segment,
    so it sees all frames; an off-path attacker in the tests only uses what it could guess)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[float, bytes]] = []

    def handle_frame(self, frame: Frame, now: float) -> None:
        self.seen.append((now, frame.tobytes()))


def tcp_frame(
    src_ip: str,
    dst_ip: str,
    seg: TcpSegment,
    *,
    src_mac: str = EVIL_MAC,
    dst_mac: str = B_MAC,
    ident: int = 1,
) -> bytes:
    """A complete Ethernet + IPv4 + TCP frame with correct checksums, built with the wire codecs."""
    src, dst = ip_bytes(src_ip), ip_bytes(dst_ip)
    body = tcp_wire.emit_tcp(seg, checksum.pseudo_base_sum(src, dst, ipv4_wire.PROTO_TCP))
    ip = ipv4_wire.emit_ipv4(src, dst, ipv4_wire.PROTO_TCP, len(body), ident)
    eth = ethernet.emit_ethernet(mac_bytes(dst_mac), mac_bytes(src_mac), ethernet.ETHERTYPE_IPV4)
    return eth + ip + body


def segment(
    sport: int,
    dport: int,
    seq: SeqNum | int,
    ack: SeqNum | int,
    flags: int,
    payload: bytes = b"",
    window: int = 65535,
    options: TcpOptions | None = None,
) -> TcpSegment:
    return TcpSegment(
        sport, dport, SeqNum(int(seq)), SeqNum(int(ack)), flags, window, payload, options or TcpOptions()
    )


def parse_tcp_frames(frames: list[tuple[float, bytes]]) -> list[tuple[float, bytes, bytes, TcpSegment]]:
    """(time, src ip, dst ip, segment) of every TCP frame in ``frames`` (checksums not verified)."""
    out = []
    for t, data in frames:
        if len(data) < 34 or data[12:14] != b"\x08\x00":
            continue
        ip = ipv4_wire.parse_ipv4(data, ethernet.ETH_HEADER_LEN, verify_checksum=False)
        if ip.proto != ipv4_wire.PROTO_TCP or ip.is_fragment:
            continue
        out.append((t, ip.src, ip.dst, tcp_wire.parse_tcp(ip.payload)))
    return out
