"""Reset acceptance and generation (RFC 9293 3.5.2-3.5.3, 3.10.7.4) and blind-attack defences (RFC 5961)."""

from __future__ import annotations

from dsl import (
    IRS,
    R0,
    S0,
    arrive,
    cfg,
    established,
    events,
    expect,
    expect_nothing,
    seg,
    state,
    syn_received,
    syn_sent,
)

from tcpchimney.tcp.events import ConnectionReset, SegmentDropped
from tcpchimney.tcp.state import TcpState


def test_rfc5961_3_2_rst_at_rcv_nxt_resets() -> None:
    c = established()
    arrive(c, seg("R", seq=R0), at=0.1)
    expect_nothing(c, at=0.1)
    assert state(c) is TcpState.CLOSED
    assert ConnectionReset(refused=False) in events(c)


def test_rfc5961_3_2_in_window_rst_gets_challenge_ack() -> None:
    c = established()
    arrive(c, seg("R", seq=R0 + 100), at=0.1)
    expect(c, seg("A", seq=S0, ack=R0), at=0.1)
    assert state(c) is TcpState.ESTABLISHED
    assert SegmentDropped("rst_challenge") in events(c)


def test_rfc5961_3_2_out_of_window_rst_is_dropped_silently() -> None:
    c = established()
    arrive(c, seg("R", seq=R0 + 70000), at=0.1)
    arrive(c, seg("R", seq=R0 - 1), at=0.1)
    expect_nothing(c, at=0.1)
    assert state(c) is TcpState.ESTABLISHED


def test_rfc9293_3_10_7_4_rst_ack_field_is_not_checked() -> None:
    c = established()
    arrive(c, seg("RA", seq=R0, ack=S0 + 12345), at=0.1)
    assert state(c) is TcpState.CLOSED


def test_rfc9293_3_10_7_4_rst_in_syn_received_from_passive_open_closes_quietly() -> None:
    """A passive open goes back to LISTEN (the host's listener): "the user need not be informed"."""
    c = syn_received()
    arrive(c, seg("R", seq=R0), at=0.1)
    assert state(c) is TcpState.CLOSED
    assert not any(isinstance(e, ConnectionReset) for e in events(c))


def test_rfc9293_3_10_7_4_rst_in_close_wait_is_reported() -> None:
    c = established()
    arrive(c, seg("FA", seq=R0), at=0.1)
    arrive(c, seg("R", seq=R0 + 1), at=0.2)
    assert state(c) is TcpState.CLOSED
    assert ConnectionReset(refused=False) in events(c)


def test_rfc9293_3_10_7_4_rst_in_last_ack_closes_without_error() -> None:
    c = established()
    arrive(c, seg("FA", seq=R0), at=0.1)
    c.shutdown()
    expect(c, seg("FA", seq=S0, ack=R0 + 1), at=0.1)  # the FIN carries the ACK of the peer's FIN
    arrive(c, seg("R", seq=R0 + 1), at=0.2)
    assert state(c) is TcpState.CLOSED
    assert not any(isinstance(e, ConnectionReset) for e in events(c))


def test_rfc9293_3_10_7_4_rst_in_time_wait_closes() -> None:
    """RFC 9293 closes TIME-WAIT on an RST (RFC 1337's alternative is not taken, as Linux's default)."""
    c = established()
    c.shutdown()
    expect(c, seg("FA", seq=S0), at=0.0)
    arrive(c, seg("FA", seq=R0, ack=S0 + 1), at=0.1)
    assert state(c) is TcpState.TIME_WAIT
    arrive(c, seg("R", seq=R0 + 1), at=0.2)
    assert state(c) is TcpState.CLOSED


def test_rfc5961_4_2_syn_in_window_gets_challenge_ack() -> None:
    c = established()
    arrive(c, seg("S", seq=R0 + 10), at=0.1)
    expect(c, seg("A", seq=S0, ack=R0), at=0.1)
    assert state(c) is TcpState.ESTABLISHED


def test_rfc5961_4_2_syn_at_old_sequence_number_gets_ack() -> None:
    c = established()
    arrive(c, seg("S", seq=R0 - 1000), at=0.1)
    expect(c, seg("A", seq=S0, ack=R0), at=0.1)
    assert state(c) is TcpState.ESTABLISHED


def test_rfc5961_5_2_ack_of_unsent_data_is_dropped_and_acked() -> None:
    c = established()
    arrive(c, seg("PA", seq=R0, ack=S0 + 500, data=b"blind"), at=0.1)
    expect(c, seg("A", seq=S0, ack=R0), at=0.1)
    assert c.readable == 0
    assert SegmentDropped("ack_unsent") in events(c)


