"""NewReno arithmetic: one test per RFC 5681 / RFC 6582 rule."""

from __future__ import annotations

import pytest

from tcpchimney.tcp.congestion import NewReno
from tcpchimney.wire.seq import SeqNum

MSS = 1000


def _cc(initial_window_segments: int = 10, iss: int = 0) -> NewReno:
    return NewReno(MSS, initial_window_segments, SeqNum(iss))


def test_rfc6928_initial_window_is_ten_segments() -> None:
    assert _cc().cwnd == 10 * MSS
    assert _cc(initial_window_segments=4).cwnd == 4 * MSS


def test_rfc5681_3_1_initial_ssthresh_is_arbitrarily_high() -> None:
    assert _cc().ssthresh >= 2**30


def test_rfc5681_3_1_slow_start_grows_by_acked_bytes() -> None:
    cc = _cc()
    cc.on_ack(MSS, flight_size=10 * MSS)
    assert cc.cwnd == 11 * MSS
    cc.on_ack(300, flight_size=10 * MSS)
    assert cc.cwnd == 11 * MSS + 300


def test_rfc3465_slow_start_counts_at_most_two_smss_per_ack() -> None:
    cc = NewReno(MSS, 10, abc_limit=2)
    cc.on_ack(5 * MSS, flight_size=10 * MSS)
    assert cc.cwnd == 12 * MSS


def test_slow_start_without_abc_limit_counts_a_stretch_ack_in_full() -> None:
    cc = NewReno(MSS, 10, abc_limit=0)
    cc.on_ack(5 * MSS, flight_size=10 * MSS)
    assert cc.cwnd == 15 * MSS


def test_rfc5681_3_1_congestion_avoidance_adds_smss_squared_over_cwnd() -> None:
    cc = _cc()
    cc.restore(cwnd=20 * MSS, ssthresh=10 * MSS)
    cc.on_ack(MSS, flight_size=20 * MSS)
    assert cc.cwnd == 20 * MSS + MSS * MSS // (20 * MSS)


def test_rfc5681_3_1_congestion_avoidance_adds_at_most_one_smss_per_window() -> None:
    cc = _cc()
    cc.restore(cwnd=20 * MSS, ssthresh=10 * MSS)
    for _ in range(20):
        cc.on_ack(MSS, flight_size=20 * MSS)
    assert 20 * MSS < cc.cwnd <= 21 * MSS


def test_rfc5681_3_1_congestion_avoidance_adds_at_least_one_byte() -> None:
    cc = _cc()
    cc.restore(cwnd=10**9, ssthresh=10 * MSS)
    cc.on_ack(1, flight_size=10**9)
    assert cc.cwnd == 10**9 + 1


def test_rfc7661_application_limited_sender_does_not_grow_cwnd() -> None:
    cc = _cc()
    cc.on_ack(MSS, flight_size=2 * MSS)  # far less than half the window was in use
    assert cc.cwnd == 10 * MSS


def test_rfc5681_3_2_fast_recovery_sets_ssthresh_to_half_flight_and_inflates() -> None:
    cc = _cc()
    cc.restore(cwnd=40 * MSS, ssthresh=2**31 - 1)
    cc.enter_fast_recovery(flight_size=30 * MSS, snd_max=SeqNum(5000))
    assert cc.ssthresh == 15 * MSS
    assert cc.cwnd == 18 * MSS
    assert cc.in_recovery and cc.recover == SeqNum(5000)


def test_rfc5681_eq4_ssthresh_at_least_two_smss() -> None:
    cc = _cc()
    cc.enter_fast_recovery(flight_size=MSS, snd_max=SeqNum(1))
    assert cc.ssthresh == 2 * MSS


def test_rfc5681_3_2_step4_dup_ack_inflates_by_smss() -> None:
    cc = _cc()
    cc.enter_fast_recovery(flight_size=10 * MSS, snd_max=SeqNum(1))
    before = cc.cwnd
    cc.on_dup_ack_in_recovery()
    assert cc.cwnd == before + MSS


