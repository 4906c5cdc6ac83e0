"""ICMP (RFC 792, RFC 1122 3.2.2): echo, and the errors the host acts on or counts."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from tcpchimney.host.counters import bump
from tcpchimney.host.events import EchoReply, HostEvent
from tcpchimney.wire import icmp as icmp_wire
from tcpchimney.wire import ipv4 as ipv4_wire
from tcpchimney.wire.errors import WireError

SendIp = Callable[[bytes, int, bytes, float], None]  # (dst, protocol, payload, now)
Bytes = bytes | bytearray | memoryview
FragNeeded = Callable[
    [ipv4_wire.Ipv4Header, int, Bytes], None
]  # (quoted IPv4 header, next-hop MTU, the quote)


class Icmp:
    def __init__(
        self, counters: dict[str, int], events: deque[HostEvent], send_ip: SendIp, frag_needed: FragNeeded
    ) -> None:
        self._counters = counters
        self._events = events
        self._send_ip = send_ip
        self._frag_needed = frag_needed
        self._outstanding: dict[tuple[bytes, int, int], float] = {}  # (dst, ident, seq) -> time sent
        self.max_outstanding = 1024
        self.errors_per_second = 1000.0  # Linux net.ipv4.icmp_msgs_per_sec
        self.error_burst = 50.0  # Linux net.ipv4.icmp_msgs_burst
        self._tokens = self.error_burst
        self._tokens_at = 0.0

    def handle(
        self, src: bytes, broadcast: bool, data: bytes | bytearray | memoryview, verify: bool, now: float
    ) -> None:
        c = self._counters
        c["rx"] += 1
        try:
            msg = icmp_wire.parse_icmp(data, verify_checksum=verify)
        except WireError as err:
            bump(c, f"drop_{err.reason}")
            return
        t = msg.type
        if t == icmp_wire.ICMP_ECHO_REQUEST:
            bump(c, "rx_echo_request")
            if broadcast:
                bump(c, "drop_broadcast_echo")  # Linux icmp_echo_ignore_broadcasts=1 (smurf defence)
                return
            self._send(src, icmp_wire.ICMP_ECHO_REPLY, 0, msg.rest, msg.data, now)
        elif t == icmp_wire.ICMP_ECHO_REPLY:
            bump(c, "rx_echo_reply")
            ident, seq = msg.rest >> 16, msg.rest & 0xFFFF
            sent = self._outstanding.pop((src, ident, seq), None)
            self._events.append(
                EchoReply(src, ident, seq, bytes(msg.data), None if sent is None else now - sent)
            )
        elif t == icmp_wire.ICMP_DEST_UNREACHABLE:
            self._unreachable(msg)
        elif t == icmp_wire.ICMP_TIME_EXCEEDED:
            bump(c, "rx_time_exceeded")
        elif t == icmp_wire.ICMP_PARAMETER_PROBLEM:
            bump(c, "rx_parameter_problem")
        else:
            bump(c, "rx_other")  # RFC 1122 3.2.2: unknown types are silently discarded

    def _unreachable(self, msg: icmp_wire.IcmpMessage) -> None:
        c = self._counters
        bump(c, "rx_dest_unreachable")
        if msg.code == icmp_wire.UNREACH_PORT:
            bump(c, "rx_port_unreachable")
        if msg.code != icmp_wire.UNREACH_FRAG_NEEDED:
            return
        bump(c, "rx_frag_needed")
        try:
            quoted = ipv4_wire.parse_ipv4_quote(msg.data)
        except WireError:
            # RFC 792: the data holds the original header + 8 bytes; a short quote cannot be matched.
            bump(c, "drop_bad_quote")
            return
        self._frag_needed(quoted, msg.rest & 0xFFFF, msg.data)

    def send_error(self, dst: bytes, icmp_type: int, code: int, quote: bytes, now: float) -> None:
        """An ICMP error, rate-limited by a token bucket (RFC 1812 4.3.2.8; Linux icmp_ratelimit and
        icmp_msgs_per_sec / icmp_msgs_burst) so that a flood cannot turn us into an amplifier."""
        self._tokens = min(self.error_burst, self._tokens + (now - self._tokens_at) * self.errors_per_second)
        self._tokens_at = now
        if self._tokens < 1.0:
            bump(self._counters, "tx_error_rate_limited")
            return
        self._tokens -= 1.0
        bump(self._counters, "tx_error")
        self._send(dst, icmp_type, code, 0, quote, now)

    def ping(self, dst: bytes, ident: int, seq: int, payload: bytes, now: float) -> None:
        if len(self._outstanding) >= self.max_outstanding:
            self._outstanding.pop(next(iter(self._outstanding)))
        self._outstanding[(dst, ident, seq)] = now
        self._send(dst, icmp_wire.ICMP_ECHO_REQUEST, 0, (ident << 16) | seq, payload, now)

    def _send(
        self,
        dst: bytes,
        icmp_type: int,
        code: int,
        rest: int,
        data: bytes | bytearray | memoryview,
        now: float,
    ) -> None:
        self._counters["tx"] += 1
        self._send_ip(dst, ipv4_wire.PROTO_ICMP, icmp_wire.emit_icmp(icmp_type, code, rest, data), now)
