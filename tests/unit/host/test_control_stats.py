"""``stats`` and ``show-target`` of the control plane over a stack with an offload target (simulated link):
the NIC side counts what the offloaded connection did, the lifecycle counts each hand-off with its
duration, and chimney stats's deltas (cli/nstat.py) show what grew since the previous call."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from offload_kit import OffloadNet, Stream, exchange, make_offload_net, payload

from tcpchimney.chimney.reason import Reason
from tcpchimney.cli.nstat import figures, history_path
from tcpchimney.manage.plane import ControlPlane
from tcpchimney.manage.protocol import Request, RequestError


def ask(plane: ControlPlane, command: str, **args: Any) -> Any:
    return asyncio.run(plane.handle(Request(command, args)))


def plane_over(net: OffloadNet) -> ControlPlane:
    def target_info() -> dict[str, Any]:
        caps = net.target.capabilities
        return {
            "kind": "inline",
            "capabilities": {
                "ipv4": caps.ipv4,
                "ipv6": caps.ipv6,
                "sack": caps.sack,
                "capacity": caps.capacity,
            },
            "offload_mode": "enabled",
            "health": {"up": True, "pid": 1, "epoch": None, "failures": 0, "restarts": 0},
        }

    return ControlPlane(
        net.a,
        {"name": "unit"},
        nic="inline",
        counters=lambda: {"nic": net.target.counters.snapshot()},
        target_info=target_info,
        clock=lambda: net.link.now,
    )


def feed(plane: ControlPlane, net: OffloadNet) -> None:
    for ev in net.log["a"]:
        plane.on_event(ev)
    net.log["a"].clear()


def test_stats_split_host_and_nic_and_count_the_lifecycle() -> None:
    net = make_offload_net(seed=7)
    plane = plane_over(net)
    a, b = net.connect()
    net.wait_offloaded(a)
    feed(plane, net)
    first = ask(plane, "stats")["mib"]
    assert first["offload"]["Offloads"] == 1 and first["offload"]["HandoffOffloadCount"] == 1
    assert first["nic"]["TcpCurrEstab"] == 1 and first["host"]["TcpCurrEstab"] == 0
    assert first["host"]["TcpActiveOpens"] == 1
    exchange(net, [Stream(a, b, payload(200_000, 1))])
    net.run_for(0.2)
    second = ask(plane, "stats")["mib"]
    assert second["nic"]["TcpOutSegs"] > first["nic"]["TcpOutSegs"]
    assert second["nic"]["IpOutOctets"] >= first["nic"]["IpOutOctets"] + 200_000
    assert second["host"]["TcpOutSegs"] == first["host"]["TcpOutSegs"], "the NIC sent the data, not the host"
    assert net.a.upload(a, Reason.ADMIN)
    net.wait_in_host(a)
    feed(plane, net)
    third = ask(plane, "stats")["mib"]
    assert third["offload"]["Uploads"] == 1 and third["offload"]["UploadedAdmin"] == 1
    assert third["offload"]["HandoffUploadCount"] == 1 and third["offload"]["HandoffUploadSumUs"] >= 0
    assert third["host"]["TcpCurrEstab"] == 1 and third["nic"]["TcpCurrEstab"] == 0
    buckets = [v for k, v in third["offload"].items() if k.startswith("HandoffOffloadLe")]
    assert buckets == sorted(buckets) and buckets[-1] <= 1


def test_show_target_reports_capacity_use_and_handoff_quantiles() -> None:
    net = make_offload_net(seed=8, capacity=5)
    plane = plane_over(net)
    a, _ = net.connect()
    net.wait_offloaded(a)
    feed(plane, net)
    t = ask(plane, "show-target")
    assert t["capabilities"]["capacity"] == 5 and t["use"]["connections"] == 1 and t["use"]["Offloaded"] == 1
    assert t["handoff"]["offload"]["count"] == 1 and t["handoff"]["offload"]["p50_ms"] is not None
    assert t["handoff"]["upload"] == {"count": 0, "p50_ms": None, "p99_ms": None}


def test_show_target_without_a_target_is_one_sentence() -> None:
    net = make_offload_net(seed=9)
    plane = ControlPlane(net.a, {"name": "unit"})
    try:
        ask(plane, "show-target")
    except RequestError as exc:
        assert "without an offload target" in str(exc)
    else:
        raise AssertionError("show-target answered without a target")


def _args(tmp: Path, **kw: Any) -> argparse.Namespace:
    base = {"absolute": False, "zeros": False, "no_update": False, "reset": False}
    return argparse.Namespace(control_path=str(tmp / "s.ctl"), **{**base, **kw})


def test_nstat_deltas_zeros_absolute_and_a_new_run(tmp_path: Path) -> None:
    def reply(pid: int, segs: int, estab: int) -> dict[str, Any]:
        return {"pid": pid, "mib": {"host": {"TcpInSegs": segs, "TcpCurrEstab": estab, "TcpInErrs": 0}}}

    assert figures(_args(tmp_path), reply(1, 10, 2)) == {"host": {"TcpInSegs": 10, "TcpCurrEstab": 2}}
    assert history_path(str(tmp_path / "s.ctl")) == str(tmp_path / "s.nstat")
    assert json.loads((tmp_path / "s.nstat").read_text())["values"]["host"]["TcpInSegs"] == 10
    assert figures(_args(tmp_path), reply(1, 15, 2)) == {"host": {"TcpInSegs": 5, "TcpCurrEstab": 2}}
    assert figures(_args(tmp_path, zeros=True), reply(1, 15, 1)) == {
        "host": {"TcpInSegs": 0, "TcpCurrEstab": 1, "TcpInErrs": 0}
    }
    assert figures(_args(tmp_path, absolute=True, no_update=True), reply(1, 20, 1))["host"]["TcpInSegs"] == 20
    assert figures(_args(tmp_path), reply(1, 21, 1))["host"]["TcpInSegs"] == 6, "-s kept the history at 15"
    assert figures(_args(tmp_path), reply(2, 3, 1))["host"]["TcpInSegs"] == 3, "another run starts afresh"
    assert figures(_args(tmp_path, reset=True), reply(2, 4, 1))["host"]["TcpInSegs"] == 4
