"""Per-layer counters: received, sent and every drop reason, as plain ``dict[str, int]``.

A counter is created the first time it is bumped, so the set of keys is exactly what happened; ``rx`` and
``tx`` exist from the start so that dashboards always find them.
"""

from __future__ import annotations

from tcpchimney.tcp.state import TcpState

LAYERS = ("ethernet", "arp", "ipv4", "icmp", "tcp")


class Counters:
    __slots__ = ("arp", "ethernet", "icmp", "internal_errors", "ipv4", "tcp")

    def __init__(self) -> None:
        self.ethernet: dict[str, int] = {"rx": 0, "tx": 0}
        self.arp: dict[str, int] = {"rx": 0, "tx": 0}
        self.ipv4: dict[str, int] = {"rx": 0, "tx": 0}
        self.icmp: dict[str, int] = {"rx": 0, "tx": 0}
        self.tcp: dict[str, int] = {"rx": 0, "tx": 0}
        self.internal_errors: list[str] = []  # the last few exception messages behind 'internal_error'

    def snapshot(self) -> dict[str, dict[str, int]]:
        """A copy the caller may keep: {layer: {counter: value}}."""
        return {layer: dict(getattr(self, layer)) for layer in LAYERS}


def bump(counters: dict[str, int], key: str, by: int = 1) -> None:
    counters[key] = counters.get(key, 0) + by


_OPENING = (TcpState.SYN_SENT, TcpState.SYN_RECEIVED)
_ESTABLISHED = (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT)


def count_state_change(tcp: dict[str, int], old: TcpState, new: TcpState) -> None:
    """The RFC 1213 transitions Linux counts: AttemptFails (an opening connection closed) and EstabResets
    (an established one closed straight away: a RST, sent or received)."""
    if new is TcpState.CLOSED:
        if old in _OPENING:
            bump(tcp, "attempt_fails")
        elif old in _ESTABLISHED:
            bump(tcp, "estab_resets")
