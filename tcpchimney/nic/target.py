"""``SoftwareTarget``: the emulated NIC, an offload target that runs the stack's own TCP engine.

It is two things at once (docs/offload-design.md):

- the **node** attached to the device: ``handle_frame`` takes the frames of the connections it holds (plain
  IPv4, no options, not a fragment) and passes every other frame up to the host node set with
  ``attach_host``; ``frames_to_send`` is the host's frames, then its own; deadlines are merged;
- an **offload target** (``chimney.target.TargetMethods``): the host offloads, updates, queries, invalidates
  and uploads connections and moves their data through ``submit`` / ``poll`` only.

Each offloaded connection is a ``TcpConnection`` rebuilt from the offered state (``tcp.snapshot.rebuild``)
and exported again on upload (``tcp.snapshot.export_snapshot``), so the data path is the host's own, bug for
bug. The contract rules it adds (spec 3-4): send completions only once the peer ACKed every byte; posted
buffers fill before any indication; one indication at a time; the peer's FIN indicated only after every byte
before it was delivered; an upload asked for (not taken) on TIME-WAIT, urgent data, timeouts, invalid state.

In the spirit of Linux netdevsim it has a bounded table, counters, ``dump_state`` for tests, fault knobs
(``refuse_next_offload``, ``request_upload``, ``pause`` / ``resume``, ``stall``, ``fail_hardware``) and
``close`` warns when state leaked.

The class is split by phase, as FreeBSD's cxgbe TOE and Linux netdevsim are, each layer building on the one
below: ``nic.target_wire`` (frames in and out, timers, output templates, the engine of one connection),
``nic.target_data`` (the offloaded data path: sends, receives, indications, stopping a connection),
``nic.target_handoff`` (initiate, update, invalidate, query, terminate: building and tearing down entries);
this module adds the constructor, the fault knobs and the introspection.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Collection
from dataclasses import replace
from typing import Any

from tcpchimney.chimney.indications import (
    PeerReset,
    TargetCapabilities,
    TargetPaused,
    TargetResumed,
    UploadAllRequested,
)
from tcpchimney.chimney.reason import Reason, ReasonGroup
from tcpchimney.chimney.target import Output
from tcpchimney.nic.counters import NicCounters
from tcpchimney.nic.frames import IpIds
from tcpchimney.nic.table import ConnectionTable, TcpEntry
from tcpchimney.nic.target_data import (
    BACKLOG_CHANGE_FRACTION,
    MIN_BACKLOG_INTERVAL,
    PUSH_TIMEOUT,
    send_backlog,
)
from tcpchimney.nic.target_handoff import HandOff
from tcpchimney.nic.target_wire import MAX_HELD_FRAMES, UpperNode
from tcpchimney.tcp.config import TcpConfig
from tcpchimney.wire.frame import DeviceFeatures, Frame

__all__ = [
    "BACKLOG_CHANGE_FRACTION",
    "MAX_HELD_FRAMES",
    "MIN_BACKLOG_INTERVAL",
    "PUSH_TIMEOUT",
    "SoftwareTarget",
    "UpperNode",
    "send_backlog",
]

log = logging.getLogger(__name__)


class SoftwareTarget(HandOff):
    def __init__(
        self,
        features: DeviceFeatures | None = None,
        *,
        capacity: int = 1024,
        config: TcpConfig | None = None,
        mac: bytes | None = None,
        vlans: frozenset[int] = frozenset(),
        max_rcv_window: int = 1 << 30,
        ip_id_start: int = 0,
        nce_stale: float = 30.0,
        handle_base: int = 0,
    ) -> None:
        """``features``: the device's stateless offloads (checksum, TSO), used for the frames it builds.
        ``config``: engine settings the contract leaves to each side (interface MSS, RTO bounds, retries).
        ``mac``: the interface MAC for neighbors without a source MAC; learnt from the host's frames if None.
        ``vlans``: VLAN ids configured on the interface (spec 5.6); others fail with VLAN_MISMATCH.
        ``nce_stale``: NceStaleTicks in seconds (spec 2.5, 4.6): with neither forward progress nor a host
        confirmation for that long, the target asks the host whether a neighbor it sends to is reachable.
        ``handle_base``: its handles start after it (``ConnectionTable``)."""
        super().__init__(TargetCapabilities(ipv4=True, ipv6=False, sack=True, capacity=capacity))
        self.features = features or DeviceFeatures()
        base = config or TcpConfig()
        tso = self.features.tso
        self.config = replace(
            base, max_segment_payload=max(0, min(self.features.tso_max, 65535) - 80) if tso else 0
        )
        self.table = ConnectionTable(capacity, handle_base)
        self.receive_hook = None
        self.counters = NicCounters()
        self.mac = mac
        self.vlans = vlans
        self.max_rcv_window = max_rcv_window
        self.nce_stale = nce_stale
        self.host: UpperNode | None = None
        self._ip_ids = IpIds(ip_id_start)
        self._tx: list[Frame] = []  # own frames built outside frames_to_send (an abort's RST)
        self._to_host: list[Frame] = []  # held frames of uploaded connections, handed up at the next entry
        self._dirty: dict[int, TcpEntry] = {}
        # Lazy heap of (deadline, seq, entry): an item is live while the entry is still in the table and its
        # ``timer_at`` equals the deadline; others are skipped on pop (as HostStack._timers).
        self._timers: list[tuple[float, int, TcpEntry]] = []
        self._timer_seq = 0
        self._indication_ids = 0
        self._refuse_next: Reason | None = None
        self._stalled = False
        self._failed = False
        self._now = 0.0

    # ================================================================== fault knobs and introspection

    def refuse_next_offload(self, reason: Reason = Reason.TARGET_REFUSED) -> None:
        """The next TCP block of an initiate fails with the status that ``reason`` (a refusal) maps to."""
        if reason.group is not ReasonGroup.REFUSAL:
            raise ValueError(f"{reason} is not a refusal reason")
        self._refuse_next = reason

    def request_upload(self, host_handle: int, reason: Reason = Reason.RESOURCE_PRESSURE) -> None:
        """Ask the host to upload the connection it calls ``host_handle`` (the target keeps working)."""
        if reason.group is not ReasonGroup.TARGET_UPLOAD:
            raise ValueError(f"{reason} is not a target upload reason")
        for entry in self.table.conns.values():
            if entry.host_handle == host_handle:
                entry.requested.discard(reason)
                self._ask_upload(entry, reason)
                return
        raise KeyError(f"no offloaded connection with host handle {host_handle}")

    def pause(self, upload_all: bool = False) -> None:
        """Stop taking offloads (spec 4.5 NDIS_STATUS_OFFLOAD_PAUSE), e.g. before a teaming failover;
        ``upload_all``: and ask the host to empty the target (NDIS_STATUS_UPLOAD_ALL)."""
        self.indicate(TargetPaused())
        if upload_all:
            self.indicate(UploadAllRequested())

    def resume(self, capabilities: TargetCapabilities | None = None) -> None:
        """Take offloads again (NDIS_STATUS_OFFLOAD_RESUME), with new ``capabilities`` if given: a target
        announces a change only this way (spec 2.5). The new capacity bounds the table from now on and a
        connection using an option the target lost (SACK) is refused."""
        if capabilities is not None:
            if capabilities.ipv6 and not self._capabilities.ipv6:
                raise ValueError("this target has no IPv6 data path")
            self._capabilities = capabilities
            self.table.capacity = capabilities.capacity
        self.indicate(TargetResumed(self._capabilities))

    def stall(self, on: bool = True) -> None:
        """A stalled target sends no frame and releases no completion or indication (they queue)."""
        self._stalled = on

    def poll(self) -> Output | None:
        return None if self._stalled else super().poll()

    def fail_hardware(self, lost: Collection[int] = ()) -> None:
        """Corrupt hardware (spec 3.2): every connection stops and asks for its upload (TcpIndicateRetrieve,
        HardwareFailure); later state calls fail. Terminate returns the state of each connection, except
        those whose host handle is in ``lost``: their state is gone, so the target also aborts them
        (TcpIndicateAbort), completes their calls with REQUEST_ABORTED and their terminate with FAILURE."""
        self._failed = True
        for entry in list(self.table.conns.values()):
            self._freeze(entry, Reason.TARGET_HARDWARE_FAILURE)
            if entry.host_handle in lost:
                entry.state_lost = entry.reset = True  # later calls: REQUEST_ABORTED
                self.indicate(PeerReset(entry.host_handle))  # TcpIndicateAbort (spec 3.2 step 3)

    def dump_state(self) -> dict[str, Any]:
        """A plain-data picture of the table for tests and diagnostics."""
        t = self.table
        return {
            "capacity": t.capacity,
            "stalled": self._stalled,
            "failed": self._failed,
            "mac": self.mac.hex(":") if self.mac else None,
            "neighbors": {
                n.handle: {
                    "host_handle": n.host_handle,
                    "dest_mac": n.cached.dest_mac.hex(":"),
                    "paths": sorted(n.paths),
                    "invalid": n.invalid,
                }
                for n in t.neighbors.values()
            },
            "paths": {
                p.handle: {
                    "host_handle": p.host_handle,
                    "neighbor": p.neighbor.handle,
                    "path_mtu": p.cached.path_mtu,
                    "conns": sorted(p.conns),
                    "invalid": p.invalid,
                }
                for p in t.paths.values()
            },
            "connections": {e.handle: _dump_conn(e) for e in t.conns.values()},
            "counters": self.counters.snapshot(),
        }

    def close(self) -> None:
        """Tear down; warns loudly when objects were never uploaded (their state is lost)."""
        if len(self.table):
            message = (
                f"SoftwareTarget closed with {len(self.table.conns)} connection(s), {len(self.table.paths)} "
                f"path(s) and {len(self.table.neighbors)} neighbor(s) still offloaded: their state is lost"
            )
            log.error(message)
            warnings.warn(message, ResourceWarning, stacklevel=2)


def _dump_conn(e: TcpEntry) -> dict[str, Any]:
    c = e.conn
    return {
        "host_handle": e.host_handle,
        "local": f"{'.'.join(map(str, e.key[0]))}:{e.key[2]}",
        "remote": f"{'.'.join(map(str, e.key[1]))}:{e.key[3]}",
        "path": e.path.handle,
        "state": c.state.value,
        "snd_una": int(c.snd_una),
        "snd_nxt": int(c.snd_nxt),
        "snd_max": int(c.snd_max),
        "rcv_nxt": int(c.rcv_nxt),
        "readable": c.readable,
        "unacked_send_bytes": e.written - min(e.acked, e.written),
        "pending_sends": [s.request_id for s in e.sends],
        "posted": [b.request_id for b in e.posted],
        "indication": e.indication,
        "peer_fin_indicated": e.peer_fin_indicated,
        "reset": e.reset,
        "frozen": e.frozen.value if e.frozen else None,
        "upload_requested": sorted(r.value for r in e.requested),
        "held_frames": len(e.held),
    }
