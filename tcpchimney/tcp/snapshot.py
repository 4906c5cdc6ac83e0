"""Export a connection's whole state as the offload contract's ``TcpSnapshot`` and rebuild an engine from it.

This is the hand-off at the heart of the architecture: the host exports, the target rebuilds (offload), and
the other way round (upload). The split and the field names are the contract's (chimney/tcp_state.py, spec
2.4). Deliberately not carried, as in the original: the SACK scoreboard and the out-of-order queue (the peer
retransmits what was dropped), the delayed-ACK timer (call ``segments_to_send`` before exporting so nothing
owed is lost; the rebuilt side acknowledges with its next segment), the recovery episode (the rebuilt
engine starts outside fast recovery with the exported cwnd/ssthresh and duplicate-ACK count), and the clocks
of the rate limits on challenge ACKs and ACKs to unacceptable segments (they start afresh).
"""

from __future__ import annotations

from tcpchimney.chimney.tcp_state import TcpCached, TcpConst, TcpDelegated, TcpSnapshot
from tcpchimney.tcp.config import TcpConfig
from tcpchimney.tcp.connection import TcpConnection
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire.seq import SeqNum

_MS = 1000  # timestamp clock rate (tcp/isn.py: 1 ms)
_MASK32 = 0xFFFFFFFF
# States in which our FIN has been queued (it follows the send data) and, of those, acknowledged.
_FIN_QUEUED = frozenset(
    {TcpState.FIN_WAIT_1, TcpState.FIN_WAIT_2, TcpState.CLOSING, TcpState.LAST_ACK, TcpState.TIME_WAIT}
)
_FIN_ACKED = frozenset({TcpState.FIN_WAIT_2, TcpState.TIME_WAIT})


def _remaining(deadline: float | None, now: float) -> float | None:
    return None if deadline is None else max(0.0, deadline - now)


def export_snapshot(conn: TcpConnection, now: float, *, hash_value: int = 0, ttl: int = 64) -> TcpSnapshot:
    """The const / cached / delegated state of ``conn`` at ``now``."""
    const = TcpConst(
        local_port=conn.local_port,
        remote_port=conn.remote_port,
        remote_mss=conn.peer_mss,
        timestamps=conn.ts_enabled,
        sack=conn.sack_enabled,
        window_scaling=conn.window_scaling,
        snd_wscale=conn.snd_wscale,
        rcv_wscale=conn.rcv_wscale,
        hash_value=hash_value,
    )
    c = conn.config
    cached = TcpCached(
        initial_rcv_wnd=conn.rcvbuf.capacity,
        nodelay=c.nodelay,
        keepalive=c.keepalive,
        keepalive_idle=c.keepalive_idle,
        keepalive_interval=c.keepalive_interval,
        keepalive_probes=c.keepalive_probes,
        ttl=ttl,
    )
    return TcpSnapshot(const, cached, _delegated(conn, now))


def _delegated(conn: TcpConnection, now: float) -> TcpDelegated:
    persisting = conn.persisting
    closing = conn.state is TcpState.FIN_WAIT_2 or conn.state is TcpState.TIME_WAIT
    shared_slot = conn.close_deadline if closing else conn.rto_deadline
    return TcpDelegated(
        state=conn.state,
        rcv_nxt=conn.rcv_nxt,
        rcv_wnd=max(0, conn.rcv_adv.dist(conn.rcv_nxt)),
        snd_una=conn.snd_una,
        snd_nxt=conn.snd_nxt,
        snd_max=conn.snd_max,
        snd_wnd=conn.snd_wnd,
        max_snd_wnd=max(conn.max_snd_wnd, conn.snd_wnd),
        snd_wl1=conn.snd_wl1,
        snd_wl2=conn.snd_wl2,
        cwnd=conn.cc.cwnd,
        ssthresh=conn.cc.ssthresh,
        srtt=conn.rtt.srtt,
        rttvar=conn.rtt.rttvar,
        rto=conn.rtt.current_rto(),
        ts_recent=conn.ts_recent,
        ts_recent_age=0.0 if conn.ts_recent_time is None else max(0.0, now - conn.ts_recent_time),
        ts_time=conn.ts_now(now),
        total_rt=0.0 if conn.first_rexmit_time is None else max(0.0, now - conn.first_rexmit_time),
        dup_ack_count=min(conn.dup_ack_count, 0xFFFF),
        snd_wnd_probe_count=min(conn.retransmit_count, 0xFF) if persisting else 0,
        keepalive_probe_count=min(conn.keepalive_probe_count, 0xFF),
        keepalive_timeout=_remaining(conn.keepalive_deadline, now),
        retransmit_count=0 if persisting else min(conn.retransmit_count, 0xFF),
        retransmit_timeout=_remaining(shared_slot, now),
        send_data=conn.sndbuf.tobytes(),
        buffered_data=conn.rcvbuf.tobytes(),
    )


