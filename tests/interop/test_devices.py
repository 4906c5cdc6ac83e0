"""The raw devices against the Linux kernel in a namespace: ARP, ICMP, TCP offload metadata, AF_PACKET,
and the clean-up of everything a topology creates. Frames are built and read with the wire codecs only."""

from __future__ import annotations

import ipaddress
import select
import socket
import time
from collections.abc import Callable

import pytest

from tcpchimney.link.netns import (
    TapTopology,
    VethTopology,
    create_netns,
    link_index,
    netns_exists,
    remove_netns,
    run,
    run_in_netns,
    unique_name,
)
from tcpchimney.link.packet import PacketDevice
from tcpchimney.link.tap import TapDevice
from tcpchimney.wire.arp import emit_arp_reply, parse_arp
from tcpchimney.wire.checksum import pseudo_base_sum
from tcpchimney.wire.ethernet import emit_ethernet, mac_from_str, parse_ethernet
from tcpchimney.wire.frame import Frame
from tcpchimney.wire.icmp import emit_echo_request, parse_icmp
from tcpchimney.wire.ipv4 import addr_from_str, emit_ipv4, parse_ipv4
from tcpchimney.wire.seq import SeqNum
from tcpchimney.wire.tcp import ACK, SYN, TcpOptions, TcpSegment, emit_tcp_header, parse_tcp, tcp_checksum_ok

pytestmark = pytest.mark.usefixtures("require_net")

Device = TapDevice | PacketDevice
Match = Callable[[Frame], bool]
ETH_ARP, ETH_IPV4 = 0x0806, 0x0800


def ethertype(frame: Frame) -> int:
    return parse_ethernet(frame.headers).ethertype


def ip_proto(frame: Frame) -> int | None:
    if ethertype(frame) != ETH_IPV4:
        return None
    return parse_ipv4(frame.headers, 14, verify_checksum=False).proto


def wait_for(dev: Device, match: Match, my_ip: str, my_mac: str, timeout: float = 5.0) -> Frame:
    """Read frames until ``match``; ARP requests for ``my_ip`` are answered on the way (if my_ip)."""
    end = time.monotonic() + timeout
    while (left := end - time.monotonic()) > 0:
        select.select([dev], [], [], left)
        while (frame := dev.read()) is not None:
            if match(frame):
                return frame
            if my_ip and ethertype(frame) == ETH_ARP:
                answer_arp(dev, frame, my_ip, my_mac)
    raise AssertionError(f"no matching frame within {timeout}s; device counters {dev.counters}")


def answer_arp(dev: Device, request: Frame, my_ip: str, my_mac: str) -> bool:
    arp = parse_arp(request.headers, 14)
    if arp.op != 1 or arp.tpa != addr_from_str(my_ip):
        return False
    mac = mac_from_str(my_mac)
    reply = emit_ethernet(arp.sha, mac, ETH_ARP) + emit_arp_reply(mac, arp.tpa, arp.sha, arp.spa)
    assert dev.write(Frame(reply))
    return True


def is_arp_request_for(ip: str) -> Match:
    want = addr_from_str(ip)
    return lambda f: (
        ethertype(f) == ETH_ARP and parse_arp(f.headers, 14).op == 1 and parse_arp(f.headers, 14).tpa == want
    )


def kernel_socket(netns: str, kind: int = socket.SOCK_DGRAM, proto: int = 0) -> socket.socket:
    sock: socket.socket = run_in_netns(netns, socket.socket, socket.AF_INET, kind, proto)
    sock.setblocking(False)
    return sock


# ============================================================================================ TAP


