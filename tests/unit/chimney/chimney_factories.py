"""Small builders of valid contract objects for the chimney tests."""

from __future__ import annotations

from dataclasses import replace

from tcpchimney.chimney import (
    NeighborCached,
    NeighborConst,
    NeighborState,
    NewObject,
    PathCached,
    PathConst,
    PathState,
    TcpCached,
    TcpConst,
    TcpDelegated,
    TcpSnapshot,
)
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire.seq import SeqNum


def neighbor_state(n: int = 1, vlan_id: int = 0) -> NeighborState:
    return NeighborState(NeighborConst(vlan_id=vlan_id), NeighborCached(dest_mac=bytes([2, 0, 0, 0, 0, n])))


def path_state(p: int = 1, mtu: int = 1500) -> PathState:
    return PathState(PathConst(bytes([198, 18, 0, 1]), bytes([198, 18, 1, p])), PathCached(mtu))


def delegated(state: TcpState = TcpState.ESTABLISHED, **changes: object) -> TcpDelegated:
    base = TcpDelegated(
        state=state,
        rcv_nxt=SeqNum(5000),
        rcv_wnd=65535,
        snd_una=SeqNum(1000),
        snd_nxt=SeqNum(1000),
        snd_max=SeqNum(1000),
        snd_wnd=65535,
        max_snd_wnd=65535,
        snd_wl1=SeqNum(4999),
        snd_wl2=SeqNum(1000),
        cwnd=14600,
        ssthresh=0xFFFF_FFFF,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def tcp_snapshot(port: int = 40000, state: TcpState = TcpState.ESTABLISHED, **changes: object) -> TcpSnapshot:
    const = TcpConst(local_port=port, remote_port=80, remote_mss=1460)
    return TcpSnapshot(const, TcpCached(), delegated(state, **changes))


def new_neighbor(handle: int, n: int = 1) -> NewObject:
    return NewObject(handle, neighbor_state(n))


def new_path(handle: int, p: int = 1) -> NewObject:
    return NewObject(handle, path_state(p))


def new_tcp(handle: int, port: int | None = None) -> NewObject:
    return NewObject(handle, tcp_snapshot(port or 40000 + handle % 20000))
