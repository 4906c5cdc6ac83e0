"""The offload target interface: asynchronous and message-shaped (chimney-spec 3.0, DESIGN decision 3).

The host talks to a target through two calls only: ``submit(request, now)`` (never blocks, never raises for a
request the target cannot honour: it completes it with a status) and ``poll()`` (the next completion or
indication, in the order the target produced them). That is the whole transport surface, so a target in
another process behind shared-memory rings is a proxy that encodes requests (``codec``) and decodes outputs.

``TargetMethods`` is the method table a target implements, one method per request, in the spirit of FreeBSD's
``struct toedev``. Every slot defaults to completing the request with NOT_SUPPORTED, so the host never asks
whether a target implements something: ``NullTarget`` is the table with nothing overridden.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from tcpchimney.chimney.completions import AnyCompletion, Completion, completion_for
from tcpchimney.chimney.errors import ContractError
from tcpchimney.chimney.indications import Indication, TargetCapabilities
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

Output = AnyCompletion | Indication


class OffloadTarget(Protocol):
    """What the host needs from any target, wherever it runs."""

    @property
    def capabilities(self) -> TargetCapabilities:
        """What the target accepts now; changes only through a TargetResumed indication."""
        ...

    def submit(self, request: Request, now: float) -> None:
        """Host -> target: queue ``request``. It completes later, exactly once, through ``poll``."""
        ...

    def poll(self) -> Output | None:
        """Target -> host: the next completion or indication, or None. Order is the target's order."""
        ...


class TargetMethods:
    """The method table: ``submit`` dispatches each request to its method. Override what the target does."""

    def __init__(self, capabilities: TargetCapabilities | None = None) -> None:
        self._capabilities = capabilities or TargetCapabilities(capacity=0)
        self._outputs: deque[Output] = deque()
        self._table: dict[type, Callable[[Any, float], None]] = {
            InitiateOffload: self.initiate_offload,
            UpdateOffload: self.update_offload,
            InvalidateOffload: self.invalidate_offload,
            QueryOffload: self.query_offload,
            TerminateOffload: self.terminate_offload,
            Send: self.send,
            PostReceive: self.post_receive,
            Disconnect: self.disconnect,
            Forward: self.forward,
            ReturnReceive: self.return_receive,
            ReachabilityReply: self.reachability_reply,
        }

    # -- transport surface -----------------------------------------------------------------------------------

    @property
    def capabilities(self) -> TargetCapabilities:
        return self._capabilities

    def submit(self, request: Request, now: float) -> None:
        method = self._table.get(type(request))
        if method is None:
            raise ContractError(f"not a request: {type(request).__name__}")
        method(request, now)

    def poll(self) -> Output | None:
        return self._outputs.popleft() if self._outputs else None

    def drain(self) -> list[Output]:
        """Every pending output, in order."""
        out = list(self._outputs)
        self._outputs.clear()
        return out

    # -- for implementations ---------------------------------------------------------------------------------

    def complete(self, completion: Completion) -> None:
        self._outputs.append(completion)

    def indicate(self, indication: Indication) -> None:
        self._outputs.append(indication)

    def not_supported(self, request: Request) -> None:
        self.complete(completion_for(request, Status.NOT_SUPPORTED))

    # -- the method table ------------------------------------------------------------------------------------

    def initiate_offload(self, request: InitiateOffload, now: float) -> None:
        """Host, when policy picks connections to offload (and their new paths and neighbors). Never twice for
        one object; the host holds the connections' I/O and received segments until the completion.
        Failure: per-block statuses in a StateCompletion, aggregated as spec 3.1; failed objects stay on
        the host and the target keeps nothing of them (no handle, no send completion)."""
        self.not_supported(request)

    def update_offload(self, request: UpdateOffload, now: float) -> None:
        """Host, when cached state changes (ARP: new MAC; ICMP: new PMTU; socket options) or paths move to
        a new neighbor. Never for an object being offloaded, updated or invalidated. Failure: FAILURE in the
        block; the host then terminates that object (spec 3.3)."""
        self.not_supported(request)

    def invalidate_offload(self, request: InvalidateOffload, now: float) -> None:
        """Host, when a neighbor or path is no longer valid (route change). The target stops sending on every
        dependent connection and asks for their upload with Reason.INVALID_STATE. Failure: FAILURE = corrupt
        hardware (spec 3.2 protocol)."""
        self.not_supported(request)

    def query_offload(self, request: QueryOffload, now: float) -> None:
        """Host, for NUD (a neighbor's NRD), backlog sizes or diagnostics; concurrent queries allowed.
        Success: blocks carry the current state. Failure: FAILURE = corrupt hardware; the host terminates the
        object."""
        self.not_supported(request)

    def terminate_offload(self, request: TerminateOffload, now: float) -> None:
        """Host, to upload (its own decision or an UploadRequest); neighbors and paths only with no dependents
        left. The target first completes every outstanding call of the connection (sends/receives with
        UPLOAD_IN_PROGRESS). Success: TCP blocks carry the delegated state, unACKed send data and undelivered
        received data. Failure: FAILURE = the state is lost; the host may have to abort the connection."""
        self.not_supported(request)

    def send(self, request: Send, now: float) -> None:
        """Host, when the application sends on an offloaded connection; FIFO per connection. Completes only
        once the peer ACKed every byte (SUCCESS), else with bytes_acked and UPLOAD_IN_PROGRESS (the host
        resends the rest itself) or REQUEST_ABORTED (reset)."""
        self.not_supported(request)

    def post_receive(self, request: PostReceive, now: float) -> None:
        """Host, when the application reads; buffers fill FIFO before any indication. Completes with the data
        when full, on PSH or the push timer (push mode); UPLOAD_IN_PROGRESS, REQUEST_ABORTED or INVALID_STATE
        (posted after the peer's FIN was indicated) otherwise."""
        self.not_supported(request)

    def disconnect(self, request: Disconnect, now: float) -> None:
        """Host, on shutdown/close (graceful: data then FIN) or abort (RST: the only RST a target sends).
        Fails only with UPLOAD_IN_PROGRESS or REQUEST_ABORTED; the host never retries (spec 3.6)."""
        self.not_supported(request)

    def forward(self, request: Forward, now: float) -> None:
        """Host, after an offload completes, with segments it held for the connection (or reassembled / took
        IP options off). Never during an offload or an upload. Completion status only."""
        self.not_supported(request)

    def return_receive(self, request: ReturnReceive, now: float) -> None:
        """Host, answering a ReceiveIndication with the bytes it consumed; the target keeps the rest and
        offers it again when a buffer is posted. Completion status only."""
        self.not_supported(request)

    def reachability_reply(self, request: ReachabilityReply, now: float) -> None:
        """Host, answering a NeighborReachabilityQuery with its HRD (0 when its entry is stale)."""
        self.not_supported(request)


class NullTarget(TargetMethods):
    """A target that offloads nothing: every request completes with NOT_SUPPORTED; it never indicates."""
