"""What the host checks of a target's answers against its own accounting (docs/offload-contract.md "What
the host checks"). Pure functions over a connection's offload record: each raises ProtocolViolationError
naming what the target got wrong; ``host.offload`` reports the fault and recovers or resets the connection.

The host never takes the target's word for what it cannot check; what it can check is what it issued or
counted itself:

- the bytes it took from the target (``rcv_end``: every indication starts exactly there, the peer's FIN
  is indicated exactly there; the receive data an upload returns starts at or before it);
- the bytes it gave the target (SND.UNA at offload plus the send data then plus every Send since: an upload
  returns the stream ending there, SND.UNA not behind what the completions acknowledged);
- the calls it made (a graceful Disconnect, an abort) and the peer events it was told of (FIN, RST): a
  returned TCP state must be one those could have led to.

The contract registry (``chimney.registry``) checks the rest: the shape of every answer, the handles it
issued and those the target gave, the byte counts of data completions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tcpchimney.chimney.errors import ProtocolViolationError
from tcpchimney.chimney.indications import PeerDisconnect, ReceiveIndication
from tcpchimney.chimney.tcp_state import FIN_OUTSTANDING, PEER_FIN_RECEIVED, TcpDelegated
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire import tcp as tcp_wire
from tcpchimney.wire.seq import SeqNum
from tcpchimney.wire.tcp import TcpOptions, TcpSegment

if TYPE_CHECKING:
    from tcpchimney.host.offload_state import ConnOffload
    from tcpchimney.host.sockets import TcpSocket

# States in which our FIN was sent: only after a graceful Disconnect (FIN-WAIT-2 / TIME-WAIT: acknowledged).
_OUR_FIN_SENT = FIN_OUTSTANDING | {TcpState.FIN_WAIT_2, TcpState.TIME_WAIT}
_OUR_FIN_ACKED = frozenset({TcpState.FIN_WAIT_2, TcpState.TIME_WAIT, TcpState.CLOSED})
# States a connection the host offloaded can never come back in (the handshake is the host's).
_NEVER_RETURNED = frozenset({TcpState.LISTEN, TcpState.SYN_SENT, TcpState.SYN_RECEIVED})


def check_indication(off: ConnOffload, ind: ReceiveIndication) -> None:
    """A ReceiveIndication must start at the next byte the host expects: before it, it repeats bytes the
    host already has (a replay); after it, bytes the host never got are missing."""
    if ind.indication_id == off.last_indication:
        raise ProtocolViolationError(f"duplicate ReceiveIndication {ind.indication_id}")
    ahead = ind.seq.dist(off.rcv_end)
    if ahead < 0:
        raise ProtocolViolationError(
            f"duplicate receive data: indication {ind.indication_id} starts at {int(ind.seq)}, "
            f"{-ahead} bytes before {int(off.rcv_end)}, the next byte the host expects"
        )
    if ahead > 0:
        raise ProtocolViolationError(
            f"gap in receive data: indication {ind.indication_id} starts at {int(ind.seq)}, "
            f"{ahead} bytes after {int(off.rcv_end)}, the next byte the host expects"
        )


def check_peer_disconnect(off: ConnOffload, ind: PeerDisconnect) -> None:
    """The peer's FIN is indicated after every byte before it: it sits at the next byte the host expects.
    Before it, the host would have taken bytes from beyond the FIN; after it, the application would see
    the end of the stream before bytes the host never got (an early, replayed or misdirected FIN)."""
    ahead = ind.seq.dist(off.rcv_end)
    if ahead:
        raise ProtocolViolationError(
            f"PeerDisconnect at {int(ind.seq)}, {abs(ahead)} bytes {'after' if ahead > 0 else 'before'} "
            f"{int(off.rcv_end)}, the next byte the host expects"
        )


def check_returned_state(off: ConnOffload, d: TcpDelegated) -> None:
    """The TCP state an upload returns must follow from what the host did and was told: the target may be
    ahead of the host (a peer FIN held behind undelivered data, an acknowledgment of our FIN whose
    completion is still on its way) but it never closes, sends a FIN or forgets the peer's FIN on its own."""
    state = d.state
    if state in _NEVER_RETURNED:
        raise ProtocolViolationError(f"the target returned the connection in {state.value}")
    if state is TcpState.CLOSED and not off.fin_sent:
        raise ProtocolViolationError(
            f"the target returned the connection CLOSED while the host had it {off.tcp_state.value}, "
            "with no FIN of ours sent and no reset indicated"
        )
    if state in _OUR_FIN_SENT and not off.fin_sent:
        raise ProtocolViolationError(f"the target returned {state.value}: the host never asked for a FIN")
    if off.peer_fin and state not in PEER_FIN_RECEIVED and state is not TcpState.CLOSED:
        raise ProtocolViolationError(f"the target returned {state.value} after it indicated the peer's FIN")


def first_undelivered(d: TcpDelegated) -> SeqNum:
    """The sequence number of the first buffered byte. ``buffered_start`` knows the peer's FIN only in the
    states that show it; a connection that reached CLOSED by a graceful close (the only CLOSED the host
    accepts, ``check_returned_state``) has RCV.NXT past the peer's FIN as well."""
    return d.buffered_start + (-1 if d.state is TcpState.CLOSED else 0)


