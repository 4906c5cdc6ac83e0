"""``TcpConnection``: one sans-I/O TCP connection (RFC 9293), the engine shared by the host stack and the
offload target.

Fed segments (``handle_segment``), application calls (``send``, ``receive``, ``shutdown``, ``close``,
``abort``) and expired deadlines (``handle_timer``), always with ``now``; it answers with
``segments_to_send(now)``, typed events (``next_event``) and ``next_deadline()``. It never reads a clock,
never draws a random number and never does I/O: the host gives it its ISN and timestamp offset.

The parts live in their own modules, in the RFC's order: tcb.py (variables), output.py (sending),
timers.py, input.py (SEGMENT ARRIVES); this module adds the constructors and the user calls (RFC 9293
3.10.1-3.10.6). snapshot.py exports and rebuilds the whole state.
"""

from __future__ import annotations

from typing import Any

from tcpchimney.tcp.config import TcpConfig
from tcpchimney.tcp.errors import (
    ConnectionClosedError,
    ConnectionResetByPeerError,
    ConnectionTimedOutError,
    InvalidStateError,
)
from tcpchimney.tcp.events import ConnectionUnreachable
from tcpchimney.tcp.input import Input
from tcpchimney.tcp.state import TcpState
from tcpchimney.tcp.tcb import MAX_WINDOW_FIELD, Payload
from tcpchimney.wire.seq import SeqNum
from tcpchimney.wire.tcp import ACK, RST, SYN, TcpOptions, TcpSegment

_OPEN_FOR_SEND = frozenset(
    {TcpState.SYN_SENT, TcpState.SYN_RECEIVED, TcpState.ESTABLISHED, TcpState.CLOSE_WAIT}
)


