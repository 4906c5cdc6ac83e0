"""A small language for engine tests: "this segment arrives" / "exactly these segments leave", at exact
virtual times.

    c = established()
    arrive(c, seg("PA", seq=R0, data=b"hi"), at=0.1)
    expect_nothing(c, at=0.1)                    # the ACK is delayed
    advance(c, to=0.14)                          # the next deadline is exactly 0.14; fire it
    expect(c, seg("A", seq=S0, ack=R0 + 2), at=0.14)

A spec names only the fields the test cares about; the others are not compared. Flags are a string of
F S R P A (e.g. "SA", "FA", "PA"): always compared, exactly. Arriving segments get sensible defaults
(SEG.SEQ = RCV.NXT, SEG.ACK = SND.MAX, the peer's window, and its timestamps when they were negotiated).

Defaults: our ISS is 1000 (first data byte S0 = 1001), the peer's is 5000 (R0 = 5001); MSS 1000 both ways
without timestamps, so sequence arithmetic stays round; no window scaling unless asked for.
"""

from __future__ import annotations

import dataclasses
import weakref
from dataclasses import dataclass

import pytest

from tcpchimney.tcp.config import TcpConfig
from tcpchimney.tcp.connection import TcpConnection
from tcpchimney.tcp.events import TcpEvent
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire.seq import SeqNum
from tcpchimney.wire.tcp import ACK, FIN, PSH, RST, SYN, URG, TcpOptions, TcpSegment

ISS = 1000
IRS = 5000
S0 = ISS + 1  # our first data byte
R0 = IRS + 1  # the peer's first data byte
LPORT = 40000
RPORT = 80
MSS = 1000
PEER_WIN = 65535
PEER_TS0 = 70000  # the peer's TSval clock at t=0 (1 ms ticks)
CONFIG = TcpConfig(mss=MSS)

_FLAG_BITS = {"F": FIN, "S": SYN, "R": RST, "P": PSH, "A": ACK, "U": URG}
_last_tsval: weakref.WeakKeyDictionary[TcpConnection, int] = weakref.WeakKeyDictionary()


def cfg(**changes: object) -> TcpConfig:
    """The test configuration with some fields changed."""
    return dataclasses.replace(CONFIG, **changes)  # type: ignore[arg-type]


def peer_ts(at: float) -> int:
    """The peer's TSval at ``at`` (1 ms clock)."""
    return PEER_TS0 + round(at * 1000)


# ---------------------------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class Seg:
    flags: str
    seq: int | None = None
    ack: int | None = None
    win: int | None = None
    data: bytes | None = None
    length: int | None = None  # payload length, when the bytes themselves do not matter
    ts: tuple[int | None, int | None] | bool | None = None  # False: no timestamp option
    sack: list[tuple[int, int]] | None = None  # [] : no SACK blocks
    mss: int | None = None
    wscale: int | None = None
    sack_ok: bool | None = None


def seg(flags: str, **fields: object) -> Seg:
    return Seg(flags, **fields)  # type: ignore[arg-type]


def flag_bits(flags: str) -> int:
    bits = 0
    for ch in flags:
        bits |= _FLAG_BITS[ch]
    return bits


def flag_str(bits: int) -> str:
    return "".join(ch for ch, b in _FLAG_BITS.items() if bits & b) or "-"


def fmt(s: TcpSegment) -> str:
    o = s.options
    parts = [f"{flag_str(s.flags)} seq={int(s.seq)} ack={int(s.ack)} win={s.window} len={len(s.payload)}"]
    if o.ts_val is not None:
        parts.append(f"ts=({o.ts_val}, {o.ts_ecr})")
    if o.sack_blocks:
        parts.append(f"sack={[(int(a), int(b)) for a, b in o.sack_blocks]}")
    if o.mss is not None:
        parts.append(f"mss={o.mss}")
    if o.wscale is not None:
        parts.append(f"wscale={o.wscale}")
    if o.sack_permitted:
        parts.append("sack_ok")
    return " ".join(parts)