def check_returned(off: ConnOffload, d: TcpDelegated) -> tuple[bytes, int]:
    """Check the returned sequence numbers against what the host gave and took. Returns the send bytes the
    target did not keep (to append) and how many returned buffered bytes the host already has (to trim)."""
    check_returned_state(off, d)
    fin_acked = 1 if d.state in (TcpState.FIN_WAIT_2, TcpState.TIME_WAIT) else 0  # SND.UNA is past it
    end = d.snd_una + (len(d.send_data) - fin_acked)
    expected = off.base_end + off.submitted
    gap = expected.dist(end)
    if not off.base_una <= d.snd_una or d.snd_una.dist(off.base_una) < off.acked:
        raise ProtocolViolationError(f"returned SND.UNA {int(d.snd_una)} is behind what was ACKed")
    retained = b"".join(data for _, data in off.inflight) + bytes(off.returned)
    closed = d.state is TcpState.CLOSED  # nothing will be sent again: the send numbers no longer matter
    if not closed and (
        gap < 0 or gap > len(retained) or (gap and d.fin_outstanding and d.snd_max == end + 1)
    ):
        raise ProtocolViolationError(f"returned send data ends at {int(end)}, expected {int(expected)}")
    start = first_undelivered(d)
    overlap = off.rcv_end.dist(start)
    if overlap < 0:
        raise ProtocolViolationError(
            f"returned receive data starts at {int(start)}, the host holds up to {int(off.rcv_end)}"
        )
    if overlap > len(d.buffered_data):
        raise ProtocolViolationError("returned receive data lies before what the host took")
    if overlap:
        # Only bytes whose consumption the target never confirmed may come back, and exactly those: a
        # target whose RCV.NXT is off would have the host trim the wrong amount and skip or repeat bytes.
        held = b"".join(data for _, data in off.unconfirmed)
        if overlap > len(held) or d.buffered_data[:overlap] != held[len(held) - overlap :]:
            raise ProtocolViolationError(
                f"returned receive data overlaps {overlap} bytes the host took, and they differ from them"
            )
    return (retained[len(retained) - gap :] if gap and not closed else b""), overlap


def lost_peer_probes(sock: TcpSocket, off: ConnOffload) -> list[TcpSegment]:
    """The segments that make a peer answer when the host holds none of its connection's current numbers.
    The host engine's RST carries the sequence numbers of the offload, which the peer drops as out of
    window (RFC 5961 3.2) once the target moved on. A keepalive-shaped segment (SEG.SEQ = SND.UNA - 1, the
    SND.UNA the host knows, which the peer has passed) is unacceptable to the peer, so it answers with an
    ACK carrying its RCV.NXT (RFC 9293 3.10.7.4); the connection is gone, so the host answers that ACK with
    an RST the peer accepts exactly (3.10.7.1). The SND.UNA the completions told may be a lie (more
    acknowledged than the peer did, so the probe would fall inside its window and get no answer): a second
    probe just before SND.UNA at offload, which the peer had passed then, answers for it. That one carries
    a byte (as a BSD keepalive does; the peer already has that sequence number and discards it): a peer
    answers an unacceptable empty segment at most once per interval (RFC 5961 section 7, Linux's
    tcp_invalid_ratelimit, 500 ms), never one with data, and the host may probe again soon after a first
    probe whose answer went elsewhere (``OffloadManager._reprobe``)."""
    out = []
    for seq, data in ((off.base_una + (off.acked - 1), b""), (off.base_una + -1, b"\0")):
        out.append(
            TcpSegment(
                sock.local_port, sock.remote_port, seq, off.rcv_end, tcp_wire.ACK, 0, data, TcpOptions()
            )
        )
    return out


def owed_by_target(off: ConnOffload, d: TcpDelegated) -> str | None:
    """What a queried connection's state shows the target owes the host and never sent: received bytes it
    neither indicated nor was refused, the peer's FIN or RST, a completion of a Send (or of the graceful
    Disconnect) the peer acknowledged. None when its state agrees with what the host was told. Bytes the
    host took after the target took its snapshot (an indication answered meanwhile) are not owed."""
    taken_since = max(0, off.rcv_end.dist(first_undelivered(d)))
    unindicated = len(d.buffered_data) - taken_since
    if unindicated > 0 and not off.target_holds:
        return f"the target holds {unindicated} received bytes it never indicated"
    # CLOSED after our FIN was sent is the end of a graceful close: the peer's FIN came too.
    peer_fin = d.state in PEER_FIN_RECEIVED or (d.state is TcpState.CLOSED and off.fin_sent)
    if unindicated <= 0 and peer_fin and not off.peer_fin:
        return "the target received the peer's FIN and never indicated it"
    if d.state is TcpState.CLOSED and not off.fin_sent and not off.reset:
        return "the target's connection is CLOSED and no reset was indicated"
    if off.inflight:
        # Stream bytes of the Sends the peer acknowledged: off.acked of them were completed.
        acked = d.snd_una.dist(off.base_end) - (
            1 if d.state in (TcpState.FIN_WAIT_2, TcpState.TIME_WAIT) else 0
        )
        rid, first = off.inflight[0]
        if acked - off.acked >= len(first):
            return f"the peer acknowledged Send {rid} and the target never completed it"
    if off.fin_sent and off.tcp_state in FIN_OUTSTANDING and d.state in _OUR_FIN_ACKED:
        return "the peer acknowledged our FIN and the target never completed the Disconnect"
    return None
