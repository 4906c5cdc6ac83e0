"""State objects: ranges, invariants of chimney-spec 9.5, offloadable states."""

from __future__ import annotations

import pytest
from chimney_factories import delegated, tcp_snapshot

from tcpchimney.chimney import (
    FieldRangeError,
    InvariantError,
    NeighborCached,
    NeighborConst,
    NotOffloadableError,
    PathCached,
    PathConst,
    PathState,
    TcpCached,
    TcpConst,
)
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire.seq import SeqNum

NOT_OFFLOADABLE = [
    TcpState.CLOSED,
    TcpState.LISTEN,
    TcpState.SYN_SENT,
    TcpState.SYN_RECEIVED,
    TcpState.TIME_WAIT,
]
OFFLOADABLE = [s for s in TcpState if s not in NOT_OFFLOADABLE]


@pytest.mark.parametrize("vlan_id", [-1, 4095, 5000])
def test_vlan_id_outside_802_1q_range_is_refused(vlan_id: int) -> None:
    with pytest.raises(FieldRangeError, match="vlan_id"):
        NeighborConst(vlan_id=vlan_id)


def test_source_mac_must_be_six_unicast_bytes() -> None:
    with pytest.raises(FieldRangeError):
        NeighborConst(source_mac=b"\x02\x00\x00")
    with pytest.raises(FieldRangeError, match="unicast"):
        NeighborConst(source_mac=b"\x01\x00\x5e\x00\x00\x01")
    assert NeighborConst(source_mac=b"\x02\x00\x00\x00\x00\x07").source_mac == b"\x02\x00\x00\x00\x00\x07"


def test_neighbor_cached_needs_a_mac_and_a_nonnegative_delta() -> None:
    with pytest.raises(FieldRangeError):
        NeighborCached(dest_mac=b"\x02" * 5)
    with pytest.raises(FieldRangeError):
        NeighborCached(dest_mac=b"\x02" * 6, host_reachability_delta=-1.0)


def test_path_addresses_are_one_ip_version() -> None:
    with pytest.raises(InvariantError):
        PathConst(b"\xc6\x12\x00\x01", b"\x00" * 16)
    with pytest.raises(FieldRangeError):
        PathConst(b"\xc6\x12\x00", b"\xc6\x12\x00\x02")


def test_path_mtu_bounds() -> None:
    with pytest.raises(FieldRangeError):
        PathCached(67)  # RFC 791 minimum is 68
    with pytest.raises(InvariantError):
        PathState(PathConst(b"\x20" * 16, b"\x21" * 16), PathCached(1000))  # IPv6 needs 1280
    assert PathCached(68).path_mtu == 68


@pytest.mark.parametrize(
    ("field", "value"),
    [("local_port", 0), ("remote_port", 65536), ("remote_mss", 40), ("snd_wscale", 15), ("hash_value", -1)],
)
def test_tcp_const_ranges(field: str, value: int) -> None:
    kwargs: dict[str, object] = {
        "local_port": 1,
        "remote_port": 2,
        "remote_mss": 1460,
        "window_scaling": True,
    }
    kwargs[field] = value
    with pytest.raises(FieldRangeError, match=field):
        TcpConst(**kwargs)  # type: ignore[arg-type]


def test_window_scales_need_window_scaling() -> None:
    with pytest.raises(InvariantError):
        TcpConst(local_port=1, remote_port=2, remote_mss=1460, rcv_wscale=7)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ttl", 0),
        ("tos", 256),
        ("flow_label", 1 << 20),
        ("user_priority", 8),
        ("keepalive_probes", 256),
        ("initial_rcv_wnd", 0),
        ("keepalive_idle", -1.0),
        ("max_rt", float("nan")),
    ],
)
def test_tcp_cached_ranges(field: str, value: object) -> None:
    with pytest.raises(FieldRangeError, match=field):
        TcpCached(**{field: value})  # type: ignore[arg-type]


def test_max_rt_may_be_unlimited() -> None:
    assert TcpCached(max_rt=float("inf")).max_rt_unlimited
    assert not TcpCached().max_rt_unlimited


