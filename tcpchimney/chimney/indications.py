"""Target -> host indications (chimney-spec 4.3, 4.5, 4.6). Per-connection ones carry the host's handle.

Indications that NDIS makes as synchronous upcalls returning a value (receive indicate, neighbor reachability
query) carry an ``indication_id``; the host answers with a request (``ReturnReceive``, ``ReachabilityReply``)
naming it. The target makes no further indication of that kind on that object until the answer arrives.
"""

from __future__ import annotations

from dataclasses import dataclass

from tcpchimney.chimney._check import U32, U64, is_bytes, seconds
from tcpchimney.chimney._check import int_range as _int
from tcpchimney.chimney.errors import FieldRangeError
from tcpchimney.chimney.reason import Reason, ReasonGroup
from tcpchimney.wire.seq import SeqNum


def _handle(owner: object, *names: str) -> None:
    for name in names:
        _int(owner, name, getattr(owner, name), 0, U64)


@dataclass(frozen=True, slots=True)
class ReceiveIndication:
    """In-order data with no posted buffer to put it in (NdisTcpOffloadReceiveHandler, spec 4.1).

    ``seq`` is the sequence number of its first byte (added beyond NDIS): every byte the host took so far
    ends just before it, so the host checks each indication against its own count of what it received and
    a replayed, reordered or skipping indication is a target fault, never bytes handed to the application
    twice or out of place."""

    host_handle: int
    indication_id: int
    data: bytes
    seq: SeqNum

    def __post_init__(self) -> None:
        _handle(self, "host_handle", "indication_id")
        is_bytes(self, "data", self.data)
        if not self.data:
            raise FieldRangeError("ReceiveIndication.data must not be empty")
        if not isinstance(self.seq, SeqNum):
            raise FieldRangeError(f"ReceiveIndication.seq must be a SeqNum, got {self.seq!r}")


@dataclass(frozen=True, slots=True)
class PeerDisconnect:
    """The peer's FIN, indicated only after every earlier byte was delivered (TcpIndicateDisconnect).

    ``seq`` is the sequence number of the FIN (added beyond NDIS): the RCV.NXT it arrived at, so every byte
    the host took ends just before it. The host checks it against its own count of what it received, as
    for a ReceiveIndication: a FIN indicated early, replayed or moved from another connection is a target
    fault, never an end of stream the application sees before the bytes that precede it."""

    host_handle: int
    seq: SeqNum

    def __post_init__(self) -> None:
        _handle(self, "host_handle")
        if not isinstance(self.seq, SeqNum):
            raise FieldRangeError(f"PeerDisconnect.seq must be a SeqNum, got {self.seq!r}")


@dataclass(frozen=True, slots=True)
class PeerReset:
    """An acceptable RST arrived; outstanding calls complete with REQUEST_ABORTED (TcpIndicateAbort)."""

    host_handle: int

    def __post_init__(self) -> None:
        _handle(self, "host_handle")


@dataclass(frozen=True, slots=True)
class UploadRequest:
    """The target asks the host to upload this connection (TcpIndicateRetrieve, spec 4.3)."""

    host_handle: int
    reason: Reason

    def __post_init__(self) -> None:
        _handle(self, "host_handle")
        if not isinstance(self.reason, Reason) or self.reason.group is not ReasonGroup.TARGET_UPLOAD:
            raise FieldRangeError(f"UploadRequest.reason must be a target-upload reason, got {self.reason!r}")


@dataclass(frozen=True, slots=True)
class SendBacklogChanged:
    """A new preferred number of bytes outstanding at the target (TcpIndicateSendBacklogChange)."""

    host_handle: int
    backlog: int

    def __post_init__(self) -> None:
        _handle(self, "host_handle")
        _int(self, "backlog", self.backlog, 0, U32)


@dataclass(frozen=True, slots=True)
class NeighborReachabilityQuery:
    """No forward progress through a neighbor for NceStaleTicks: is it still reachable? (spec 4.6)."""

    host_handle: int
    indication_id: int
    nic_reachability_delta: float

    def __post_init__(self) -> None:
        _handle(self, "host_handle", "indication_id")
        seconds(self, "nic_reachability_delta", self.nic_reachability_delta)


@dataclass(frozen=True, slots=True)
class TargetCapabilities:
    """What the target can take (NDIS_TCP_CONNECTION_OFFLOAD); a change arrives only with TargetResumed."""

    ipv4: bool = True
    ipv6: bool = False
    sack: bool = True
    capacity: int = 0  # TcpConnectionOffloadCapacity; 0 = offers no connection offload

    def __post_init__(self) -> None:
        _int(self, "capacity", self.capacity, 0, U32)


@dataclass(frozen=True, slots=True)
class TargetPaused:
    """Start no new offloads; offloaded connections continue (NDIS_STATUS_OFFLOAD_PAUSE)."""


@dataclass(frozen=True, slots=True)
class TargetResumed:
    """Offloads may start again under ``capabilities`` (NDIS_STATUS_OFFLOAD_RESUME)."""

    capabilities: TargetCapabilities


@dataclass(frozen=True, slots=True)
class UploadAllRequested:
    """Terminate every connection, then every path and neighbor (NDIS_STATUS_UPLOAD_ALL)."""


@dataclass(frozen=True, slots=True)
class LinkStatusChanged:
    """The media went up or down; the host decides whether to upload (spec 4.5)."""

    up: bool


ConnectionIndication = ReceiveIndication | PeerDisconnect | PeerReset | UploadRequest | SendBacklogChanged
Indication = (
    ConnectionIndication
    | NeighborReachabilityQuery
    | TargetPaused
    | TargetResumed
    | UploadAllRequested
    | LinkStatusChanged
)
