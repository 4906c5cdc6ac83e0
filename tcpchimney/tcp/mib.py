"""What an engine counts for the stack's SNMP-style counters (``chimney stats``: Tcp RetransSegs, TcpExt
TCPTimeouts): the engine holds a reference to one ``EngineMib`` and bumps an integer, nothing more.

Each engine starts with its own; a stack gives every engine it runs the same one (``conn.mib = shared``), so
the totals outlive connections and survive an upload's rebuilt engine.
"""

from __future__ import annotations


class EngineMib:
    __slots__ = ("retrans_segs", "timeouts")

    def __init__(self) -> None:
        self.retrans_segs = 0  # segments sent again: timer, fast retransmit, SACK recovery, SYN retries
        self.timeouts = 0  # retransmission timer expiries (Linux TCPTimeouts)
