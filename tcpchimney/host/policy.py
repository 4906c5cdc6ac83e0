"""Which connections the host offloads, and why not (docs/offload-design.md "Policy", chimney-spec 5.1-5.4).

``OffloadPolicy`` is a frozen value: changing the policy means handing the stack a new one
(``HostStack.set_offload_policy``), which uploads what no longer qualifies. ``decide`` is pure: it looks at
a connection's addresses, its progress and its RTT and answers None (offload it) or the ``Reason`` it stays
on the host.

Modes (the Windows ``netsh int tcp set global chimney=`` values):

- ``disabled``: nothing is offloaded.
- ``enabled``: every established connection the rules allow, as soon as it is established.
- ``automatic``: only connections that already moved ``min_bytes`` (both directions together) and whose
  smoothed RTT is below ``max_rtt``. The defaults (64 KiB, 50 ms) follow the idea of Windows' automatic mode:
  a short request/response exchange costs more to hand over (snapshot, tree, completion, and the upload at
  its end) than its few segments cost on the host, and a long-RTT connection spends its time waiting on the
  path, not on per-segment work, so offloading it saves little while it holds a scarce target entry.
  64 KiB is about 45 full-sized segments: past the initial window and slow start's first rounds, i.e. a
  transfer that is really streaming. 50 ms separates LAN / metro paths from WAN ones.

Rules are checked in order; the first that matches decides. A ``policy`` rule (an administrator's,
``chimney rule``, as Windows' ``chimneyport`` entries) has an action: ``never`` keeps the connections it
matches on the host, ``always`` offloads them as soon as they are established whatever automatic mode's
thresholds say (not when the mode is ``disabled``: that turns offload off), ``policy`` leaves them to the
mode (an exception in front of broader rules). A ``firewall`` or ``capture`` rule must see the connection's
packets, so it keeps the connection on the host, unless it says ``allow_offload`` (a rule that only needs
the handshake, or a capture of headers the target mirrors).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import Enum

from tcpchimney.chimney.reason import Reason


class OffloadMode(Enum):
    DISABLED = "disabled"
    ENABLED = "enabled"
    AUTOMATIC = "automatic"


class RuleKind(Enum):
    POLICY = "policy"  # an administrator's exclusion
    FIREWALL = "firewall"  # a filter that must inspect every packet
    CAPTURE = "capture"  # a packet capture that must see every packet


class RuleAction(Enum):
    NEVER = "never"  # keep on the host
    ALWAYS = "always"  # offload at once, thresholds or not
    POLICY = "policy"  # as the mode says


_RULE_REASON = {
    RuleKind.POLICY: Reason.POLICY_RULE,
    RuleKind.FIREWALL: Reason.FIREWALL_RULE,
    RuleKind.CAPTURE: Reason.CAPTURE_RULE,
}

DEFAULT_MIN_BYTES = 64 * 1024
DEFAULT_MAX_RTT = 0.050
DEFAULT_CHECK_INTERVAL = 0.1  # automatic mode: how often established connections are re-examined


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """What the policy may look at: addresses, ports, bytes moved so far and the smoothed RTT."""

    remote_ip: bytes
    remote_port: int
    local_port: int
    bytes_moved: int = 0
    srtt: float | None = None


@dataclass(frozen=True, slots=True)
class OffloadRule:
    """Matches connections by remote network and ports (None = any). ``allow_offload`` only matters for
    firewall and capture rules: True says the rule does not need to see the packets."""

    kind: RuleKind = RuleKind.POLICY
    remote: str | None = None  # "198.18.0.2" or "198.18.0.0/24"
    remote_port: int | None = None
    local_port: int | None = None
    allow_offload: bool = False
    action: RuleAction = RuleAction.NEVER  # policy rules only
    _net: ipaddress.IPv4Network | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.kind, str):
            object.__setattr__(self, "kind", RuleKind(self.kind))
        if isinstance(self.action, str):
            object.__setattr__(self, "action", RuleAction(self.action))
        if self.remote is not None:
            object.__setattr__(self, "_net", ipaddress.IPv4Network(self.remote, strict=False))
        for name in ("remote_port", "local_port"):
            port = getattr(self, name)
            if port is not None and not 1 <= port <= 0xFFFF:
                raise ValueError(f"OffloadRule.{name} must be in 1..65535, got {port!r}")

    def matches(self, info: ConnectionInfo) -> bool:
        if self.remote_port is not None and info.remote_port != self.remote_port:
            return False
        if self.local_port is not None and info.local_port != self.local_port:
            return False
        return self._net is None or ipaddress.IPv4Address(info.remote_ip) in self._net

    @property
    def keeps_on_host(self) -> bool:
        if self.kind is RuleKind.POLICY:
            return self.action is RuleAction.NEVER
        return not self.allow_offload

    @property
    def reason(self) -> Reason:
        return _RULE_REASON[self.kind]


@dataclass(frozen=True, slots=True)
class OffloadPolicy:
    mode: OffloadMode = OffloadMode.DISABLED
    min_bytes: int = DEFAULT_MIN_BYTES
    max_rtt: float = DEFAULT_MAX_RTT
    rules: tuple[OffloadRule, ...] = ()
    check_interval: float = DEFAULT_CHECK_INTERVAL

    def __post_init__(self) -> None:
        if isinstance(self.mode, str):
            object.__setattr__(self, "mode", OffloadMode(self.mode))
        object.__setattr__(self, "rules", tuple(self.rules))
        if self.min_bytes < 0 or not self.max_rtt > 0 or not self.check_interval > 0:
            raise ValueError("OffloadPolicy: min_bytes >= 0, max_rtt > 0 and check_interval > 0")

    def matching(self, info: ConnectionInfo) -> OffloadRule | None:
        """The first rule that matches the connection, or None."""
        for rule in self.rules:
            if rule.matches(info):
                return rule
        return None

    def rule_reason(self, info: ConnectionInfo) -> Reason | None:
        """The reason a rule keeps the connection on the host, or None."""
        rule = self.matching(info)
        return rule.reason if rule is not None and rule.keeps_on_host else None

    def decide(self, info: ConnectionInfo) -> Reason | None:
        """None: offload the connection now. Otherwise the reason it stays on the host (for now)."""
        return self.judge(info)[0]

    def judge(self, info: ConnectionInfo) -> tuple[Reason | None, OffloadRule | None]:
        """``decide``'s answer and the rule that decided it (None: the mode did)."""
        if self.mode is OffloadMode.DISABLED:
            return Reason.MODE_DISABLED, None
        rule = self.matching(info)
        if rule is not None and rule.keeps_on_host:
            return rule.reason, rule
        if rule is not None and rule.kind is RuleKind.POLICY and rule.action is RuleAction.ALWAYS:
            return None, rule
        if self.mode is OffloadMode.AUTOMATIC and not self.meets_threshold(info):
            return Reason.MODE_AUTOMATIC_THRESHOLD, rule
        return None, rule

    def meets_threshold(self, info: ConnectionInfo) -> bool:
        return info.bytes_moved >= self.min_bytes and info.srtt is not None and info.srtt < self.max_rtt

    def keeps(self, info: ConnectionInfo) -> Reason | None:
        """For a connection already offloaded: None if it may stay, else the reason to upload it. A mode
        change uploads everything when disabled; automatic mode does not upload what crossed its threshold
        once (RTT jitter would make connections flap)."""
        if self.mode is OffloadMode.DISABLED:
            return Reason.MODE_CHANGE
        if self.rule_reason(info) is not None:
            return Reason.POLICY_CHANGE
        return None
