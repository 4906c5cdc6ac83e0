"""Closing (RFC 9293 3.6, 3.10.4, 3.10.5, 3.10.7.4 fifth and eighth; RFC 2525 2.17)."""

from __future__ import annotations

from dsl import R0, S0, advance, arrive, established, events, expect, expect_nothing, seg, state, syn_sent

from tcpchimney.tcp.connection import TcpConnection
from tcpchimney.tcp.events import Closed, DataReceived, PeerClosed, StateChanged
from tcpchimney.tcp.state import TcpState


def fin_wait_1(**kw: object) -> TcpConnection:
    c = established(**kw)  # type: ignore[arg-type]
    c.shutdown()
    expect(c, seg("FA", seq=S0, ack=R0), at=0.0)
    return c


def test_rfc9293_3_10_4_close_sends_fin_after_queued_data() -> None:
    c = established()
    c.send(b"bye")
    c.shutdown()
    expect(c, seg("FPA", seq=S0, ack=R0, data=b"bye"), at=0.0)
    assert state(c) is TcpState.FIN_WAIT_1


def test_rfc9293_3_10_4_fin_waits_behind_data_the_window_holds_back() -> None:
    c = established(win=1000)
    c.send(b"x" * 1500)
    c.shutdown()
    expect(c, seg("A", seq=S0, length=1000), at=0.0)
    arrive(c, seg("A", ack=S0 + 1000, win=1000), at=0.1)
    expect(c, seg("FPA", seq=S0 + 1000, length=500), at=0.1)


def test_rfc9293_3_10_7_4_fin_wait_1_to_fin_wait_2_on_ack_of_fin() -> None:
    c = fin_wait_1()
    arrive(c, seg("A", ack=S0 + 1), at=0.1)
    expect_nothing(c, at=0.1)
    assert state(c) is TcpState.FIN_WAIT_2


def test_rfc9293_3_10_7_4_fin_wait_2_to_time_wait_on_peer_fin() -> None:
    c = fin_wait_1()
    arrive(c, seg("A", ack=S0 + 1), at=0.1)
    arrive(c, seg("FA", seq=R0, ack=S0 + 1), at=0.2)
    expect(c, seg("A", seq=S0 + 1, ack=R0 + 1), at=0.2)
    assert state(c) is TcpState.TIME_WAIT
    assert PeerClosed() in events(c)


def test_rfc9293_3_10_7_4_fin_and_ack_together_go_to_time_wait() -> None:
    c = fin_wait_1()
    arrive(c, seg("FA", seq=R0, ack=S0 + 1), at=0.1)
    expect(c, seg("A", ack=R0 + 1), at=0.1)
    assert state(c) is TcpState.TIME_WAIT


def test_passive_close_close_wait_last_ack_closed() -> None:
    c = established()
    arrive(c, seg("FA", seq=R0), at=0.1)
    expect(c, seg("A", seq=S0, ack=R0 + 1), at=0.1)
    assert state(c) is TcpState.CLOSE_WAIT
    assert c.receive() == b""  # end of stream
    c.shutdown()
    expect(c, seg("FA", seq=S0, ack=R0 + 1), at=0.2)
    assert state(c) is TcpState.LAST_ACK
    arrive(c, seg("A", seq=R0 + 1, ack=S0 + 1), at=0.3)
    assert state(c) is TcpState.CLOSED
    assert events(c)[-2:] == [StateChanged(TcpState.LAST_ACK, TcpState.CLOSED), Closed()]


def test_simultaneous_close_closing_to_time_wait() -> None:
    c = fin_wait_1()
    arrive(c, seg("FA", seq=R0, ack=S0), at=0.1)  # the peer's FIN crossed ours
    expect(c, seg("A", seq=S0 + 1, ack=R0 + 1), at=0.1)
    assert state(c) is TcpState.CLOSING
    arrive(c, seg("A", seq=R0 + 1, ack=S0 + 1), at=0.2)
    assert state(c) is TcpState.TIME_WAIT


def test_half_close() -> None:
    """RFC 9293 3.6: after our FIN the peer may go on sending; we go on receiving and acknowledging."""
    c = fin_wait_1()
    arrive(c, seg("A", ack=S0 + 1), at=0.1)
    arrive(c, seg("A", seq=R0, ack=S0 + 1, data=b"x" * 1000), at=0.2)
    arrive(c, seg("A", seq=R0 + 1000, ack=S0 + 1, data=b"y" * 1000), at=0.21)
    expect(c, seg("A", seq=S0 + 1, ack=R0 + 2000), at=0.21)
    assert c.receive() == b"x" * 1000 + b"y" * 1000
    assert state(c) is TcpState.FIN_WAIT_2


