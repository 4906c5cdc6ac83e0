"""The one interface a HostStack owns: MAC, IPv4 address and prefix, default gateway, MTU, device features."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from tcpchimney.wire.frame import DeviceFeatures

BROADCAST_MAC = b"\xff" * 6
ZERO_MAC = b"\x00" * 6
IPV4_HEADER_LEN = 20
TCP_HEADER_LEN = 20
TCP_MAX_HEADER_LEN = 60
MIN_MTU = 68  # RFC 791: every host must accept a 68-byte datagram unfragmented


def ip_bytes(address: str | bytes) -> bytes:
    """An IPv4 address as 4 bytes; raises ValueError on anything else."""
    if isinstance(address, bytes):
        if len(address) != 4:
            raise ValueError(f"an IPv4 address is 4 bytes, got {len(address)}")
        return address
    return ipaddress.IPv4Address(address).packed


def parse_interface(text: str) -> ipaddress.IPv4Interface:
    """``198.18.0.2/24``: an IPv4 address and its prefix length. Without a prefix the subnet (and so which
    destinations are on-link) would be a guess, so it is refused, as is anything that is not an address."""
    address, slash, _ = text.partition("/") if isinstance(text, str) else ("", "", "")
    try:
        ipaddress.IPv4Address(address)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an IPv4 address with a prefix length (like 198.18.0.2/24)"
        ) from None
    if not slash:
        raise ValueError(f"{text} has no prefix length: write it as {text}/PREFIX (like {text}/24)")
    try:
        return ipaddress.IPv4Interface(text)
    except ValueError:
        raise ValueError(f"{text!r} has no valid prefix length after its '/' (0-32, like /24)") from None


def ip_str(address: bytes) -> str:
    return str(ipaddress.IPv4Address(address))


def mac_bytes(address: str | bytes) -> bytes:
    if isinstance(address, bytes):
        if len(address) != 6:
            raise ValueError(f"a MAC address is 6 bytes, got {len(address)}")
        return address
    parts = address.replace("-", ":").split(":")
    if len(parts) != 6:
        raise ValueError(f"not a MAC address: {address!r}")
    return bytes(int(p, 16) for p in parts)


def mac_str(address: bytes) -> str:
    return ":".join(f"{b:02x}" for b in address)


@dataclass(frozen=True, slots=True)
class InterfaceConfig:
    mac: bytes
    ip: bytes  # our IPv4 address, 4 bytes
    prefix_len: int
    gateway: bytes | None = None  # default route next hop; None: only on-link destinations are reachable
    mtu: int = 1500
    features: DeviceFeatures = field(default_factory=DeviceFeatures)

    def __post_init__(self) -> None:
        if len(self.mac) != 6 or self.mac[0] & 1:
            raise ValueError("the interface MAC must be a 6-byte unicast address")
        if len(self.ip) != 4:
            raise ValueError("the interface IP must be 4 bytes")
        if not 0 <= self.prefix_len <= 32:
            raise ValueError(f"prefix length {self.prefix_len} out of range")
        if not MIN_MTU <= self.mtu <= 65535:
            raise ValueError(f"MTU {self.mtu} out of range [{MIN_MTU}, 65535]")
        if self.gateway is not None and not self.on_link(self.gateway):
            raise ValueError("the gateway must be on the interface's subnet")

    @classmethod
    def parse(
        cls,
        mac: str,
        address: str,
        gateway: str | None = None,
        mtu: int = 1500,
        features: DeviceFeatures | None = None,
    ) -> InterfaceConfig:
        """``InterfaceConfig.parse("02:00:00:00:00:01", "198.18.0.1/24", gateway="198.18.0.254")``."""
        iface = parse_interface(address)
        if gateway is not None and ip_bytes(gateway) == iface.ip.packed:
            raise ValueError(f"the gateway {gateway} is the interface's own address {iface.ip}")
        return cls(
            mac=mac_bytes(mac),
            ip=iface.ip.packed,
            prefix_len=iface.network.prefixlen,
            gateway=ip_bytes(gateway) if gateway is not None else None,
            mtu=mtu,
            features=features or DeviceFeatures(),
        )

    @property
    def netmask(self) -> int:
        return (0xFFFFFFFF << (32 - self.prefix_len)) & 0xFFFFFFFF

    @property
    def ip_int(self) -> int:
        return int.from_bytes(self.ip, "big")

    @property
    def broadcast(self) -> bytes:
        """The directed broadcast address of our subnet."""
        return ((self.ip_int & self.netmask) | (~self.netmask & 0xFFFFFFFF)).to_bytes(4, "big")

    def on_link(self, address: bytes) -> bool:
        return (int.from_bytes(address, "big") & self.netmask) == (self.ip_int & self.netmask)

    def next_hop(self, dst: bytes) -> bytes | None:
        """Routing: on-link destinations directly, the rest through the gateway (None: unreachable)."""
        if self.on_link(dst):
            return dst
        return self.gateway

    @property
    def mss(self) -> int:
        """The MSS we advertise: MTU minus the fixed IPv4 and TCP headers (RFC 9293 3.7.1, RFC 6691)."""
        return self.mtu - IPV4_HEADER_LEN - TCP_HEADER_LEN

    @property
    def max_segment_payload(self) -> int:
        """Largest TCP payload per emitted super-segment when the device does TSO, else 0.

        The IP total length of a super-segment is real (tap-offloads.md), so the payload is bounded by the
        device's limit minus the IPv4 header and the largest TCP header (options may grow with SACK blocks).
        """
        if not self.features.tso:
            return 0
        limit = min(self.features.tso_max, 65535)
        return max(0, limit - IPV4_HEADER_LEN - TCP_MAX_HEADER_LEN)
