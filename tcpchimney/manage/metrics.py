"""``--metrics ADDR:PORT``: the stack's figures for Prometheus at ``/metrics``, in the text format of the
official ``prometheus_client`` library.

A custom collector reads every value at scrape time from the same sources as ``chimney stats`` (the control
plane: host counters, the target's, the hand-off histograms), so nothing is counted twice and a scrape
costs nothing between scrapes. No per-connection labels: connections are counted by offload state, and
per-connection figures stay with ``chimney netstat``. The HTTP side is a small asyncio server on the
stack's own event loop (one GET per connection), so a scrape reads the stack between two of its turns and
never from another thread while the loop changes it. docs/manage.md lists every metric.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from tcpchimney.manage.mib import GAUGES
from tcpchimney.manage.views import OFFLOAD_STATE_NAMES

if TYPE_CHECKING:
    from tcpchimney.manage.plane import ControlPlane

PREFIX = "tcpchimney_"
_PROTOS = ("TcpExt", "Tcp", "Icmp", "Ip")  # longest first: TcpExtX is TcpExt's, not Tcp's
_STATE_LABELS = {
    "InHost": "in_host",
    "Offloading": "offloading",
    "Offloaded": "offloaded",
    "Uploading": "uploading",
}
MAX_REQUEST = 8192  # bytes of request line and headers a scrape may send
READ_TIMEOUT = 5.0


def netstat_name(mib_name: str) -> tuple[str, bool]:
    """``TcpExtListenDrops`` -> (``tcpchimney_netstat_TcpExt_ListenDrops``, is_counter): node_exporter's
    ``node_netstat_<Proto>_<Field>`` with our prefix (PromQL ports by swapping the prefix)."""
    for proto in _PROTOS:
        if mib_name.startswith(proto):
            return f"{PREFIX}netstat_{proto}_{mib_name[len(proto) :]}", mib_name not in GAUGES
    raise ValueError(f"{mib_name}: not a MIB name")


class StackCollector(Collector):
    """Every metric of one stack, read from ``plane`` when Prometheus asks."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane

    def collect(self) -> Iterator[Metric]:
        plane = self.plane
        host, session = plane.stack.counters, plane.counters()
        info = InfoMetricFamily(PREFIX + "stack", "the stack: its name and where its target runs")
        info.add_metric([], {"name": str(plane.identity.get("name", "")), "nic": plane.nic or "none"})
        yield info
        yield from self._connections()
        yield from _netstat(plane.mib(host, session))
        yield from _lifecycle(host.get("offload", {}))
        yield from _nic(session.get("nic"))
        yield from self._handoffs()
        yield from _target(plane.target_info())
        requests = CounterMetricFamily(
            PREFIX + "control_requests", "control socket requests by command", labels=["command"]
        )
        for command, count in sorted(plane.requests.items()):
            requests.add_metric([command], count)
        yield requests

    def _connections(self) -> Iterator[Metric]:
        stack = self.plane.stack
        states = Counter(OFFLOAD_STATE_NAMES[s.offload_state] for s in stack.connections())
        conns = GaugeMetricFamily(
            PREFIX + "connections", "TCP connections by offload state", labels=["offload_state"]
        )
        for name, label in _STATE_LABELS.items():
            conns.add_metric([label], states.get(name, 0))
        yield conns
        yield GaugeMetricFamily(PREFIX + "listeners", "listening sockets", value=len(stack.listeners()))

    def _handoffs(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(
            PREFIX + "handoff_duration_seconds",
            "hand-off durations: offload (initiate to completion), upload (terminate to completion)",
            labels=["direction"],
        )
        for direction, h in self.plane.handoffs.items():
            family.add_metric([direction], [(le, float(n)) for le, n in h.cumulative()], sum_value=h.sum)
        yield family


def _netstat(mib: dict[str, dict[str, int]]) -> Iterator[Metric]:
    families: dict[str, Metric] = {}
    for path in ("host", "nic"):
        for key, value in mib.get(path, {}).items():
            name, counter = netstat_name(key)
            family = families.get(name)
            if family is None:
                doc = f"Linux {key} ({'host stack' if path == 'host' else 'and the target'}; path label)"
                family = families[name] = (
                    CounterMetricFamily(name, doc, labels=["path"])
                    if counter
                    else GaugeMetricFamily(name, doc, labels=["path"])
                )
            family.add_metric([path], value)  # type: ignore[attr-defined]
    yield from families.values()


def _by_reason(offload: dict[str, int], prefix: str, name: str, doc: str) -> Metric:
    family = CounterMetricFamily(PREFIX + name, doc, labels=["reason"])
    for key, value in sorted(offload.items()):
        if key.startswith(prefix):
            family.add_metric([key[len(prefix) :]], value)
    return family


def _lifecycle(offload: dict[str, int]) -> Iterator[Metric]:
    yield CounterMetricFamily(PREFIX + "offloads", "connections offloaded", value=offload.get("offloaded", 0))
    yield _by_reason(offload, "uploaded_", "uploads", "connections uploaded, by reason")
    yield _by_reason(offload, "refused_", "offload_refusals", "offloads refused, by reason")
    yield _by_reason(offload, "deferred_", "offload_deferrals", "offloads put off, by reason")
    yield CounterMetricFamily(
        PREFIX + "target_faults", "contract breaches by the target", value=offload.get("target_faults", 0)
    )


def _nic(nic: Any) -> Iterator[Metric]:
    """The target's own view: bytes of offloaded traffic (base units), refusals and upload requests."""
    if not isinstance(nic, dict):
        return
    ip = nic.get("ip", {})
    for key, name, doc in (
        ("in_octets", "ip_received_bytes", "bytes of IPv4 datagrams received"),
        ("out_octets", "ip_sent_bytes", "bytes of IPv4 datagrams sent"),
    ):
        family = CounterMetricFamily(PREFIX + name, doc + " (path: nic, offloaded traffic)", labels=["path"])
        family.add_metric(["nic"], ip.get(key, 0))
        yield family
    for key, name, doc in (
        ("refusals", "target_refusals", "offloads the target refused, by reason"),
        ("upload_requests", "target_upload_requests", "uploads the target asked for, by reason"),
    ):
        family = CounterMetricFamily(PREFIX + name, doc, labels=["reason"])
        for reason, value in sorted(nic.get(key, {}).items()):
            family.add_metric([reason], value)
        yield family


def _target(info: dict[str, Any] | None) -> Iterator[Metric]:
    if info is None:
        return
    health = info.get("health", {})
    yield GaugeMetricFamily(
        PREFIX + "target_capacity_connections",
        "connections the target takes (TcpConnectionOffloadCapacity)",
        value=info.get("capabilities", {}).get("capacity", 0),
    )
    yield GaugeMetricFamily(
        PREFIX + "target_up", "1 while the target runs", value=int(bool(health.get("up")))
    )
    yield CounterMetricFamily(
        PREFIX + "target_failures", "NIC process failures", value=health.get("failures", 0)
    )
    yield CounterMetricFamily(
        PREFIX + "target_restarts",
        "NIC processes started again after a failure",
        value=health.get("restarts", 0),
    )


class MetricsServer:
    """``GET /metrics`` on ``host:port``, answered on the running loop."""

    def __init__(self, plane: ControlPlane, host: str, port: int) -> None:
        self.plane = plane
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StackCollector(plane))
        self.host, self.port = host, port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=MAX_REQUEST)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            status, body, ctype = self._answer(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            status, body, ctype = "400 Bad Request", b"a scrape is one HTTP GET\n", "text/plain"
        try:
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def _answer(self, head: bytes) -> tuple[str, bytes, str]:
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or parts[0] not in (b"GET", b"HEAD"):
            return "405 Method Not Allowed", b"only GET /metrics\n", "text/plain"
        if parts[1].split(b"?", 1)[0] != b"/metrics":
            return "404 Not Found", b"the metrics are at /metrics\n", "text/plain"
        body = self.render()
        return "200 OK", b"" if parts[0] == b"HEAD" else body, CONTENT_TYPE_LATEST
