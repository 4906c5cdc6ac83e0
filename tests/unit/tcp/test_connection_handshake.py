"""Opening a connection (RFC 9293 3.5, 3.7.1, 3.10.1, 3.10.7.2-3; RFC 7323 2-3; RFC 2018 2; RFC 6298 5.7)."""

from __future__ import annotations

import pytest
from dsl import (
    CONFIG,
    IRS,
    ISS,
    R0,
    S0,
    advance,
    arrive,
    cfg,
    established,
    events,
    expect,
    expect_nothing,
    peer_syn,
    seg,
    state,
    syn_received,
    syn_sent,
    synack,
)

from tcpchimney.tcp.connection import TcpConnection
from tcpchimney.tcp.events import Closed, Connected, ConnectionReset, ConnectionTimedOut, StateChanged
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire.seq import SeqNum

LPORT, RPORT = 40000, 80


def test_rfc9293_3_10_1_active_open_sends_syn_with_our_options() -> None:
    c = TcpConnection.connect(CONFIG, LPORT, RPORT, SeqNum(ISS), 0.0, 0)
    # MSS, window scale for a 1 MiB buffer (shift 5), SACK-permitted and TSval = our 1 ms clock
    expect(c, seg("S", seq=ISS, ack=0, win=65535, mss=1000, wscale=5, sack_ok=True, ts=(0, 0)), at=0.0)
    assert state(c) is TcpState.SYN_SENT


def test_rfc9293_3_10_7_3_synack_completes_active_open() -> None:
    c = syn_sent()
    arrive(c, synack(c), at=0.0)
    expect(c, seg("A", seq=S0, ack=R0), at=0.0)
    assert events(c) == [StateChanged(TcpState.SYN_SENT, TcpState.ESTABLISHED), Connected()]


def test_rfc9293_3_10_7_2_passive_open_answers_synack() -> None:
    syn = peer_syn(ts=True, sack=True, wscale=7)
    c = TcpConnection.accept_syn(CONFIG, LPORT, RPORT, syn, SeqNum(ISS), 0.0, 0)
    expect(c, seg("SA", seq=ISS, ack=R0, mss=1000, wscale=5, sack_ok=True, ts=(0, 70000)), at=0.0)
    assert state(c) is TcpState.SYN_RECEIVED


def test_rfc7323_rfc2018_synack_answers_only_options_the_peer_offered() -> None:
    c = TcpConnection.accept_syn(CONFIG, LPORT, RPORT, peer_syn(), SeqNum(ISS), 0.0, 0)
    out = expect(c, seg("SA", seq=ISS, ack=R0, mss=1000, ts=False, sack_ok=False), at=0.0)
    assert out[0].options.wscale is None


def test_rfc9293_3_10_7_4_ack_in_syn_received_establishes() -> None:
    c = syn_received()
    arrive(c, seg("A", seq=R0, ack=S0), at=0.1)
    expect_nothing(c, at=0.1)
    assert events(c) == [StateChanged(TcpState.SYN_RECEIVED, TcpState.ESTABLISHED), Connected()]


def test_rfc9293_3_10_7_4_unacceptable_ack_in_syn_received_gets_rst() -> None:
    c = syn_received()
    arrive(c, seg("A", seq=R0, ack=S0 + 5), at=0.1)
    expect(c, seg("R", seq=S0 + 5), at=0.1)
    assert state(c) is TcpState.SYN_RECEIVED


def test_rfc9293_3_10_7_4_repeated_syn_in_syn_received_resends_synack() -> None:
    c = syn_received()
    arrive(c, seg("S", seq=IRS, ack=0), at=0.5)
    expect(c, seg("SA", seq=ISS, ack=R0), at=0.5)


def test_rst_in_syn_sent_refused() -> None:
    """RFC 9293 3.10.7.3: an RST with an acceptable ACK in SYN-SENT: "error: connection reset" (refused)."""
    c = syn_sent()
    arrive(c, seg("RA", seq=0, ack=S0), at=0.01)
    expect_nothing(c, at=0.01)
    assert state(c) is TcpState.CLOSED
    assert ConnectionReset(refused=True) in events(c)


def test_rfc9293_3_10_7_3_rst_without_ack_in_syn_sent_is_dropped() -> None:
    c = syn_sent()
    arrive(c, seg("R", seq=IRS), at=0.01)
    expect_nothing(c, at=0.01)
    assert state(c) is TcpState.SYN_SENT


def test_bad_ack_in_syn_sent_gets_rst() -> None:
    """RFC 9293 3.10.7.3: SEG.ACK =< ISS or > SND.NXT: <SEQ=SEG.ACK><CTL=RST>, and the segment is dropped."""
    c = syn_sent()
    arrive(c, seg("SA", seq=IRS, ack=ISS + 7), at=0.01)
    expect(c, seg("R", seq=ISS + 7), at=0.01)
    assert state(c) is TcpState.SYN_SENT


def test_rfc9293_3_10_7_3_ack_without_syn_in_syn_sent_is_dropped() -> None:
    c = syn_sent()
    arrive(c, seg("A", seq=IRS, ack=S0), at=0.01)
    expect_nothing(c, at=0.01)
    assert state(c) is TcpState.SYN_SENT


def test_simultaneous_open() -> None:
    """RFC 9293 figure 7. The crossing SYN-ACK carries SEQ=IRS, below RCV.NXT, so by the letter of the
    acceptability test (3.10.7.4 first) it is answered with an ACK; the peer's ACK then establishes."""
    c = syn_sent()
    arrive(c, seg("S", seq=IRS, mss=1000), at=0.01)
    expect(c, seg("SA", seq=ISS, ack=R0), at=0.01)
    assert state(c) is TcpState.SYN_RECEIVED
    arrive(c, seg("SA", seq=IRS, ack=S0), at=0.02)
    expect(c, seg("A", seq=S0, ack=R0), at=0.02)
    arrive(c, seg("A", seq=R0, ack=S0), at=0.03)
    assert state(c) is TcpState.ESTABLISHED
    assert Connected() in events(c)


