"""Timers (RFC 6298, RFC 5681 3.1 on timeout, RFC 9293 3.8.6.1 persist, 3.8.6.3 delayed ACK, 3.10.8;
RFC 1122 4.2.3.6 keepalive). After the handshake at t=0 the RTO is its 200 ms floor."""

from __future__ import annotations

import pytest
from dsl import R0, S0, advance, arrive, cfg, established, events, expect, expect_nothing, seg, state

from tcpchimney.tcp.config import TcpConfig
from tcpchimney.tcp.events import Closed, ConnectionTimedOut, StateChanged
from tcpchimney.tcp.state import TcpState

K = b"x" * 1000


def test_rfc6298_5_1_timer_starts_when_data_is_sent() -> None:
    c = established()
    assert c.next_deadline() is None
    c.send(b"x")
    expect(c, seg("PA"), at=0.5)
    assert c.next_deadline() == pytest.approx(0.7)


def test_rfc6298_5_4_timeout_retransmits_the_earliest_segment() -> None:
    c = established()
    c.send(b"x" * 3000)
    expect(c, *[seg("A")] * 2, seg("PA"), at=0.0)
    advance(c, to=0.2)
    expect(c, seg("A", seq=S0, length=1000), at=0.2)  # cwnd is one segment now (RFC 5681 3.1)


def test_rfc6298_5_5_backoff_doubles() -> None:
    c = established()
    c.send(b"x")
    expect(c, seg("PA", seq=S0), at=0.0)
    for t in (0.2, 0.6, 1.4, 3.0):
        advance(c, to=t)
        expect(c, seg("PA", seq=S0), at=t)


def test_rfc6298_2_5_backoff_is_capped_at_rto_max() -> None:
    c = established(cfg(rto_max=0.5))
    c.send(b"x")
    expect(c, seg("PA"), at=0.0)
    for t in (0.2, 0.6, 1.1, 1.6):
        advance(c, to=t)
        expect(c, seg("PA", seq=S0), at=t)


def test_rfc6298_5_3_ack_of_new_data_restarts_the_timer() -> None:
    c = established()
    c.send(b"x" * 2000)
    expect(c, seg("A"), seg("PA"), at=0.0)
    arrive(c, seg("A", ack=S0 + 1000), at=0.1)
    assert c.next_deadline() == pytest.approx(0.3)


def test_rfc6298_5_2_timer_stops_when_everything_is_acked() -> None:
    c = established()
    c.send(b"x")
    expect(c, seg("PA"), at=0.0)
    arrive(c, seg("A", ack=S0 + 1), at=0.1)
    assert c.next_deadline() is None


def test_rfc6298_karn_no_sample_from_retransmission() -> None:
    """RFC 6298 section 3 and 5.5: the ACK of a retransmitted segment gives no sample, and the backed-off
    RTO stays in force until a valid sample arrives."""
    c = established()
    c.send(b"x")
    expect(c, seg("PA"), at=0.0)
    advance(c, to=0.2)
    expect(c, seg("PA", seq=S0), at=0.2)
    arrive(c, seg("A", ack=S0 + 1), at=0.25)
    assert c.srtt == 0.0  # still the handshake's sample
    c.send(b"y")
    expect(c, seg("PA", seq=S0 + 1), at=0.3)
    assert c.next_deadline() == pytest.approx(0.7)  # 0.3 + the backed-off 0.4
    arrive(c, seg("A", ack=S0 + 2), at=0.35)
    assert c.srtt == pytest.approx(0.05 / 8)  # a fresh segment: sampled (RFC 6298 2.3)


def test_rfc7323_4_rtt_measured_from_timestamp_echo() -> None:
    c = established(ts=True)
    c.send(b"x")
    expect(c, seg("PA", ts=(100, None)), at=0.1)
    arrive(c, seg("A", ack=S0 + 1, ts=(None, 100)), at=0.4)
    assert c.srtt == pytest.approx(0.3 / 8)


def test_rfc5681_3_1_timeout_sets_cwnd_to_one_segment_and_ssthresh_to_half_the_flight() -> None:
    c = established()
    c.send(b"x" * 10000)
    expect(c, *[seg("A")] * 9, seg("PA"), at=0.0)
    advance(c, to=0.2)
    expect(c, seg("A", seq=S0), at=0.2)
    assert (c.cwnd, c.ssthresh) == (1000, 5000)
    arrive(c, seg("A", ack=S0 + 1000), at=0.25)  # slow start again, go-back-N from SND.UNA
    expect(c, seg("A", seq=S0 + 1000), seg("A", seq=S0 + 2000), at=0.25)


