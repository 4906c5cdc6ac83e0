"""RttEstimator: one test per RFC 6298 rule."""

from __future__ import annotations

import pytest

from tcpchimney.tcp.rtt import RttEstimator


def _est(rto_min: float = 0.2, rto_max: float = 60.0, granularity: float = 0.001) -> RttEstimator:
    return RttEstimator(rto_initial=1.0, rto_min=rto_min, rto_max=rto_max, granularity=granularity)


def test_rfc6298_2_1_initial_rto_before_any_sample() -> None:
    est = RttEstimator(rto_initial=1.0, rto_min=0.2, rto_max=60.0)
    assert est.srtt is None
    assert est.rto == 1.0 and est.current_rto() == 1.0


def test_rfc6298_2_2_first_measurement() -> None:
    est = _est()
    est.sample(0.5)
    assert est.srtt == 0.5
    assert est.rttvar == 0.25
    assert est.rto == pytest.approx(0.5 + 4 * 0.25)


def test_rfc6298_2_3_subsequent_measurement_updates_rttvar_with_old_srtt() -> None:
    est = _est()
    est.sample(0.4)  # srtt 0.4, rttvar 0.2
    est.sample(0.8)
    rttvar = 0.75 * 0.2 + 0.25 * abs(0.4 - 0.8)
    srtt = 0.875 * 0.4 + 0.125 * 0.8
    assert est.rttvar == pytest.approx(rttvar)
    assert est.srtt == pytest.approx(srtt)
    assert est.rto == pytest.approx(srtt + 4 * rttvar)


def test_rfc6298_2_3_clock_granularity_bounds_the_variance_term() -> None:
    est = _est(rto_min=0.001, granularity=0.1)
    for _ in range(60):
        est.sample(0.05)  # rttvar decays towards 0
    assert 4 * est.rttvar < 0.1
    assert est.srtt is not None
    assert est.rto == pytest.approx(est.srtt + 0.1)


def test_rfc6298_2_4_rto_rounded_up_to_min() -> None:
    est = _est(rto_min=0.2)
    est.sample(0.001)
    assert est.rto == 0.2


def test_rfc6298_2_5_rto_capped_at_max() -> None:
    est = _est(rto_max=5.0)
    est.sample(10.0)
    assert est.rto == 5.0


def test_rfc6298_5_5_backoff_doubles_the_timer() -> None:
    est = _est()
    est.sample(0.1)
    base = est.rto
    est.backoff()
    assert est.current_rto() == pytest.approx(2 * base)
    est.backoff()
    assert est.current_rto() == pytest.approx(4 * base)
    assert est.rto == base  # the estimate itself is untouched


def test_rfc6298_5_5_backoff_capped_at_max() -> None:
    est = _est(rto_max=3.0)
    for _ in range(100):
        est.backoff()
    assert est.current_rto() == 3.0
    assert est.backoffs <= 2  # stops counting once capped: no unbounded shift


def test_rfc6298_5_note_valid_sample_collapses_backoff() -> None:
    est = _est()
    est.backoff()
    est.backoff()
    est.sample(0.3)
    assert est.backoffs == 0
    assert est.current_rto() == est.rto


def test_rfc6298_5_7_rto_reinitialised_to_3s_after_syn_timeout() -> None:
    est = _est()
    est.backoff()
    est.reinit_after_syn_timeout()
    assert est.rto == 3.0 and est.current_rto() == 3.0


def test_rfc6298_5_7_no_reinit_once_rtt_is_known() -> None:
    est = _est()
    est.sample(0.1)
    rto = est.rto
    est.reinit_after_syn_timeout()
    assert est.rto == rto


def test_restore_continues_from_a_snapshot() -> None:
    est = _est()
    est.restore(srtt=0.25, rttvar=0.05, rto=0.45, backoffs=1)
    assert est.current_rto() == pytest.approx(0.9)
    est.sample(0.25)
    assert est.srtt == pytest.approx(0.25)
    assert est.rttvar == pytest.approx(0.75 * 0.05)


def test_negative_sample_is_wrong_use() -> None:
    with pytest.raises(ValueError):
        _est().sample(-0.1)
