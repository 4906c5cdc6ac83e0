"""The control plane's commands over a stack with an offload target, on the simulated link: rows as the
stack holds them, the target's live figures of an offloaded connection, policy moves planned and made."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from offload_kit import B_IP, OffloadNet, Stream, exchange, make_offload_net, payload

from tcpchimney.host.offload import OffloadState
from tcpchimney.host.policy import OffloadMode, OffloadPolicy
from tcpchimney.manage.plane import ControlPlane
from tcpchimney.manage.protocol import Request, RequestError


def ask(plane: ControlPlane, command: str, **args: Any) -> Any:
    return asyncio.run(plane.handle(Request(command, args)))


def plane_over(net: OffloadNet) -> ControlPlane:
    plane = ControlPlane(net.a, {"name": "unit"}, nic="inline", clock=lambda: net.link.now)
    return plane


def test_netstat_rows_follow_the_stack_and_offloaded_figures_come_from_the_target() -> None:
    net = make_offload_net(seed=3)
    plane = plane_over(net)
    a, b = net.connect()
    net.wait_offloaded(a)
    exchange(net, [Stream(a, b, payload(300_000, 1))])
    net.run_for(0.2)  # the last ACKs
    (row,) = ask(plane, "netstat")
    assert row["remote"] == f"{B_IP}:{b.local_port}" and row["offload_state"] == "Offloaded"
    assert row["state"] == "ESTABLISHED" and row["bytes_sent"] == 300_000 and row["nic"] == "inline"
    assert a.offload is not None and a.offload.inspected is None
    assert net.a.inspect(a) is True
    net.run_for(0.01)
    seen = a.offload.inspected
    assert seen is not None and seen.cwnd > 0 and seen.unacked == 0 and seen.send_q == 0
    (row,) = ask(plane, "netstat", internals=False)
    assert "internals" not in row
    assert not net.a.counters["offload"].get("target_faults"), "a look is not a fault"


def test_looks_during_a_transfer_never_count_as_faults() -> None:
    """Two queries in a row that both catch data on its way are a race, not the target's breach."""
    net = make_offload_net(seed=4)
    a, b = net.connect()
    net.wait_offloaded(a)
    looks = 0

    def look() -> None:
        nonlocal looks
        looks += net.a.inspect(a)

    exchange(net, [Stream(b, a, payload(2_000_000, 2)), Stream(a, b, payload(2_000_000, 3))], during=look)
    assert looks > 10
    assert a.offload_state is OffloadState.OFFLOADED
    assert not net.a.counters["offload"].get("target_faults") and not net.a.internal_errors


def test_set_global_dry_run_moves_nothing_and_the_real_one_does_what_it_said() -> None:
    net = make_offload_net(seed=5)
    plane = plane_over(net)
    a, _ = net.connect()
    net.wait_offloaded(a)
    dry = ask(plane, "set-global", chimney="disabled", dry_run=True)
    assert dry["applied"] is False and [(m["action"], m["reason"]) for m in dry["moves"]] == [
        ("upload", "mode_change")
    ]
    net.run_for(0.1)
    assert a.offload_state is OffloadState.OFFLOADED and net.a.offload_policy.mode is OffloadMode.ENABLED
    done = ask(plane, "set-global", chimney="disabled")
    assert done["moves"] == dry["moves"] and done["global"]["chimney"] == "disabled"
    net.wait_in_host(a)
    assert a.offload_reason is not None and a.offload_reason.value == "mode_change"
    again = ask(plane, "set-global", chimney="enabled", dry_run=True)
    assert [m["action"] for m in again["moves"]] == ["offload"]
    why = ask(plane, "why", conn=1)
    assert why["offload_state"] == "InHost" and "offload is disabled" in why["verdict"]
    history = ask(plane, "history", conn=f"#{why['id']}")
    assert [m["event"] for m in history["moves"]] == []  # the plane saw no event: nobody fed it


def test_a_dry_run_judges_automatic_thresholds_against_what_the_connection_did() -> None:
    net = make_offload_net(seed=6, policy=OffloadPolicy(mode=OffloadMode.DISABLED))
    plane = plane_over(net)
    a, b = net.connect()
    exchange(net, [Stream(a, b, payload(10_000, 4))])
    low = ask(plane, "set-global", chimney="automatic", min_bytes=1_000_000, dry_run=True)
    assert low["moves"] == []
    high = ask(plane, "set-global", chimney="automatic", min_bytes=1_000, dry_run=True)
    assert [m["action"] for m in high["moves"]] == ["offload"]