def test_max_retransmits_times_out() -> None:
    c = established(cfg(max_retransmits=2))
    c.send(b"x")
    expect(c, seg("PA"), at=0.0)
    for t in (0.2, 0.6):
        advance(c, to=t)
        expect(c, seg("PA"), at=t)
    advance(c, to=1.4)
    expect_nothing(c, at=1.4)
    assert state(c) is TcpState.CLOSED
    assert ConnectionTimedOut() in events(c)


def test_rfc1122_delayed_ack_every_second_segment() -> None:
    c = established()
    arrive(c, seg("A", seq=R0, data=K), at=0.1)
    expect_nothing(c, at=0.1)
    arrive(c, seg("A", seq=R0 + 1000, data=K), at=0.11)
    expect(c, seg("A", seq=S0, ack=R0 + 2000), at=0.11)
    assert c.next_deadline() is None


def test_delayed_ack_timer_bounded() -> None:
    """RFC 9293 3.8.6.3: an ACK is delayed less than 0.5 s; the engine waits 40 ms, as Linux."""
    c = established()
    arrive(c, seg("PA", seq=R0, data=b"small"), at=0.1)
    expect_nothing(c, at=0.1)
    advance(c, to=0.14)
    expect(c, seg("A", seq=S0, ack=R0 + 5), at=0.14)


def test_delayed_ack_rides_on_outgoing_data() -> None:
    c = established()
    arrive(c, seg("PA", seq=R0, data=b"ping"), at=0.1)
    c.send(b"pong")
    expect(c, seg("PA", seq=S0, ack=R0 + 4, data=b"pong"), at=0.12)
    assert c.next_deadline() == pytest.approx(0.32)  # only the retransmission timer is left


def test_zero_window_persist_probe_and_backoff() -> None:
    """RFC 9293 3.8.6.1 persist timer, probes backed off exponentially. Like Linux, a probe carries no data
    and SEG.SEQ = SND.UNA - 1: the receiver must answer it with an ACK showing its window."""
    c = established()
    arrive(c, seg("A", ack=S0, win=0), at=0.0)
    c.send(b"x" * 100)
    expect_nothing(c, at=0.1)
    for t in (0.3, 0.7, 1.5):
        advance(c, to=t)
        expect(c, seg("A", seq=S0 - 1, ack=R0, length=0), at=t)
        arrive(c, seg("A", ack=S0, win=0), at=t + 0.01)
    arrive(c, seg("A", ack=S0, win=1000), at=2.0)
    expect(c, seg("PA", seq=S0, length=100), at=2.0)


def test_persist_timer_forces_a_small_segment_into_a_small_window() -> None:
    """RFC 9293 3.8.6.2.1: sender SWS avoidance holds a runt until the override timeout."""
    c = established()
    c.send(b"x" * 3000)
    expect(c, *[seg("A")] * 2, seg("PA"), at=0.0)
    arrive(c, seg("A", ack=S0 + 3000, win=0), at=0.1)
    c.send(b"y" * 2000)
    arrive(c, seg("A", ack=S0 + 3000, win=300), at=0.2)
    expect_nothing(c, at=0.2)  # 300 < half the largest window: held, the persist timer armed
    advance(c, to=0.4)
    expect(c, seg("A", seq=S0 + 3000, length=300), at=0.4)


def keepalive_config() -> TcpConfig:
    return cfg(keepalive=True, keepalive_idle=10.0, keepalive_interval=1.0, keepalive_probes=3)


def test_rfc1122_4_2_3_6_keepalive_probe_after_idle() -> None:
    c = established(keepalive_config())
    advance(c, to=10.0)
    expect(c, seg("A", seq=S0 - 1, ack=R0, length=0), at=10.0)
    arrive(c, seg("A", ack=S0), at=10.05)  # the answer: idle again
    assert c.next_deadline() == pytest.approx(20.05)


