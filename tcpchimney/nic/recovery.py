"""What the host end of the transport knows of each connection the NIC process holds, and the state it
rebuilds from that when the NIC dies (docs/nic-process.md, "Recovery").

A ``Shadow`` per connection, kept by ``ProcessTarget`` from what crossed the rings: the state the host
handed in (const, cached, delegated: the initiate's block), the Sends not yet completed and where the last
completed one ended, what the host took of the received stream, the FINs asked, acknowledged and indicated.
Together with the connection's record and RX buffer in the arena, which the NIC commits before any ACK
leaves (``nic/commit.py``), that is every piece of hard state:

- received: every byte up to the committed RCV.NXT is in the RX buffer; the host took ``taken`` of them, so
  ``[taken, committed)`` comes back as buffered data, exactly once; the FIN when the record has it;
- sent: every byte from SND.UNA on is in the host's hands (the Sends it has not seen completed); SND.UNA is
  the larger of the last completion and the record (both only ever lag the peer); everything is
  retransmitted from there (SND.NXT = SND.UNA, as after a retransmission timeout);
- soft state (RTT, TS.Recent, ssthresh) from the record when it has it, else from the hand-in; the
  congestion window restarts at the initial window; the timestamp clock continues the hand-in's (the
  same monotonic clock in both processes), so it never runs backward.

``recovered_state`` returns the delegated state an upload would have returned: the host takes the
connection back through its ordinary terminate path, unchanged.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from tcpchimney.chimney.tcp_state import (
    AFTER_OUR_FIN_ACKED,
    AFTER_PEER_FIN,
    AFTER_SHUTDOWN,
    PEER_FIN_RECEIVED,
    TcpDelegated,
    TcpSnapshot,
)
from tcpchimney.nic.arena import Arena
from tcpchimney.nic.commit import UNPROTECTED, state_of
from tcpchimney.nic.descriptors import ConnRecord, RecordFlag
from tcpchimney.tcp.state import TcpState

_MASK32 = (1 << 32) - 1
_MS = 1000


_OUR_FIN_ACKED = frozenset({TcpState.FIN_WAIT_2, TcpState.TIME_WAIT, TcpState.CLOSED})
_NEVER_REBUILT = frozenset({TcpState.LISTEN, TcpState.SYN_SENT, TcpState.SYN_RECEIVED})


class RecoveryError(Exception):
    """The arena does not hold what the connection needs (a record out of range, an unprotected buffer):
    it cannot be rebuilt and is reset."""


@dataclass(slots=True, eq=False)
class Shadow:
    host_handle: int
    slot: int
    conn_id: int
    rx: tuple[int, int]  # RX buffer: offset in the arena, size
    tx: tuple[int, int]
    snap: TcpSnapshot  # as handed in
    t0: float  # when it was handed in (the timestamp clock continues from there)
    target_handle: int | None = None  # once the NIC accepted it
    taken: int = 0  # received bytes the host took since the hand-in
    sends: deque[tuple[int, int, bytes]] = field(default_factory=deque)  # rid, stream start, data
    sent_end: int = 0  # stream offset (from SND.UNA at hand-in) after the last byte given
    done_end: int = 0  # stream offset the peer is known to have acknowledged (completions)
    fin_asked: bool = False
    fin_acked: bool = False
    aborted: bool = False
    peer_fin: bool = False
    reset: bool = False
    # The TX buffer as a stream (nic/host_data.py): Sends written at tx_head, each kept until its
    # completion; tx_open maps the request id of each one not completed yet to its [start, end).
    tx_head: int = 0
    tx_open: dict[int, tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sent_end = len(self.snap.delegated.send_data)

    def tx_room(self) -> int:
        """Bytes of the TX buffer no Send holds: everything from the oldest open Send on is kept."""
        oldest = min((start for start, _ in self.tx_open.values()), default=self.tx_head)
        return self.tx[1] - (self.tx_head - oldest)

    def add_send(self, rid: int, data: bytes) -> None:
        self.sends.append((rid, self.sent_end, data))
        self.sent_end += len(data)

    def send_done(self, rid: int, success: bool) -> None:
        self.tx_open.pop(rid, None)  # completed, whatever the status: its TX bytes may be reused
        for i, (srid, start, data) in enumerate(self.sends):
            if srid == rid:
                del self.sends[i]
                if success:
                    self.done_end = max(self.done_end, start + len(data))
                return

    def acked_of(self, start: int, length: int, una: int) -> int:
        """Bytes of the Send at ``start`` the peer acknowledged, SND.UNA being ``una`` (stream offset)."""
        return max(0, min(una, start + length) - start)


def una_offset(sh: Shadow, record: ConnRecord | None) -> int:
    """SND.UNA as a stream offset: the larger of the last completion and the record's (soft) value."""
    d0 = sh.snap.delegated
    una = sh.done_end
    if record is not None:
        una = max(una, min(sh.sent_end, record.snd_una - int(d0.snd_una)))
    return una