def test_connections_are_named_by_number_or_address_and_mistakes_are_sentences() -> None:
    net = make_offload_net(seed=7)
    plane = plane_over(net)
    a, _ = net.connect()
    (row,) = ask(plane, "netstat")
    assert plane.find(row["id"])[0] is a and plane.find(f"#{row['id']}")[0] is a
    assert plane.find(row["remote"])[0] is a and plane.find(f"{row['local']}-{row['remote']}")[0] is a
    for spec, words in ((99, "no connection 99"), ("", "names a connection"), (True, "names a connection")):
        with pytest.raises(RequestError, match=words):
            plane.find(spec)
    for command, args, words in (
        ("nope", {}, "unknown command 'nope'"),
        ("set-global", {}, "nothing to set"),
        ("set-global", {"chimney": "sometimes"}, "give disabled, enabled or automatic"),
        ("set-global", {"min_bytes": -1}, "min-bytes must be 0 or more"),
        ("upload", {}, "names a connection"),
    ):
        with pytest.raises(RequestError, match=words):
            ask(plane, command, **args)
    assert sorted(c["name"] for c in ask(plane, "list-commands")) == sorted(ask(plane, "hello")["commands"])


def test_rules_move_connections_count_their_hits_and_go_away() -> None:
    """A never rule uploads what it matches and keeps it on the host; why names it; deleting it lets the
    mode offload the connection again. An always rule offloads at once in automatic mode."""
    net = make_offload_net(seed=8)
    plane = plane_over(net)
    a, b = net.connect()
    net.wait_offloaded(a)
    added = ask(plane, "rule-add", action="never", remote_port=b.local_port)
    assert [(m["action"], m["reason"]) for m in added["moves"]] == [("upload", "policy_change")]
    net.wait_in_host(a)
    (rule,) = ask(plane, "rule-show")
    assert (rule["number"], rule["action"], rule["remote_port"]) == (1, "never", b.local_port)
    why = ask(plane, "why", conn=1)
    assert why["rule"]["number"] == 1 and "rule 1 (policy, never) keeps it on the host" in why["verdict"]
    assert ask(plane, "offload", conn=1)["reason"] == "policy_rule"  # a manual offload obeys the rules
    assert ask(plane, "rule-show")[0]["hits"] >= 1
    with pytest.raises(RequestError, match="the same rule is there already"):
        ask(plane, "rule-add", action="never", remote_port=b.local_port)
    gone = ask(plane, "rule-del", number=1)
    assert [m["action"] for m in gone["moves"]] == ["offload"] and ask(plane, "rule-show") == []
    net.wait_offloaded(a)
    for args, words in (
        ({"number": 3}, "no rule 3"),
        ({}, "no rule None"),
    ):
        with pytest.raises(RequestError, match=words):
            ask(plane, "rule-del", **args)
    for args, words in (
        ({"action": "sometimes", "local_port": 1}, "action must be never, always or policy"),
        ({"remote_port": 70000}, "a port is 1 to 65535"),
        ({"remote": "300.1.1.1"}, "not an IPv4 address or network"),
    ):
        with pytest.raises(RequestError, match=words):
            ask(plane, "rule-add", **args)


def test_an_always_rule_skips_automatic_thresholds_and_a_policy_rule_shields_a_never() -> None:
    net = make_offload_net(seed=9, policy=OffloadPolicy(mode=OffloadMode.AUTOMATIC))
    plane = plane_over(net)
    a, b = net.connect()
    net.run_for(0.5)
    assert a.offload_state is OffloadState.IN_HOST  # nothing moved: below the threshold
    ask(plane, "rule-add", action="always", remote=f"{B_IP}/32")
    net.wait_offloaded(a)
    assert "rule 1 (always)" in ask(plane, "why", conn=1)["verdict"]
    ask(plane, "rule-del", number=1)
    ask(plane, "rule-add", action="policy", remote_port=b.local_port)
    ask(plane, "rule-add", action="never", remote=f"{B_IP}/24")
    assert ask(plane, "why", conn=1)["rule"]["action"] == "policy"
    assert a.offload_state is OffloadState.OFFLOADED, "the policy rule shields it from the never rule"
