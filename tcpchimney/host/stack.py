"""``HostStack``: one interface's ARP, IPv4, ICMP and TCP, sans-I/O (architecture.md, "host/").

Inputs: ``handle_frame(frame, now)``, ``handle_timer(now)`` and the socket/listener calls. Outputs:
``frames_to_send(now)``, ``next_event()``, ``next_deadline()``. The owner calls ``frames_to_send`` after every
input and arms one timer at ``next_deadline()``.

The TCP receive path is written for speed: fixed-offset reads of the Ethernet and IPv4 headers, one dict
lookup by an integer 4-tuple key, and the engine. The transmit path reuses a per-connection Ethernet + IPv4
header template and, when the device offloads checksums, never sums a payload in Python.

A TCP segment's demux to its connection or listener, the passive open and SYN cookies are in
``tcp_input.py`` (``TcpInput``, a base class of ``HostStack``); this module calls them from ``_rx_ipv4``.
"""

from __future__ import annotations

import heapq
import random
import struct
from collections import deque
from dataclasses import replace
from typing import TYPE_CHECKING

from tcpchimney.host.arp import ArpCache, ArpParams
from tcpchimney.host.counters import Counters, bump, count_state_change
from tcpchimney.host.errors import AddressInUse, InvalidAddress, InvalidPort, NoEphemeralPort
from tcpchimney.host.events import ConnectionEvent, HostEvent, IncomingConnection, PathMtuChanged
from tcpchimney.host.icmp import Icmp
from tcpchimney.host.interface import BROADCAST_MAC, ZERO_MAC, InterfaceConfig, ip_bytes, ip_str
from tcpchimney.host.ipv4 import (
    LIMITED_BROADCAST,
    UNSPECIFIED,
    HeaderTemplate,
    IpIdCounter,
    bad_source,
    destination_kind,
    fragment_sizes,
    is_multicast,
    reverse_path,
)
from tcpchimney.host.listener import Listener
from tcpchimney.host.offload import OffloadManager
from tcpchimney.host.policy import ConnectionInfo, OffloadPolicy, OffloadRule
from tcpchimney.host.ports import EphemeralPorts
from tcpchimney.host.reassembly import Reassembler
from tcpchimney.host.sockets import TcpSocket, conn_key
from tcpchimney.host.syncookies import SynCookies
from tcpchimney.host.tcp_input import TcpInput
from tcpchimney.tcp.config import TcpConfig
from tcpchimney.tcp.events import (
    Closed,
    Connected,
    ConnectionReset,
    ConnectionTimedOut,
    DataReceived,
    SegmentDropped,
    StateChanged,
)
from tcpchimney.tcp.isn import TimestampOffset, initial_sequence_number
from tcpchimney.tcp.mib import EngineMib
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire import arp as arp_wire
from tcpchimney.wire import checksum, ethernet
from tcpchimney.wire import icmp as icmp_wire
from tcpchimney.wire import ipv4 as ipv4_wire
from tcpchimney.wire import tcp as tcp_wire
from tcpchimney.wire.errors import WireError
from tcpchimney.wire.frame import Frame
from tcpchimney.wire.seq import SeqNum
from tcpchimney.wire.tcp import TcpSegment

if TYPE_CHECKING:
    from tcpchimney.chimney.reason import Reason
    from tcpchimney.chimney.target import OffloadTarget
    from tcpchimney.tcp.connection import TcpConnection

_ETHERTYPE = struct.Struct("!H")
_MIN_PMTU = 552  # Linux net.ipv4.route.min_pmtu: ICMP claims below this are clamped (RFC 1191 attacks)
_MAX_ERRORS_KEPT = 16