def mismatches(spec: Seg, s: TcpSegment) -> list[str]:
    """The fields of ``spec`` that ``s`` does not match."""
    o = s.options
    got: dict[str, object] = {
        "flags": flag_str(s.flags),
        "seq": int(s.seq),
        "ack": int(s.ack),
        "win": s.window,
        "data": bytes(s.payload),
        "length": len(s.payload),
        "ts": None if o.ts_val is None else (o.ts_val, o.ts_ecr),
        "sack": [(int(a), int(b)) for a, b in o.sack_blocks],
        "mss": o.mss,
        "wscale": o.wscale,
        "sack_ok": o.sack_permitted,
    }
    want: dict[str, object] = {"flags": flag_str(flag_bits(spec.flags))}
    for name in ("seq", "ack"):
        value = getattr(spec, name)
        if value is not None:
            want[name] = value & 0xFFFFFFFF
    for name in ("win", "data", "length", "sack", "mss", "wscale", "sack_ok"):
        value = getattr(spec, name)
        if value is not None:
            want[name] = value
    if spec.ts is False:
        want["ts"] = None
    elif isinstance(spec.ts, tuple):
        # (val, None) or (None, ecr): compare only the half given
        val, ecr = spec.ts
        if o.ts_val is not None:
            got["ts"] = (o.ts_val if val is not None else None, o.ts_ecr if ecr is not None else None)
        want["ts"] = (val, ecr)
    return [f"{k}: want {v!r}, got {got[k]!r}" for k, v in want.items() if got[k] != v]


def build(conn: TcpConnection, spec: Seg, at: float) -> TcpSegment:
    """The segment the peer sends for ``spec`` (defaults filled in from the connection)."""
    bits = flag_bits(spec.flags)
    seq = spec.seq if spec.seq is not None else int(conn.rcv_nxt)
    ack = spec.ack if spec.ack is not None else (int(conn.snd_max) if bits & ACK else 0)
    opts = TcpOptions(mss=spec.mss, wscale=spec.wscale, sack_permitted=bool(spec.sack_ok))
    if spec.sack:
        opts.sack_blocks = tuple((SeqNum(a), SeqNum(b)) for a, b in spec.sack)
    if isinstance(spec.ts, tuple):
        val, ecr = spec.ts
        opts.ts_val = peer_ts(at) if val is None else val
        opts.ts_ecr = _last_tsval.get(conn, 0) if ecr is None else ecr
    elif spec.ts is None and conn.ts_enabled:
        opts.ts_val = peer_ts(at)
        opts.ts_ecr = _last_tsval.get(conn, conn.ts_now(at)) if bits & ACK else 0
    win = spec.win if spec.win is not None else PEER_WIN
    data = spec.data or b""
    return TcpSegment(RPORT, LPORT, SeqNum(seq), SeqNum(ack), bits, win, data, opts)


# ---------------------------------------------------------------------------------------------- actions


def arrive(conn: TcpConnection, spec: Seg, at: float) -> None:
    """The peer's segment ``spec`` arrives at ``at``."""
    conn.handle_segment(build(conn, spec, at), at)


def output(conn: TcpConnection, at: float) -> list[TcpSegment]:
    """What leaves at ``at`` (remembering our last TSval so that the peer can echo it)."""
    out = conn.segments_to_send(at)
    for s in out:
        if s.options.ts_val is not None:
            _last_tsval[conn] = s.options.ts_val
    return out


def expect(conn: TcpConnection, *specs: Seg, at: float) -> list[TcpSegment]:
    """Exactly ``specs`` leave at ``at``, in this order."""
    out = output(conn, at)
    listing = "\n  ".join(fmt(s) for s in out) or "(nothing)"
    assert len(out) == len(specs), f"at {at}: want {len(specs)} segment(s), got:\n  {listing}"
    for i, (spec, s) in enumerate(zip(specs, out, strict=True)):
        bad = mismatches(spec, s)
        assert not bad, f"at {at}, segment {i} ({fmt(s)}): " + "; ".join(bad) + f"\nall:\n  {listing}"
    return out


def expect_nothing(conn: TcpConnection, at: float) -> None:
    expect(conn, at=at)


