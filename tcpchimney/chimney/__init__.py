"""The offload contract: what host and target exchange, and nothing that runs a connection.

- state objects, split const / cached / delegated per layer: ``neighbor``, ``path``, ``tcp_state``;
- the offload state tree and its status rules: ``tree``;
- requests, completions and indications: ``requests``, ``completions``, ``indications``, with ``status`` and
  ``reason`` codes;
- the target interface and the null target: ``target``; the byte encoding of every message: ``codec``;
- host-side precondition bookkeeping: ``registry``.

The table of every call is in docs/offload-contract.md.
"""

from tcpchimney.chimney.completions import (
    Completion,
    DisconnectCompletion,
    ReceiveCompletion,
    SendCompletion,
    StateCompletion,
    completion_for,
    completion_type,
)
from tcpchimney.chimney.errors import (
    AlreadyOffloadedError,
    CodecError,
    ContractError,
    DependentsRemainError,
    FieldRangeError,
    InvalidatedError,
    InvariantError,
    NotOffloadableError,
    OperationInFlightError,
    PreconditionError,
    ProtocolViolationError,
    TreeError,
    UnknownObjectError,
)
from tcpchimney.chimney.indications import (
    Indication,
    LinkStatusChanged,
    NeighborReachabilityQuery,
    PeerDisconnect,
    PeerReset,
    ReceiveIndication,
    SendBacklogChanged,
    TargetCapabilities,
    TargetPaused,
    TargetResumed,
    UploadAllRequested,
    UploadRequest,
)
from tcpchimney.chimney.neighbor import NeighborCached, NeighborConst, NeighborDelegated, NeighborState
from tcpchimney.chimney.path import PathCached, PathConst, PathDelegated, PathState
from tcpchimney.chimney.reason import Reason, ReasonGroup
from tcpchimney.chimney.registry import OffloadRegistry, Phase
from tcpchimney.chimney.requests import (
    Disconnect,
    Forward,
    InitiateOffload,
    InvalidateOffload,
    PostReceive,
    QueryOffload,
    ReachabilityReply,
    Request,
    ReturnReceive,
    Send,
    TerminateOffload,
    UpdateOffload,
)
from tcpchimney.chimney.status import Status
from tcpchimney.chimney.target import NullTarget, OffloadTarget, TargetMethods
from tcpchimney.chimney.tcp_state import TcpCached, TcpConst, TcpDelegated, TcpSnapshot
from tcpchimney.chimney.tree import (
    PLACEHOLDER,
    BlockList,
    Layer,
    LinkedObject,
    NewObject,
    Role,
    Tree,
    build_tree,
    complete_initiate,
    overall_status,
    verify_initiate_completion,
    walk,
)

__all__ = [
    "PLACEHOLDER",
    "AlreadyOffloadedError",
    "BlockList",
    "CodecError",
    "Completion",
    "ContractError",
    "DependentsRemainError",
    "Disconnect",
    "DisconnectCompletion",
    "FieldRangeError",
    "Forward",
    "Indication",
    "InitiateOffload",
    "InvalidateOffload",
    "InvalidatedError",
    "InvariantError",
    "Layer",
    "LinkStatusChanged",
    "LinkedObject",
    "NeighborCached",
    "NeighborConst",
    "NeighborDelegated",
    "NeighborReachabilityQuery",
    "NeighborState",
    "NewObject",
    "NotOffloadableError",
    "NullTarget",
    "OffloadRegistry",
    "OffloadTarget",
    "OperationInFlightError",
    "PathCached",
    "PathConst",
    "PathDelegated",
    "PathState",
    "PeerDisconnect",
    "PeerReset",
    "Phase",
    "PostReceive",
    "PreconditionError",
    "ProtocolViolationError",
    "QueryOffload",
    "ReachabilityReply",
    "Reason",
    "ReasonGroup",
    "ReceiveCompletion",
    "ReceiveIndication",
    "Request",
    "ReturnReceive",
    "Role",
    "Send",
    "SendBacklogChanged",
    "SendCompletion",
    "StateCompletion",
    "Status",
    "TargetCapabilities",
    "TargetMethods",
    "TargetPaused",
    "TargetResumed",
    "TcpCached",
    "TcpConst",
    "TcpDelegated",
    "TcpSnapshot",
    "TerminateOffload",
    "Tree",
    "TreeError",
    "UnknownObjectError",
    "UpdateOffload",
    "UploadAllRequested",
    "UploadRequest",
    "build_tree",
    "complete_initiate",
    "completion_for",
    "completion_type",
    "overall_status",
    "verify_initiate_completion",
    "walk",
]
