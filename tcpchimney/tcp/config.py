"""Per-connection TCP settings. Defaults follow Linux where the RFC leaves a range, and say so."""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class TcpConfig:
    mss: int = 1460  # MSS we advertise: MTU - 40 (the host derives it from the interface MTU)
    max_segment_payload: int = 0  # > mss when the device does TSO: largest payload per emitted segment
    rcv_buf: int = 1 << 20  # receive buffer (bytes); bounds the advertised window
    snd_buf: int = 1 << 20  # send buffer (bytes); bounds what send() accepts
    window_scaling: bool = True  # RFC 7323 section 2
    timestamps: bool = True  # RFC 7323 section 3
    sack: bool = True  # RFC 2018
    # Bounds against a hostile peer (docs/conformance.md "Resource bounds"); what passes them is counted.
    sack_max_ranges: int = 128  # SACKed ranges the sender keeps (FreeBSD net.inet.tcp.sack.maxholes: 128)
    ooo_max_blocks: int = 100  # out-of-order runs the receiver keeps (FreeBSD net.inet.tcp.reass.maxqueuelen)
    ooo_max_bytes: int = 0  # bytes the receiver keeps out of order; 0: as many as the receive window allows
    nodelay: bool = False  # disables Nagle (RFC 9293 3.7.4)
    delayed_ack: float = 0.040  # delayed-ACK timer (RFC 9293 3.8.6.3 allows up to 0.5 s; Linux uses 40 ms)
    rto_initial: float = 1.0  # RFC 6298 (2.1)
    rto_min: float = 0.2  # RFC 6298 (2.4) says 1 s; Linux uses 200 ms and so do we
    rto_max: float = 60.0  # RFC 6298 (2.5)
    syn_retries: int = 6  # SYN / SYN-ACK retransmissions before giving up (Linux tcp_syn_retries)
    max_retransmits: int = 15  # data retransmissions before ETIMEDOUT (Linux tcp_retries2)
    msl: float = 30.0  # TIME-WAIT lasts 2*MSL (Linux: 60 s total)
    fin_wait_2_timeout: float = 60.0  # orphaned FIN-WAIT-2 (Linux tcp_fin_timeout)
    keepalive: bool = False  # SO_KEEPALIVE
    keepalive_idle: float = 7200.0  # RFC 1122 4.2.3.6
    keepalive_interval: float = 75.0
    keepalive_probes: int = 9
    challenge_ack_limit: int = 1000  # RFC 5961 section 7: challenge ACKs per second (Linux default)
    # At most one ACK per interval in answer to unacceptable segments (out of window, PAWS, an ACK of data
    # never sent, challenge ACKs): two stacks that disagree about the sequence space would otherwise answer
    # each other's answers for ever. Linux net.ipv4.tcp_invalid_ratelimit (500 ms); RFC 5961 section 7.
    invalid_ack_interval: float = 0.5
    initial_cwnd_segments: int = 10  # RFC 6928
    abc_limit: int = 0  # RFC 3465 L (segments counted per ACK in slow start); 0 = no limit, as Linux
    dupack_threshold: int = 3  # RFC 5681 / RFC 6675 DupThresh
    persist_min: float = 0.2  # zero-window probe interval lower bound
    persist_max: float = 60.0

    @property
    def segment_payload(self) -> int:
        """Largest payload the engine may put in one emitted segment (TSO-aware)."""
        return max(self.mss, self.max_segment_payload)

    def with_options(self, **changes: Any) -> TcpConfig:
        """``dataclasses.replace`` that returns ``self`` when nothing changes: a hand-off rebuilds an engine
        with the settings it already had far more often than with new ones, and a copy costs microseconds."""
        for name, value in changes.items():
            if getattr(self, name) != value:
                return _replaced(self, tuple(sorted(changes.items())))
        return self


@functools.lru_cache(maxsize=64)
def _replaced(config: TcpConfig, changes: tuple[tuple[str, Any], ...]) -> TcpConfig:
    """One copy per (settings, changes): every connection an asyncio server accepts asks for the same change
    (TCP_NODELAY), and the configs are frozen, so they can share it."""
    return replace(config, **dict(changes))
