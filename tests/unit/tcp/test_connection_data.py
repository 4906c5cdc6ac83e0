"""Data transfer (RFC 9293 3.7.4, 3.8.6, 3.10.7.4; RFC 5681 3.1 and 4.2; RFC 2018; segmentation offloads)."""

from __future__ import annotations

from dsl import R0, S0, advance, arrive, cfg, established, events, expect, expect_nothing, seg, state

from tcpchimney.tcp.events import DataReceived, SendSpace
from tcpchimney.tcp.state import TcpState

K = b"x" * 1000  # one full segment


def test_rfc9293_3_10_7_4_in_order_data_is_delivered() -> None:
    c = established()
    arrive(c, seg("PA", seq=R0, data=b"hello"), at=0.1)
    assert events(c) == [DataReceived(5)]
    assert c.receive() == b"hello"
    assert c.rcv_nxt == R0 + 5


def test_push_flag_marks_the_last_segment_of_the_buffer() -> None:
    c = established()
    c.send(b"x" * 1500)
    expect(c, seg("A", seq=S0, length=1000), at=0.0)  # 500 bytes wait for the ACK (Nagle)
    arrive(c, seg("A", ack=S0 + 1000), at=0.1)
    expect(c, seg("PA", seq=S0 + 1000, length=500), at=0.1)


def test_nagle_holds_small_segment_until_ack() -> None:
    """RFC 9293 3.7.4: while data is unacknowledged, a small segment waits for the ACK."""
    c = established()
    c.send(b"a")
    expect(c, seg("PA", seq=S0, data=b"a"), at=0.0)
    c.send(b"b")
    expect_nothing(c, at=0.01)
    arrive(c, seg("A", ack=S0 + 1), at=0.05)
    expect(c, seg("PA", seq=S0 + 1, data=b"b"), at=0.05)


def test_nodelay_sends_small_segment() -> None:
    c = established(cfg(nodelay=True))
    c.send(b"a")
    expect(c, seg("PA", seq=S0, data=b"a"), at=0.0)
    c.send(b"b")
    expect(c, seg("PA", seq=S0 + 1, data=b"b"), at=0.01)


def test_sender_sws_avoidance() -> None:
    """RFC 9293 3.8.6.2.1: no runt segment while the window is the limit and smaller than half the largest
    window the peer ever offered; a full segment or half that window is worth sending."""
    c = established(win=4000)
    arrive(c, seg("A", ack=S0, win=1500), at=0.0)
    c.send(b"x" * 3000)
    expect(c, seg("A", seq=S0, length=1000), at=0.0)  # 500 usable < 2000 = max window / 2: held
    arrive(c, seg("A", ack=S0 + 1000, win=1700), at=0.1)
    expect(c, seg("A", seq=S0 + 1000, length=1000), at=0.1)  # 700 usable: still held
    c = established(win=1000)
    c.send(b"x" * 3000)
    expect(c, seg("A", seq=S0, length=1000), at=0.0)
    arrive(c, seg("A", ack=S0 + 1000, win=600), at=0.1)
    expect(c, seg("A", seq=S0 + 1000, length=600), at=0.1)  # 600 >= 1000 / 2: worth sending


def test_rfc5681_3_1_initial_window_then_slow_start() -> None:
    c = established()
    c.send(b"x" * 30000)
    assert len(expect(c, *[seg("A", length=1000)] * 10, at=0.0)) == 10  # IW = 10 segments (RFC 6928)
    arrive(c, seg("A", ack=S0 + 2000), at=0.1)  # 2 segments acked: cwnd 12000, 8000 outstanding
    expect(c, *[seg("A", length=1000)] * 4, at=0.1)
    assert c.cwnd == 12000


def test_rfc9293_3_8_6_window_limits_sending() -> None:
    c = established(win=3000)
    c.send(b"x" * 5000)
    expect(c, seg("A", seq=S0), seg("A", seq=S0 + 1000), seg("A", seq=S0 + 2000), at=0.0)


def test_tso_super_segments_when_max_segment_payload_exceeds_mss() -> None:
    """With TSO the engine emits whole multiples of the MSS in one segment (the device cuts them)."""
    c = established(cfg(max_segment_payload=4000))
    c.send(b"x" * 10000)
    # (4000 - 12 option bytes) // 1000 * 1000 = 3000 per super-segment; cwnd still 10000
    expect(
        c,
        seg("A", seq=S0, length=3000),
        seg("A", seq=S0 + 3000, length=3000),
        seg("A", seq=S0 + 6000, length=3000),
        seg("PA", seq=S0 + 9000, length=1000),
        at=0.0,
    )