def test_rfc6582_partial_ack_deflates_cwnd() -> None:
    cc = _cc()
    cc.enter_fast_recovery(flight_size=20 * MSS, snd_max=SeqNum(1))  # cwnd 13 MSS
    cc.on_partial_ack(3 * MSS)
    assert cc.cwnd == 13 * MSS - 3 * MSS + MSS


def test_rfc6582_partial_ack_below_smss_adds_nothing_back() -> None:
    cc = _cc()
    cc.enter_fast_recovery(flight_size=20 * MSS, snd_max=SeqNum(1))
    cc.on_partial_ack(MSS // 2)
    assert cc.cwnd == 13 * MSS - MSS // 2


def test_rfc6582_full_ack_deflates_to_min_of_ssthresh_and_flight_plus_smss() -> None:
    cc = _cc()
    cc.enter_fast_recovery(flight_size=20 * MSS, snd_max=SeqNum(100))
    assert cc.is_full_ack(SeqNum(100)) and not cc.is_full_ack(SeqNum(99))
    cc.exit_recovery(flight_size=3 * MSS)
    assert cc.cwnd == 4 * MSS and not cc.in_recovery
    cc.enter_fast_recovery(flight_size=20 * MSS, snd_max=SeqNum(200))
    cc.exit_recovery(flight_size=50 * MSS)
    assert cc.cwnd == cc.ssthresh == 10 * MSS


def test_rfc6582_3_2_step2_no_new_recovery_until_ack_covers_recover() -> None:
    cc = _cc()
    cc.enter_fast_recovery(flight_size=20 * MSS, snd_max=SeqNum(50000))
    assert not cc.may_enter_fast_recovery(SeqNum(30000), SeqNum(50000))  # already in recovery
    cc.exit_recovery(flight_size=0)
    assert not cc.may_enter_fast_recovery(SeqNum(50000), SeqNum(60000))
    assert cc.may_enter_fast_recovery(SeqNum(50001), SeqNum(60000))


def test_rfc6582_4_timeout_sets_recover_to_snd_max() -> None:
    cc = _cc()
    cc.on_rto(flight_size=10 * MSS, snd_max=SeqNum(2**32 - 10))
    assert cc.recover == SeqNum(2**32 - 10)
    assert not cc.may_enter_fast_recovery(SeqNum(2**32 - 500), SeqNum(2**32 - 10))
    assert cc.may_enter_fast_recovery(SeqNum(5), SeqNum(2000))  # across the wrap, past recover


def test_rfc6582_stale_recover_does_not_block_recovery() -> None:
    cc = _cc(iss=1000)
    ack = SeqNum(1000 + 2**31 + 5)  # far ahead: recover is an old value, not between ack and snd_max
    assert cc.may_enter_fast_recovery(ack, ack + 10 * MSS)


def test_rfc5681_3_1_timeout_sets_loss_window_and_halves_flight() -> None:
    cc = _cc()
    cc.restore(cwnd=40 * MSS, ssthresh=2**31 - 1, in_recovery=True)
    cc.on_rto(flight_size=40 * MSS)
    assert cc.ssthresh == 20 * MSS and cc.cwnd == MSS and not cc.in_recovery


def test_rfc5681_3_1_repeated_timeout_holds_ssthresh() -> None:
    cc = _cc()
    cc.on_rto(flight_size=40 * MSS)
    cc.on_rto(flight_size=MSS, repeated=True)
    assert cc.ssthresh == 20 * MSS and cc.cwnd == MSS


def test_rfc5681_4_1_restart_window_after_idle_longer_than_rto() -> None:
    cc = _cc()
    cc.restore(cwnd=50 * MSS, ssthresh=30 * MSS)
    cc.after_idle(rto=1.0, idle=0.5)
    assert cc.cwnd == 50 * MSS
    cc.after_idle(rto=1.0, idle=1.5)
    assert cc.cwnd == 10 * MSS
    cc.restore(cwnd=3 * MSS, ssthresh=30 * MSS)
    cc.after_idle(rto=1.0, idle=5.0)
    assert cc.cwnd == 3 * MSS  # RW = min(IW, cwnd)


def test_restore_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        _cc().restore(cwnd=0, ssthresh=10)
