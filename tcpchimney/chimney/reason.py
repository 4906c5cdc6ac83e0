"""Why a connection was not offloaded, why a target asked for an upload, why the host uploaded.

One enumeration so that events, counters, the CLI and filters share one vocabulary. The string value is the
stable key (counter names, JSON event lines); the wire encoding is the definition order, so only append.
"""

from __future__ import annotations

from enum import Enum


class ReasonGroup(Enum):
    REFUSAL = "refusal"  # the connection stayed on (or went back to) the host without an offload
    DEFERRAL = "deferral"  # not eligible yet: examined again, and offloaded once it qualifies
    TARGET_UPLOAD = "target_upload"  # the target asked for an upload (TcpIndicateRetrieve, spec 4.3)
    HOST_UPLOAD = "host_upload"  # the host decided to upload (spec 3.5)


class Reason(Enum):
    # -- refusals: why a connection was not offloaded (spec 5.3, 3.1 statuses)
    MODE_DISABLED = "mode_disabled"
    MODE_AUTOMATIC_THRESHOLD = "below_automatic_threshold"
    SOCKET_OPT_OUT = "socket_opt_out"
    POLICY_RULE = "policy_rule"
    FIREWALL_RULE = "firewall_rule"
    CAPTURE_RULE = "capture_rule"
    STATE_NOT_OFFLOADABLE = "state_not_offloadable"
    IP_OPTIONS = "ip_options"
    URGENT_PENDING = "urgent_pending"
    LOOPBACK = "loopback"
    TARGET_PAUSED = "target_paused"
    TARGET_NOT_SUPPORTED = "target_not_supported"
    TARGET_FULL = "target_full"
    TARGET_RESOURCES = "target_resources"
    TARGET_REFUSED = "target_refused"
    OPTION_UNSUPPORTED = "option_unsupported"
    RCV_WINDOW_UNSUPPORTED = "rcv_window_unsupported"
    PATH_MTU_UNSUPPORTED = "path_mtu_unsupported"
    VLAN_UNSUPPORTED = "vlan_unsupported"
    DEPENDENCY_FAILED = "dependency_failed"
    # -- target upload requests: TCP_UPLOAD_REASON (spec 4.3), some split by cause
    TARGET_HARDWARE_FAILURE = "target_hardware_failure"
    INVALID_STATE = "invalid_state"
    URGENT_DATA = "urgent_data"
    RETRANSMIT_TIMEOUT = "retransmit_timeout"
    PERSIST_TIMEOUT = "persist_timeout"
    KEEPALIVE_TIMEOUT = "keepalive_timeout"
    FIN_WAIT_2_TIMEOUT = "fin_wait_2_timeout"
    TIME_WAIT = "time_wait"
    IN_WINDOW_SYN = "in_window_syn"
    IP_OPTIONS_RECEIVED = "ip_options_received"
    RESOURCE_PRESSURE = "resource_pressure"
    HIGH_DROP_RATE = "high_drop_rate"
    HIGH_FRAGMENTATION = "high_fragmentation"
    HIGH_OUT_OF_ORDER = "high_out_of_order"
    LOW_ACTIVITY = "low_activity"
    NO_BUFFER_POSTING = "no_buffer_posting"
    SMALL_IO = "small_io"
    # -- host uploads (spec 3.5, 5.4)
    ADMIN = "admin"
    POLICY_CHANGE = "policy_change"
    MODE_CHANGE = "mode_change"
    CHURN = "churn"
    TARGET_REQUEST = "target_request"
    PATH_CHANGE = "path_change"
    NEIGHBOR_CHANGE = "neighbor_change"
    PEER_RESET = "peer_reset"
    HOST_TIME_WAIT = "host_time_wait"
    LINK_DOWN = "link_down"
    UPLOAD_ALL = "upload_all"
    POWER_DOWN = "power_down"
    PRIORITY = "priority"
    INACTIVITY = "inactivity"
    HARDWARE_FAILURE = "hardware_failure"
    SHUTDOWN = "shutdown"
    ORPHANED_FIN_WAIT_2 = "orphaned_fin_wait_2"
    # -- added since (appended: the wire encoding is the definition order)
    NO_TARGET = "no_target"  # a refusal
    CLOSED = "closed"  # host uploads: the connection ended while offloaded, its entry comes back to be freed
    ABORTED = "aborted"
    TARGET_FAILED = "target_failed"
    NIC_FAILED = "nic_failed"

    @property
    def group(self) -> ReasonGroup:
        return _DETAILS[self][0]

    @property
    def description(self) -> str:
        return _DETAILS[self][1]

    @property
    def deferral(self) -> bool:
        """Not a refusal: the connection is not eligible yet and is examined again (automatic mode)."""
        return _DETAILS[self][0] is ReasonGroup.DEFERRAL

    @property
    def mandatory(self) -> bool:
        """For target upload requests: the host must comply (spec 4.3). Host reasons and refusals: True."""
        return self not in _OPTIONAL_UPLOADS

    @classmethod
    def of_group(cls, group: ReasonGroup) -> tuple[Reason, ...]:
        return tuple(r for r in cls if r.group is group)


