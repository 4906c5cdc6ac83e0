"""Bulk transfers between two host stacks over the simulated link: 4 MB each way at the same time, byte-exact,
under every impairment the link has, over many seeds (each profile gets its own seeds, 22 runs in all)."""

from __future__ import annotations

import pytest
from scenario_kit import MB, Net, make_net, two_way_bulk

from tcpchimney.link.sim import Impairments
from tcpchimney.wire.frame import DeviceFeatures

SIZE = 4 * MB
# Virtual seconds a 4 MB exchange may take: generous, since 10 % loss with exponential backoff is slow; the
# wall-clock cost of a run does not depend on it.
TIMEOUT = 900.0

LINK_BANDWIDTH = 12_500_000  # 100 Mbit/s in bytes per second

PROFILES: dict[str, Impairments] = {
    "clean": Impairments(),
    "loss_1pct": Impairments(loss=0.01),
    "loss_5pct": Impairments(loss=0.05),
    "loss_10pct": Impairments(loss=0.10),
    "reorder": Impairments(reorder=0.05, reorder_delay=0.0005),
    "duplicate": Impairments(duplicate=0.05),
    "corrupt": Impairments(corrupt=0.02),
    "mix": Impairments(loss=0.03, duplicate=0.02, reorder=0.03, corrupt=0.01, delay=0.0005, jitter=0.0005),
    "wan_delay_jitter": Impairments(delay=0.001, jitter=0.0005),
    "wan_bandwidth": Impairments(delay=0.001, jitter=0.0002, bandwidth=LINK_BANDWIDTH),
}

# (profile, seed): every seed is distinct, so 22 different runs (the link, ISNs and data all follow the seed).
RUNS = [
    ("clean", 1),
    ("clean", 2),
    ("loss_1pct", 3),
    ("loss_1pct", 4),
    ("loss_5pct", 5),
    ("loss_5pct", 6),
    ("loss_5pct", 7),
    ("loss_10pct", 8),
    ("loss_10pct", 9),
    ("loss_10pct", 10),
    ("reorder", 11),
    ("reorder", 12),
    ("duplicate", 13),
    ("duplicate", 14),
    ("corrupt", 15),
    ("corrupt", 16),
    ("corrupt", 17),
    ("mix", 18),
    ("mix", 19),
    ("mix", 20),
    ("wan_delay_jitter", 21),
    ("wan_bandwidth", 22),
]


def _exchange(net: Net, seed: int) -> None:
    client, server = net.connect()
    two_way_bulk(net, client, server, SIZE, seed, TIMEOUT)
    for stack in (net.a, net.b):
        assert stack.counters["stack"]["internal_error"] == 0, stack.internal_errors


def _checksum_drops(net: Net) -> int:
    return sum(
        s.counters[layer].get("drop_bad_checksum", 0) for s in (net.a, net.b) for layer in ("ipv4", "tcp")
    )


def _header_drops(net: Net) -> int:
    """Frames the receivers refused before TCP saw them (checksum, lengths, truncation)."""
    return sum(
        v
        for s in (net.a, net.b)
        for layer in ("ethernet", "ipv4", "tcp")
        for k, v in s.counters[layer].items()
        if k.startswith("drop")
    )


@pytest.mark.parametrize(("profile", "seed"), RUNS, ids=[f"{p}-seed{s}" for p, s in RUNS])
def test_four_megabytes_each_way_arrive_byte_exact(profile: str, seed: int) -> None:
    imp = PROFILES[profile]
    net = make_net(seed, imp, imp)
    _exchange(net, seed)
    link = net.link.counters
    if imp.loss:
        assert link["a"]["dropped_loss"] > 0 and link["b"]["dropped_loss"] > 0
    if imp.duplicate:
        assert link["a"]["duplicated"] > 0 and link["b"]["duplicated"] > 0
    if imp.reorder:
        assert link["a"]["reordered"] > 0 and link["b"]["reordered"] > 0
    if imp.corrupt:
        corrupted = link["a"]["corrupted"] + link["b"]["corrupted"]
        duplicated = link["a"]["duplicated"] + link["b"]["duplicated"]
        # Every flipped bit past the Ethernet header breaks the IPv4 or TCP checksum (or a length field);
        # a flip in the padding of a short frame is harmless, and a corrupted frame may also be duplicated,
        # so the receivers' drops are at most the corruptions plus the duplicates.
        assert _checksum_drops(net) > 0
        assert 0 < _header_drops(net) <= corrupted + duplicated


