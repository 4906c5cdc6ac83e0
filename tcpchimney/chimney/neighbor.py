"""The neighbor state object (chimney-spec 2.2): the next hop's link-layer state, shared by many paths."""

from __future__ import annotations

from dataclasses import dataclass

from tcpchimney.chimney._check import byte_string, seconds
from tcpchimney.chimney._check import int_range as _int
from tcpchimney.chimney.errors import FieldRangeError

MAX_VLAN_ID = 4094  # 802.1Q: VID 4095 is reserved


@dataclass(frozen=True, slots=True)
class NeighborConst:
    """Never changes while offloaded. ``source_mac`` None = the interface MAC (DlSourceAddress NULL)."""

    source_mac: bytes | None = None
    vlan_id: int = 0  # 0 = the interface's configured VLANs (spec 5.6)

    def __post_init__(self) -> None:
        if self.source_mac is not None:
            byte_string(self, "source_mac", self.source_mac, (6,))
            if self.source_mac[0] & 1:
                raise FieldRangeError(
                    f"NeighborConst.source_mac must be unicast, got {self.source_mac.hex(':')}"
                )
        _int(self, "vlan_id", self.vlan_id, 0, MAX_VLAN_ID)


@dataclass(frozen=True, slots=True)
class NeighborCached:
    """Host-owned; changed by an update after ARP learns a new MAC for the same next-hop IP (spec 3.3)."""

    dest_mac: bytes  # DlDestinationAddress: the next hop's MAC
    host_reachability_delta: float = 0.0  # HRD, seconds: host_now - HRD = last host-confirmed reachability

    def __post_init__(self) -> None:
        byte_string(self, "dest_mac", self.dest_mac, (6,))
        seconds(self, "host_reachability_delta", self.host_reachability_delta)


@dataclass(frozen=True, slots=True)
class NeighborDelegated:
    """Target-owned: NRD, seconds since the target last saw forward progress through this neighbor (4.6)."""

    nic_reachability_delta: float = 0.0

    def __post_init__(self) -> None:
        seconds(self, "nic_reachability_delta", self.nic_reachability_delta)


@dataclass(frozen=True, slots=True)
class NeighborState:
    """All three parts, in order (NeighborOffloadState)."""

    const: NeighborConst
    cached: NeighborCached
    delegated: NeighborDelegated = NeighborDelegated()