def test_gro_segment_larger_than_mss_is_accepted_and_acked() -> None:
    """A coalesced (GRO) segment of three MSS counts as more than two full segments: ACK at once."""
    c = established()
    arrive(c, seg("A", seq=R0, data=b"y" * 3000), at=0.1)
    expect(c, seg("A", seq=S0, ack=R0 + 3000), at=0.1)
    assert c.receive() == b"y" * 3000


def test_rfc2018_out_of_order_data_gets_immediate_ack_with_sack_blocks() -> None:
    c = established(sack=True)
    arrive(c, seg("A", seq=R0 + 1000, data=K), at=0.1)
    expect(c, seg("A", ack=R0, sack=[(R0 + 1000, R0 + 2000)]), at=0.1)
    arrive(c, seg("A", seq=R0 + 3000, data=K), at=0.2)
    # RFC 2018 4: the block holding the newest segment first
    expect(c, seg("A", ack=R0, sack=[(R0 + 3000, R0 + 4000), (R0 + 1000, R0 + 2000)]), at=0.2)
    assert c.readable == 0


def test_rfc5681_4_2_segment_filling_a_hole_is_acked_at_once() -> None:
    c = established(sack=True)
    arrive(c, seg("A", seq=R0 + 1000, data=K), at=0.1)
    expect(c, seg("A", ack=R0), at=0.1)
    arrive(c, seg("A", seq=R0, data=K), at=0.2)
    expect(c, seg("A", ack=R0 + 2000, sack=[]), at=0.2)
    assert c.receive() == K + K


def test_no_sack_blocks_without_sack_permitted() -> None:
    c = established(sack=False)
    arrive(c, seg("A", seq=R0 + 1000, data=K), at=0.1)
    expect(c, seg("A", ack=R0, sack=[]), at=0.1)


def test_rfc2018_at_most_three_blocks_next_to_timestamps() -> None:
    c = established(sack=True, ts=True)
    for i in range(4):
        arrive(c, seg("A", seq=R0 + 1000 + 2000 * i, data=K), at=0.1 + i / 100)
    out = expect(c, seg("A", ack=R0), at=0.2)
    assert len(out[0].options.sack_blocks) == 3


def test_rfc9293_3_10_7_4_duplicate_data_is_acked_at_once() -> None:
    c = established()
    arrive(c, seg("A", seq=R0, data=K), at=0.1)
    arrive(c, seg("A", seq=R0, data=K), at=0.12)
    expect(c, seg("A", ack=R0 + 1000), at=0.12)
    assert c.receive() == K


def test_rfc9293_3_10_7_4_partly_old_segment_is_trimmed() -> None:
    c = established()
    arrive(c, seg("A", seq=R0, data=b"abcd"), at=0.1)
    arrive(c, seg("A", seq=R0 + 2, data=b"cdef"), at=0.11)
    assert c.receive() == b"abcdef"


def test_rfc9293_3_8_6_2_2_window_shrinks_as_data_waits_and_reopens_on_read() -> None:
    c = established(cfg(rcv_buf=2000))
    arrive(c, seg("A", seq=R0, data=K), at=0.1)
    arrive(c, seg("A", seq=R0 + 1000, data=K), at=0.11)
    expect(c, seg("A", ack=R0 + 2000, win=0), at=0.11)
    assert c.receive() == K + K
    expect(c, seg("A", ack=R0 + 2000, win=2000), at=0.2)  # the window update after the read


def test_receiver_sws_avoidance_window_opens_by_at_least_one_mss() -> None:
    """RFC 9293 3.8.6.2.2: the right edge moves only by min(buffer / 2, MSS) or more."""
    c = established(cfg(rcv_buf=4000))
    arrive(c, seg("A", seq=R0, data=K * 3), at=0.1)
    expect(c, seg("A", ack=R0 + 3000, win=1000), at=0.1)
    c.receive(500)
    arrive(c, seg("A", seq=R0 + 3000, data=b"z"), at=0.2)
    assert c.rcv_window() == 999  # 500 bytes freed: the edge stays
    c.receive(600)
    assert c.rcv_window() == 2099  # 1100 freed in all: the edge moves


