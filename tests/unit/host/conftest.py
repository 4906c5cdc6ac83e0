"""Shared helpers for the host-stack tests: stacks, and frames built with scapy (an independent encoder)."""

from __future__ import annotations

import random

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import ARP, Ether

from tcpchimney.host.interface import InterfaceConfig
from tcpchimney.host.stack import HostStack
from tcpchimney.wire.frame import DeviceFeatures, Frame

OUR_MAC = "02:00:00:00:00:01"
OUR_IP = "198.18.0.1"
PEER_MAC = "02:00:00:00:00:02"
PEER_IP = "198.18.0.2"
GATEWAY_IP = "198.18.0.254"
GATEWAY_MAC = "02:00:00:00:00:fe"


def make_stack(
    mac: str = OUR_MAC,
    address: str = OUR_IP + "/24",
    gateway: str | None = GATEWAY_IP,
    mtu: int = 1500,
    features: DeviceFeatures | None = None,
    seed: int = 1,
    **kwargs: object,
) -> HostStack:
    iface = InterfaceConfig.parse(mac, address, gateway=gateway, mtu=mtu, features=features)
    return HostStack(iface, secret=b"secret-" + mac.encode(), rng=random.Random(seed), **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def stack() -> HostStack:
    return make_stack()


def frame(pkt: object) -> Frame:
    return Frame(bytes(pkt))  # type: ignore[call-overload]


def eth_to_us(payload: object, src_mac: str = PEER_MAC) -> Ether:
    return Ether(dst=OUR_MAC, src=src_mac) / payload  # type: ignore[no-any-return]


def echo_request(
    src: str = PEER_IP,
    dst: str = OUR_IP,
    ident: int = 7,
    seq: int = 1,
    payload: bytes = b"ping",
    **ip: object,
) -> Ether:
    return eth_to_us(IP(src=src, dst=dst, **ip) / ICMP(type=8, id=ident, seq=seq) / payload)


def arp_reply(stack: HostStack, ip: str = PEER_IP, mac: str = PEER_MAC, now: float = 0.0) -> None:
    pkt = Ether(dst=OUR_MAC, src=mac) / ARP(op=2, hwsrc=mac, psrc=ip, hwdst=OUR_MAC, pdst=OUR_IP)
    stack.handle_frame(frame(pkt), now)


def learn_peer(stack: HostStack, ip: str = PEER_IP, mac: str = PEER_MAC, now: float = 0.0) -> None:
    """Make the stack know ``ip`` -> ``mac`` the way it happens on a wire: the peer asks for our address."""
    req = Ether(dst="ff:ff:ff:ff:ff:ff", src=mac) / ARP(op=1, hwsrc=mac, psrc=ip, pdst=OUR_IP)
    stack.handle_frame(frame(req), now)
    stack.frames_to_send(now)  # our reply


def sent(stack: HostStack, now: float = 0.0) -> list[Ether]:
    return [Ether(f.tobytes()) for f in stack.frames_to_send(now)]


def events(stack: HostStack) -> list[object]:
    out = []
    while (ev := stack.next_event()) is not None:
        out.append(ev)
    return out
