"""Byte-exact frames used by the wire tests (Linux-shaped; checksums as on the wire)."""

from __future__ import annotations

# 198.18.0.1:45678 -> 198.18.0.2:80 SYN as Linux sends it: MSS 1460, SACK-permitted + timestamps, NOP,
# window scale 10 (20 option bytes), DF, TTL 64, window 64240.
LINUX_SYN = bytes.fromhex(
    "0200000000020200000000010800"  # Ethernet
    "4500003c1c4640004006924ec6120001c6120002"  # IPv4
    "b26e00503a1b2c3d00000000a002faf0e5760000"  # TCP
    "020405b40402080aadc31493000000000103030a"  # options
)

# ICMP fragmentation needed (type 3 code 4), next-hop MTU 1400, quoting a 198.18.0.1 -> 198.19.5.9 TCP
# datagram's header plus its first 8 bytes (ports and sequence number).
ICMP_FRAG_NEEDED = bytes.fromhex(
    "020000000001020000000002080045000038000040004001ae9dc6120002c6120001030444c400000578"
    "45000028000740004006a999c6120001c6130509b26e005000000001"
)

# Who has 198.18.0.2? Tell 198.18.0.1 (broadcast, no Ethernet padding).
ARP_REQUEST = bytes.fromhex(
    "ffffffffffff02000000000108060001080006040001020000000001c6120001000000000000c6120002"
)