def test_fin_ahead_of_data() -> None:
    """A FIN beyond a hole is held (and acknowledged as a duplicate); it takes effect once the hole fills."""
    c = established()
    arrive(c, seg("FA", seq=R0 + 3, data=b"def"), at=0.1)
    expect(c, seg("A", ack=R0), at=0.1)
    assert state(c) is TcpState.ESTABLISHED
    arrive(c, seg("A", seq=R0, data=b"abc"), at=0.2)
    expect(c, seg("A", ack=R0 + 7), at=0.2)
    assert state(c) is TcpState.CLOSE_WAIT
    assert events(c) == [
        DataReceived(6),
        PeerClosed(),
        StateChanged(TcpState.ESTABLISHED, TcpState.CLOSE_WAIT),
    ]
    assert c.receive() == b"abcdef"


def test_rfc9293_3_10_7_4_fin_retransmitted_on_timeout() -> None:
    c = fin_wait_1()
    advance(c, to=0.2)
    expect(c, seg("FA", seq=S0), at=0.2)


def test_rfc9293_3_10_7_4_repeated_fin_in_close_wait_is_acked() -> None:
    c = established()
    arrive(c, seg("FA", seq=R0), at=0.1)
    expect(c, seg("A", ack=R0 + 1), at=0.1)
    arrive(c, seg("FA", seq=R0), at=0.3)
    expect(c, seg("A", ack=R0 + 1), at=0.3)
    assert state(c) is TcpState.CLOSE_WAIT


def test_orphaned_close_with_unread_data_sends_rst() -> None:
    """RFC 2525 2.17 (and Linux): closing with unread data resets the connection instead of a FIN."""
    c = established()
    arrive(c, seg("PA", seq=R0, data=b"unread"), at=0.1)
    c.close()
    expect(c, seg("R", seq=S0), at=0.1)
    assert state(c) is TcpState.CLOSED


def test_close_without_unread_data_is_graceful() -> None:
    c = established()
    c.close()
    expect(c, seg("FA", seq=S0), at=0.0)
    assert state(c) is TcpState.FIN_WAIT_1


def test_data_for_an_orphaned_connection_gets_rst() -> None:
    """RFC 1122 4.2.2.13 / RFC 2525 2.17: "if new data is received after CLOSE is called, its TCP SHOULD send
    a RST"; the engine means to send <SEQ=SND.NXT><CTL=RST,ACK> as Linux does."""
    c = established()
    c.close()
    expect(c, seg("FA", seq=S0), at=0.0)
    arrive(c, seg("A", ack=S0 + 1, seq=R0, data=b"late"), at=0.1)
    expect(c, seg("RA", seq=S0 + 1), at=0.1)
    assert state(c) is TcpState.CLOSED


def test_rfc9293_3_10_5_abort_sends_rst_and_closes() -> None:
    c = established()
    c.send(b"pending")
    c.abort()
    expect(c, seg("R", seq=S0), at=0.0)
    assert state(c) is TcpState.CLOSED


def test_abort_in_syn_sent_sends_nothing() -> None:
    c = syn_sent()
    c.abort()
    expect_nothing(c, at=0.0)
    assert state(c) is TcpState.CLOSED


def test_shutdown_twice_sends_one_fin() -> None:
    c = fin_wait_1()
    c.shutdown()
    expect_nothing(c, at=0.01)


def test_rfc9293_3_10_7_4_fin_with_data_is_acked_at_once() -> None:
    c = established()
    arrive(c, seg("FPA", seq=R0, data=b"end"), at=0.1)
    expect(c, seg("A", seq=S0, ack=R0 + 4), at=0.1)
    assert state(c) is TcpState.CLOSE_WAIT


def test_nagle_does_not_hold_the_last_segment_once_the_fin_is_queued() -> None:
    c = established()
    c.send(b"x" * 1500)
    expect(c, seg("A", length=1000), at=0.0)
    c.shutdown()
    expect(c, seg("FPA", seq=S0 + 1000, length=500), at=0.01)
