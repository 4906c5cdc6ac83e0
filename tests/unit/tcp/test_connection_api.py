"""Wrong use of the connection API raises a precise exception (RFC 9293 3.10 "error:" responses);
hostile segments never raise."""

from __future__ import annotations

from dataclasses import replace

import pytest
from dsl import (
    CONFIG,
    ISS,
    R0,
    S0,
    advance,
    arrive,
    cfg,
    established,
    expect,
    peer_syn,
    seg,
    syn_sent,
    synack,
)

from tcpchimney.tcp.config import TcpConfig
from tcpchimney.tcp.connection import TcpConnection
from tcpchimney.tcp.errors import (
    ConnectionClosedError,
    ConnectionResetByPeerError,
    ConnectionTimedOutError,
    InvalidStateError,
)
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire.seq import SeqNum


def test_send_after_shutdown_raises_connection_closed_error() -> None:
    c = established()
    c.shutdown()
    with pytest.raises(ConnectionClosedError) as err:
        c.send(b"x")
    assert err.type is ConnectionClosedError
    assert err.value.state is TcpState.FIN_WAIT_1


def test_send_after_reset_raises_connection_reset_by_peer_error() -> None:
    c = established()
    arrive(c, seg("R", seq=R0), at=0.1)
    with pytest.raises(ConnectionResetByPeerError):
        c.send(b"x")
    with pytest.raises(ConnectionResetByPeerError):
        c.shutdown()


def test_send_after_refused_connect_raises_connection_reset_by_peer_error() -> None:
    c = syn_sent()
    arrive(c, seg("RA", seq=0, ack=S0), at=0.1)
    with pytest.raises(ConnectionResetByPeerError):
        c.send(b"x")


def test_send_after_timeout_raises_connection_timed_out_error() -> None:
    c = established(cfg(max_retransmits=0))
    c.send(b"x")
    expect(c, seg("PA"), at=0.0)
    advance(c, to=0.2)
    with pytest.raises(ConnectionTimedOutError):
        c.send(b"y")


def test_send_after_close_raises_connection_closed_error() -> None:
    c = established()
    c.abort()
    with pytest.raises(ConnectionClosedError) as err:
        c.send(b"x")
    assert err.type is ConnectionClosedError
    assert err.value.state is TcpState.CLOSED


def test_send_in_close_wait_is_allowed() -> None:
    c = established()
    arrive(c, seg("FA", seq=R0), at=0.1)
    assert c.send(b"still talking") == 13


def test_send_before_the_handshake_completes_is_queued() -> None:
    c = syn_sent()
    assert c.send(b"early") == 5
    expect(c, at=0.0)  # nothing before ESTABLISHED
    arrive(c, synack(c), at=0.1)
    expect(c, seg("PA", seq=S0, ack=R0, data=b"early"), at=0.1)  # the data carries the handshake's ACK


def test_accept_syn_needs_a_syn() -> None:
    ack = peer_syn()
    ack.flags = 0x10  # a bare ACK
    with pytest.raises(InvalidStateError):
        TcpConnection.accept_syn(CONFIG, 40000, 80, ack, SeqNum(ISS), 0.0, 0)
    synack = peer_syn()
    synack.flags |= 0x10
    with pytest.raises(InvalidStateError):
        TcpConnection.accept_syn(CONFIG, 40000, 80, synack, SeqNum(ISS), 0.0, 0)


def test_send_returns_what_fits_in_the_buffer() -> None:
    c = established(cfg(snd_buf=100))
    assert c.send(b"x" * 150) == 100
    assert c.send(b"y") == 0


def test_receive_after_peer_fin_returns_data_then_eof() -> None:
    c = established()
    arrive(c, seg("FPA", seq=R0, data=b"last"), at=0.1)
    assert c.receive(2) == b"la"
    assert c.receive() == b"st"
    assert c.receive() == b""


def test_close_and_abort_on_a_closed_connection_do_nothing() -> None:
    c = established()
    c.abort()
    c.segments_to_send(0.0)
    c.close()
    c.abort()
    expect(c, at=0.1)


def test_hostile_segments_never_raise() -> None:
    c = established()
    for flags in ("SAFR", "F", "", "SF", "RF"):
        arrive(c, seg(flags, seq=R0 + 7, ack=S0 + 99999), at=0.1)
    c.segments_to_send(0.1)


def test_configure_nodelay_on_a_live_connection_releases_the_small_tail() -> None:
    c = established()
    c.send(b"x" * 1500)
    expect(c, seg("A", length=1000), at=0.0)  # Nagle holds the 500-byte tail while data is in flight
    c.configure(nodelay=True)
    expect(c, seg("PA", length=500), at=0.01)


def test_configure_rejects_a_nonsense_buffer_size() -> None:
    c = established()
    with pytest.raises(ValueError, match="rcv_buf"):
        c.configure(rcv_buf=0)


def test_the_same_option_change_shares_one_config() -> None:
    """Every connection an asyncio server accepts asks for TCP_NODELAY: the frozen configs are shared, not
    copied per connection (a copy costs about 17 us, the lookup 3)."""
    base = TcpConfig()
    fast = base.with_options(nodelay=True, keepalive=False)
    assert fast.nodelay and fast == replace(base, nodelay=True)
    assert base.with_options(keepalive=False, nodelay=True) is fast
    assert base.with_options(nodelay=False) is base and not base.nodelay
    assert base.with_options(snd_buf=1 << 16).snd_buf == 1 << 16 != fast.snd_buf