def test_arp_request_arrives_and_our_reply_fills_the_kernel_neighbour_table(
    tap_topology: TapTopology,
) -> None:
    topo, dev = tap_topology, tap_topology.device
    with kernel_socket(topo.netns) as s:
        s.sendto(b"hello", (topo.stack_ip, 9))  # makes the kernel resolve the stack's address
        request = wait_for(dev, is_arp_request_for(topo.stack_ip), "", "")
    arp = parse_arp(request.headers, 14)
    assert arp.spa == addr_from_str(topo.peer_ip) and arp.sha == mac_from_str(topo.peer_mac)
    assert answer_arp(dev, request, topo.stack_ip, topo.stack_mac)
    deadline = time.monotonic() + 5
    while topo.stack_mac not in (out := run(topo.netns, "ip", "neigh", "show", topo.stack_ip).stdout):
        assert time.monotonic() < deadline, out
        time.sleep(0.05)
    assert "198.18.0.2" in out and ("REACHABLE" in out or "STALE" in out or "DELAY" in out)


def test_ping_from_the_namespace_arrives_as_an_echo_request(tap_topology: TapTopology) -> None:
    topo, dev = tap_topology, tap_topology.device
    with kernel_socket(topo.netns, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        s.sendto(emit_echo_request(0x4242, 7, b"ping-data"), (topo.stack_ip, 0))
        frame = wait_for(dev, lambda f: ip_proto(f) == 1, topo.stack_ip, topo.stack_mac)
    eth = parse_ethernet(frame.headers)
    ip = parse_ipv4(frame.headers, 14)  # the IP header checksum is never offloaded: it verifies
    icmp = parse_icmp(frame.headers[14 + ip.header_len : ip.total_len + 14])
    assert eth.dst == mac_from_str(topo.stack_mac)
    assert (ip.src, ip.dst) == (addr_from_str(topo.peer_ip), addr_from_str(topo.stack_ip))
    assert (icmp.type, icmp.ident, icmp.seq, bytes(icmp.data)) == (8, 0x4242, 7, b"ping-data")


def syn_ack_for(topo: TapTopology, syn_frame: Frame, iss: int) -> Frame:
    """Our SYN-ACK (MSS 1460, no other options), its TCP checksum left to the device (NEEDS_CSUM)."""
    eth = parse_ethernet(syn_frame.headers)
    ip = parse_ipv4(syn_frame.headers, 14)
    syn = parse_tcp(syn_frame.headers[14 + ip.header_len :])
    seg = TcpSegment(
        syn.dst_port, syn.src_port, SeqNum(iss), syn.seq + 1, SYN | ACK, 65535, b"", TcpOptions(mss=1460)
    )
    tcp = emit_tcp_header(seg, pseudo_base_sum(ip.dst, ip.src, 6), csum_partial=True)
    headers = emit_ethernet(eth.src, eth.dst, ETH_IPV4) + emit_ipv4(ip.dst, ip.src, 6, len(tcp), 1) + tcp
    return Frame(headers, csum_partial=True)


def is_tcp(f: Frame) -> bool:
    return ip_proto(f) == 6


def tcp_payload_len(f: Frame) -> int:
    ip = parse_ipv4(f.headers, 14, verify_checksum=False)
    return ip.total_len - ip.header_len - (f.headers[14 + ip.header_len + 12] >> 4) * 4


def test_linux_tcp_data_arrives_as_checksum_offloaded_super_segments(tap_topology: TapTopology) -> None:
    topo, dev = tap_topology, tap_topology.device
    assert dev.features.tso and dev.features.rx_csum
    with kernel_socket(topo.netns, socket.SOCK_STREAM) as s:
        with pytest.raises(BlockingIOError):
            s.connect((topo.stack_ip, 5001))
        syn = wait_for(dev, is_tcp, topo.stack_ip, topo.stack_mac)
        assert syn.csum_partial and not syn.gso_size  # the kernel leaves the TCP checksum to the "NIC"
        assert dev.write(syn_ack_for(topo, syn, iss=1_000_000))  # ours is completed by the kernel's tun
        select.select([], [s], [], 5)
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0  # the kernel accepted our checksum
        s.send(b"z" * 200_000)
        data = wait_for(dev, lambda f: is_tcp(f) and tcp_payload_len(f) > 0, topo.stack_ip, topo.stack_mac)
    # 10 segments of initial window in one frame: a super-segment cut at our MSS, checksum left to us
    assert data.csum_partial and data.gso_size == 1460
    assert tcp_payload_len(data) > data.gso_size
    assert len(data) == 14 + parse_ipv4(data.headers, 14).total_len


def test_plain_tap_delivers_complete_checksums(require_net: None) -> None:
    with TapTopology(vnet_hdr=False) as topo:
        dev = topo.device
        assert not any((dev.features.tx_csum, dev.features.rx_csum, dev.features.tso, dev.features.gro))
        with kernel_socket(topo.netns, socket.SOCK_STREAM) as s:
            with pytest.raises(BlockingIOError):
                s.connect((topo.stack_ip, 5001))
            syn = wait_for(dev, is_tcp, topo.stack_ip, topo.stack_mac)
        ip = parse_ipv4(syn.headers, 14)
        assert not syn.csum_partial and not syn.csum_valid
        assert tcp_checksum_ok(syn.headers[14 + ip.header_len :], pseudo_base_sum(ip.src, ip.dst, 6))


def test_device_found_by_name_while_its_topology_lives(tap_topology: TapTopology) -> None:
    # The path the command wiring takes: TapDevice(name) finds the TAP in the topology's namespace.
    with TapDevice(tap_topology.tap_name, vnet_hdr=True) as dev:
        assert dev.netns == tap_topology.netns and dev.mtu == 1500
        with kernel_socket(tap_topology.netns) as s:
            s.sendto(b"x", (tap_topology.stack_ip, 9))
            wait_for(dev, is_arp_request_for(tap_topology.stack_ip), "", "")


# ============================================================================================ AF_PACKET


def test_packet_device_on_a_veth_end(veth_topology: VethTopology) -> None:
    topo = veth_topology
    my_ip, my_mac = "198.18.1.2", "02:00:00:00:00:02"
    with PacketDevice(topo.if_b, netns=topo.ns_b) as dev, kernel_socket(topo.ns_a) as s:
        s.sendto(b"over veth", (my_ip, 9))
        udp = wait_for(dev, lambda f: ip_proto(f) == 17, my_ip, my_mac)
        assert bytes(udp.headers[-9:]) == b"over veth"
        assert parse_ethernet(udp.headers).dst == mac_from_str(my_mac)  # our ARP reply was taken
        assert dev.counters["tx_frames"] == 1 and not dev.drops


# ============================================================================================ clean-up


def test_topology_removes_everything_by_name(require_net: None) -> None:
    with TapTopology() as topo:
        assert topo.device.fileno() >= 0
        assert netns_exists(topo.netns) and link_index(topo.netns, topo.tap_name) is not None
    assert not netns_exists(topo.netns)
    assert link_index(None, topo.tap_name) is None


def test_topology_cleans_up_after_an_exception_and_keeps_a_foreign_namespace(require_net: None) -> None:
    name = unique_name("ns")
    create_netns(name)
    try:
        topo = TapTopology(netns=name, peer="198.18.2.1/24", stack="198.18.2.2/24")
        with pytest.raises(RuntimeError, match="boom"), topo:
            assert not topo.created_netns
            raise RuntimeError("boom")
        assert netns_exists(name)  # not ours to remove
        assert link_index(name, topo.tap_name) is None  # but the TAP we made is gone
    finally:
        remove_netns(name)


def test_veth_topology_removes_everything_by_name(require_net: None) -> None:
    with VethTopology() as topo:
        assert link_index(topo.ns_a, topo.if_a) is not None and link_index(topo.ns_b, topo.if_b) is not None
    assert not netns_exists(topo.ns_a) and not netns_exists(topo.ns_b)
    assert link_index(None, topo.if_a) is None and link_index(None, topo.if_b) is None


def test_addresses_outside_the_benchmark_range_are_refused() -> None:
    with pytest.raises(ValueError, match=r"198\.18\.0\.0/15"):
        TapTopology(peer="10.0.0.1/24", stack="10.0.0.2/24")
    assert ipaddress.IPv4Address("198.19.255.1") in ipaddress.IPv4Network("198.18.0.0/15")
    TapTopology(peer="198.19.255.1/24", stack="198.19.255.2/24")  # nothing is built before __enter__
