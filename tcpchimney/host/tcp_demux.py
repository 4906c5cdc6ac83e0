"""Stateless TCP decisions of the host: the RST for a closed port and TIME-WAIT reuse."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tcpchimney.tcp.state import TcpState
from tcpchimney.wire.seq import SeqNum
from tcpchimney.wire.tcp import ACK, RST, SYN, TcpOptions, TcpSegment

if TYPE_CHECKING:
    from tcpchimney.tcp.connection import TcpConnection


def reset_for(seg: TcpSegment) -> TcpSegment | None:
    """The reply to a segment that matches no connection (RFC 9293 3.10.7.1, CLOSED state):

    - a RST is discarded ("An incoming segment containing a RST is discarded"): never RST a RST;
    - if ACK is on: <SEQ=SEG.ACK><CTL=RST>;
    - otherwise: <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>.
    """
    if seg.flags & RST:
        return None
    if seg.flags & ACK:
        return TcpSegment(seg.dst_port, seg.src_port, seg.ack, SeqNum(0), RST, 0, b"", TcpOptions())
    return TcpSegment(
        seg.dst_port, seg.src_port, SeqNum(0), seg.seq + seg.seg_len, RST | ACK, 0, b"", TcpOptions()
    )


def time_wait_reusable(conn: TcpConnection, syn: TcpSegment) -> bool:
    """May this SYN open a new incarnation of a 4-tuple in TIME-WAIT?

    RFC 6191 section 2: with timestamps on both, the SYN's TSval must be greater than TS.Recent; otherwise
    (RFC 9293 3.10.7.4 note, RFC 1122 4.2.2.13) its sequence number must be beyond RCV.NXT. Linux
    (tcp_timewait_state_process) applies the same two tests.
    """
    if conn.state is not TcpState.TIME_WAIT or not syn.flags & SYN or syn.flags & (ACK | RST):
        return False
    ts_recent = conn.ts_recent
    if syn.options.ts_val is not None and ts_recent is not None:
        return 0 < ((syn.options.ts_val - ts_recent) & 0xFFFFFFFF) < 0x80000000
    return syn.seq > conn.rcv_nxt
