"""What the filter sees of one IPv4 packet: the fields rules match and connection tracking follows.

A ``FilterPacket`` is built once per packet at a hook from the headers the stack already parsed (or parses for
the filter), so that rules and conntrack never touch raw bytes. Addresses are 4-byte ``bytes`` like everywhere
in the stack. Fields that do not apply to a packet (ports of an ICMP message, TCP fields of a non-first
fragment) are ``None``; a rule that needs them does not match.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Hook(enum.Enum):
    """Where a packet meets the filter: nftables' hook names. ``INGRESS`` is the NIC's receive path for
    offloaded connections (enforced by the target on what the host decided)."""

    INGRESS = "ingress"
    INPUT = "input"
    OUTPUT = "output"


class CtState(enum.Enum):
    """Connection-tracking state of one packet (nftables ``ct state``)."""

    NEW = "new"
    ESTABLISHED = "established"
    RELATED = "related"
    INVALID = "invalid"
    UNTRACKED = "untracked"


@dataclass(slots=True)
class FilterPacket:
    hook: Hook
    iface: str
    src: bytes  # 4 bytes
    dst: bytes  # 4 bytes
    proto: int  # IP protocol number
    length: int  # IP total length (header + payload) in bytes
    fragment: bool = False  # MF set or a non-zero fragment offset
    first_fragment: bool = True  # fragment offset 0: the transport header is present
    checksum_ok: bool = True  # IP and transport checksums verified (or offloaded and reported good)
    sport: int | None = None  # TCP/UDP
    dport: int | None = None
    tcp_flags: int | None = None  # the 8 flag bits (CWR ECE URG ACK PSH RST SYN FIN)
    seq: int | None = None
    ack: int | None = None
    window: int | None = None  # raw window field (unscaled)
    wscale: int | None = None  # window scale option of a SYN, if any
    mss: int | None = None  # MSS option value, if any
    payload_len: int = 0  # transport payload bytes
    icmp_type: int | None = None
    icmp_code: int | None = None
    icmp_quoted: FilterPacket | None = None  # the header an ICMP error quotes, parsed like this one
    ct_state: CtState | None = None  # filled in by connection tracking before the rules run