class HostStack(TcpInput):
    def __init__(
        self,
        iface: InterfaceConfig,
        tcp_config: TcpConfig | None = None,
        *,
        secret: bytes,
        rng: random.Random,
        arp_params: ArpParams | None = None,
        syncookies: bool = True,
        engine: type[TcpConnection] | None = None,
        target: OffloadTarget | None = None,
        offload: OffloadPolicy | None = None,
    ) -> None:
        if not secret:
            raise ValueError("the stack secret must not be empty (RFC 6528, RFC 6056)")
        self.iface = iface
        base = tcp_config or TcpConfig()
        # TcpConfig.mss follows the MTU; with TSO the engine may emit super-segments up to the device limit.
        self.tcp_config = replace(base, mss=iface.mss, max_segment_payload=iface.max_segment_payload)
        self.syncookies_enabled = syncookies
        self._engine_class = engine  # None: tcp.connection.TcpConnection, imported on first use
        self._secret = secret
        self._rng = rng
        self._counters = Counters()
        self.engine_mib = EngineMib()  # every host engine counts retransmissions and timeouts here
        self._errors: list[str] = []
        self._internal_errors = 0
        self._tx: list[Frame] = []
        self._events: deque[HostEvent] = deque()
        self.arp = ArpCache(
            iface, self._counters.arp, self._tx, self._events, arp_params, self._neighbor_failed
        )
        self.reassembler = Reassembler(self._counters.ipv4)
        self._icmp = Icmp(self._counters.icmp, self._events, self._send_ip, self._on_frag_needed)
        self._ip_id = IpIdCounter(rng.randrange(1 << 16))
        self._ports = EphemeralPorts(secret)
        self._cookies = SynCookies(secret)
        self._ts_offsets = TimestampOffset(secret)
        self._conns: dict[int, TcpSocket] = {}
        self._listeners: dict[int, Listener] = {}
        # Sockets that may have output, events or a new deadline; a dict keeps insertion order, so the
        # frames of one run come out in the same order every time (replayable tests).
        self._dirty: dict[TcpSocket, None] = {}
        self._timers: list[tuple[float, int, TcpSocket]] = []  # lazy heap: stale entries skipped on pop
        self._timer_seq = 0
        self._pmtu: dict[bytes, int] = {}  # destination -> path MTU learnt from ICMP (RFC 1191)
        self._peer_mss: dict[int, int] = {}  # conn key -> MSS option the peer sent in its SYN / SYN-ACK
        self._our_mac = iface.mac
        self._our_ip = iface.ip
        self._pseudo_rx_base = int.from_bytes(iface.ip, "big") + ipv4_wire.PROTO_TCP  # + source, unfolded
        self._features = iface.features
        # Address checks of the receive path as one lookup each (the rules are in ipv4.py).
        self._local_kinds = {
            a: kind
            for a in (iface.ip, LIMITED_BROADCAST, iface.broadcast)
            if (kind := destination_kind(a, iface))
        }
        self._bad_sources = frozenset(
            a for a in (iface.ip, LIMITED_BROADCAST, UNSPECIFIED, iface.broadcast) if bad_source(a, iface)
        )
        self._reverse_path = reverse_path(iface)  # None: every source is routable (set_gateway updates it)
        # Without a target nothing below changes: every offload hook is behind ``if self._offload``.
        self._offload: OffloadManager | None = None
        if target is not None:
            self._offload = OffloadManager(self, target, offload)
        elif offload is not None:
            raise ValueError("an offload policy needs an offload target")

    # ================================================================== node interface (link/)

    def handle_frame(self, frame: Frame, now: float) -> None:
        """Process one received frame. Never raises: bad input is counted and dropped."""
        try:
            self._rx_frame(frame, now)
        except Exception as exc:  # a codec or engine bug must not kill the stack
            self._internal_error(exc)
        if self._offload is not None:
            self._offload_service(now)

    def _offload_service(self, now: float | None) -> None:
        """Drain the target's completions and indications (every entry point does, so what the target
        produced while handling a frame is seen before the next frames leave)."""
        assert self._offload is not None
        try:
            self._offload.service(now)
        except Exception as exc:  # a manager bug must not kill the stack either
            self._internal_error(exc)

    def _internal_error(self, exc: Exception) -> None:
        self._internal_errors += 1
        self._errors.append(f"{type(exc).__name__}: {exc}")
        del self._errors[:-_MAX_ERRORS_KEPT]

    def _engine_failed(self, sock: TcpSocket, exc: Exception) -> None:
        """An engine raised outside handle_frame: count it and drop the connection, which cannot be trusted
        any more, rather than fail every later call (or spin on its deadline)."""
        self._internal_error(exc)
        listener = sock.listener
        self._forget(sock)
        if listener is not None:
            if sock in listener.accept_queue:
                listener.accept_queue.remove(sock)
        else:
            self._events.append(ConnectionEvent(sock, Closed()))

    def handle_timer(self, now: float) -> None:
        if self._offload is not None:
            self._offload_service(now)
            self._offload.handle_timer(now)
        self.arp.handle_timer(now)
        self.reassembler.handle_timer(now)
        timers = self._timers
        while timers and timers[0][0] <= now:
            deadline, _, sock = heapq.heappop(timers)
            if sock.deadline != deadline or self._conns.get(sock.key) is not sock:
                continue  # superseded by a later deadline, or the connection is gone
            sock.deadline = None
            try:
                sock.conn.handle_timer(now)
                self._dirty[sock] = None
                self._drain(sock)
            except Exception as exc:
                self._engine_failed(sock, exc)

    def frames_to_send(self, now: float) -> list[Frame]:
        if self._offload is not None:
            self._offload_service(now)
        out: list[Frame] = []
        if self._dirty:
            dirty = self._dirty
            self._dirty = {}
            for sock in dirty:
                try:
                    self._output(sock, now, out)
                except Exception as exc:
                    self._engine_failed(sock, exc)
        if self._tx:
            out[:0] = self._tx
            self._tx.clear()
        if out:
            self._counters.ethernet["tx"] += len(out)
        return out

    def next_deadline(self) -> float | None:
        if self._offload is not None:
            self._offload_service(None)
        for sock in list(self._dirty):
            try:
                self._refresh_deadline(sock)
            except Exception as exc:
                self._engine_failed(sock, exc)
        best = self.arp.next_deadline()
        for other in (
            self.reassembler.next_deadline(),
            None if self._offload is None else self._offload.next_deadline(),
        ):
            if other is not None and (best is None or other < best):
                best = other
        timers = self._timers
        while timers:
            deadline, _, sock = timers[0]
            if sock.deadline == deadline and self._conns.get(sock.key) is sock:
                if best is None or deadline < best:
                    best = deadline
                break
            heapq.heappop(timers)
        return best

    def next_event(self) -> HostEvent | None:
        if self._offload is not None:
            self._offload_service(None)
        for sock in list(self._dirty):
            try:
                self._drain(sock)
            except Exception as exc:
                self._engine_failed(sock, exc)
        return self._events.popleft() if self._events else None

    @property
    def counters(self) -> dict[str, dict[str, int]]:
        snap = self._counters.snapshot()
        snap["stack"] = {"internal_error": self._internal_errors}
        snap["tcp"]["retrans_segs"] = self.engine_mib.retrans_segs
        snap["tcp"]["timeouts"] = self.engine_mib.timeouts
        if self._offload is not None:
            snap["offload"] = dict(self._offload.counters)
        return snap

    # ================================================================== offload (docs/offload-design.md)

    @property
    def offload_policy(self) -> OffloadPolicy | None:
        return None if self._offload is None else self._offload.policy

    def set_offload_policy(self, policy: OffloadPolicy) -> None:
        """A new mode or rule set; connections that no longer qualify are uploaded."""
        self._offload_manager().set_policy(policy)

    def offload_now(self, sock: TcpSocket) -> Reason | None:
        """Offload ``sock`` now whatever the mode; None when the initiate went to the target, else the
        reason it stays on the host (an OffloadRefused event says the same)."""
        return self._offload_manager().offload_now(sock)

    def upload(self, sock: TcpSocket, reason: Reason) -> bool:
        """Bring an offloaded connection back to the host; an Uploaded event follows."""
        return self._offload_manager().upload(sock, reason)

    def upload_all(self, reason: Reason) -> int:
        """Upload every offloaded connection; returns how many terminates were started."""
        return self._offload_manager().upload_all(reason)

    def plan_offload_policy(self, policy: OffloadPolicy) -> list[tuple[TcpSocket, str, Reason | None]]:
        """What ``set_offload_policy(policy)`` would upload and offload, without moving anything."""
        return self._offload_manager().plan(policy)

    def offload_info(self, sock: TcpSocket) -> ConnectionInfo | None:
        """What the offload policy sees of ``sock`` (bytes moved, RTT); None without a target."""
        return None if self._offload is None else self._offload.info(sock)

    def inspect(self, sock: TcpSocket) -> bool:
        """Ask the target for an offloaded connection's live state (``sock.offload.inspected`` once it
        answers). False when the connection is not offloaded."""
        return self._offload is not None and self._offload.inspect(sock)

    def offload_rule_hits(self) -> dict[OffloadRule, int]:
        """How many offload decisions each rule of the policy made (``chimney rule show``)."""
        return {} if self._offload is None else dict(self._offload.rule_hits)

    def listeners(self) -> list[Listener]:
        return list(self._listeners.values())

    @property
    def offload_target(self) -> OffloadTarget | None:
        return None if self._offload is None else self._offload.target

    def set_target_attached(self, attached: bool) -> None:
        """Say whether the offload target is in front of the device (the runtime knows: its node). While it
        is not, connections stay on the host with Reason.NO_TARGET instead of being offered to a target
        that never sees their frames."""
        self._offload_manager().set_attached(attached)

    def _offload_manager(self) -> OffloadManager:
        if self._offload is None:
            raise RuntimeError("this stack has no offload target")
        return self._offload

    @property
    def internal_errors(self) -> list[str]:
        """The messages of the last few exceptions counted as internal errors."""
        return list(self._errors)

    # ================================================================== application API

    def listen(self, port: int, backlog: int = 128, syn_backlog: int | None = None) -> Listener:
        _check_port(port)
        if backlog < 1:
            raise ValueError("backlog must be at least 1")
        if port in self._listeners:
            raise AddressInUse(f"port {port} is already listening")
        listener = Listener(self, port, backlog, syn_backlog if syn_backlog is not None else backlog)
        self._listeners[port] = listener
        return listener

    def connect(
        self, remote_ip: str | bytes, remote_port: int, now: float, local_port: int | None = None
    ) -> TcpSocket:
        """Open a connection (SYN-SENT); raises InvalidAddress, InvalidPort, AddressInUse, NoEphemeralPort."""
        dst = self._check_destination(remote_ip)
        _check_port(remote_port)
        if local_port is None:
            conns, listeners = self._conns, self._listeners
            # Like Linux, an ephemeral port is never one we listen on, and its 4-tuple must be free.
            port = self._ports.select(
                self._our_ip,
                dst,
                remote_port,
                lambda p: p not in listeners and conn_key(dst, remote_port, p) not in conns,
            )
            if port is None:
                raise NoEphemeralPort(f"no free local port towards {ip_str(dst)}:{remote_port}")
            local_port = port
        else:
            _check_port(local_port)
            if conn_key(dst, remote_port, local_port) in self._conns:
                raise AddressInUse(
                    f"local port {local_port} is already connected to {ip_str(dst)}:{remote_port}"
                )
        iss = initial_sequence_number(self._secret, self._our_ip, local_port, dst, remote_port, now)
        ts_offset = self._ts_offsets.offset(self._our_ip, dst)
        conn = self._engine().connect(self.tcp_config, local_port, remote_port, iss, now, ts_offset)
        sock = TcpSocket(self, conn, self._our_ip, local_port, dst, remote_port)
        self._register(sock)
        bump(self._counters.tcp, "active_opens")
        return sock

    def ping(self, remote_ip: str | bytes, ident: int, seq: int, payload: bytes, now: float) -> None:
        """Send an ICMP echo request; the reply arrives as an EchoReply event."""
        dst = self._check_destination(remote_ip, allow_broadcast=False)
        if not (0 <= ident <= 0xFFFF and 0 <= seq <= 0xFFFF):
            raise ValueError("ICMP echo identifier and sequence are 16-bit values")
        if len(payload) > 65535 - 20 - 8:
            raise ValueError("echo payload does not fit an IPv4 datagram")
        self._icmp.ping(dst, ident, seq, payload, now)

    def set_gateway(self, gateway: str | bytes | None, now: float) -> None:
        """Change the default route's next hop, as an administrator or a routing daemon does (None: only
        on-link destinations stay reachable). Connections on the host use the new next hop from their next
        segment on (resolved by ARP as usual); offloaded connections whose next hop changes are relinked on
        the target to the new neighbor (chimney-spec 3.4, docs/offload-design.md). Raises ValueError for a
        gateway off the interface's subnet."""
        self.iface = replace(self.iface, gateway=None if gateway is None else ip_bytes(gateway))
        self._reverse_path = reverse_path(self.iface)
        for sock in self._conns.values():
            sock.template = None  # its cached header names the old next hop's MAC
        if self._offload is not None:
            self._offload.on_route_change(now)

    def connections(self) -> list[TcpSocket]:
        return list(self._conns.values())

    def holds(self, sock: TcpSocket) -> bool:
        """Whether ``sock`` is still one of the stack's connections (not closed and forgotten, not replaced
        by a new incarnation of its four-tuple)."""
        return self._conns.get(sock.key) is sock

    def path_mtu(self, dst: str | bytes) -> int:
        return self._pmtu.get(ip_bytes(dst), self.iface.mtu)

    def _engine(self) -> type[TcpConnection]:
        if self._engine_class is None:
            # Imported late so that the link-layer half of the stack works without the engine module.
            from tcpchimney.tcp.connection import TcpConnection

            self._engine_class = TcpConnection
        return self._engine_class

    def _check_destination(self, remote_ip: str | bytes, allow_broadcast: bool = False) -> bytes:
        try:
            dst = ip_bytes(remote_ip)
        except ValueError as exc:
            raise InvalidAddress(f"not an IPv4 address: {remote_ip!r}") from exc
        if dst == self._our_ip or dst[0] == 127:
            raise InvalidAddress("connecting to our own address is not supported (no loopback interface)")
        if dst == b"\x00\x00\x00\x00" or is_multicast(dst) or dst[0] >= 240:
            raise InvalidAddress(f"{remote_ip!r} is not a unicast address")
        if not allow_broadcast and destination_kind(dst, self.iface) == "broadcast":
            raise InvalidAddress(f"{remote_ip!r} is a broadcast address")
        if self.iface.next_hop(dst) is None:
            raise InvalidAddress(f"no route to {remote_ip!r} (off-link and no gateway)")
        return dst

    def _register(self, sock: TcpSocket) -> None:
        self._conns[sock.key] = sock
        sock.conn.mib = self.engine_mib
        mtu = self._pmtu.get(sock.remote_ip)
        if mtu is not None:
            self._lower_mss(sock, mtu)
        self._dirty[sock] = None

    def _mark(self, sock: TcpSocket) -> None:
        self._dirty[sock] = None

    def _close_listener(self, listener: Listener) -> None:
        listener.closed = True
        del self._listeners[listener.port]
        for sock in [*listener.syn_queue.values(), *listener.accept_queue]:
            sock.conn.abort()  # sock.listener stays set: its Closed event is nobody's business
            self._dirty[sock] = None
        listener.syn_queue.clear()
        listener.accept_queue.clear()

    # ================================================================== receive path

    def _rx_frame(self, frame: Frame, now: float) -> None:
        buf: bytes | bytearray | memoryview = frame.headers if not frame.payload else frame.tobytes()
        eth = self._counters.ethernet
        eth["rx"] += 1
        if len(buf) < ethernet.ETH_HEADER_LEN:
            bump(eth, "drop_truncated")
            return
        dst_mac = buf[0:6]
        if dst_mac != self._our_mac and dst_mac != BROADCAST_MAC:
            bump(eth, "drop_multicast" if dst_mac[0] & 1 else "drop_not_for_us")
            return
        ethertype = _ETHERTYPE.unpack_from(buf, 12)[0]
        if ethertype == ethernet.ETHERTYPE_IPV4:
            self._rx_ipv4(buf, frame, now)
        elif ethertype == ethernet.ETHERTYPE_ARP:
            self._rx_arp(buf, now)
        else:
            bump(eth, "drop_unknown_ethertype")

    def _rx_arp(self, buf: bytes | bytearray | memoryview, now: float) -> None:
        c = self._counters.arp
        c["rx"] += 1
        try:
            pkt = arp_wire.parse_arp(buf, ethernet.ETH_HEADER_LEN)
        except WireError as err:
            bump(c, f"drop_{err.reason}")
            return
        self.arp.handle_arp(pkt, now)

    def _rx_ipv4(self, buf: bytes | bytearray | memoryview, frame: Frame, now: float) -> None:
        c = self._counters.ipv4
        c["rx"] += 1
        try:
            ip = ipv4_wire.parse_ipv4(buf, ethernet.ETH_HEADER_LEN)
        except WireError as err:
            bump(c, f"drop_{err.reason}")
            return
        kind = self._local_kinds.get(ip.dst)
        if kind is None:
            bump(c, "drop_not_our_address")
            return
        src = ip.src
        if src in self._bad_sources or src[0] >= 224 or src[0] == 127:  # RFC 1122 3.2.1.3
            bump(c, "drop_bad_source")
            return
        rpf = self._reverse_path
        if rpf is not None and int.from_bytes(src, "big") & rpf[0] != rpf[1]:
            bump(c, "drop_no_route_to_source")  # ipv4.reverse_path: before any state or answer
            return
        if ip.ttl == 0:
            # RFC 1122 3.2.1.7: no host may send TTL 0, so such a datagram is corrupt or forged.
            bump(c, "drop_ttl_zero")
            return
        view = ip.payload  # a view that stops at the total length: Ethernet padding is left out
        verify = not (frame.csum_partial or frame.csum_valid)
        if ip.is_fragment:
            whole = self.reassembler.add(
                (ip.src, ip.dst, ip.proto, ip.ident),
                ip.frag_offset,
                ip.more_fragments,
                view,
                ip.header_len,
                now,
            )
            if whole is None:
                return
            view = memoryview(whole.payload)
            verify = True  # offload flags describe the fragment frame, never the reassembled datagram
        if ip.proto == ipv4_wire.PROTO_TCP:
            if kind != "unicast":
                bump(self._counters.tcp, "drop_broadcast")  # RFC 1122 4.2.3.10: TCP is unicast only
                return
            self._rx_tcp(ip.src, view, verify, now)
        elif ip.proto == ipv4_wire.PROTO_ICMP:
            self._icmp.handle(ip.src, kind == "broadcast", view, verify, now)
        else:
            bump(c, "drop_unknown_protocol")
            if kind == "unicast" and not ip.is_fragment:
                # RFC 1122 3.2.2.1: protocol unreachable; the quote is the header plus 8 bytes (RFC 792).
                quote = bytes(buf[ethernet.ETH_HEADER_LEN : ethernet.ETH_HEADER_LEN + ip.header_len + 8])
                self._icmp.send_error(
                    ip.src, icmp_wire.ICMP_DEST_UNREACHABLE, icmp_wire.UNREACH_PROTOCOL, quote, now
                )

    # ================================================================== connection events

    def _drain(self, sock: TcpSocket) -> None:
        conn = sock.conn
        ev = conn.next_event()
        while ev is not None:
            self._on_event(sock, ev)
            ev = conn.next_event()

    def _on_event(self, sock: TcpSocket, ev: object) -> None:
        if isinstance(ev, SegmentDropped):
            bump(self._counters.tcp, f"engine_drop_{ev.reason}")
            return
        if isinstance(ev, StateChanged):
            count_state_change(self._counters.tcp, ev.old, ev.new)
        if isinstance(ev, DataReceived):
            sock._set_readable(ev.readable)
        if self._offload is not None:
            self._offload.on_engine_event(sock, ev)  # type: ignore[arg-type]
        listener = sock.listener
        if listener is not None:
            self._on_queued_event(listener, sock, ev)
            return
        if isinstance(ev, Closed):
            self._forget(sock)
        self._events.append(ConnectionEvent(sock, ev))  # type: ignore[arg-type]

    def _on_queued_event(self, listener: Listener, sock: TcpSocket, ev: object) -> None:
        """Events of a connection no application has accepted yet: only the queues care."""
        if isinstance(ev, Connected):
            if listener.syn_queue.pop(sock.key, None) is not None:
                listener.accept_queue.append(sock)
                self._events.append(IncomingConnection(listener))
        elif isinstance(ev, Closed | ConnectionReset | ConnectionTimedOut):
            listener.syn_queue.pop(sock.key, None)
            if sock in listener.accept_queue:
                listener.accept_queue.remove(sock)
            if isinstance(ev, Closed):
                sock.listener = None
                self._forget(sock)

    def _neighbor_failed(self, hop: bytes) -> None:
        """Resolution of ``hop`` failed (its queued frames are dropped): the handshakes that wait on it fail
        with EHOSTUNREACH, as Linux's do (ipv4_link_failure's host unreachable reaches tcp_v4_err), instead
        of retrying their SYN for minutes; synchronized connections retransmit on (a soft error)."""
        for sock in list(self._conns.values()):
            if sock.state is TcpState.SYN_SENT and self.iface.next_hop(sock.remote_ip) == hop:
                try:
                    if sock.conn.destination_unreachable():
                        self._dirty[sock] = None
                except Exception as exc:
                    self._engine_failed(sock, exc)

    def _forget(self, sock: TcpSocket) -> None:
        if self._conns.get(sock.key) is sock:
            del self._conns[sock.key]
        self._peer_mss.pop(sock.key, None)
        # The socket stays in _dirty: its last segments (the RST of an abort) still go out with the next
        # frames_to_send, even when the application reads the Closed event first.
        sock.deadline = None
        if sock.listener is not None:
            sock.listener.syn_queue.pop(sock.key, None)

    # ================================================================== transmit path

    def _output(self, sock: TcpSocket, now: float, out: list[Frame]) -> None:
        off = sock.offload
        if off is not None and not off.in_host:
            return  # the engine is frozen while the connection is away
        conn = sock.conn
        segs = conn.segments_to_send(now)
        if segs:
            for seg in segs:
                self._tcp_frame(sock, seg, now, out)
        self._drain(sock)
        if self._conns.get(sock.key) is sock:
            self._refresh_deadline(sock)

    def _refresh_deadline(self, sock: TcpSocket) -> None:
        off = sock.offload
        if off is not None and not off.in_host:
            sock.deadline = None  # a frozen engine has no timers: its heap entries go stale
            return
        deadline = sock.conn.next_deadline()
        if deadline != sock.deadline:
            sock.deadline = deadline
            if deadline is not None:
                self._timer_seq += 1
                heapq.heappush(self._timers, (deadline, self._timer_seq, sock))
                if len(self._timers) > 4 * len(self._conns) + 64:
                    self._compact_timers()

    def _compact_timers(self) -> None:
        conns = self._conns
        self._timers = [t for t in self._timers if t[2].deadline == t[0] and conns.get(t[2].key) is t[2]]
        heapq.heapify(self._timers)

    def _tcp_frame(self, sock: TcpSocket, seg: TcpSegment, now: float, out: list[Frame]) -> None:
        template = sock.template
        if template is None or sock.template_gen != self.arp.generation:
            template = self._build_template(sock, now)
            if template is None:
                # The route went away under the connection (set_gateway): like Linux (OutNoRoutes), the
                # segment is dropped and the engine's retransmission tries again, with the route or not.
                bump(self._counters.ipv4, "drop_no_route")
                return
        payload = seg.payload
        header, partial, gso = tcp_wire.emit_tcp_for_device(
            seg, sock.pseudo_base, sock.gso_mss, self._features
        )
        hdr = template.build(len(header) + len(payload), self._ip_id.next()) + header
        frame = Frame(hdr, payload, partial, False, gso)
        tcp = self._counters.tcp
        tcp["tx"] += 1
        if seg.flags & tcp_wire.RST:
            bump(tcp, "tx_rst")  # an engine's RST (abort, or an answer in a connection): Linux OutRsts
        self._counters.ipv4["tx"] += 1
        if template.dst_mac == ZERO_MAC:
            sock.template = None  # unresolved: rebuilt once the neighbor answers
            self.arp.enqueue(self._next_hop(sock.remote_ip), frame, now)
            return
        out.append(frame)

    def _next_hop(self, dst: bytes) -> bytes:
        hop = self.iface.next_hop(dst)
        if hop is None:
            raise InvalidAddress(f"no route to {'.'.join(map(str, dst))}")
        return hop

    def _build_template(self, sock: TcpSocket, now: float) -> HeaderTemplate | None:
        """The connection's header template towards its next hop; None while there is no route."""
        hop = self.iface.next_hop(sock.remote_ip)
        if hop is None:
            return None
        mac = self.arp.lookup(hop, now) or ZERO_MAC
        template = HeaderTemplate(
            self._our_mac, mac, self._our_ip, sock.remote_ip, ipv4_wire.PROTO_TCP, df=True
        )
        sock.template = template
        sock.template_gen = self.arp.generation
        sock.pseudo_base = checksum.pseudo_base_sum(self._our_ip, sock.remote_ip, ipv4_wire.PROTO_TCP)
        sock.gso_mss = self._send_mss(sock)
        return template

    def _send_mss(self, sock: TcpSocket) -> int:
        """Payload per wire segment (before options): RFC 9293 3.7.1 / RFC 1191 -- the smaller of the peer's
        MSS and what our path MTU allows."""
        path = self._pmtu.get(sock.remote_ip, self.iface.mtu) - 40
        return min(self._peer_mss.get(sock.key, 536), path)

    def _send_ip(self, dst: bytes, proto: int, payload: bytes, now: float, df: bool = False) -> None:
        """Any datagram other than a connection's segment: routed, resolved and fragmented when too large."""
        hop = self.iface.next_hop(dst)
        if hop is None:
            bump(self._counters.ipv4, "drop_no_route")
            return
        broadcast = destination_kind(dst, self.iface) == "broadcast"
        mac = b"\xff" * 6 if broadcast else (self.arp.lookup(hop, now) or ZERO_MAC)
        template = HeaderTemplate(self._our_mac, mac, self._our_ip, dst, proto, df=df)
        ident = self._ip_id.next()
        mtu = self._pmtu.get(dst, self.iface.mtu)
        if 20 + len(payload) <= mtu:
            pieces = [(0, len(payload))]
        elif df:
            bump(self._counters.ipv4, "drop_too_big_df")
            return
        else:
            pieces = fragment_sizes(len(payload), mtu)
            bump(self._counters.ipv4, "tx_fragmented")
        for offset, length in pieces:
            more = offset + length < len(payload)
            if len(pieces) == 1:
                hdr = template.build(length, ident)
            else:
                hdr = template.build_fragment(self._our_ip, dst, proto, length, ident, offset, more)
            frame = Frame(hdr + payload[offset : offset + length])
            self._counters.ipv4["tx"] += 1
            if mac == ZERO_MAC:
                self.arp.enqueue(hop, frame, now)
            else:
                self._tx.append(frame)

    # ================================================================== path MTU (RFC 1191)

    def _on_frag_needed(
        self, quoted: ipv4_wire.Ipv4Header, mtu: int, data: bytes | bytearray | memoryview
    ) -> None:
        c = self._counters.icmp
        dst = quoted.dst
        if quoted.proto == ipv4_wire.PROTO_TCP and not self._quote_matches_connection(quoted, data):
            # RFC 5927 section 4.1 / Linux tcp_v4_err: an ICMP error about TCP must name one of our
            # connections and a sequence number in flight, or it is a blind attack.
            bump(c, "drop_frag_needed_unmatched")
            return
        current = self._pmtu.get(dst, self.iface.mtu)
        if mtu == 0:
            bump(c, "drop_frag_needed_no_mtu")  # RFC 1191 plateaus are not implemented
            return
        mtu = max(mtu, _MIN_PMTU)
        if mtu >= current:
            bump(c, "frag_needed_ignored")
            return
        self._pmtu[dst] = mtu
        self._events.append(PathMtuChanged(dst, mtu))
        for sock in self._conns.values():
            if sock.remote_ip == dst:
                self._lower_mss(sock, mtu)
        if self._offload is not None:
            self._offload.on_pmtu(dst, mtu)  # offloaded connections learn it by an update of their path

    def _quote_matches_connection(
        self, quoted: ipv4_wire.Ipv4Header, data: bytes | bytearray | memoryview
    ) -> bool:
        at = quoted.header_len
        if len(data) < at + 8:
            return False
        sport, dport, seq = struct.unpack_from("!HHI", data, at)
        sock = self._conns.get(conn_key(quoted.dst, dport, sport))
        if sock is None:
            return False
        off = sock.offload
        if off is not None and not off.in_host and self._offload is not None:
            return self._offload.seq_in_flight(sock, SeqNum(seq))
        conn = sock.conn
        return conn.snd_una <= SeqNum(seq) <= conn.snd_nxt

    def _lower_mss(self, sock: TcpSocket, mtu: int) -> None:
        sock.template = None  # rebuilt with the new segment size
        set_mss = getattr(sock.conn, "set_path_mss", None)
        if set_mss is not None:
            set_mss(mtu - 40)
        self._dirty[sock] = None


def _check_port(port: int) -> None:
    if not isinstance(port, int) or not 1 <= port <= 0xFFFF:
        raise InvalidPort(f"port {port!r} is not in 1..65535")
