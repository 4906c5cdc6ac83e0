"""``chimney stats``, ``show target`` and Prometheus ``/metrics`` against a real ``chimney serve`` over TAP
with a Linux peer (curl) moving data: the MIB counters split host / NIC move with the traffic, nstat's
deltas show what grew, and ``/metrics`` parses with prometheus_client's own parser, never goes down between
scrapes and has exactly the metrics docs/manage.md lists."""

from __future__ import annotations

import re
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_interop_admin import admin, admin_json
from test_interop_serve import STACK, Command, sh

DOC = Path(__file__).resolve().parents[2] / "docs" / "manage.md"
DOWNLOAD = "curl -sS --fail -o /dev/null http://{stack}/bytes/{size}"


def documented_metrics() -> dict[str, str]:
    """The metric table of docs/manage.md: {name: type}."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Prometheus", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(tcpchimney_\w+)` \| (\w+) \|", section, flags=re.M)
    assert len(rows) > 40, "the metric table of docs/manage.md"
    return dict(rows)


def scrape(address: str) -> dict[str, Any]:
    """{family name as exposed (counters with _total): (type, {labels: value})}."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
        assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    out: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        name = {"counter": family.name + "_total", "info": family.name + "_info"}.get(
            family.type, family.name
        )
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
        out[name] = (family.type, samples)
    return out


def counter_samples(metrics: dict[str, Any]) -> dict[tuple[str, Any], float]:
    out = {}
    for kind, samples in metrics.values():
        if kind in ("counter", "histogram"):
            out.update({k: v for k, v in samples.items() if not k[0].endswith("_created")})
    return out


def download(netns: str, size: int) -> None:
    sh(netns, DOWNLOAD.format(stack=STACK, size=size))


@pytest.fixture
def name() -> str:
    return f"mt-{uuid.uuid4().hex[:8]}"


def test_metrics_parse_never_go_down_and_follow_the_documented_list(
    netns_name: str, name: str, commands: list[Command]
) -> None:
    server = Command(
        "serve",
        "http",
        "--netns",
        netns_name,
        "--offload",
        "enabled",
        "--name",
        name,
        "--metrics",
        "127.0.0.1:0",
    )
    commands.append(server)
    address = server.ready["metrics"]
    assert address.startswith("127.0.0.1:") and not address.endswith(":0")
    download(netns_name, 2_000_000)
    first = scrape(address)
    for _ in range(3):
        download(netns_name, 3_000_000)
    second = scrape(address)

    documented = documented_metrics()
    assert set(second) == set(documented), "every metric is documented and every documented one is there"
    assert {n: t for n, (t, _) in second.items()} == documented
    before, after = counter_samples(first), counter_samples(second)
    assert set(before) <= set(after)
    assert [k for k, v in before.items() if after[k] < v] == [], "counters never go down"

    def value(m: dict[str, Any], metric: str, **labels: str) -> float:
        key = (metric, tuple(sorted(labels.items())))
        for _, samples in m.values():
            if key in samples:
                return float(samples[key])
        raise KeyError(key)

    grew = value(second, "tcpchimney_netstat_Ip_OutOctets_total", path="nic") - value(
        first, "tcpchimney_netstat_Ip_OutOctets_total", path="nic"
    )
    assert grew >= 9_000_000, "the offloaded downloads' bytes left through the NIC"
    assert value(second, "tcpchimney_ip_sent_bytes_total", path="nic") >= 11_000_000
    offloads = value(second, "tcpchimney_offloads_total")
    assert (
        offloads >= 4
        and value(second, "tcpchimney_handoff_duration_seconds_count", direction="offload") == offloads
    )
    assert value(second, "tcpchimney_netstat_Tcp_PassiveOpens_total", path="host") >= 4
    assert (
        value(second, "tcpchimney_target_up") == 1
        and value(second, "tcpchimney_target_capacity_connections") > 0
    )
    assert value(second, "tcpchimney_stack_info", name=name, nic="process") == 1
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"http://{address}/other", timeout=10)
    assert missing.value.code == 404
    assert server.proc.poll() is None, "the stack runs on"


def test_stats_shows_deltas_split_host_and_nic_and_show_target_the_nic_process(
    netns_name: str, name: str, commands: list[Command]
) -> None:
    server = Command("serve", "http", "--netns", netns_name, "--offload", "enabled", "--name", name)
    commands.append(server)
    download(netns_name, 1_000_000)
    absolute = admin_json("stats", "--name", name, "-a")
    assert absolute["host"]["TcpPassiveOpens"] == 1 and absolute["nic"]["IpOutOctets"] >= 1_000_000
    assert absolute["offload"]["Offloads"] == 1 and absolute["offload"]["HandoffOffloadCount"] == 1
    download(netns_name, 2_000_000)
    delta = admin_json("stats", "--name", name)
    assert delta["host"]["TcpPassiveOpens"] == 1, "one more connection since the last call"
    assert 2_000_000 <= delta["nic"]["IpOutOctets"] < 3_000_000
    assert delta["offload"]["Offloads"] == 1
    quiet = admin_json("stats", "--name", name)
    assert "TcpPassiveOpens" not in quiet["host"], "nothing opened since: not shown without -z"
    zeros = admin_json("stats", "--name", name, "-z")
    assert zeros["host"]["TcpPassiveOpens"] == 0 and zeros["host"]["TcpRetransSegs"] == 0
    text = admin("stats", "--name", name, "-a").stdout
    assert text.startswith("#host\n") and "#nic\n" in text and "#offload\n" in text
    assert re.search(r"^TcpPassiveOpens\s+2$", text, flags=re.M)

    target = admin_json("show", "target", "--name", name)
    health = target["health"]
    assert target["kind"] == "process" and health["up"] is True and health["pid"] == server.ready["nic_pid"]
    assert health["epoch"] == 1 and health["failures"] == 0 and target["capabilities"]["capacity"] > 0
    assert target["use"]["connections"] == 0 and target["handoff"]["offload"]["count"] == 2
    shown = admin("show", "target", "--name", name).stdout
    assert re.search(rf"NIC Process PID\s+: {server.ready['nic_pid']}", shown)