_R = ReasonGroup.REFUSAL
_D = ReasonGroup.DEFERRAL
_T = ReasonGroup.TARGET_UPLOAD
_H = ReasonGroup.HOST_UPLOAD

_DETAILS: dict[Reason, tuple[ReasonGroup, str]] = {
    Reason.MODE_DISABLED: (_R, "offload mode is disabled"),
    Reason.MODE_AUTOMATIC_THRESHOLD: (_D, "automatic mode: not enough bytes moved or RTT too high yet"),
    Reason.SOCKET_OPT_OUT: (_R, "the application opted this socket out of offload"),
    Reason.POLICY_RULE: (_R, "an offload policy rule excludes the connection"),
    Reason.FIREWALL_RULE: (_R, "a firewall rule must see the connection's packets"),
    Reason.CAPTURE_RULE: (_R, "a packet capture must see the connection's packets"),
    Reason.STATE_NOT_OFFLOADABLE: (_R, "the TCP state is not offloadable (CLOSED, LISTEN, SYN-*, TIME-WAIT)"),
    Reason.IP_OPTIONS: (_R, "the connection needs IPv4 options processing"),
    Reason.URGENT_PENDING: (_R, "urgent data is pending on the connection"),
    Reason.LOOPBACK: (_R, "loopback connections never reach a NIC"),
    Reason.TARGET_PAUSED: (_R, "the target paused offloads"),
    Reason.TARGET_NOT_SUPPORTED: (_R, "the target does not support offload"),
    Reason.TARGET_FULL: (_R, "the target's connection table is full"),
    Reason.TARGET_RESOURCES: (_R, "the target ran out of a resource (buffers, entries, addresses)"),
    Reason.TARGET_REFUSED: (_R, "the target rejected the connection as a poor candidate"),
    Reason.OPTION_UNSUPPORTED: (_R, "the target lacks a TCP option the connection uses (e.g. SACK)"),
    Reason.RCV_WINDOW_UNSUPPORTED: (_R, "the receive window is larger than the target supports"),
    Reason.PATH_MTU_UNSUPPORTED: (_R, "the path MTU is larger than the target supports"),
    Reason.VLAN_UNSUPPORTED: (_R, "the neighbor's VLAN is not configured on the target"),
    Reason.DEPENDENCY_FAILED: (_R, "the connection's path or neighbor could not be offloaded"),
    Reason.TARGET_HARDWARE_FAILURE: (_T, "the target's state for the connection is corrupt"),
    Reason.INVALID_STATE: (_T, "the connection depends on invalidated path or neighbor state"),
    Reason.URGENT_DATA: (_T, "a segment with urgent data arrived"),
    Reason.RETRANSMIT_TIMEOUT: (_T, "retransmissions exceeded the limit"),
    Reason.PERSIST_TIMEOUT: (_T, "zero-window probes in one round exceeded the limit"),
    Reason.KEEPALIVE_TIMEOUT: (_T, "keepalive probes went unanswered"),
    Reason.FIN_WAIT_2_TIMEOUT: (_T, "the FIN-WAIT-2 timer expired"),
    Reason.TIME_WAIT: (_T, "the connection entered TIME-WAIT, which the host owns"),
    Reason.IN_WINDOW_SYN: (_T, "an in-window SYN arrived"),
    Reason.IP_OPTIONS_RECEIVED: (_T, "segments with IP options arrived"),
    Reason.RESOURCE_PRESSURE: (_T, "the target needs the connection's resources"),
    Reason.HIGH_DROP_RATE: (_T, "too many transmitted segments are dropped"),
    Reason.HIGH_FRAGMENTATION: (_T, "too many fragments received"),
    Reason.HIGH_OUT_OF_ORDER: (_T, "too many out-of-order segments"),
    Reason.LOW_ACTIVITY: (_T, "too little traffic to be worth offloading"),
    Reason.NO_BUFFER_POSTING: (_T, "the host posts no receive buffers"),
    Reason.SMALL_IO: (_T, "posted buffers are too small"),
    Reason.ADMIN: (_H, "an administrator asked for the upload"),
    Reason.POLICY_CHANGE: (_H, "a policy rule now excludes the connection"),
    Reason.MODE_CHANGE: (_H, "the offload mode changed"),
    Reason.CHURN: (_H, "churn stress: periodic upload and re-offload"),
    Reason.TARGET_REQUEST: (_H, "the target requested the upload"),
    Reason.PATH_CHANGE: (_H, "the connection's route changed"),
    Reason.NEIGHBOR_CHANGE: (_H, "the next hop changed or became unreachable"),
    Reason.PEER_RESET: (_H, "the peer reset the connection"),
    Reason.HOST_TIME_WAIT: (_H, "the connection reached TIME-WAIT"),
    Reason.LINK_DOWN: (_H, "the link went down"),
    Reason.UPLOAD_ALL: (_H, "the target asked to upload every connection"),
    Reason.POWER_DOWN: (_H, "the device is leaving the working power state"),
    Reason.PRIORITY: (_H, "a higher-priority connection needs the target's resources"),
    Reason.INACTIVITY: (_H, "too little traffic on the connection"),
    Reason.HARDWARE_FAILURE: (_H, "the target failed a state call (corrupt hardware)"),
    Reason.SHUTDOWN: (_H, "the stack or the target is shutting down"),
    Reason.ORPHANED_FIN_WAIT_2: (
        _H,
        "the application closed a FIN-WAIT-2 connection: the host runs its time limit",
    ),
    Reason.NO_TARGET: (_R, "no offload target is attached: the device talks to the host stack directly"),
    Reason.CLOSED: (_H, "the connection closed on the target: its entry is handed back and freed"),
    Reason.ABORTED: (_H, "the application aborted the connection (RST): its entry is handed back and freed"),
    Reason.TARGET_FAILED: (_R, "the target broke the offload contract: no offloads until it resumes"),
    Reason.NIC_FAILED: (
        _T,
        "the NIC process died, hung or broke the protocol: the connection is rebuilt on the host from "
        "what the arena holds, with nothing lost",
    ),
}

# TCP_UPLOAD_REASON values the host may decline (spec 4.3); everything else must be honoured.
_OPTIONAL_UPLOADS = frozenset(
    {
        Reason.HIGH_DROP_RATE,
        Reason.HIGH_FRAGMENTATION,
        Reason.HIGH_OUT_OF_ORDER,
        Reason.LOW_ACTIVITY,
        Reason.NO_BUFFER_POSTING,
        Reason.SMALL_IO,
    }
)