def test_rfc9293_3_10_7_4_data_beyond_zero_window_is_dropped_and_acked() -> None:
    c = established(cfg(rcv_buf=1000))
    arrive(c, seg("A", seq=R0, data=K), at=0.1)
    expect_nothing(c, at=0.1)  # delayed
    arrive(c, seg("A", seq=R0 + 1000, data=b"more"), at=0.12)
    expect(c, seg("A", ack=R0 + 1000, win=0), at=0.12)
    assert c.readable == 1000


def test_rfc9293_3_10_7_4_window_taken_only_from_newer_segments() -> None:
    """SND.WL1/SND.WL2: an older segment (lower SEG.SEQ) does not update the send window."""
    c = established()
    arrive(c, seg("A", seq=R0, data=b"ab", win=4000), at=0.1)
    arrive(c, seg("A", seq=R0, ack=S0, win=100), at=0.11)
    assert c.snd_wnd == 4000


def test_ack_frees_send_space_and_reports_it() -> None:
    c = established(cfg(snd_buf=2000))
    assert c.send(b"x" * 3000) == 2000
    assert c.send(b"y") == 0
    expect(c, seg("A", length=1000), seg("PA", length=1000), at=0.0)
    arrive(c, seg("A", ack=S0 + 1000), at=0.1)
    assert SendSpace(1000) in events(c)
    assert c.send_space == 1000


def test_rfc1191_path_mss_shrinks_segments() -> None:
    c = established()
    c.set_path_mss(600)
    c.send(b"x" * 1200)
    expect(c, seg("A", length=600), seg("PA", length=600), at=0.0)


def test_rfc9293_3_10_7_4_data_in_close_wait_is_not_accepted() -> None:
    c = established()
    arrive(c, seg("FA", seq=R0), at=0.1)
    expect(c, seg("A", ack=R0 + 1), at=0.1)
    assert state(c) is TcpState.CLOSE_WAIT
    arrive(c, seg("A", seq=R0 + 1, data=b"late"), at=0.2)
    assert c.readable == 0


def test_rfc9293_3_4_sequence_numbers_wrap() -> None:
    c = established(iss=2**32 - 1500, irs=2**32 - 10)
    c.send(b"x" * 3000)
    expect(c, seg("A", seq=2**32 - 1499), seg("A", seq=2**32 - 499), seg("PA", seq=501), at=0.0)
    arrive(c, seg("A", seq=2**32 - 9, ack=1501, data=b"y" * 20), at=0.1)
    assert c.snd_una == 1501 and c.rcv_nxt == 11
    assert c.receive() == b"y" * 20


def test_zero_window_probe_is_answered_with_our_window() -> None:
    """RFC 9293 3.8.6.1: a probe must be answered; an out-of-window one gets an ACK with the window."""
    c = established(cfg(rcv_buf=1000))
    arrive(c, seg("A", seq=R0, data=K), at=0.1)
    advance(c, to=0.14)
    expect(c, seg("A", ack=R0 + 1000, win=0), at=0.14)
    arrive(c, seg("A", seq=R0 + 999), at=0.5)  # Linux-style probe: SEG.SEQ = RCV.NXT - 1, no data
    expect(c, seg("A", ack=R0 + 1000, win=0), at=0.5)
    c.receive()
    arrive(c, seg("A", seq=R0 + 999), at=0.9)
    expect(c, seg("A", ack=R0 + 1000, win=1000), at=0.9)


def test_rfc5681_4_1_restart_window_after_idle() -> None:
    """After more than an RTO without sending, cwnd restarts from RW = min(IW, cwnd)."""
    c = established()
    c.send(b"x" * 10000)
    expect(c, *[seg("A")] * 9, seg("PA"), at=0.5)
    arrive(c, seg("A", ack=S0 + 10000), at=0.6)
    assert c.cwnd > 10000
    c.send(b"x" * 30000)
    assert len(expect(c, *[seg("A")] * 10, at=5.0)) == 10


def test_rfc5681_4_1_restart_window_after_idle_from_time_zero() -> None:
    """The same rule when the previous data left at exactly t=0 of the clock."""
    c = established()
    c.send(b"x" * 10000)
    expect(c, *[seg("A")] * 9, seg("PA"), at=0.0)
    arrive(c, seg("A", ack=S0 + 10000), at=0.1)
    c.send(b"x" * 30000)
    assert len(expect(c, *[seg("A")] * 10, at=5.0)) == 10
