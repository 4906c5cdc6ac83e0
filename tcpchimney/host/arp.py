"""The neighbor (ARP) cache: RFC 826 resolution with the reachability states of Linux's neighbor table.

States: INCOMPLETE (a request is out; packets wait in a bounded per-neighbor queue), REACHABLE (confirmed by
a reply within ``reachable_time``), STALE (the MAC is still used, but the next use starts a probe), PROBE
(unicast requests to the known MAC while it keeps being used). A failed resolution (``max_probes`` requests
``retrans_time`` apart, about 3 s as Linux's) drops the queue, counts each packet and tells the owner, which
fails the handshakes waiting on it (EHOSTUNREACH); a failed probe forgets the entry.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from tcpchimney.host.counters import bump
from tcpchimney.host.events import HostEvent, NeighborChanged, NeighborUnreachable
from tcpchimney.host.interface import BROADCAST_MAC, ZERO_MAC, InterfaceConfig
from tcpchimney.wire import arp as arp_wire
from tcpchimney.wire import ethernet
from tcpchimney.wire.frame import Frame


class NeighborState(Enum):
    INCOMPLETE = "INCOMPLETE"
    REACHABLE = "REACHABLE"
    STALE = "STALE"
    PROBE = "PROBE"


@dataclass(slots=True)
class Neighbor:
    ip: bytes
    mac: bytes | None
    state: NeighborState
    deadline: float | None  # INCOMPLETE/PROBE: next retransmission; REACHABLE: becomes STALE; STALE: forget
    probes: int = 0
    queue: deque[Frame] = field(default_factory=deque)  # frames whose Ethernet destination is still zero
    confirmed: float = 0.0  # last time a reply confirmed the mapping (the Chimney HostReachabilityDelta)


@dataclass(frozen=True, slots=True)
class ArpParams:
    """Timers and bounds; defaults follow Linux (net.ipv4.neigh.default.*)."""

    retrans_time: float = 1.0  # retrans_time_ms
    max_probes: int = 3  # mcast_probes for INCOMPLETE, ucast_probes for PROBE
    reachable_time: float = 30.0  # base_reachable_time
    stale_time: float = 60.0  # gc_stale_time: an unused STALE entry is forgotten after this
    queue_len: int = 16  # packets queued per unresolved neighbor (Linux unres_qlen_bytes ~ a few frames)
    max_entries: int = 1024  # gc_thresh3


class ArpCache:
    """Resolves next-hop IPv4 addresses; owns the ARP half of ``counters`` and sends through ``tx``."""

    def __init__(
        self,
        iface: InterfaceConfig,
        counters: dict[str, int],
        tx: list[Frame],
        events: deque[HostEvent],
        params: ArpParams | None = None,
        on_failed: Callable[[bytes], None] | None = None,
    ) -> None:
        self._iface = iface
        # Told the address whose resolution failed, after its queue was dropped: the owner fails what waits
        # on it (a connection's handshake) as Linux's neigh error_report does.
        self._on_failed = on_failed
        self._counters = counters
        self._tx = tx
        self._events = events
        self.params = params or ArpParams()
        self._entries: dict[bytes, Neighbor] = {}
        # Bumped whenever a mapping appears, changes, goes STALE or disappears: senders that cached a MAC
        # (header templates) compare it instead of looking the neighbor up for every frame.
        self.generation = 0
        self._deadline_cache: float | None = None
        self._deadline_dirty = False

    # --- lookups from the output path ---------------------------------------------------------------

    def entry(self, ip: bytes) -> Neighbor | None:
        return self._entries.get(ip)

    def entries(self) -> list[Neighbor]:
        return list(self._entries.values())

    def lookup(self, ip: bytes, now: float) -> bytes | None:
        """The MAC to use for ``ip`` now, or None when the caller must ``enqueue`` and wait."""
        n = self._entries.get(ip)
        if n is None or n.mac is None:
            return None
        if n.state is NeighborState.STALE:
            # Linux neigh_event_send: using a STALE entry starts verification; the packet still goes out.
            n.state = NeighborState.PROBE
            n.probes = 0
            self._probe(n, now)
        return n.mac

    def resolve(self, ip: bytes, now: float) -> Neighbor | None:
        """The entry of ``ip``; a new one starts resolution (INCOMPLETE, a broadcast request). None when the
        table is full."""
        n = self._entries.get(ip)
        if n is None:
            if len(self._entries) >= self.params.max_entries and not self._evict():
                bump(self._counters, "drop_table_full")
                return None
            n = Neighbor(ip, None, NeighborState.INCOMPLETE, None)
            self._entries[ip] = n
            self._probe(n, now)
        return n

    def enqueue(self, ip: bytes, frame: Frame, now: float) -> None:
        """Hold ``frame`` (Ethernet destination zeroed) until ``ip`` resolves; start resolution if needed."""
        n = self.resolve(ip, now)
        if n is None:
            return
        if len(n.queue) >= self.params.queue_len:
            # Linux drops the oldest queued packet (neigh_resolve_output / __neigh_event_send).
            n.queue.popleft()
            bump(self._counters, "drop_queue_full")
        n.queue.append(frame)

    # --- received ARP -------------------------------------------------------------------------------

    def handle_arp(self, pkt: arp_wire.ArpPacket, now: float) -> None:
        """RFC 826 'Packet Reception', with Linux's rules for what may create an entry."""
        ours = self._iface.ip
        if pkt.spa == ours:
            bump(self._counters, "drop_address_conflict")  # someone else claims our address
            return
        if pkt.sha[0] & 1 or pkt.spa == b"\x00\x00\x00\x00":
            # Probes (RFC 5227, sender IP 0) and multicast sender MACs never update the table.
            if pkt.op == arp_wire.ARP_REQUEST and pkt.tpa == ours and pkt.sha[0] & 1 == 0:
                self._reply(pkt)
            else:
                bump(self._counters, "drop_not_for_us")
            return
        n = self._entries.get(pkt.spa)
        if n is not None:
            # RFC 826: "If the pair <protocol type, sender protocol address> is already in my translation
            # table, update the sender hardware address field" (this covers gratuitous ARP).
            self._update(n, pkt.sha, now, confirmed=pkt.op == arp_wire.ARP_REPLY or pkt.tpa == ours)
        elif pkt.tpa == ours:
            # RFC 826: "If Merge_flag is false, add the triplet" -- only when we are the target.
            n = Neighbor(pkt.spa, None, NeighborState.INCOMPLETE, None)
            self._entries[pkt.spa] = n
            self._update(n, pkt.sha, now, confirmed=True)
        if pkt.tpa == ours and pkt.op == arp_wire.ARP_REQUEST:
            self._reply(pkt)
        elif n is None:
            bump(self._counters, "drop_not_for_us")

    def _update(self, n: Neighbor, mac: bytes, now: float, confirmed: bool) -> None:
        old = n.mac
        n.mac = mac
        if old != mac:
            self.generation += 1
        if old is not None and old != mac:
            bump(self._counters, "neighbor_changed")
            self._events.append(NeighborChanged(n.ip, old, mac))
        if confirmed or n.state is NeighborState.INCOMPLETE:
            n.state = NeighborState.REACHABLE
            n.deadline = now + self.params.reachable_time
            n.confirmed = now
            n.probes = 0
        elif old != mac:
            # An unsolicited change (gratuitous ARP) is used at once but not trusted: STALE, so the next use
            # verifies it (as Linux's neigh_update sets NUD_STALE).
            n.state = NeighborState.STALE
            n.deadline = now + self.params.stale_time
        self._deadline_dirty = True
        self._flush(n)

    def _flush(self, n: Neighbor) -> None:
        """Release frames that waited for this neighbor: write the destination MAC and send them."""
        if not n.queue or n.mac is None:
            return
        mac = n.mac
        while n.queue:
            frame = n.queue.popleft()
            frame.headers = mac + bytes(frame.headers[6:])
            self._tx.append(frame)

    # --- timers -------------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        if self._deadline_dirty:
            deadlines = [n.deadline for n in self._entries.values() if n.deadline is not None]
            self._deadline_cache = min(deadlines) if deadlines else None
            self._deadline_dirty = False
        return self._deadline_cache

    def handle_timer(self, now: float) -> None:
        due = self.next_deadline()
        if due is None or now < due:
            return
        for n in [n for n in self._entries.values() if n.deadline is not None and n.deadline <= now]:
            self._expire(n, now)
        self._deadline_dirty = True

    def _expire(self, n: Neighbor, now: float) -> None:
        state = n.state
        if state is NeighborState.REACHABLE:
            n.state = NeighborState.STALE
            n.deadline = now + self.params.stale_time
            self.generation += 1
        elif state is NeighborState.STALE:
            del self._entries[n.ip]
            self.generation += 1
        elif n.probes < self.params.max_probes:
            self._probe(n, now)
        else:
            self._fail(n)

    def _fail(self, n: Neighbor) -> None:
        del self._entries[n.ip]
        self.generation += 1
        dropped = len(n.queue)
        n.queue.clear()
        if n.state is NeighborState.INCOMPLETE:
            bump(self._counters, "resolution_failed")
            if dropped:
                bump(self._counters, "drop_unresolved", dropped)
            self._events.append(NeighborUnreachable(n.ip, dropped))
            if self._on_failed is not None:
                self._on_failed(n.ip)
        else:
            bump(self._counters, "probe_failed")

    def _evict(self) -> bool:
        """Make room by forgetting a STALE entry (Linux forced GC); False when none can go."""
        for ip, n in self._entries.items():
            if n.state is NeighborState.STALE:
                del self._entries[ip]
                self.generation += 1
                self._deadline_dirty = True
                return True
        return False

    # --- sending ------------------------------------------------------------------------------------

    def _probe(self, n: Neighbor, now: float) -> None:
        """A request: broadcast while INCOMPLETE, unicast to the known MAC in PROBE (Linux ucast_probes)."""
        dst_mac = n.mac if n.state is NeighborState.PROBE and n.mac is not None else BROADCAST_MAC
        pkt = arp_wire.ArpPacket(arp_wire.ARP_REQUEST, self._iface.mac, self._iface.ip, ZERO_MAC, n.ip)
        self._send(dst_mac, pkt)
        bump(self._counters, "tx_request")
        n.probes += 1
        n.deadline = now + self.params.retrans_time
        self._deadline_dirty = True

    def _reply(self, req: arp_wire.ArpPacket) -> None:
        pkt = arp_wire.ArpPacket(arp_wire.ARP_REPLY, self._iface.mac, self._iface.ip, req.sha, req.spa)
        self._send(req.sha, pkt)
        bump(self._counters, "tx_reply")

    def _send(self, dst_mac: bytes, pkt: arp_wire.ArpPacket) -> None:
        eth = ethernet.emit_ethernet(dst_mac, self._iface.mac, ethernet.ETHERTYPE_ARP)
        self._tx.append(Frame(eth + arp_wire.emit_arp(pkt)))
        self._counters["tx"] += 1

    def announce(self) -> None:
        """Send a gratuitous ARP request for our own address (e.g. after the MAC or address changed)."""
        pkt = arp_wire.ArpPacket(
            arp_wire.ARP_REQUEST, self._iface.mac, self._iface.ip, ZERO_MAC, self._iface.ip
        )
        self._send(BROADCAST_MAC, pkt)