def test_mss_negotiation_and_default_536() -> None:
    """RFC 9293 3.7.1: send no more than the peer's MSS; without the option assume 536."""
    c = established(mss=None)
    c.send(b"x" * 1200)
    expect(c, seg("A", seq=S0, length=536), seg("A", seq=S0 + 536, length=536), at=0.0)
    c = established(mss=700)
    c.send(b"x" * 1200)
    expect(c, seg("A", seq=S0, length=700), at=0.0)  # the 500-byte rest waits for the ACK (Nagle)


def test_rfc6691_effective_mss_leaves_room_for_timestamps() -> None:
    c = established(ts=True)
    c.send(b"x" * 2000)
    expect(c, seg("A", length=988), seg("A", length=988), at=0.0)


def test_window_scaling_applied() -> None:
    """RFC 7323 2.3: windows after the SYN are shifted by the peer's scale; ours by our announced shift."""
    c = established(wscale=3)
    arrive(c, seg("A", seq=R0, ack=S0, win=250), at=0.0)  # 250 << 3 = 2000 bytes
    c.send(b"x" * 5000)
    expect(c, seg("A", seq=S0, length=1000, win=(1 << 20) >> 5), seg("A", seq=S0 + 1000, length=1000), at=0.0)


def test_rfc7323_2_2_window_in_syn_is_never_scaled() -> None:
    c = established(wscale=7, win=1000)
    c.send(b"x" * 5000)
    expect(c, seg("A", seq=S0, length=1000), at=0.0)


def test_rfc7323_2_2_no_scaling_unless_both_offer() -> None:
    c = established(wscale=None)
    c.send(b"x" * 10)
    expect(c, seg("PA", win=65535), at=0.0)  # 1 MiB buffer capped at the unscaled 16-bit field
    assert c.snd_wscale == 0 and c.rcv_wscale == 0


def test_rfc7323_3_2_timestamps_only_when_both_offer() -> None:
    c = established(ts=False)
    c.send(b"x")
    expect(c, seg("PA", ts=False), at=0.0)
    c = established(ts=True)
    c.send(b"x")
    expect(c, seg("PA", ts=(0, 70000)), at=0.0)


def test_syn_retries_timeout() -> None:
    """RFC 6298 5.5 backoff of the SYN (1 s, 2 s, 4 s); after ``syn_retries`` retransmissions: ETIMEDOUT."""
    c = syn_sent(cfg(syn_retries=2))
    advance(c, to=1.0)
    expect(c, seg("S", seq=ISS), at=1.0)
    advance(c, to=3.0)
    expect(c, seg("S", seq=ISS), at=3.0)
    advance(c, to=7.0)
    expect_nothing(c, at=7.0)
    assert state(c) is TcpState.CLOSED
    assert events(c)[-3:] == [
        ConnectionTimedOut(),
        StateChanged(TcpState.SYN_SENT, TcpState.CLOSED),
        Closed(),
    ]


def test_synack_retransmitted_on_timeout() -> None:
    c = syn_received()
    advance(c, to=1.0)
    expect(c, seg("SA", seq=ISS, ack=R0), at=1.0)


def test_rfc6298_handshake_gives_first_rtt_sample() -> None:
    c = syn_sent()
    arrive(c, synack(c), at=0.1)
    assert c.srtt == pytest.approx(0.1)
    assert c.rtt.current_rto() == pytest.approx(0.3)  # SRTT + 4 * RTTVAR = 0.1 + 4 * 0.05


def test_rfc6298_5_7_rto_is_3s_after_syn_retransmission() -> None:
    c = syn_sent()
    advance(c, to=1.0)
    expect(c, seg("S"), at=1.0)
    arrive(c, synack(c), at=1.1)  # ambiguous (Karn): no sample, and RTO starts over at 3 s
    output_ack = expect(c, seg("A", seq=S0, ack=R0), at=1.1)
    assert output_ack
    c.send(b"x" * 10)
    expect(c, seg("PA", seq=S0), at=1.2)
    assert c.next_deadline() == pytest.approx(4.2)


def test_rfc9293_3_10_4_shutdown_in_syn_sent_closes_quietly() -> None:
    c = syn_sent()
    c.shutdown()
    expect_nothing(c, at=0.0)
    assert state(c) is TcpState.CLOSED


def test_shutdown_in_syn_received_sends_fin_once_established() -> None:
    c = syn_received()
    c.shutdown()
    expect_nothing(c, at=0.0)
    arrive(c, seg("A", seq=R0, ack=S0), at=0.1)
    expect(c, seg("FA", seq=S0, ack=R0), at=0.1)
    assert state(c) is TcpState.FIN_WAIT_1


def test_rfc7323_2_3_shift_above_14_is_used_as_14() -> None:
    c = established(wscale=15)
    assert c.snd_wscale == 14


def test_rfc9293_3_10_7_3_rst_with_unacceptable_ack_in_syn_sent_is_dropped() -> None:
    c = syn_sent()
    arrive(c, seg("RA", seq=0, ack=ISS + 7), at=0.01)
    expect_nothing(c, at=0.01)
    assert state(c) is TcpState.SYN_SENT


def test_rfc9293_3_10_7_4_data_on_the_handshake_ack_is_accepted() -> None:
    c = syn_received()
    arrive(c, seg("PA", seq=R0, ack=S0, data=b"GET /"), at=0.1)
    assert state(c) is TcpState.ESTABLISHED
    assert c.receive() == b"GET /"
