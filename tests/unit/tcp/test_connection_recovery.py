"""Loss recovery (RFC 5681 3.2, RFC 6582 NewReno, RFC 6675 SACK-based recovery) and PAWS (RFC 7323 5).

The usual picture: ten 1000-byte segments in flight from S0 (the initial window), then duplicate ACKs.
"""

from __future__ import annotations

from dsl import R0, S0, advance, arrive, established, events, expect, expect_nothing, peer_ts, seg

from tcpchimney.tcp.connection import TcpConnection
from tcpchimney.tcp.events import SegmentDropped
from tcpchimney.tcp.tcb import TS_RECENT_MAX_AGE

K = b"x" * 1000


def flight(sack: bool = False, total: int = 10000) -> TcpConnection:
    c = established(sack=sack)
    c.send(b"x" * total)
    out = expect(c, *[seg("A", length=1000)] * 9, seg("PA" if total == 10000 else "A"), at=0.0)
    assert int(out[0].seq) == S0
    return c


def dupacks(c: TcpConnection, n: int, at: float, sack: list[tuple[int, int]] | None = None) -> None:
    for i in range(n):
        arrive(c, seg("A", ack=S0, sack=sack), at=at + i / 1000)


def test_rfc5681_3_2_fast_retransmit_on_third_dupack() -> None:
    c = flight()
    dupacks(c, 2, at=0.05)
    expect_nothing(c, at=0.06)
    dupacks(c, 1, at=0.07)
    expect(c, seg("A", seq=S0, length=1000), at=0.07)
    assert (c.ssthresh, c.cwnd) == (5000, 8000)  # ssthresh = FlightSize / 2, cwnd = ssthresh + 3 * SMSS


def test_rfc5681_2_ack_that_changes_the_window_is_not_a_duplicate() -> None:
    c = flight()
    for i, win in enumerate((60000, 50000, 40000)):
        arrive(c, seg("A", ack=S0, win=win), at=0.05 + i / 100)
    expect_nothing(c, at=0.1)


def test_rfc5681_2_ack_carrying_data_is_not_a_duplicate() -> None:
    c = flight()
    for i in range(3):
        arrive(c, seg("A", seq=R0 + 10 * i, ack=S0, data=b"d" * 10), at=0.05 + i / 100)
    expect_nothing(c, at=0.07)
    advance(c, to=0.09)  # the delayed ACK of that data, and no retransmission
    expect(c, seg("A", ack=R0 + 30, length=0), at=0.09)


def test_rfc5681_3_2_each_further_dupack_inflates_cwnd() -> None:
    c = flight(total=20000)
    dupacks(c, 3, at=0.05)
    expect(c, seg("A", seq=S0), at=0.06)
    dupacks(c, 2, at=0.07)  # cwnd 10000: still no room beyond the 10000 bytes outstanding
    expect_nothing(c, at=0.08)
    dupacks(c, 1, at=0.09)  # cwnd 11000: one new segment
    expect(c, seg("A", seq=S0 + 10000, length=1000), at=0.09)


def test_rfc6582_partial_ack_retransmits_next_hole() -> None:
    """Segments at S0 and S0 + 3000 lost: the partial ACK up to the second hole resends it at once."""
    c = flight()
    dupacks(c, 3, at=0.05)
    expect(c, seg("A", seq=S0), at=0.06)
    arrive(c, seg("A", ack=S0 + 3000), at=0.1)
    expect(c, seg("A", seq=S0 + 3000, length=1000), at=0.1)
    assert c.cc.in_recovery


def test_rfc6582_full_ack_ends_recovery_without_a_burst() -> None:
    c = flight()
    dupacks(c, 3, at=0.05)
    expect(c, seg("A", seq=S0), at=0.06)
    arrive(c, seg("A", ack=S0 + 10000), at=0.1)
    assert not c.cc.in_recovery
    assert c.cwnd == 1000 + 1000  # step 6 option (1): min(ssthresh, max(FlightSize, SMSS) + SMSS)


def test_rfc6582_3_2_no_second_fast_retransmit_for_the_same_window() -> None:
    """After a timeout, duplicate ACKs for data sent before it do not start fast retransmit (recover)."""
    c = flight()
    advance(c, to=0.2)
    expect(c, seg("A", seq=S0), at=0.2)
    dupacks(c, 3, at=0.25)
    expect_nothing(c, at=0.26)