def test_corrupt_frames_are_dropped_by_checksum_and_never_delivered() -> None:
    """Only corruption: every corrupted frame is refused by a checksum (or a length check) and none of them
    reaches the application, which gets the exact bytes."""
    imp = Impairments(corrupt=0.05)
    net = make_net(40, imp, imp)
    _exchange(net, 40)
    link = net.link.counters
    corrupted = link["a"]["corrupted"] + link["b"]["corrupted"]
    assert corrupted > 100
    tcp_sums = sum(s.counters["tcp"].get("drop_bad_checksum", 0) for s in (net.a, net.b))
    ip_sums = sum(s.counters["ipv4"].get("drop_bad_checksum", 0) for s in (net.a, net.b))
    assert tcp_sums > 0 and ip_sums > 0
    # IPv4 header is 20 of ~1500 bytes: most flips land in TCP header or payload.
    assert tcp_sums > ip_sums
    assert _header_drops(net) <= corrupted


def test_no_frame_exceeds_the_mtu_when_sack_blocks_ride_on_data() -> None:
    """Both sides send data while both receive out of order (loss): data segments then carry SACK blocks
    next to the timestamps, and the payload must shrink so that the IPv4 datagram stays within the MTU
    (RFC 9293 3.7.1, RFC 6691: the MSS is the payload *without* options). A real NIC refuses larger frames;
    the link counts them ``dropped_invalid``."""
    imp = Impairments(loss=0.05)
    net = make_net(5, imp, imp)
    _exchange(net, 5)
    link = net.link.counters
    assert link["a"]["dropped_invalid"] == 0 and link["b"]["dropped_invalid"] == 0, link


TSO_GRO = DeviceFeatures(tx_csum=True, rx_csum=True, tso=True, gro=True)


def test_bulk_with_tso_and_gro_devices_on_both_sides() -> None:
    """virtio-net devices back to back (offloads=True): super-segments and partial checksums cross the link
    as a TAP passes them; the receiver takes GRO-sized frames; some loss makes recovery use them too."""
    imp = Impairments(loss=0.01, delay=0.0002)
    net = make_net(30, imp, imp, offloads=True, features=TSO_GRO)
    _exchange(net, 30)
    link = net.link.counters
    # Far fewer link units than MTU-sized segments: the data went as super-segments.
    assert link["a"]["tx_frames"] < SIZE // 1448
    assert link["a"]["dropped_invalid"] == 0 and link["b"]["dropped_invalid"] == 0
    for s in (net.a, net.b):
        assert s.counters["tcp"].get("drop_bad_checksum", 0) == 0


def test_bulk_with_tso_stacks_on_a_plain_wire_cut_by_the_link() -> None:
    """The stacks emit super-segments (TSO devices), the link (offloads=False) cuts them into MTU-sized frames
    and completes the checksums, as a NIC does; the receivers verify every checksum in software."""
    imp = Impairments(loss=0.01, delay=0.0002)
    net = make_net(31, imp, imp, offloads=False, features=DeviceFeatures(tx_csum=True, tso=True))
    _exchange(net, 31)
    link = net.link.counters
    emitted = net.a.counters["tcp"]["tx"]
    assert link["a"]["tx_frames"] > SIZE // 1448 > emitted  # cut by the link: more wire frames than segments
    assert link["a"]["dropped_invalid"] == 0 and link["b"]["dropped_invalid"] == 0
    for s in (net.a, net.b):
        assert s.counters["tcp"].get("drop_bad_checksum", 0) == 0
