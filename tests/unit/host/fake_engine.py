"""A deliberately small stand-in for ``TcpConnection``: enough of the handshake, data and events to unit-test
the host stack's demultiplexing, queues and cookies without depending on the real engine's details."""

from __future__ import annotations

from collections import deque
from typing import Any

from tcpchimney.tcp.config import TcpConfig
from tcpchimney.tcp.events import Closed, Connected, DataReceived, StateChanged
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire.seq import SeqNum
from tcpchimney.wire.tcp import ACK, RST, SYN, TcpOptions, TcpSegment


class FakeConnection:
    created: list[FakeConnection] = []

    def __init__(
        self, config: TcpConfig, local_port: int, remote_port: int, iss: SeqNum, ts_offset: int
    ) -> None:
        self.config = config
        self.local_port = local_port
        self.remote_port = remote_port
        self.iss = iss
        self.snd_nxt = iss
        self.snd_una = iss
        self.rcv_nxt = SeqNum(0)
        self.ts_offset = ts_offset
        self.ts_recent: int | None = None
        self.state = TcpState.CLOSED
        self.peer_syn: TcpSegment | None = None
        self.received: list[TcpSegment] = []
        self._out: list[TcpSegment] = []
        self._events: deque[Any] = deque()
        self._data = bytearray()
        self.deadline: float | None = None
        self.timer_calls: list[float] = []
        self.path_mss: int | None = None
        FakeConnection.created.append(self)

    # --- constructors ----------------------------------------------------------------------------
    @classmethod
    def connect(
        cls, config: TcpConfig, local_port: int, remote_port: int, iss: SeqNum, now: float, ts_offset: int
    ) -> FakeConnection:
        c = cls(config, local_port, remote_port, iss, ts_offset)
        c._set(TcpState.SYN_SENT)
        c._emit(SYN, c.iss, SeqNum(0), TcpOptions(mss=config.mss, ts_val=100 + ts_offset, ts_ecr=0))
        c.snd_nxt = iss + 1
        c.deadline = now + 1.0
        return c

    @classmethod
    def accept_syn(
        cls,
        config: TcpConfig,
        local_port: int,
        remote_port: int,
        syn: TcpSegment,
        iss: SeqNum,
        now: float,
        ts_offset: int,
        send_synack: bool = True,
    ) -> FakeConnection:
        c = cls(config, local_port, remote_port, iss, ts_offset)
        c.peer_syn = syn
        c.rcv_nxt = syn.seq + 1
        c.ts_recent = syn.options.ts_val
        c._set(TcpState.SYN_RECEIVED)
        c.snd_nxt = iss + 1
        if send_synack:
            opts = TcpOptions(mss=config.mss, sack_permitted=syn.options.sack_permitted)
            if syn.options.ts_val is not None:
                opts.ts_val, opts.ts_ecr = 5000 + ts_offset & 0xFFFFFFFF, syn.options.ts_val
            if syn.options.wscale is not None:
                opts.wscale = 7
            c._emit(SYN | ACK, iss, c.rcv_nxt, opts)
        c.deadline = now + 1.0
        return c

    # --- engine interface ------------------------------------------------------------------------
    def handle_segment(self, seg: TcpSegment, now: float) -> None:
        self.received.append(seg)
        if seg.flags & RST:
            self._set(TcpState.CLOSED)
            self._events.append(Closed())
            return
        if seg.options.ts_val is not None:
            self.ts_recent = seg.options.ts_val
        if (
            self.state is TcpState.SYN_SENT
            and seg.flags & (SYN | ACK) == SYN | ACK
            and seg.ack == self.snd_nxt
        ):
            self.rcv_nxt = seg.seq + 1
            self._established()
            self._emit(ACK, self.snd_nxt, self.rcv_nxt, TcpOptions())
        elif self.state is TcpState.SYN_RECEIVED and seg.flags & ACK and seg.ack == self.snd_nxt:
            self._established()
        if self.state is TcpState.ESTABLISHED and seg.payload and seg.seq == self.rcv_nxt:
            self._data += bytes(seg.payload)
            self.rcv_nxt = self.rcv_nxt + len(seg.payload)
            self._events.append(DataReceived(len(self._data)))
            self._emit(ACK, self.snd_nxt, self.rcv_nxt, TcpOptions())

    def _established(self) -> None:
        self._set(TcpState.ESTABLISHED)
        self._events.append(Connected())
        self.deadline = None

    def handle_timer(self, now: float) -> None:
        self.timer_calls.append(now)
        self.deadline = None

    def send(self, data: bytes | bytearray | memoryview) -> int:
        self._emit(ACK, self.snd_nxt, self.rcv_nxt, TcpOptions(), bytes(data))
        self.snd_nxt = self.snd_nxt + len(data)
        return len(data)

    def receive(self, n: int) -> bytes:
        out = bytes(self._data[:n])
        del self._data[:n]
        return out

    def shutdown(self) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None:
        self._emit(RST, self.snd_nxt, SeqNum(0), TcpOptions())
        self._set(TcpState.CLOSED)
        self._events.append(Closed())

    def segments_to_send(self, now: float) -> list[TcpSegment]:
        out, self._out = self._out, []
        return out

    def next_deadline(self) -> float | None:
        return self.deadline

    def next_event(self) -> Any:
        return self._events.popleft() if self._events else None

    def set_path_mss(self, mss: int) -> None:
        self.path_mss = mss

    # --- helpers ---------------------------------------------------------------------------------
    def _set(self, state: TcpState) -> None:
        if state is not self.state:
            self._events.append(StateChanged(self.state, state))
            self.state = state

    def _emit(self, flags: int, seq: SeqNum, ack: SeqNum, opts: TcpOptions, payload: bytes = b"") -> None:
        self._out.append(TcpSegment(self.local_port, self.remote_port, seq, ack, flags, 65535, payload, opts))
