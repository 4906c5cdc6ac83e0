"""The stack's counters under the Linux SNMP names (``/proc/net/snmp``, ``/proc/net/netstat``), as ``nstat``
shows them: flat ``TcpInSegs``-style keys, split by where the work happened (``host``: the host stack and
its engines; ``nic``: the target's TCP_OFFLOAD_STATS / IP_OFFLOAD_STATS of offloaded connections), plus the
offload lifecycle (``offload``). Every value is an integer that only grows, except the ``CurrEstab``
gauges; docs/manage.md has the table of every name and its source.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from tcpchimney.tcp.state import TcpState

Counters = Mapping[str, Mapping[str, int]]
GAUGES = frozenset({"TcpCurrEstab"})  # values that go down as well: nstat shows them absolute
_ESTABLISHED = (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT)  # RFC 1213 tcpCurrEstab
_IP_HEADER = ("drop_bad_checksum", "drop_bad_header_length", "drop_bad_total_length", "drop_truncated")
_IP_ADDRESS = ("drop_not_our_address", "drop_bad_source", "drop_no_route_to_source", "drop_ttl_zero")
_IP_NOT_DISCARDS = {*_IP_HEADER, *_IP_ADDRESS, "drop_unknown_protocol", "drop_no_route", "drop_too_big_df"}
_TCP_IN_ERRORS = ("drop_bad_checksum", "drop_truncated", "drop_bad_options", "drop_port_zero")


def _sum(counters: Mapping[str, int], keys: Iterable[str]) -> int:
    return sum(counters.get(k, 0) for k in keys)


def current_established(states: Iterable[TcpState]) -> int:
    return sum(1 for s in states if s in _ESTABLISHED)


def host_mib(c: Counters, established: int) -> dict[str, int]:
    """The host stack's counters (``HostStack.counters``) under the Linux names; ``established``: the
    connections on the host in ESTABLISHED or CLOSE-WAIT."""
    ip, tcp, icmp = c.get("ipv4", {}), c.get("tcp", {}), c.get("icmp", {})
    overflows = _sum(tcp, ("drop_accept_queue_full", "drop_syn_accept_queue_full"))
    ip_drops = sum(
        v
        for k, v in ip.items()
        if k.startswith("drop_") and k not in _IP_NOT_DISCARDS and not k.startswith("drop_frag_")
    )
    return {
        "IpInReceives": ip.get("rx", 0),
        "IpInHdrErrors": _sum(ip, _IP_HEADER),
        "IpInAddrErrors": _sum(ip, _IP_ADDRESS),
        "IpInUnknownProtos": ip.get("drop_unknown_protocol", 0),
        "IpInDiscards": ip_drops,
        "IpInDelivers": tcp.get("rx", 0) + icmp.get("rx", 0),
        "IpOutRequests": ip.get("tx", 0),
        "IpOutNoRoutes": ip.get("drop_no_route", 0),
        "IpReasmReqds": ip.get("frag_rx", 0),
        "IpReasmOKs": ip.get("reassembled", 0),
        "IpReasmFails": sum(v for k, v in ip.items() if k.startswith("drop_frag_")),
        "IpFragOKs": ip.get("tx_fragmented", 0),
        "IpFragFails": ip.get("drop_too_big_df", 0),
        "IcmpInMsgs": icmp.get("rx", 0),
        "IcmpOutMsgs": icmp.get("tx", 0),
        "TcpActiveOpens": tcp.get("active_opens", 0),
        "TcpPassiveOpens": tcp.get("passive_opens", 0),
        "TcpAttemptFails": tcp.get("attempt_fails", 0),
        "TcpEstabResets": tcp.get("estab_resets", 0),
        "TcpCurrEstab": established,
        "TcpInSegs": tcp.get("rx", 0),
        "TcpOutSegs": tcp.get("tx", 0),
        "TcpRetransSegs": tcp.get("retrans_segs", 0),
        "TcpInErrs": _sum(tcp, _TCP_IN_ERRORS),
        "TcpOutRsts": tcp.get("tx_rst", 0),
        "TcpInCsumErrors": tcp.get("drop_bad_checksum", 0),
        "TcpExtSyncookiesSent": tcp.get("syncookies_sent", 0),
        "TcpExtSyncookiesRecv": tcp.get("syncookies_ok", 0),
        "TcpExtSyncookiesFailed": tcp.get("syncookies_failed", 0),
        "TcpExtListenOverflows": overflows,
        "TcpExtListenDrops": overflows + tcp.get("drop_syn_queue_full", 0),
        "TcpExtTCPTimeouts": tcp.get("timeouts", 0),
        "TcpExtPAWSEstab": tcp.get("engine_drop_paws", 0),
        "TcpExtTCPTimeWaitReuse": tcp.get("time_wait_reuse", 0),
    }


def nic_mib(nic: Mapping[str, Any], established: int) -> dict[str, int]:
    """The target's TCP_OFFLOAD_STATS and IP_OFFLOAD_STATS (nic/counters.py) under the Linux names; they
    count offloaded connections only. ``established``: offloaded connections in ESTABLISHED/CLOSE-WAIT."""
    tcp, ip = nic.get("tcp", {}), nic.get("ip", {})
    return {
        "IpInReceives": ip.get("in_receives", 0),
        "IpInOctets": ip.get("in_octets", 0),
        "IpInDelivers": ip.get("in_delivers", 0),
        "IpInDiscards": ip.get("in_discards", 0),
        "IpOutRequests": ip.get("out_requests", 0),
        "IpOutOctets": ip.get("out_octets", 0),
        "IpOutDiscards": ip.get("out_discards", 0),
        "TcpCurrEstab": established,
        "TcpEstabResets": tcp.get("reset_established", 0),
        "TcpInSegs": tcp.get("in_segments", 0),
        "TcpOutSegs": tcp.get("out_segments", 0),
        "TcpRetransSegs": tcp.get("retransmitted_segments", 0),
        "TcpInErrs": tcp.get("in_errors", 0),
        "TcpOutRsts": tcp.get("out_resets", 0),
    }


def camel(key: str) -> str:
    """``no_capacity`` -> ``NoCapacity``: a reason code as part of an nstat-style name."""
    return "".join(part[:1].upper() + part[1:] for part in key.split("_"))


def offload_mib(host_offload: Mapping[str, int], nic: Mapping[str, Any]) -> dict[str, int]:
    """The lifecycle: the host's view (offloads, refusals, deferrals and uploads by reason) and the
    target's (what it took, refused and asked back, by reason)."""
    out = {
        "Offloads": host_offload.get("offloaded", 0),
        "Uploads": host_offload.get("uploaded", 0),
        "Refusals": sum(v for k, v in host_offload.items() if k.startswith("refused_")),
        "Deferrals": sum(v for k, v in host_offload.items() if k.startswith("deferred_")),
        "TargetFailures": host_offload.get("target_failed", 0),
        "TargetFaults": host_offload.get("target_faults", 0),
    }
    for key, value in sorted(host_offload.items()):
        for prefix, name in (("refused_", "Refused"), ("deferred_", "Deferred"), ("uploaded_", "Uploaded")):
            if key.startswith(prefix):
                out[name + camel(key[len(prefix) :])] = value
    life = nic.get("lifecycle", {})
    out["NicOffloads"] = life.get("offloads", 0)
    out["NicRefusals"] = life.get("offload_refusals", 0)
    out["NicUploads"] = life.get("uploads", 0)
    out["NicUploadRequests"] = life.get("upload_requests", 0)
    out["NicPassedUp"] = life.get("passed_up", 0)
    for key, value in sorted(nic.get("refusals", {}).items()):
        out["NicRefused" + camel(key)] = value
    for key, value in sorted(nic.get("upload_requests", {}).items()):
        out["NicUploadRequested" + camel(key)] = value
    return out
