"""SackScoreboard: RFC 2018 bookkeeping, RFC 6675 IsLost / NextSeg / SetPipe, and a per-byte model."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tcpchimney.tcp.sack import SackScoreboard
from tcpchimney.wire.seq import SeqNum

MSS = 100
ISS = 1_000


def S(offset: int) -> SeqNum:
    return SeqNum(ISS + offset)


def _board(blocks: list[tuple[int, int]], una: int = 0, snd_max: int = 10_000) -> SackScoreboard:
    board = SackScoreboard(MSS)
    board.update(S(una), S(snd_max), [(S(a), S(b)) for a, b in blocks])
    return board


def test_rfc2018_update_returns_newly_sacked_bytes() -> None:
    board = SackScoreboard(MSS)
    assert board.update(S(0), S(1000), [(S(100), S(200))]) == 100
    assert board.update(S(0), S(1000), [(S(150), S(300))]) == 100
    assert board.update(S(0), S(1000), [(S(100), S(300))]) == 0
    assert board.sacked_bytes() == 200


def test_rfc2018_touching_and_overlapping_blocks_merge() -> None:
    board = _board([(100, 200), (300, 400), (200, 300), (500, 600)])
    assert board.blocks() == [(S(100), S(400)), (S(500), S(600))]


def test_rfc2018_two_argument_update_form() -> None:
    board = SackScoreboard(MSS)
    assert board.update(S(0), [(S(100), S(200))]) == 100
    assert board.is_sacked(S(150))


def test_rfc2883_dsack_block_below_snd_una_is_ignored() -> None:
    board = _board([], una=500)
    assert board.update(S(500), S(1000), [(S(100), S(200)), (S(600), S(700))]) == 100
    assert board.blocks() == [(S(600), S(700))]


def test_block_beyond_snd_max_is_ignored() -> None:
    board = _board([(100, 200)], snd_max=1000)
    assert board.update(S(0), S(1000), [(S(900), S(1100))]) == 0
    assert board.highest_sacked() == S(200)


def test_block_straddling_snd_una_keeps_its_upper_part() -> None:
    board = _board([(50, 150)], una=100)
    assert board.blocks() == [(S(100), S(150))]


def test_cumulative_ack_discards_state_below_snd_una() -> None:
    board = _board([(100, 200), (300, 400)])
    board.update(S(350), S(10_000), [])
    assert board.blocks() == [(S(350), S(400))]
    assert board.sacked_bytes() == 50
    assert not board.is_sacked(S(150))


def test_rfc6675_is_lost_after_dupthresh_sacked_segments() -> None:
    board = _board([(100, 200), (300, 400)])
    assert not board.is_lost(S(0))  # two SACKed segments above: not yet
    board.update(S(0), S(10_000), [(S(500), S(600))])
    assert board.is_lost(S(0))  # DupThresh = 3 discontiguous SACKed segments above


def test_rfc6675_is_lost_after_more_than_dupthresh_minus_one_smss_bytes() -> None:
    board = _board([(100, 300)])  # exactly (DupThresh - 1) * SMSS
    assert not board.is_lost(S(0))
    board.update(S(0), S(10_000), [(S(300), S(301))])
    assert board.is_lost(S(0))


def test_rfc6675_is_lost_counts_only_sacked_data_above() -> None:
    board = _board([(100, 400), (500, 550)])
    assert board.is_lost(S(50))
    assert not board.is_lost(S(450))  # only 50 bytes, one segment above


def test_rfc6675_sacked_byte_is_never_lost() -> None:
    board = _board([(100, 200), (300, 400), (500, 600), (700, 800)])
    assert board.is_sacked(S(150)) and not board.is_lost(S(150))


def test_rfc6675_next_seg_rule1_first_lost_hole() -> None:
    board = _board([(100, 400)])
    assert board.next_seg(S(0), S(1000), high_rxt=S(0), can_send_new=True) == (S(0), MSS)


def test_rfc6675_next_seg_rule1_skips_what_was_retransmitted() -> None:
    board = _board([(150, 450), (500, 800)])
    assert board.next_seg(S(0), S(1000), high_rxt=S(100), can_send_new=True) == (S(100), 50)


def test_rfc6675_next_seg_rule1_continues_past_sacked_ranges() -> None:
    board = _board([(100, 400), (500, 800)])
    assert board.next_seg(S(0), S(1000), high_rxt=S(100)) == (S(400), MSS)


def test_rfc6675_next_seg_rule2_new_data_when_nothing_lost() -> None:
    board = _board([(100, 200)])
    assert board.next_seg(S(0), S(1000), high_rxt=S(0), can_send_new=True) == (S(1000), MSS)


def test_rfc6675_next_seg_rule3_unlost_hole_when_no_new_data() -> None:
    board = _board([(100, 200)])
    assert board.next_seg(S(0), S(1000), high_rxt=S(0)) == (S(0), MSS)


def test_rfc6675_next_seg_rule1b_nothing_above_highest_sacked() -> None:
    board = _board([(100, 200)])
    assert board.next_seg(S(0), S(1000), high_rxt=S(200)) is None


def test_rfc6675_next_seg_rule4_rescue_retransmission() -> None:
    board = _board([(100, 200)])
    assert board.next_seg(S(0), S(1000), high_rxt=S(200), rescue=True) == (S(900), MSS)
    assert board.next_seg(S(0), S(1000), S(200), S(1000), rescue=True) is None  # RescueRxt not yet ACKed
    assert board.next_seg(S(50), S(1000), S(200), S(40), rescue=True) == (S(900), MSS)


def test_rfc6675_next_seg_rule4_skips_sacked_tail() -> None:
    board = _board([(100, 200), (950, 1000)])
    assert board.next_seg(S(0), S(1000), high_rxt=S(950), rescue=True) == (S(850), MSS)


def test_rfc6675_set_pipe() -> None:
    # 0..1000 sent; SACKed 300..600 (3 segments): 0..300 is lost, 600..1000 is in flight.
    board = _board([(300, 600)])
    assert board.pipe(S(0), S(1000), high_rxt=S(0)) == 400
    assert board.pipe(S(0), S(1000), high_rxt=S(100)) == 500  # (b) the retransmission is in flight


def test_rfc6675_5_1_clear_after_rto() -> None:
    board = _board([(100, 200)])
    board.clear()
    assert board.sacked_bytes() == 0 and board.highest_sacked() is None and not board.is_sacked(S(150))


def test_sequence_numbers_wrap() -> None:
    board = SackScoreboard(MSS)
    una = SeqNum(2**32 - 150)
    assert board.update(una, una + 1000, [(una + 100, una + 400)]) == 300
    assert board.is_sacked(SeqNum(10)) and board.highest_sacked() == una + 400
    assert board.is_lost(una)
    assert board.next_seg(una, una + 1000, una) == (una, MSS)


# --- property: the scoreboard matches a per-byte model ------------------------------------------------------


def _model_is_lost(sacked: set[int], seq: int) -> bool:
    if seq in sacked:
        return False
    above = sorted(b for b in sacked if b > seq)
    ranges: list[list[int]] = []
    for b in above:
        if ranges and ranges[-1][1] == b:
            ranges[-1][1] = b + 1
        else:
            ranges.append([b, b + 1])
    segments = sum(-(-(e - s) // MSS) for s, e in ranges)
    return segments >= 3 or len(above) > 2 * MSS


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 400),
            st.lists(st.tuples(st.integers(0, 1300), st.integers(1, 300)), max_size=4),
        ),
        min_size=1,
        max_size=8,
    ),
    st.integers(0, 2**32 - 1),
)
def test_property_scoreboard_matches_per_byte_model(
    acks: list[tuple[int, list[tuple[int, int]]]], iss: int
) -> None:
    top = 1200  # SND.MAX offset
    base = SeqNum(iss)
    board = SackScoreboard(MSS)
    sacked: set[int] = set()
    una = 0
    for ack_step, blocks in acks:
        una = min(top, max(una, una + ack_step // 4))
        valid = [(a, a + n) for a, n in blocks if a + n <= top and a + n > una]
        newly = board.update(base + una, base + top, [(base + a, base + a + n) for a, n in blocks])
        sacked = {b for b in sacked if b >= una}
        before = len(sacked)
        for a, b in valid:
            sacked.update(range(max(a, una), b))
        assert newly == len(sacked) - before
        assert board.sacked_bytes() == len(sacked)
        for probe in range(una, top, 37):
            assert board.is_sacked(base + probe) == (probe in sacked)
            assert board.is_lost(base + probe) == _model_is_lost(sacked, probe)
        high_rxt = una + (ack_step % 200)
        expected_pipe = sum(
            (not _model_is_lost(sacked, s)) + (s < high_rxt) for s in range(una, top) if s not in sacked
        )
        assert board.pipe(base + una, base + top, base + high_rxt) == expected_pipe
        highest = max(sacked) + 1 if sacked else una
        holes = [s for s in range(max(una, high_rxt), highest) if s not in sacked]
        expected = None
        if holes:
            hole = holes[0]
            expected = (base + hole, min(MSS, min(b for b in sacked if b > hole) - hole))
        assert board.next_seg(base + una, base + top, base + high_rxt) == expected


# --- the bound on the scoreboard (CVE-2019-11478 class) ------------------------------------------------


def _every_other_byte(board: SackScoreboard, count: int, per_ack: int = 4) -> None:
    """A peer that SACKs ``count`` one-byte ranges, every other byte, ``per_ack`` blocks per ACK."""
    blocks = [(S(2 * k + 1), S(2 * k + 2)) for k in range(count)]
    for i in range(0, count, per_ack):
        board.update(S(0), S(3 * count), blocks[i : i + per_ack])


def test_scoreboard_holds_at_most_its_bound_under_a_peer_sacking_every_other_byte() -> None:
    board = SackScoreboard(MSS)
    _every_other_byte(board, 10_000)
    held = board.blocks()
    assert len(held) == 128  # the default bound (FreeBSD's 128 holes)
    assert held == [(S(2 * k + 1), S(2 * k + 2)) for k in range(128)]  # the ranges nearest SND.UNA stay
    assert board.discarded == 10_000 - 128
    assert board.sacked_bytes() == 128 and board.highest_sacked() == S(256)


def test_scoreboard_bound_forgets_the_highest_range_for_a_lower_one() -> None:
    board = SackScoreboard(MSS, max_ranges=3)
    assert board.update(S(0), S(10_000), [(S(100), S(110)), (S(300), S(310)), (S(500), S(510))]) == 30
    assert board.last_discarded == 0
    assert board.update(S(0), S(10_000), [(S(200), S(220))]) == 20  # nearer SND.UNA: (500, 510) goes
    assert board.blocks() == [(S(100), S(110)), (S(200), S(220)), (S(300), S(310))]
    assert board.last_discarded == 1
    assert board.update(S(0), S(10_000), [(S(700), S(710))]) == 0  # the highest itself: not taken
    assert board.blocks() == [(S(100), S(110)), (S(200), S(220)), (S(300), S(310))]
    assert (board.last_discarded, board.discarded) == (1, 2)
    assert board.sacked_bytes() == 40


def test_scoreboard_bound_still_takes_blocks_that_grow_or_join_ranges() -> None:
    board = SackScoreboard(MSS, max_ranges=2)
    board.update(S(0), S(10_000), [(S(100), S(110)), (S(300), S(310))])
    assert board.update(S(0), S(10_000), [(S(110), S(120)), (S(250), S(300))]) == 60
    assert board.update(S(0), S(10_000), [(S(120), S(250))]) == 130  # joins the two ranges
    assert board.blocks() == [(S(100), S(310))] and board.discarded == 0


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 300), st.lists(st.tuples(st.integers(0, 1300), st.integers(1, 60)), max_size=4)
        ),
        min_size=1,
        max_size=12,
    ),
    st.integers(1, 4),
)
def test_property_bounded_scoreboard_answers_from_what_it_holds(
    acks: list[tuple[int, list[tuple[int, int]]]], bound: int
) -> None:
    """Under any bound, the scoreboard holds at most ``bound`` ranges, never claims a byte the peer did
    not SACK, and its O(log n) SetPipe / IsLost agree with a per-byte model of the ranges it holds."""
    top = 1200
    board = SackScoreboard(MSS, max_ranges=bound)
    reported: set[int] = set()
    una = 0
    for ack_step, blocks in acks:
        una = min(top, una + ack_step // 4)
        board.update(S(una), S(top), [(S(a), S(a + n)) for a, n in blocks])
        reported = {b for b in reported if b >= una}
        reported.update(b for a, n in blocks if a + n <= top for b in range(max(a, una), a + n))
        held = board.blocks()
        assert len(held) <= bound
        sacked = {b for lo, hi in held for b in range(lo.dist(S(0)), hi.dist(S(0)))}
        assert sacked <= reported
        assert board.sacked_bytes() == len(sacked)
        high_rxt = una + (ack_step % 200)
        expected_pipe = sum(
            (not _model_is_lost(sacked, s)) + (s < high_rxt) for s in range(una, top) if s not in sacked
        )
        assert board.pipe(S(una), S(top), S(high_rxt)) == expected_pipe
        for probe in range(una, top, 53):
            assert board.is_lost(S(probe)) == _model_is_lost(sacked, probe)