def advance(conn: TcpConnection, to: float) -> None:
    """The next deadline is exactly ``to``: fire the timers due then."""
    deadline = conn.next_deadline()
    assert deadline is not None, f"no timer pending (wanted one at {to})"
    assert deadline == pytest.approx(to, abs=1e-9), f"next deadline is {deadline}, not {to}"
    conn.handle_timer(max(deadline, to))


def run_until(conn: TcpConnection, to: float) -> list[TcpSegment]:
    """Fire every deadline up to ``to`` in order, at its own time; return all that left meanwhile."""
    out: list[TcpSegment] = []
    while (deadline := conn.next_deadline()) is not None and deadline <= to + 1e-9:
        conn.handle_timer(deadline)
        out += output(conn, deadline)
    return out


def state(conn: TcpConnection) -> TcpState:
    """The connection's state (a call, so that type checkers do not narrow it between steps)."""
    return conn.state


def events(conn: TcpConnection) -> list[TcpEvent]:
    """Every event reported since the last call."""
    out = []
    while (e := conn.next_event()) is not None:
        out.append(e)
    return out


# ---------------------------------------------------------------------------------------------- connections


def syn_sent(config: TcpConfig = CONFIG, iss: int = ISS, at: float = 0.0) -> TcpConnection:
    """Active open; the SYN has left."""
    conn = TcpConnection.connect(config, LPORT, RPORT, SeqNum(iss), at, 0)
    output(conn, at)
    events(conn)
    return conn


def synack(
    conn: TcpConnection,
    irs: int = IRS,
    ts: bool = False,
    sack: bool = False,
    wscale: int | None = None,
    mss: int | None = MSS,
    win: int = PEER_WIN,
    at: float = 0.0,
) -> Seg:
    """The peer's SYN-ACK answering ``conn``'s SYN."""
    return seg(
        "SA", seq=irs, ack=int(conn.iss) + 1, win=win, mss=mss, wscale=wscale, sack_ok=sack,
        ts=(peer_ts(at), _last_tsval.get(conn, 0)) if ts else False,
    )  # fmt: skip


def peer_syn(
    irs: int = IRS, ts: bool = False, sack: bool = False, wscale: int | None = None, mss: int | None = MSS,
    win: int = PEER_WIN, at: float = 0.0,
) -> TcpSegment:  # fmt: skip
    """A SYN from the peer, as a segment (for ``accept_syn``)."""
    opts = TcpOptions(mss=mss, wscale=wscale, sack_permitted=sack)
    if ts:
        opts.ts_val, opts.ts_ecr = peer_ts(at), 0
    return TcpSegment(RPORT, LPORT, SeqNum(irs), SeqNum(0), SYN, win, b"", opts)


def syn_received(config: TcpConfig = CONFIG, iss: int = ISS, at: float = 0.0, **syn: object) -> TcpConnection:
    """Passive open from the peer's SYN; our SYN-ACK has left."""
    conn = TcpConnection.accept_syn(config, LPORT, RPORT, peer_syn(at=at, **syn), SeqNum(iss), at, 0)  # type: ignore[arg-type]
    output(conn, at)
    events(conn)
    return conn


def established(
    config: TcpConfig = CONFIG,
    iss: int = ISS,
    irs: int = IRS,
    ts: bool = False,
    sack: bool = False,
    wscale: int | None = None,
    mss: int | None = MSS,
    win: int = PEER_WIN,
    active: bool = True,
) -> TcpConnection:
    """A connection after a real handshake through the engine at t=0, with its output and events drained."""
    if active:
        conn = syn_sent(config, iss)
        arrive(conn, synack(conn, irs, ts, sack, wscale, mss, win), at=0.0)
    else:
        conn = syn_received(config, iss, irs=irs, ts=ts, sack=sack, wscale=wscale, mss=mss, win=win)
        arrive(conn, seg("A", seq=irs + 1, ack=iss + 1, win=win), at=0.0)
    output(conn, 0.0)
    events(conn)
    assert conn.state is TcpState.ESTABLISHED, conn
    return conn


def send_and_flush(conn: TcpConnection, data: bytes, at: float) -> list[TcpSegment]:
    """Queue ``data`` and let out what the engine sends at once."""
    assert conn.send(data) == len(data)
    return output(conn, at)
