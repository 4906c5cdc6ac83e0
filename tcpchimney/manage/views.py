"""The rows ``chimney netstat`` shows: one per connection or listener, from the host's tables.

A connection's internals (``-i``) come from the engine that runs it: the host's for a connection on the
host, the target's answer to a query for an offloaded one (with the answer's age: the target is asked at
each look, and the row says how old what it shows is).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from tcpchimney.host.interface import ip_str
from tcpchimney.host.listener import Listener
from tcpchimney.host.offload_state import Inspected, OffloadState
from tcpchimney.host.sockets import TcpSocket
from tcpchimney.tcp.connection import TcpConnection

# The names Windows gave the four states (netstat -t, MIB_TCP_OFFLOAD_STATE), which scripts rely on.
OFFLOAD_STATE_NAMES = {
    None: "InHost",
    OffloadState.IN_HOST: "InHost",
    OffloadState.OFFLOADING: "Offloading",
    OffloadState.OFFLOADED: "Offloaded",
    OffloadState.UPLOADING: "Uploading",
}


@dataclass(frozen=True, slots=True)
class Internals:
    """ss -i's figures of one connection (times in milliseconds, as ss prints them)."""

    source: str  # "host" (the host engine) or "nic" (the target's answer to a query)
    age_ms: float  # how old the figures are (0 for the host engine: read now)
    cwnd: int
    ssthresh: int
    rtt_ms: float | None
    rttvar_ms: float
    rto_ms: float
    mss: int | None
    snd_wnd: int
    rcv_wnd: int
    unacked: int  # bytes sent and not yet acknowledged
    retrans: int  # retransmissions of the current segment
    send_q: int  # bytes in the send buffer (unacknowledged and unsent)
    recv_q: int  # bytes received and not yet read by the application


def host_internals(conn: TcpConnection, readable: int) -> Internals:
    rtt = conn.rtt
    return Internals(
        source="host",
        age_ms=0.0,
        cwnd=conn.cc.cwnd,
        ssthresh=conn.cc.ssthresh,
        rtt_ms=None if rtt.srtt is None else rtt.srtt * 1000,
        rttvar_ms=rtt.rttvar * 1000,
        rto_ms=rtt.current_rto() * 1000,
        mss=conn.eff_mss,
        snd_wnd=conn.snd_wnd,
        rcv_wnd=max(0, conn.rcv_adv.dist(conn.rcv_nxt)),
        unacked=max(0, conn.snd_nxt.dist(conn.snd_una)),
        retrans=conn.retransmit_count,
        send_q=len(conn.sndbuf),
        recv_q=readable,
    )


def nic_internals(seen: Inspected, now: float, readable: int, mss: int | None) -> Internals:
    return Internals(
        source="nic",
        age_ms=max(0.0, now - seen.at) * 1000,
        cwnd=seen.cwnd,
        ssthresh=seen.ssthresh,
        rtt_ms=None if seen.srtt is None else seen.srtt * 1000,
        rttvar_ms=seen.rttvar * 1000,
        rto_ms=seen.rto * 1000,
        mss=mss,
        snd_wnd=seen.snd_wnd,
        rcv_wnd=seen.rcv_wnd,
        unacked=seen.unacked,
        retrans=seen.retransmit_count,
        send_q=seen.send_q,
        recv_q=readable + seen.recv_q,
    )


def internals(sock: TcpSocket, now: float) -> Internals | None:
    """The figures of the engine running ``sock`` now; None for an offloaded connection the target has not
    answered a query about yet. ``now`` is on the stack's clock."""
    off = sock.offload
    if off is None or off.state is OffloadState.IN_HOST:
        return host_internals(sock.conn, sock.readable)
    if off.inspected is None:
        return None
    return nic_internals(off.inspected, now, sock.readable, sock.conn.eff_mss)


def addr(ip: bytes, port: int) -> str:
    return f"{ip_str(ip)}:{port}"


def connection_row(sock: TcpSocket, conn_id: int, nic: str | None, since: float | None) -> dict[str, Any]:
    """The fields ``chimney netstat -j`` promises (docs/admin.md)."""
    off = sock.offload
    state = sock.state
    return {
        "id": conn_id,
        "local": addr(sock.local_ip, sock.local_port),
        "remote": addr(sock.remote_ip, sock.remote_port),
        "state": state.name,
        "offload_state": OFFLOAD_STATE_NAMES[None if off is None else off.state],
        "nic": nic if off is not None and off.state is not OffloadState.IN_HOST else None,
        "since": since,
        "reason": None if off is None or off.reason is None else off.reason.value,
        "bytes_sent": sock.bytes_sent,
        "bytes_received": sock.bytes_received,
    }


def listener_row(listener: Listener, local_ip: bytes) -> dict[str, Any]:
    return {
        "id": None,
        "local": addr(local_ip, listener.port),
        "remote": "0.0.0.0:*",
        "state": "LISTEN",
        "offload_state": "InHost",  # listeners stay on the host: the host sets connections up (spec 1)
        "nic": None,
        "since": None,
        "reason": None,
        "bytes_sent": 0,
        "bytes_received": 0,
        "accept_queue": listener.pending,
        "syn_queue": len(listener.syn_queue),
        "backlog": listener.backlog,
    }


def internals_dict(figures: Internals | None) -> dict[str, Any] | None:
    return None if figures is None else asdict(figures)