class TcpConnection(Input):
    """One TCP connection. Build it with ``connect`` (active open) or ``accept_syn`` (passive open)."""

    # ------------------------------------------------------------------ opening (RFC 9293 3.10.1)

    @classmethod
    def connect(
        cls, config: TcpConfig, local_port: int, remote_port: int, iss: SeqNum, now: float, ts_offset: int
    ) -> TcpConnection:
        """Active open: the SYN is ready in ``segments_to_send``."""
        conn = cls(config, local_port, remote_port, iss, ts_offset)
        conn.active_open = True
        conn.set_state(TcpState.SYN_SENT)
        conn._send_syn(now)
        return conn

    @classmethod
    def accept_syn(
        cls,
        config: TcpConfig,
        local_port: int,
        remote_port: int,
        syn: TcpSegment,
        iss: SeqNum,
        now: float,
        ts_offset: int,
        send_synack: bool = True,
    ) -> TcpConnection:
        """Passive open from a listener's SYN (RFC 9293 3.10.7.2); ``send_synack=False`` when the SYN-ACK
        already left statelessly (a SYN cookie) and the handshake's ACK follows."""
        if not syn.flags & SYN or syn.flags & (ACK | RST):
            raise InvalidStateError(f"accept_syn needs a SYN, got flags {syn.flags:#x}")
        conn = cls(config, local_port, remote_port, iss, ts_offset)
        conn.irs = syn.seq
        conn.rcv_nxt = conn.rcv_adv = syn.seq + 1
        conn.negotiate(syn.options, now)
        conn.snd_wnd = conn.max_snd_wnd = syn.window  # never scaled in a SYN (RFC 7323 2.2)
        conn.snd_wl1 = syn.seq
        conn.set_state(TcpState.SYN_RECEIVED)
        if send_synack:
            conn._send_syn(now)
        else:
            conn.snd_nxt = conn.snd_max = iss + 1
            conn.syn_time = now
        return conn

    def _send_syn(self, now: float) -> None:
        self.pending.append(self.syn_segment(now))
        self.snd_nxt = self.snd_max = self.iss + 1
        self.syn_time = now
        self.rto_deadline = now + self.rtt.current_rto()

    def syn_segment(self, now: float) -> TcpSegment:
        """Our SYN (SYN-SENT) or SYN-ACK (SYN-RECEIVED) with the options we offer (RFC 9293 3.7.1, RFC 7323,
        RFC 2018). Options the peer did not offer are not answered in a SYN-ACK."""
        c = self.config
        synack = self.state is TcpState.SYN_RECEIVED
        opts = TcpOptions(mss=c.mss)
        if c.window_scaling and (not synack or self.window_scaling):
            opts.wscale = self.rcv_wscale
        if c.sack and (not synack or self.sack_enabled):
            opts.sack_permitted = True
        if c.timestamps and (not synack or self.ts_enabled):
            opts.ts_val = self.ts_now(now)
            opts.ts_ecr = self.ts_recent if synack else 0
        window = min(self.rcvbuf.window, MAX_WINDOW_FIELD)  # a SYN's window is never scaled
        flags = SYN | ACK if synack else SYN
        ack = self.rcv_nxt if synack else SeqNum(0)
        if synack:
            self.last_ack_sent = ack
            self.rcv_adv = self.rcv_nxt + window
        return TcpSegment(self.local_port, self.remote_port, self.iss, ack, flags, window, b"", opts)

    # ------------------------------------------------------------------ user calls (3.10.2-3.10.6)

    def send(self, data: Payload) -> int:
        """Queue data; returns how many bytes fitted in the send buffer (0 when it is full)."""
        if self.state not in _OPEN_FOR_SEND or self.fin_queued:
            raise self._closed_error("send")
        n = self.sndbuf.write(data)
        if n < len(data):
            self.send_blocked = True
        return n

    def receive(self, max_bytes: int = -1) -> bytes:
        """In-order data (up to ``max_bytes``; all when negative). b"" when none is buffered: after
        ``PeerClosed`` that is the end of the stream."""
        data = self.rcvbuf.read(max_bytes)
        if data and self.state.synchronized:
            self._maybe_window_update()
        return data

    def _maybe_window_update(self) -> None:
        """Reading reopened the window: announce it when it at least doubled and grew by a segment, so a
        sender stalled on a small window resumes without its persist timer (RFC 9293 3.8.6.2.2)."""
        advertised = max(0, self.rcv_adv.dist(self.rcv_nxt))
        now_open = self.rcvbuf.window
        if now_open >= 2 * advertised and now_open - advertised >= self.rcv_mss:
            self.ack_now = True

    def shutdown(self) -> None:
        """Close the sending side (RFC 9293 3.10.4 CLOSE: the FIN follows the queued data)."""
        state = self.state
        if state is TcpState.SYN_SENT:
            self.pending.clear()
            self.set_state(TcpState.CLOSED)
            return
        if self.fin_queued or state not in _OPEN_FOR_SEND:
            if state is TcpState.CLOSED and (self.reset_seen or self.timed_out):
                raise self._closed_error("shutdown")
            return  # already closing: idempotent, as shutdown(SHUT_WR) twice is
        self.fin_queued = True
        if state is TcpState.ESTABLISHED:
            self.set_state(TcpState.FIN_WAIT_1)
        elif state is TcpState.CLOSE_WAIT:
            self.set_state(TcpState.LAST_ACK)
        # SYN-RECEIVED: the FIN waits for ESTABLISHED (input.established moves on to FIN-WAIT-1)

    def close(self) -> None:
        """The application is done with the connection. Unread data makes it a reset (RFC 2525 2.17, as
        Linux does); otherwise a graceful close whose remainder runs on its own."""
        if self.state is TcpState.CLOSED:
            return
        self.orphaned = True
        if self.rcvbuf.readable and self.state.synchronized:
            self.abort()
            return
        self.shutdown()
        if self.state is TcpState.FIN_WAIT_2:
            self.close_deadline = self.last_rcv_time + self.config.fin_wait_2_timeout

    def abort(self) -> None:
        """RFC 9293 3.10.5 ABORT: send a reset where the peer knows the connection, then forget it."""
        state = self.state
        if state is TcpState.CLOSED:
            return
        self.pending.clear()
        if (state.synchronized and state is not TcpState.TIME_WAIT) or state is TcpState.SYN_RECEIVED:
            self.pending.append(
                TcpSegment(self.local_port, self.remote_port, self.snd_nxt, SeqNum(0), RST, 0)
            )
        self.orphaned = True
        self.set_state(TcpState.CLOSED)

    def destination_unreachable(self) -> bool:
        """A hard error from below the connection: the destination cannot be reached. During the handshake
        (SYN-SENT) the open fails with it and nothing more is sent, as Linux's tcp_v4_err does for a host
        unreachable; a synchronized connection takes it as a soft error (RFC 1122 4.2.3.9) and keeps
        retransmitting. True when the connection ended."""
        if self.state is not TcpState.SYN_SENT:
            return False
        self.pending.clear()
        self.events.append(ConnectionUnreachable())
        self.set_state(TcpState.CLOSED)
        return True

    def configure(
        self,
        *,
        nodelay: bool | None = None,
        keepalive: bool | None = None,
        keepalive_idle: float | None = None,
        keepalive_interval: float | None = None,
        keepalive_probes: int | None = None,
        rcv_buf: int | None = None,
        snd_buf: int | None = None,
    ) -> None:
        """Change socket options of a live connection (TCP_NODELAY, SO_KEEPALIVE and TCP_KEEP*, SO_RCVBUF,
        SO_SNDBUF). A smaller buffer keeps what it holds; the advertised window never shrinks (3.8.6.2.2)."""
        changes: dict[str, Any] = {
            k: v
            for k, v in {
                "nodelay": nodelay,
                "keepalive": keepalive,
                "keepalive_idle": keepalive_idle,
                "keepalive_interval": keepalive_interval,
                "keepalive_probes": keepalive_probes,
                "rcv_buf": rcv_buf,
                "snd_buf": snd_buf,
            }.items()
            if v is not None
        }
        for name in ("rcv_buf", "snd_buf"):
            if name in changes and not 0 < changes[name] <= 1 << 30:
                raise ValueError(f"{name} must be in 1..2**30, got {changes[name]}")
        self.config = self.config.with_options(**changes)
        self.rcvbuf.capacity = self.config.rcv_buf
        self.sndbuf.capacity = self.config.snd_buf
        if keepalive is not None or keepalive_idle is not None:
            self.arm_keepalive(self.last_rcv_time)

    def set_path_mss(self, mss: int) -> None:
        """ICMP fragmentation-needed lowered the path MTU (RFC 1191): segments shrink from now on."""
        if mss < 68:
            return
        self.path_mss = min(mss, self.config.mss)
        self.cc.mss = self.sack.mss = self.eff_mss

    # ------------------------------------------------------------------ queries

    @property
    def readable(self) -> int:
        return self.rcvbuf.readable

    @property
    def send_space(self) -> int:
        return self.sndbuf.space if self.state in _OPEN_FOR_SEND and not self.fin_queued else 0

    @property
    def unsent(self) -> int:
        """Queued bytes not yet sent once."""
        return max(0, len(self.sndbuf) - self.snd_max.dist(self.snd_una))

    def _closed_error(self, op: str) -> ConnectionClosedError:
        if self.reset_seen:
            return ConnectionResetByPeerError(f"{op}: the peer reset the connection", self.state)
        if self.timed_out:
            return ConnectionTimedOutError(f"{op}: the connection timed out", self.state)
        return ConnectionClosedError(f"{op}: the connection is {self.state.value}", self.state)

    def __repr__(self) -> str:
        return (
            f"TcpConnection({self.local_port}->{self.remote_port} {self.state.value} "
            f"una={int(self.snd_una)} nxt={int(self.snd_nxt)} max={int(self.snd_max)} "
            f"rcv_nxt={int(self.rcv_nxt)} cwnd={self.cc.cwnd})"
        )