def test_seq_fields_become_seqnums() -> None:
    d = delegated(snd_una=1000, snd_nxt=1000, snd_max=1000)
    assert type(d.snd_una) is SeqNum


def test_seq_field_above_32_bits_is_refused() -> None:
    with pytest.raises(FieldRangeError, match="rcv_nxt"):
        delegated(rcv_nxt=1 << 32)


def test_send_pointers_must_be_ordered() -> None:
    with pytest.raises(InvariantError, match="snd_una <= snd_nxt <= snd_max"):
        delegated(snd_nxt=SeqNum(1010), snd_max=SeqNum(1005), send_data=b"x" * 20)
    with pytest.raises(InvariantError):
        delegated(snd_una=SeqNum(1000), snd_nxt=SeqNum(999), snd_max=SeqNum(1000))


def test_snd_max_within_the_send_data() -> None:
    ok = delegated(snd_nxt=SeqNum(1010), snd_max=SeqNum(1020), send_data=b"x" * 20)
    assert ok.snd_max - ok.snd_una == 20
    with pytest.raises(InvariantError, match="exceeds the send data"):
        delegated(snd_nxt=SeqNum(1010), snd_max=SeqNum(1021), send_data=b"x" * 20)


def test_our_fin_takes_one_sequence_number_while_outstanding() -> None:
    ok = delegated(TcpState.FIN_WAIT_1, snd_nxt=SeqNum(1021), snd_max=SeqNum(1021), send_data=b"x" * 20)
    assert ok.fin_outstanding
    with pytest.raises(InvariantError):
        delegated(TcpState.ESTABLISHED, snd_nxt=SeqNum(1021), snd_max=SeqNum(1021), send_data=b"x" * 20)


def test_invariants_hold_across_sequence_wrap() -> None:
    una = SeqNum(0xFFFF_FFF0)
    d = delegated(snd_una=una, snd_nxt=una + 8, snd_max=una + 32, send_data=b"y" * 32)
    assert d.snd_max.dist(d.snd_una) == 32
    with pytest.raises(InvariantError):
        delegated(snd_una=una, snd_nxt=una + 8, snd_max=una + 33, send_data=b"y" * 32)


def test_no_send_data_after_our_fin_was_acked() -> None:
    with pytest.raises(InvariantError, match="FIN was ACKed"):
        delegated(TcpState.FIN_WAIT_2, send_data=b"z")


def test_max_snd_wnd_is_the_largest_window_seen() -> None:
    with pytest.raises(InvariantError):
        delegated(snd_wnd=1000, max_snd_wnd=999)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("cwnd", 0),
        ("rto", 0.0),
        ("retransmit_timeout", -1.0),
        ("snd_wnd_probe_count", 256),
        ("srtt", float("inf")),
    ],
)
def test_delegated_ranges(field: str, value: object) -> None:
    with pytest.raises(FieldRangeError, match=field):
        delegated(**{field: value})  # type: ignore[arg-type]


def test_buffered_data_ends_at_rcv_nxt() -> None:
    d = delegated(buffered_data=b"abc")
    assert d.buffered_start == SeqNum(4997)
    d = delegated(TcpState.CLOSE_WAIT, buffered_data=b"abc")  # RCV.NXT is one past the peer's FIN
    assert d.buffered_start == SeqNum(4996)
    d = delegated(rcv_nxt=SeqNum(1), buffered_data=b"abcd")
    assert d.buffered_start == SeqNum(0xFFFF_FFFD)


@pytest.mark.parametrize("state", NOT_OFFLOADABLE)
def test_host_only_states_are_not_offloadable(state: TcpState) -> None:
    snap = tcp_snapshot(state=state)
    assert not snap.delegated.offloadable
    with pytest.raises(NotOffloadableError, match=state.value):
        snap.check_offloadable()


@pytest.mark.parametrize("state", OFFLOADABLE)
def test_other_states_are_offloadable(state: TcpState) -> None:
    snap = tcp_snapshot(state=state)
    snap.check_offloadable()
    assert snap.delegated.offloadable


def test_state_objects_are_frozen() -> None:
    d = delegated()
    with pytest.raises(AttributeError):
        d.cwnd = 1  # type: ignore[misc]