def rebuild(snapshot: TcpSnapshot, config: TcpConfig, now: float) -> TcpConnection:
    """An engine that continues the exported connection at ``now``. ``config`` supplies what the contract
    leaves to each side (MSS of the local interface, buffer sizes, RTO bounds); the snapshot's cached part
    overrides the socket options it carries."""
    const, cached, d = snapshot.const, snapshot.cached, snapshot.delegated
    config = config.with_options(
        rcv_buf=cached.initial_rcv_wnd,
        snd_buf=max(config.snd_buf, len(d.send_data)),
        nodelay=cached.nodelay,
        keepalive=cached.keepalive,
        keepalive_idle=cached.keepalive_idle,
        keepalive_interval=cached.keepalive_interval,
        keepalive_probes=cached.keepalive_probes,
    )
    ts_offset = (d.ts_time - int(now * _MS)) & _MASK32
    # The snapshot carries no ISS (only states past the handshake are handed off, spec 1.2): SND.UNA - 1
    # stands in for it. Nothing past the handshake may compare with the ISS, as 2^32 bytes later SND.UNA
    # comes back to it.
    conn = TcpConnection(config, const.local_port, const.remote_port, d.snd_una + -1, ts_offset)
    _restore_options(conn, const, d, now)
    _restore_sequence_space(conn, d)
    _restore_data(conn, d)
    _restore_control(conn, d, now)
    return conn


def _restore_options(conn: TcpConnection, const: TcpConst, d: TcpDelegated, now: float) -> None:
    conn.state = d.state  # set directly: the rebuilt engine reports no transition it did not make
    conn.active_open = False
    conn.peer_mss = const.remote_mss
    conn.ts_enabled = const.timestamps
    conn.sack_enabled = const.sack
    conn.window_scaling = const.window_scaling
    conn.snd_wscale = const.snd_wscale
    conn.rcv_wscale = const.rcv_wscale
    conn.ts_recent = d.ts_recent
    conn.ts_recent_time = now - d.ts_recent_age if const.timestamps else None
    mss = conn.eff_mss
    conn.cc.mss = conn.sack.mss = mss
    conn.rcv_mss = mss


def _restore_sequence_space(conn: TcpConnection, d: TcpDelegated) -> None:
    conn.snd_una, conn.snd_nxt, conn.snd_max = d.snd_una, d.snd_nxt, d.snd_max
    conn.snd_wnd, conn.max_snd_wnd = d.snd_wnd, d.max_snd_wnd
    conn.snd_wl1, conn.snd_wl2 = d.snd_wl1, d.snd_wl2
    conn.high_rxt = d.snd_una
    conn.rcv_nxt = d.rcv_nxt
    conn.rcv_adv = d.rcv_nxt + d.rcv_wnd
    conn.last_ack_sent = d.rcv_nxt
    conn.irs = SeqNum(0)


def _restore_data(conn: TcpConnection, d: TcpDelegated) -> None:
    conn.sndbuf.write(d.send_data)
    if d.buffered_data:
        conn.rcvbuf.insert(0, d.buffered_data)
    conn.fin_queued = d.state in _FIN_QUEUED
    conn.our_fin_acked = d.state in _FIN_ACKED


def _restore_control(conn: TcpConnection, d: TcpDelegated, now: float) -> None:
    conn.cc.restore(d.cwnd, d.ssthresh)
    conn.rtt.restore(d.srtt, d.rttvar, d.rto)
    conn.dup_ack_count = d.dup_ack_count
    conn.keepalive_probe_count = d.keepalive_probe_count
    conn.first_rexmit_time = now - d.total_rt if d.total_rt else None
    conn.last_rcv_time = now
    if d.keepalive_timeout is not None:
        conn.keepalive_deadline = now + d.keepalive_timeout
    slot = None if d.retransmit_timeout is None else now + d.retransmit_timeout
    if d.state is TcpState.FIN_WAIT_2:
        conn.close_deadline = slot
        return
    if d.state is TcpState.TIME_WAIT:
        conn.close_deadline = slot if slot is not None else now + 2 * conn.config.msl
        return
    nothing_in_flight = d.snd_max == d.snd_una
    if nothing_in_flight and (d.snd_wnd_probe_count or slot is not None):
        conn.persisting = True
        conn.retransmit_count = d.snd_wnd_probe_count
    else:
        conn.retransmit_count = d.retransmit_count
    conn.rto_deadline = slot
    if slot is None and not nothing_in_flight:
        conn.rto_deadline = now + conn.rtt.current_rto()  # data outstanding: the timer must run
