"""The TCP input half of ``HostStack``: a segment's demux to its connection or listener, the passive open
(RFC 9293 3.10.7.2), SYN cookies, and the RSTs for closed ports (architecture.md, "host/").

``TcpInput`` is a mixin of ``HostStack``, which owns every attribute it reads; ``stack.py`` keeps the frame
and IPv4 receive path that calls ``_rx_tcp``, the connection events and the transmit path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from tcpchimney.host.counters import bump
from tcpchimney.host.events import ConnectionEvent
from tcpchimney.host.sockets import TcpSocket
from tcpchimney.host.syncookies import decode_ts, encode_ts
from tcpchimney.host.tcp_demux import reset_for, time_wait_reusable
from tcpchimney.tcp.events import Closed
from tcpchimney.tcp.isn import initial_sequence_number
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire import checksum
from tcpchimney.wire import ipv4 as ipv4_wire
from tcpchimney.wire import tcp as tcp_wire
from tcpchimney.wire.errors import WireError
from tcpchimney.wire.seq import SeqNum
from tcpchimney.wire.tcp import ACK, RST, SYN, TcpOptions, TcpSegment

if TYPE_CHECKING:
    from collections import deque

    from tcpchimney.host.counters import Counters
    from tcpchimney.host.events import HostEvent
    from tcpchimney.host.listener import Listener
    from tcpchimney.host.offload import OffloadManager
    from tcpchimney.host.stack import HostStack
    from tcpchimney.host.syncookies import SynCookies
    from tcpchimney.tcp.config import TcpConfig
    from tcpchimney.tcp.connection import TcpConnection
    from tcpchimney.tcp.isn import TimestampOffset

Bytes = bytes | bytearray | memoryview


class TcpInput:
    if TYPE_CHECKING:
        # Owned and set up by HostStack.__init__ (stack.py).
        tcp_config: TcpConfig
        syncookies_enabled: bool
        _secret: bytes
        _counters: Counters
        _events: deque[HostEvent]
        _cookies: SynCookies
        _ts_offsets: TimestampOffset
        _conns: dict[int, TcpSocket]
        _listeners: dict[int, Listener]
        _dirty: dict[TcpSocket, None]
        _peer_mss: dict[int, int]
        _our_ip: bytes
        _pseudo_rx_base: int
        _offload: OffloadManager | None

        def _engine(self) -> type[TcpConnection]: ...
        def _register(self, sock: TcpSocket) -> None: ...
        def _drain(self, sock: TcpSocket) -> None: ...
        def _forget(self, sock: TcpSocket) -> None: ...
        def _send_ip(self, dst: bytes, proto: int, payload: bytes, now: float, df: bool = False) -> None: ...

    def _rx_tcp(self, src: bytes, data: Bytes, verify: bool, now: float) -> None:
        c = self._counters.tcp
        c["rx"] += 1
        try:
            # The codec verifies the checksum in the same pass when asked (the device did not vouch for it).
            seg = tcp_wire.parse_tcp(
                data, self._pseudo_rx_base + int.from_bytes(src, "big") if verify else None
            )
        except WireError as err:
            bump(c, f"drop_{err.reason}")
            return
        if seg.src_port == 0 or seg.dst_port == 0:
            bump(c, "drop_port_zero")
            return
        key = (int.from_bytes(src, "big") << 32) | (seg.src_port << 16) | seg.dst_port
        sock = self._conns.get(key)
        if sock is not None:
            off = sock.offload
            if off is not None and not off.in_host and self._offload is not None:
                self._offload.held_segment(sock, bytes(data))
                return
            self._segment_for(sock, seg, now)
            return
        listener = self._listeners.get(seg.dst_port)
        if listener is not None:
            self._listen_input(listener, src, key, seg, now)
            return
        self._closed_port(src, seg)

    def _segment_for(self, sock: TcpSocket, seg: TcpSegment, now: float) -> None:
        conn = sock.conn
        state = conn.state
        if state is TcpState.ESTABLISHED:
            conn.handle_segment(seg, now)
        elif state is TcpState.TIME_WAIT and seg.flags & SYN:
            listener = self._listeners.get(sock.local_port)
            if listener is not None and time_wait_reusable(conn, seg):
                bump(self._counters.tcp, "time_wait_reuse")
                self._forget(sock)
                self._events.append(ConnectionEvent(sock, Closed()))  # the old incarnation is gone
                self._listen_input(listener, sock.remote_ip, sock.key, seg, now)
                return
            conn.handle_segment(seg, now)
        elif state is TcpState.SYN_RECEIVED and sock.listener is not None:
            listener = sock.listener
            if seg.flags & (ACK | SYN | RST) == ACK and listener.accept_queue_full:
                # Linux (tcp_abort_on_overflow=0): ignore the handshake's final ACK while the accept queue is
                # full; our SYN-ACK retransmission makes the peer send it again later.
                bump(self._counters.tcp, "drop_accept_queue_full")
                return
            conn.handle_segment(seg, now)
        else:
            if state is TcpState.SYN_SENT and seg.flags & SYN and seg.options.mss is not None:
                self._peer_mss[sock.key] = seg.options.mss
                sock.template = None  # the segment size for TSO follows the peer's MSS
            conn.handle_segment(seg, now)
        self._dirty[sock] = None
        self._drain(sock)

    def _listen_input(self, listener: Listener, src: bytes, key: int, seg: TcpSegment, now: float) -> None:
        """RFC 9293 3.10.7.2, LISTEN state."""
        c = self._counters.tcp
        flags = seg.flags
        if flags & RST:
            bump(c, "drop_rst_to_listener")  # "An incoming RST segment could not be valid ... ignore it"
            return
        if flags & ACK:
            if not flags & SYN and self.syncookies_enabled and self._cookie_ack(listener, src, key, seg, now):
                return
            # "Any acknowledgment is bad if it arrives on a connection still in the LISTEN state."
            self._send_reset(src, seg)
            return
        if not flags & SYN:
            bump(c, "drop_no_syn_to_listener")
            return
        if listener.accept_queue_full:
            # Linux tcp_conn_request: a SYN is dropped while the accept queue is full, cookies or not.
            bump(c, "drop_syn_accept_queue_full")
            return
        if listener.syn_queue_full:
            if not self.syncookies_enabled:
                bump(c, "drop_syn_queue_full")
                return
            self._send_cookie(listener, src, seg, now)
            return
        self._open_passive(listener, src, seg, now, self._isn(seg.dst_port, src, seg.src_port, now), True)

    def _isn(self, local_port: int, remote_ip: bytes, remote_port: int, now: float) -> SeqNum:
        return initial_sequence_number(self._secret, self._our_ip, local_port, remote_ip, remote_port, now)

    def _open_passive(
        self, listener: Listener, src: bytes, syn: TcpSegment, now: float, iss: SeqNum, send_synack: bool
    ) -> TcpSocket:
        ts_offset = self._ts_offsets.offset(self._our_ip, src)
        conn = self._engine().accept_syn(
            self.tcp_config, syn.dst_port, syn.src_port, syn, iss, now, ts_offset, send_synack=send_synack
        )
        stack = cast("HostStack", self)  # TcpInput is only ever a base of HostStack
        sock = TcpSocket(stack, conn, self._our_ip, syn.dst_port, src, syn.src_port, listener)
        listener.syn_queue[sock.key] = sock
        bump(self._counters.tcp, "passive_opens")
        self._peer_mss[sock.key] = syn.options.mss if syn.options.mss is not None else 536
        self._register(sock)
        self._drain(sock)
        return sock

    # ---------------------------------------------------------------- SYN cookies

    def _cookie_tuple(self, src: bytes, seg: TcpSegment) -> bytes:
        return src + self._our_ip + seg.src_port.to_bytes(2, "big") + seg.dst_port.to_bytes(2, "big")

    def _send_cookie(self, listener: Listener, src: bytes, syn: TcpSegment, now: float) -> None:
        """Answer a SYN without keeping state (the SYN queue is full). The SYN-ACK is the one the engine would
        send, built by a throwaway engine so that the options match the connection rebuilt later."""
        c = self._counters.tcp
        cookie = self._cookies.make(self._cookie_tuple(src, syn), syn.seq, syn.options.mss, now)
        ts_offset = self._ts_offsets.offset(self._our_ip, src)
        if syn.options.ts_val is None:
            # Without timestamps the cookie cannot carry window scale or SACK: offer neither (Linux
            # tcp_conn_request clears the options when want_cookie and no timestamp was seen).
            syn = TcpSegment(
                syn.src_port,
                syn.dst_port,
                syn.seq,
                syn.ack,
                syn.flags,
                syn.window,
                b"",
                TcpOptions(mss=syn.options.mss),
            )
        probe = self._engine().accept_syn(
            self.tcp_config, syn.dst_port, syn.src_port, syn, cookie, now, ts_offset
        )
        synacks = [s for s in probe.segments_to_send(now) if s.flags & (SYN | ACK) == SYN | ACK]
        if not synacks:
            bump(c, "drop_cookie_no_synack")
            return
        synack = synacks[0]
        opts = synack.options
        if opts.ts_val is not None:
            wscale = syn.options.wscale if opts.wscale is not None else None
            opts.ts_val = encode_ts(opts.ts_val, wscale, opts.sack_permitted)
        bump(c, "syncookies_sent")
        self._send_segment_stateless(src, synack)

    def _cookie_ack(self, listener: Listener, src: bytes, key: int, seg: TcpSegment, now: float) -> bool:
        """A final ACK that may carry one of our cookies; True when it was consumed."""
        c = self._counters.tcp
        peer_isn = SeqNum(int(seg.seq) - 1)
        mss = self._cookies.check(self._cookie_tuple(src, seg), peer_isn, SeqNum(int(seg.ack) - 1), now)
        if mss is None:
            bump(c, "syncookies_failed")
            return False
        if listener.accept_queue_full:
            bump(c, "drop_accept_queue_full")
            return True  # Linux drops it silently; the peer retransmits its ACK or data
        wscale: int | None = None
        sack = False
        ts_val: int | None = None
        if seg.options.ts_val is not None:
            wscale, sack = decode_ts(seg.options.ts_ecr)
            ts_val = seg.options.ts_val
        options = TcpOptions(mss=mss, wscale=wscale, sack_permitted=sack, ts_val=ts_val, ts_ecr=0)
        syn = TcpSegment(seg.src_port, seg.dst_port, peer_isn, SeqNum(0), SYN, seg.window, b"", options)
        bump(c, "syncookies_ok")
        sock = self._open_passive(listener, src, syn, now, SeqNum(int(seg.ack) - 1), send_synack=False)
        self._segment_for(sock, seg, now)
        return True

    # ---------------------------------------------------------------- closed ports

    def _closed_port(self, src: bytes, seg: TcpSegment) -> None:
        c = self._counters.tcp
        bump(c, "closed_port")
        self._send_reset(src, seg)

    def _send_reset(self, src: bytes, seg: TcpSegment) -> None:
        rst = reset_for(seg)
        if rst is None:
            bump(self._counters.tcp, "drop_rst_no_connection")  # never answer a RST with a RST
            return
        bump(self._counters.tcp, "tx_rst")
        self._send_segment_stateless(src, rst)

    def _send_segment_stateless(self, dst: bytes, seg: TcpSegment) -> None:
        """A segment outside any connection (RST, SYN-cookie SYN-ACK): full checksum, no template."""
        segment = tcp_wire.emit_tcp(seg, checksum.pseudo_base_sum(self._our_ip, dst, ipv4_wire.PROTO_TCP))
        self._counters.tcp["tx"] += 1
        self._send_ip(dst, ipv4_wire.PROTO_TCP, segment, 0.0, df=True)