def recovered_state(sh: Shadow, record: ConnRecord | None, arena: Arena, now: float) -> TcpDelegated:
    """The connection's delegated state rebuilt from the shadow, its record and its RX buffer. Raises
    RecoveryError when they do not fit together."""
    d0 = sh.snap.delegated
    buffered, fin = _received(sh, record, arena)
    peer_fin = fin or sh.peer_fin or d0.state in PEER_FIN_RECEIVED
    data0 = d0.buffered_start + len(d0.buffered_data)
    rcv_nxt = data0 + (sh.taken + len(buffered) + (1 if peer_fin else 0))
    state = _state(d0.state, sh, peer_fin, record)
    fin_acked = sh.fin_asked and state in _OUR_FIN_ACKED
    una = sh.sent_end if fin_acked else una_offset(sh, record)
    send_data = _send_from(sh, una)
    fin_out = sh.fin_asked and not fin_acked
    snd_una = d0.snd_una + (una + (1 if fin_acked else 0))
    snd_max = snd_una + (len(send_data) + (1 if fin_out else 0))
    rcv_wnd = d0.rcv_wnd
    if record is not None:
        rcv_wnd = max(0, min(record.rcv_adv - record.rcv_nxt, 0xFFFF << 14))
    mss = max(1, min(sh.snap.const.remote_mss, 1460))
    cwnd = min(10 * mss, max(2 * mss, 14600))  # RFC 6928's initial window: restart as after an RTO
    soft = _soft(d0, record)
    ts_time = (d0.ts_time + int(now * _MS) - int(sh.t0 * _MS)) & _MASK32
    outstanding = bool(send_data) or fin_out
    return replace(
        d0,
        state=state,
        rcv_nxt=rcv_nxt,
        rcv_wnd=rcv_wnd,
        snd_una=snd_una,
        snd_nxt=snd_una,
        snd_max=snd_max,
        snd_wl1=rcv_nxt + -1,  # the peer's next segment updates the window, whatever it sent meanwhile
        snd_wl2=snd_una,
        cwnd=cwnd,
        ssthresh=max(2 * mss, soft.ssthresh),
        srtt=soft.srtt,
        rttvar=soft.rttvar,
        rto=soft.rto,
        ts_recent=soft.ts_recent,
        ts_recent_age=0.0,
        ts_time=ts_time,
        total_rt=0.0,
        dup_ack_count=0,
        snd_wnd_probe_count=0,
        retransmit_count=0,
        retransmit_timeout=soft.rto if outstanding else None,
        send_data=send_data,
        buffered_data=buffered,
    )


def check_record(sh: Shadow, record: ConnRecord | None) -> tuple[int, bool]:
    """Where the committed received data ends (stream offset) and whether the record has the FIN. Raises
    RecoveryError for a record the RX buffer cannot back: unprotected, behind what the host took, or
    further ahead of it than the buffer holds."""
    if record is None:
        return sh.taken, False
    if record.flags & UNPROTECTED:
        raise RecoveryError("its RX buffer does not hold every byte the NIC acknowledged")
    d0 = sh.snap.delegated
    fin = bool(record.flags & RecordFlag.FIN_RECEIVED)
    end = record.rcv_nxt - int(d0.buffered_start + len(d0.buffered_data)) - (1 if fin else 0)
    size = sh.rx[1]
    if not sh.taken <= end <= sh.taken + size:
        raise RecoveryError(
            f"its record's RCV.NXT is {end - sh.taken} bytes from what the host took "
            f"(an RX buffer of {size} bytes)"
        )
    return end, fin


def _received(sh: Shadow, record: ConnRecord | None, arena: Arena) -> tuple[bytes, bool]:
    """The bytes ``[taken, committed RCV.NXT)`` from the RX buffer, and whether the record has the FIN."""
    end, fin = check_record(sh, record)
    off, size = sh.rx
    return arena.read_stream(off, size, sh.taken, end - sh.taken), fin


def _state(state: TcpState, sh: Shadow, peer_fin: bool, record: ConnRecord | None) -> TcpState:
    """The NIC's state as its record says (it knows which FIN came first), then what the host knows and
    the NIC may not have acted on yet: a Disconnect asked, the peer's FIN indicated, our FIN's ACK."""
    said = state_of(record.flags) if record is not None else None
    if said is not None and said not in _NEVER_REBUILT:
        state = said
    if sh.fin_asked:
        state = AFTER_SHUTDOWN.get(state, state)
    if peer_fin:
        state = AFTER_PEER_FIN.get(state, state)
    if sh.fin_acked:
        state = AFTER_OUR_FIN_ACKED.get(state, state)
    return state


def _send_from(sh: Shadow, una: int) -> bytes:
    """Every byte from stream offset ``una`` on: the rest of the hand-in's send data, then the Sends."""
    d0 = sh.snap.delegated
    parts: list[bytes] = []
    if una < len(d0.send_data):
        parts.append(d0.send_data[una:])
    for _, start, data in sh.sends:
        skip = max(0, una - start)
        if skip < len(data):
            parts.append(data[skip:] if skip else data)
    return b"".join(parts)


class _Soft(NamedTuple):
    srtt: float | None
    rttvar: float
    rto: float
    ts_recent: int
    ssthresh: int


def _soft(d0: TcpDelegated, record: ConnRecord | None) -> _Soft:
    """RTT, TS.Recent and ssthresh: the record's snapshot where it has one, else the hand-in's."""
    if record is None:
        return _Soft(d0.srtt, d0.rttvar, d0.rto, d0.ts_recent, d0.ssthresh)
    srtt, rttvar = (record.srtt_us / 1e6, record.rttvar_us / 1e6) if record.srtt_us else (d0.srtt, d0.rttvar)
    return _Soft(
        srtt,
        rttvar,
        record.rto_ms / 1000 if record.rto_ms else d0.rto,
        record.ts_recent or d0.ts_recent,
        max(record.cwnd // 2, 1) if record.cwnd else d0.ssthresh,
    )