def test_rfc5961_5_2_ack_older_than_max_window_is_dropped_and_acked() -> None:
    c = established(win=2000)
    c.send(b"x" * 2000)
    c.segments_to_send(0.0)
    arrive(c, seg("A", ack=S0 + 2000, win=2000), at=0.1)
    arrive(c, seg("PA", seq=R0, ack=S0 - 100, win=2000, data=b"old"), at=0.2)  # below SND.UNA - MAX.SND.WND
    expect(c, seg("A", seq=S0 + 2000, ack=R0), at=0.2)
    assert c.readable == 0


def test_rfc5961_7_challenge_ack_rate_limit() -> None:
    c = established(cfg(challenge_ack_limit=2, invalid_ack_interval=0.0))  # the per-second count alone
    for _ in range(3):
        arrive(c, seg("R", seq=R0 + 5), at=0.1)
    expect(c, seg("A", ack=R0), seg("A", ack=R0), at=0.1)
    assert SegmentDropped("challenge_ack_limited") in events(c)
    arrive(c, seg("R", seq=R0 + 5), at=1.2)  # a new second
    expect(c, seg("A", ack=R0), at=1.2)


def test_rfc9293_3_10_7_4_unacceptable_segment_is_acked() -> None:
    c = established()
    arrive(c, seg("A", seq=R0 + 70000, data=b"far"), at=0.1)
    expect(c, seg("A", seq=S0, ack=R0), at=0.1)
    arrive(c, seg("A", seq=R0 - 10, data=b"old"), at=0.2)
    expect(c, seg("A", seq=S0, ack=R0), at=0.2)
    assert c.readable == 0


def test_rfc5961_7_acks_to_unacceptable_segments_are_rate_limited() -> None:
    """One ACK per ``invalid_ack_interval`` (500 ms, Linux's tcp_invalid_ratelimit) to unacceptable segments
    without data, whatever made them unacceptable: out of the window, PAWS, an ACK of data never sent, a SYN
    or RST that earns a challenge ACK. The rest are dropped unanswered and counted."""
    c = established(ts=True)
    arrive(c, seg("A", seq=R0 + 70000), at=0.1)  # out of window
    expect(c, seg("A", seq=S0, ack=R0), at=0.1)
    limited = [
        seg("A", seq=R0 - 1),  # out of window
        seg("A", ack=S0 + 5000),  # acknowledges data never sent
        seg("A", ts=(1, None)),  # PAWS: a TSval older than TS.Recent
        seg("S", seq=R0 + 10),  # a SYN: challenge ACK
        seg("R", seq=R0 + 10),  # in window but not exact: challenge ACK
    ]
    for i, spec in enumerate(limited):
        arrive(c, spec, at=0.2 + i * 0.05)
        expect_nothing(c, at=0.2 + i * 0.05)
    assert events(c).count(SegmentDropped("ack_rate_limited")) == len(limited)
    arrive(c, seg("A", ack=S0 + 5000), at=0.6)  # 500 ms after the last ACK sent: answered again
    expect(c, seg("A", seq=S0, ack=R0), at=0.6)
    assert state(c) is TcpState.ESTABLISHED


def test_rfc5961_7_unacceptable_data_is_always_acknowledged() -> None:
    """As Linux: a segment with data (and no SYN) is not part of an ACK loop, and its sender may be
    retransmitting what already arrived: it is acknowledged however often it comes."""
    c = established()
    for t in (0.1, 0.2, 0.3):
        arrive(c, seg("PA", seq=R0 - 10, data=b"old"), at=t)
        expect(c, seg("A", seq=S0, ack=R0), at=t)
    assert SegmentDropped("ack_rate_limited") not in events(c)


def test_rfc9293_3_10_7_4_unacceptable_rst_is_not_answered() -> None:
    c = established()
    arrive(c, seg("RA", seq=R0 + 70000), at=0.1)
    expect_nothing(c, at=0.1)


def test_rfc9293_3_10_7_4_segment_without_ack_is_dropped() -> None:
    c = established()
    arrive(c, seg("P", seq=R0, data=b"noack"), at=0.1)
    expect_nothing(c, at=0.1)
    assert c.readable == 0
    assert SegmentDropped("no_ack") in events(c)


def test_rfc9293_3_10_7_4_segments_to_a_closed_connection_are_dropped() -> None:
    c = established()
    c.abort()
    c.segments_to_send(0.0)
    arrive(c, seg("PA", seq=R0, data=b"x"), at=0.1)
    expect_nothing(c, at=0.1)
    assert SegmentDropped("closed") in events(c)


def test_rfc9293_3_10_7_4_rst_in_syn_received_from_active_open_is_refused() -> None:
    c = syn_sent()
    arrive(c, seg("S", seq=IRS, mss=1000), at=0.01)  # simultaneous open
    expect(c, seg("SA"), at=0.01)
    arrive(c, seg("R", seq=R0), at=0.02)
    assert state(c) is TcpState.CLOSED
    assert ConnectionReset(refused=True) in events(c)
