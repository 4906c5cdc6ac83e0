"""Completion status codes (chimney-spec 3.0, 3.1, 3.6, 4.1, 4.2), named after their NDIS_STATUS counterparts.

The integer values are the wire encoding of the status: never renumber, only append.
"""

from __future__ import annotations

from enum import IntEnum


class Status(IntEnum):
    SUCCESS = 0
    PENDING = 1  # never in a completion: what every submitted request is until it completes
    FAILURE = 2  # uncategorised failure; for query/invalidate/terminate it means corrupt hardware state (3.2)
    PARTIAL_SUCCESS = 3  # initiate only: this block offloaded, >= 1 immediate dependent was not (3.1)
    NOT_SUPPORTED = 4  # the target does not implement the request (NullTarget answers this to everything)
    RESOURCES = 5  # host memory (3.1)
    REQUEST_ABORTED = 6  # the connection was reset or aborted (3.6 abortive disconnect, 4.3 TcpIndicateAbort)
    UPLOAD_IN_PROGRESS = 7  # the connection is being uploaded: the host takes the data back (3.5 step 4, 4.2)
    INVALID_STATE = 8  # receive posted after the target indicated the peer's FIN (4.1)
    TCP_ENTRIES = 9  # OFFLOAD_TCP_ENTRIES: no TCP object could be allocated
    PATH_ENTRIES = 10
    NEIGHBOR_ENTRIES = 11
    HW_ADDRESS_ENTRIES = 12  # DlSourceAddress unsupported or out of MAC slots
    IP_ADDRESS_ENTRIES = 13  # source IP
    TCP_XMIT_BUFFER = 14
    TCP_RCV_BUFFER = 15
    TCP_RCV_WINDOW = 16  # InitialRcvWnd larger than the target supports (2.4)
    VLAN_ENTRIES = 17
    VLAN_MISMATCH = 18  # neighbor VlanId not configured on the interface (5.6)
    PATH_MTU = 19  # PMTU too large for the target
    CONNECTION_REJECTED = 20  # "not a good candidate for offload"

    @property
    def ok(self) -> bool:
        """The object was offloaded (possibly with some dependents failing)."""
        return self is Status.SUCCESS or self is Status.PARTIAL_SUCCESS

    @property
    def is_resource_shortage(self) -> bool:
        """A status that says the target ran out of something (worth a retry later, not a refusal for
        good)."""
        return self in _RESOURCE_STATUSES


_RESOURCE_STATUSES = frozenset(
    {
        Status.RESOURCES,
        Status.TCP_ENTRIES,
        Status.PATH_ENTRIES,
        Status.NEIGHBOR_ENTRIES,
        Status.HW_ADDRESS_ENTRIES,
        Status.IP_ADDRESS_ENTRIES,
        Status.TCP_XMIT_BUFFER,
        Status.TCP_RCV_BUFFER,
        Status.VLAN_ENTRIES,
    }
)

# Statuses a target may write into an initiate block (3.1); the other state calls allow SUCCESS and FAILURE
# only (3.0). NOT_SUPPORTED is ours: a target without the operation answers it for every block.
INITIATE_BLOCK_STATUSES = frozenset(Status) - {
    Status.PENDING,
    Status.REQUEST_ABORTED,
    Status.UPLOAD_IN_PROGRESS,
    Status.INVALID_STATE,
}
STATE_CALL_BLOCK_STATUSES = frozenset({Status.SUCCESS, Status.FAILURE, Status.NOT_SUPPORTED})