def test_rfc6675_sack_recovery_retransmits_holes_only() -> None:
    """S0 and S0 + 3000 lost. The first duplicate ACK lets one new segment out (Limited Transmit, RFC 5681
    3.2 step 1). Recovery starts when IsLost(S0) (three segments SACKed above it); later, pipe < cwnd lets
    out exactly the next lost hole, never SACKed data, then new data."""
    c = flight(sack=True, total=20000)
    arrive(c, seg("A", ack=S0, sack=[(S0 + 1000, S0 + 3000)]), at=0.05)
    expect(c, seg("A", seq=S0 + 10000, length=1000), at=0.05)
    arrive(c, seg("A", ack=S0, sack=[(S0 + 4000, S0 + 5000), (S0 + 1000, S0 + 3000)]), at=0.06)
    expect(c, seg("A", seq=S0, length=1000), at=0.06)
    assert (c.ssthresh, c.cwnd) == (5500, 5500)  # RFC 6675 5 (4.2): half of 11 segments, no inflation
    arrive(c, seg("A", ack=S0, sack=[(S0 + 4000, S0 + 6000), (S0 + 1000, S0 + 3000)]), at=0.07)
    expect_nothing(c, at=0.07)  # pipe 7000 (S0 again, the hole at S0 + 3000, S0 + 6000..11000) >= cwnd
    arrive(c, seg("A", ack=S0, sack=[(S0 + 4000, S0 + 7000), (S0 + 1000, S0 + 3000)]), at=0.08)
    expect_nothing(c, at=0.08)  # S0 + 3000 is lost now, but pipe 5000 leaves less than a segment
    arrive(c, seg("A", ack=S0, sack=[(S0 + 4000, S0 + 8000), (S0 + 1000, S0 + 3000)]), at=0.09)
    expect(c, seg("A", seq=S0 + 3000, length=1000), at=0.09)  # pipe 4000: the lost hole goes first
    arrive(c, seg("A", ack=S0, sack=[(S0 + 4000, S0 + 9000), (S0 + 1000, S0 + 3000)]), at=0.10)
    expect(c, seg("A", seq=S0 + 11000, length=1000), at=0.10)  # no lost hole left: new data


def test_rfc6675_5_1_timeout_forgets_the_scoreboard() -> None:
    c = flight(sack=True)
    arrive(c, seg("A", ack=S0, sack=[(S0 + 1000, S0 + 2000)]), at=0.05)
    advance(c, to=0.2)
    expect(c, seg("A", seq=S0), at=0.2)
    assert c.sack.sacked_bytes() == 0
    arrive(c, seg("A", ack=S0 + 1000), at=0.25)
    # go-back-N resends S0 + 1000 although it had been SACKed: the receiver may have reneged
    expect(c, seg("A", seq=S0 + 1000), seg("A", seq=S0 + 2000), at=0.25)


def test_rfc7323_5_3_paws_drops_old_timestamp() -> None:
    c = established(ts=True)
    arrive(c, seg("A", seq=R0, data=b"new", ts=(peer_ts(0.1), None)), at=0.1)
    arrive(c, seg("A", seq=R0 + 3, data=b"old", ts=(peer_ts(0.05), None)), at=0.12)
    expect(c, seg("A", ack=R0 + 3, ts=(120, peer_ts(0.1))), at=0.12)
    assert c.receive() == b"new"
    assert SegmentDropped("paws") in events(c)


def test_rfc7323_5_3_paws_does_not_apply_to_rst() -> None:
    c = established(ts=True)
    arrive(c, seg("A", seq=R0, data=b"new", ts=(peer_ts(0.1), None)), at=0.1)
    arrive(c, seg("R", seq=R0 + 3, ts=(peer_ts(0.0), 0)), at=0.12)
    assert c.closed


def test_rfc7323_5_5_ts_recent_invalid_after_24_days_idle() -> None:
    c = established(ts=True)
    later = TS_RECENT_MAX_AGE + 1.0
    arrive(c, seg("A", seq=R0, data=b"back", ts=(peer_ts(0.0) - 5, None)), at=later)
    assert c.receive() == b"back"


def test_rfc7323_4_3_ts_recent_taken_only_from_segments_covering_last_ack_sent() -> None:
    c = established(ts=True)
    arrive(c, seg("A", seq=R0 + 1000, data=K, ts=(peer_ts(0.2), None)), at=0.2)  # out of order
    expect(c, seg("A", ack=R0, ts=(200, peer_ts(0.0))), at=0.2)  # TS.Recent unchanged
    arrive(c, seg("A", seq=R0, data=K, ts=(peer_ts(0.3), None)), at=0.3)
    expect(c, seg("A", ack=R0 + 2000, ts=(300, peer_ts(0.3))), at=0.3)


def test_rfc7323_3_2_every_segment_echoes_ts_recent() -> None:
    c = established(ts=True)
    arrive(c, seg("PA", seq=R0, data=b"q", ts=(peer_ts(0.5), None)), at=0.5)
    c.send(b"r")
    expect(c, seg("PA", data=b"r", ts=(500, peer_ts(0.5))), at=0.5)
