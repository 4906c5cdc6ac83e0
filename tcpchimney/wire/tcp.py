"""TCP header and options (RFC 9293 section 3.1, RFC 7323, RFC 2018).

``TcpSegment`` is the validated value form exchanged between the host stack and the TCP engine. The
engine never sees IP; the host stack adds addresses. ``payload`` is a view into the received frame (no copy).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tcpchimney.wire.seq import SeqNum

# Control bits (RFC 9293 3.1)
FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80

# Option kinds
OPT_EOL = 0
OPT_NOP = 1
OPT_MSS = 2
OPT_WSCALE = 3
OPT_SACK_PERM = 4
OPT_SACK = 5
OPT_TIMESTAMP = 8


@dataclass(slots=True)
class TcpOptions:
    mss: int | None = None
    wscale: int | None = None
    sack_permitted: bool = False
    sack_blocks: tuple[tuple[SeqNum, SeqNum], ...] = ()  # (left edge, right edge) pairs
    ts_val: int | None = None  # set together with ts_ecr when the timestamp option is present
    ts_ecr: int = 0
    unknown: tuple[tuple[int, bytes], ...] = ()  # (kind, data) of options we skip but keep for re-emit


@dataclass(slots=True)
class TcpSegment:
    src_port: int
    dst_port: int
    seq: SeqNum
    ack: SeqNum
    flags: int
    window: int  # raw 16-bit field, NOT scaled
    payload: bytes | bytearray | memoryview = b""
    options: TcpOptions = field(default_factory=TcpOptions)
    urgent: int = 0

    @property
    def seg_len(self) -> int:
        """SEG.LEN: payload length plus one for each of SYN and FIN (RFC 9293 3.3.1)."""
        return len(self.payload) + (1 if self.flags & SYN else 0) + (1 if self.flags & FIN else 0)
