"""The software target's counters: the per-interface statistics of spec 4.8 for offloaded traffic only
(TCP_OFFLOAD_STATS, IP_OFFLOAD_STATS), plus what the target did with its table (offloads, refusals and upload
requests by reason, uploads, frames passed up). Counters only grow; ``reset`` is the OID set of spec 4.8."""

from __future__ import annotations

from typing import Final

from tcpchimney.chimney.reason import Reason

TCP_KEYS: Final = (
    "in_segments",  # InSegments: segments of offloaded connections the target processed
    "out_segments",  # OutSegments (a super-segment counts once: the device cuts it)
    "retransmitted_segments",  # RetransmittedSegments
    "in_errors",  # InErrors: segments the engine dropped (PAWS, out of window, ...)
    "out_resets",  # OutResets: only an abortive disconnect sends one (spec 3.6)
    "reset_established",  # ResetEstablished: ESTABLISHED / CLOSE-WAIT straight to CLOSED
)
IP_KEYS: Final = (
    "in_receives",  # InReceives: datagrams the target took
    "in_octets",
    "in_delivers",  # handed to a connection's engine
    "out_requests",
    "out_octets",
    "in_discards",  # held for the host (frozen connection) beyond the hold limit
    "out_discards",
)
LIFECYCLE_KEYS: Final = (
    "offloads",  # TCP connections offloaded
    "offload_refusals",  # TCP blocks failed (by reason in ``refusals``)
    "uploads",  # TCP connections handed back by a terminate
    "upload_requests",  # UploadRequest indications (by reason in ``upload_requests``)
    "passed_up",  # frames handed to the host unchanged
    "held_for_host",  # frames of a frozen connection, given to the host after its upload
    "forwarded_segments",  # segments the host forwarded
    "send_completions",
    "receive_completions",
    "receive_indications",
    "peer_disconnects",
    "peer_resets",
    "send_backlog_changes",  # SendBacklogChanged indications
    "reachability_queries",  # NeighborReachabilityQuery indications
    "orphans_dropped",  # connections still linked to a path or neighbor the host terminated
)


class NicCounters:
    def __init__(self) -> None:
        self.tcp: dict[str, int] = dict.fromkeys(TCP_KEYS, 0)
        self.ip: dict[str, int] = dict.fromkeys(IP_KEYS, 0)
        self.lifecycle: dict[str, int] = dict.fromkeys(LIFECYCLE_KEYS, 0)
        self.refusals: dict[str, int] = {}
        self.upload_requests: dict[str, int] = {}
        self.engine_drops: dict[str, int] = {}

    def refused(self, reason: Reason) -> None:
        self.lifecycle["offload_refusals"] += 1
        self.refusals[reason.value] = self.refusals.get(reason.value, 0) + 1

    def upload_requested(self, reason: Reason) -> None:
        self.lifecycle["upload_requests"] += 1
        self.upload_requests[reason.value] = self.upload_requests.get(reason.value, 0) + 1

    def engine_drop(self, reason: str) -> None:
        self.tcp["in_errors"] += 1
        self.engine_drops[reason] = self.engine_drops.get(reason, 0) + 1

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {
            "tcp": dict(self.tcp),
            "ip": dict(self.ip),
            "lifecycle": dict(self.lifecycle),
            "refusals": dict(self.refusals),
            "upload_requests": dict(self.upload_requests),
            "engine_drops": dict(self.engine_drops),
        }
