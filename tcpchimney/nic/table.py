"""The target's state table: neighbor, path and TCP objects it holds, named by its own handles.

The internal tree is inverted, as spec 1.3 suggests: a connection points at its path and a path at its
neighbor (to transmit, walk TCP -> IP -> MAC); received frames find their connection by the 4-tuple, with no
tree walk. The table is bounded: at most ``capacity`` connections, paths and neighbors each (spec 5.8).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from tcpchimney.chimney.neighbor import NeighborCached, NeighborConst
from tcpchimney.chimney.path import PathCached, PathConst
from tcpchimney.chimney.reason import Reason
from tcpchimney.chimney.tcp_state import TcpCached, TcpConst
from tcpchimney.nic.frames import ConnKey, TxTemplate
from tcpchimney.tcp.connection import TcpConnection
from tcpchimney.wire.frame import Frame
from tcpchimney.wire.seq import SeqNum


@dataclass(slots=True, eq=False)
class NeighborEntry:
    handle: int
    host_handle: int
    const: NeighborConst
    cached: NeighborCached
    src_mac: bytes  # const.source_mac, or the interface MAC
    last_progress: float  # NIC time of the last forward progress through this neighbor (spec 4.6: NRT)
    host_confirmed: float  # NIC time the host last vouched for it (spec 4.6: HRT = NCT - HRD)
    paths: set[int] = field(default_factory=set)
    invalid: bool = False
    query: int | None = None  # the NeighborReachabilityQuery awaiting its ReachabilityReply
    quiet_until: float = 0.0  # no new query before this time (after an answer, NceStaleTicks)


@dataclass(slots=True, eq=False)
class PathEntry:
    handle: int
    host_handle: int
    const: PathConst
    cached: PathCached
    neighbor: NeighborEntry
    conns: set[int] = field(default_factory=set)
    invalid: bool = False


@dataclass(slots=True, eq=False)
class PendingSend:
    """One Send request: stream offsets [start, end) counted from SND.UNA at offload."""

    request_id: int
    start: int
    end: int


@dataclass(slots=True, eq=False)
class PendingDisconnect:
    request_id: int
    start: int  # offsets of the data it carried
    end: int


@dataclass(slots=True, eq=False)
class PostedBuffer:
    request_id: int
    room: int  # size less what the host already placed
    push: bool
    data: bytearray = field(default_factory=bytearray)


@dataclass(slots=True, eq=False)
class TcpEntry:
    """One offloaded connection: the engine plus the contract bookkeeping around it."""

    handle: int
    host_handle: int
    key: ConnKey
    conn: TcpConnection
    path: PathEntry
    const: TcpConst
    cached: TcpCached
    una_last: SeqNum  # SND.UNA when ``acked`` was last brought up to date
    delivered: SeqNum  # sequence number of the next byte the host gets (indications carry it)
    written: int  # stream bytes accepted (offload send data + Sends + disconnect data)
    template: TxTemplate | None = None
    acked: int = 0  # stream bytes acknowledged since offload (may count our FIN: compare with ``written``)
    backlog: deque[bytes] = field(default_factory=deque)  # accepted, not yet in the engine's buffer
    fin_pending: bool = False  # graceful disconnect: shut the engine down once the backlog is in
    sends: deque[PendingSend] = field(default_factory=deque)
    disconnect: PendingDisconnect | None = None
    posted: deque[PostedBuffer] = field(default_factory=deque)
    indication: tuple[int, int] | None = None  # (indication id, bytes) awaiting ReturnReceive
    indications_enabled: bool = True  # off after a partly refused indication, until a buffer is posted
    psh_seen: bool = False
    push_deadline: float | None = None
    timer_at: float | None = None  # the deadline this entry has in the target's timer heap (None: none)
    peer_fin: bool = False
    peer_fin_indicated: bool = False
    time_wait_pending: bool = False  # ask for the upload once the FIN was indicated
    reset: bool = False  # the peer reset it, or the host aborted it
    state_lost: bool = False  # corrupt hardware: its terminate returns nothing (fail_hardware)
    frozen: Reason | None = None  # stopped for an upload: no output, no timers, frames held for the host
    requested: set[Reason] = field(default_factory=set)
    held: list[Frame] = field(default_factory=list)
    rcv_last: SeqNum | None = None  # RCV.NXT when reachability progress was last noted (spec 4.6)
    backlog_indicated: int = 0  # the last SendBacklogChanged value (0: none yet)
    backlog_quiet_until: float = 0.0  # no SendBacklogChanged before this time (throttle)

    @property
    def stopped(self) -> bool:
        return self.frozen is not None or self.reset


class ConnectionTable:
    def __init__(self, capacity: int, handle_base: int = 0) -> None:
        """``handle_base``: handles start after it (a NIC restarted after a crash numbers its objects
        apart from those of its predecessor, which the host may still name)."""
        if capacity < 0 or handle_base < 0:
            raise ValueError(f"capacity and handle_base must be >= 0, got {capacity}, {handle_base}")
        self.capacity = capacity
        self.neighbors: dict[int, NeighborEntry] = {}
        self.paths: dict[int, PathEntry] = {}
        self.conns: dict[int, TcpEntry] = {}
        self.by_key: dict[ConnKey, TcpEntry] = {}
        self._next_handle = handle_base

    def __len__(self) -> int:
        return len(self.conns) + len(self.paths) + len(self.neighbors)

    def new_handle(self) -> int:
        """Handles are unique across layers and never reused while the target lives."""
        self._next_handle += 1
        return self._next_handle

    @property
    def tcp_full(self) -> bool:
        return len(self.conns) >= self.capacity

    def add_neighbor(self, entry: NeighborEntry) -> None:
        self.neighbors[entry.handle] = entry

    def add_path(self, entry: PathEntry) -> None:
        self.paths[entry.handle] = entry
        entry.neighbor.paths.add(entry.handle)

    def add_conn(self, entry: TcpEntry) -> None:
        self.conns[entry.handle] = entry
        self.by_key[entry.key] = entry
        entry.path.conns.add(entry.handle)

    def remove(self, handle: int) -> None:
        """Forget an object (its dependents must be gone already; the host's registry makes sure)."""
        conn = self.conns.pop(handle, None)
        if conn is not None:
            self.by_key.pop(conn.key, None)
            conn.path.conns.discard(handle)
            return
        path = self.paths.pop(handle, None)
        if path is not None:
            path.neighbor.paths.discard(handle)
            return
        self.neighbors.pop(handle, None)

    def relink(self, path: PathEntry, neighbor: NeighborEntry) -> None:
        path.neighbor.paths.discard(path.handle)
        path.neighbor = neighbor
        neighbor.paths.add(path.handle)
        for handle in path.conns:
            self.conns[handle].template = None

    def dependents(self, handle: int) -> list[TcpEntry]:
        """The connections that send through object ``handle`` (itself, if it is a connection)."""
        if handle in self.conns:
            return [self.conns[handle]]
        if handle in self.paths:
            return [self.conns[h] for h in sorted(self.paths[handle].conns)]
        if handle in self.neighbors:
            paths = [self.paths[p] for p in sorted(self.neighbors[handle].paths)]
            return [self.conns[h] for p in paths for h in sorted(p.conns)]
        return []