def test_rfc1122_4_2_3_6_keepalive_timeout() -> None:
    c = established(keepalive_config())
    for t in (10.0, 11.0, 12.0):
        advance(c, to=t)
        expect(c, seg("A", seq=S0 - 1), at=t)
    advance(c, to=13.0)
    expect_nothing(c, at=13.0)
    assert state(c) is TcpState.CLOSED
    assert ConnectionTimedOut() in events(c)


def test_rfc1122_4_2_3_6_keepalive_off_by_default() -> None:
    c = established()
    assert c.next_deadline() is None


def test_time_wait_lasts_2msl() -> None:
    c = established(cfg(msl=1.0))
    c.shutdown()
    expect(c, seg("FA"), at=0.0)
    arrive(c, seg("FA", seq=R0, ack=S0 + 1), at=0.1)
    expect(c, seg("A", ack=R0 + 1), at=0.1)
    events(c)
    advance(c, to=2.1)
    assert state(c) is TcpState.CLOSED
    assert events(c) == [StateChanged(TcpState.TIME_WAIT, TcpState.CLOSED), Closed()]


def test_rfc9293_3_10_7_4_fin_again_in_time_wait_is_acked_and_restarts_2msl() -> None:
    c = established(cfg(msl=1.0))
    c.shutdown()
    expect(c, seg("FA"), at=0.0)
    arrive(c, seg("FA", seq=R0, ack=S0 + 1), at=0.1)
    expect(c, seg("A", ack=R0 + 1), at=0.1)
    arrive(c, seg("FA", seq=R0, ack=S0 + 1), at=1.0)
    expect(c, seg("A", seq=S0 + 1, ack=R0 + 1), at=1.0)
    advance(c, to=3.0)
    assert state(c) is TcpState.CLOSED


def test_orphaned_fin_wait_2_times_out() -> None:
    """Linux tcp_fin_timeout: a closed (orphaned) connection does not wait in FIN-WAIT-2 forever."""
    c = established(cfg(fin_wait_2_timeout=5.0))
    c.close()
    expect(c, seg("FA"), at=0.0)
    arrive(c, seg("A", ack=S0 + 1), at=0.1)
    assert state(c) is TcpState.FIN_WAIT_2
    advance(c, to=5.1)
    assert state(c) is TcpState.CLOSED


def test_rfc9293_fin_wait_2_after_shutdown_has_no_limit() -> None:
    c = established()
    c.shutdown()
    expect(c, seg("FA"), at=0.0)
    arrive(c, seg("A", ack=S0 + 1), at=0.1)
    assert state(c) is TcpState.FIN_WAIT_2
    assert c.next_deadline() is None


def test_rfc6298_5_1_timer_not_restarted_by_further_sends() -> None:
    c = established(cfg(nodelay=True))
    c.send(b"a")
    expect(c, seg("PA"), at=0.0)
    c.send(b"b")
    expect(c, seg("PA", seq=S0 + 1), at=0.1)
    assert c.next_deadline() == pytest.approx(0.2)


def test_rfc6298_5_4_timeout_retransmission_into_a_small_window_is_not_held_back() -> None:
    """376 bytes in flight fill a 376-byte window (the largest offered was 64 KB), more data waits, and the
    ACK of the 376 is lost. The timeout resends them: sender SWS avoidance and Nagle (RFC 9293 3.8.6.2.1,
    3.7.4) are rules for new data; data already sent fitted the window when it left, and holding it back
    would stall the connection until it times out."""
    c = established(cfg(snd_buf=64 * 1024, rcv_buf=64 * 1024))
    c.send(b"x" * 4376)
    expect(c, *[seg("A", length=1000)] * 4, at=0.0)  # Nagle holds the 376-byte tail
    arrive(c, seg("A", ack=S0 + 4000, win=376), at=0.05)
    expect(c, seg("PA", seq=S0 + 4000, length=376), at=0.05)  # the whole tail: it fits the window exactly
    c.send(b"y" * 20_000)
    expect_nothing(c, at=0.06)  # the window is full; the ACK of these 376 bytes is lost
    for t in (0.25, 0.65, 1.45):
        advance(c, to=t)
        expect(c, seg("A", seq=S0 + 4000, length=376), at=t)
    arrive(c, seg("A", ack=S0 + 4376, win=8000), at=1.5)
    expect(c, seg("A", seq=S0 + 4376, length=1000), at=1.5)  # new data again, one segment (cwnd after RTO)
