"""The NIC benchmarks (bench/nic.py, bench/nic_app.py, bench/nic_handoff.py, bench/nic_recovery.py,
bench/short.py, bench/spin.py, bench/http.py) run once
each in a tiny configuration, so their code cannot rot between the runs that measure: every row they promise
comes out with a figure, the transfers check their bytes (SHA-256, digests) and every offloaded variant
really offloaded. Speed is not asserted (bench/README.md has the figures). Without root or /dev/net/tun the
real runs skip with the reason (they fail with TCPCHIMNEY_REQUIRE_NET=1), and the modules' own skip lines
are checked instead."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from bench import http, load_tools, nic, nic_app, nic_handoff, nic_recovery, short, spin

MB = 1_000_000
VARIANTS = ["host", "inline", "process", "process_pinned"]


def _by_bench(lines: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        assert "skipped" not in line, line
        out.setdefault(line["bench"], []).append(line)
    return out


def _positive(line: dict[str, Any], *keys: str) -> None:
    for key in keys:
        assert isinstance(line[key], int | float) and line[key] > 0, (key, line)


@pytest.mark.net
def test_bench_nic_gives_every_variant_and_ratio(require_net: None) -> None:
    rows = _by_bench(list(nic.run(2 * MB, runs=1)))
    assert set(rows) == set(nic.NAMES)
    bulk = {(r["variant"], r["direction"]): r for r in rows["nic_bulk"]}
    assert set(bulk) == {(v, d) for v in VARIANTS for d in nic.DIRECTIONS}
    for (variant, _), line in bulk.items():
        _positive(line, "value", "host_cpu_s_per_gb")
        assert (line["nic_cpu"] is not None) == (variant == "process_pinned")
    for name in ("nic_host_cpu_ratio", "nic_throughput_ratio"):
        assert sorted(r["direction"] for r in rows[name]) == sorted(nic.DIRECTIONS)
        for line in rows[name]:
            _positive(line, "value", "inline_ratio", "pinned_ratio")


@pytest.mark.net
def test_bench_nic_app_gives_the_speedup_row(require_net: None) -> None:
    lines = nic_app.run(MB, runs=1, record=16 << 10, rounds=1, conns=2, depth=2)
    rows = _by_bench(list(lines))
    assert set(rows) == set(nic_app.NAMES)
    assert sorted(r["variant"] for r in rows["nic_app"]) == sorted(VARIANTS)
    for line in rows["nic_app"]:
        _positive(line, "value", "requests_per_s", "host_cpu_s_per_gb")
    (speedup,) = rows["nic_app_speedup"]
    _positive(speedup, "value", "host_only_mb_s", "offloaded_mb_s", "inline_speedup", "pinned_speedup")


@pytest.mark.net
def test_bench_nic_handoff_gives_round_trips_and_connection_rates(require_net: None) -> None:
    rows = _by_bench(list(nic_handoff.run(rounds=5, seconds=0.3, runs=1)))
    assert set(rows) == set(nic_handoff.NAMES)
    trips = {r["variant"]: r for r in rows["nic_handoff_roundtrip_us"]}
    assert sorted(trips) == sorted(nic_handoff.HANDOFF_VARIANTS)
    for line in trips.values():
        _positive(line, "value", "p99", "offload_us", "upload_us")
        assert line["rounds"] == 5 and line["p99"] >= line["value"]
    rates = {r["variant"]: r for r in rows["nic_connections_per_s"]}
    assert sorted(rates) == sorted(VARIANTS)
    for variant, line in rates.items():
        _positive(line, "value", "host_cpu_us_per_conn")
        assert (line["ratio_to_inline"] is not None) == variant.startswith("process")
        assert (line["offloaded"][0] > 0) == (variant != "host")


@pytest.mark.net
def test_bench_nic_recovery_gives_every_figure_of_a_correct_run(require_net: None) -> None:
    """Two kills of the NIC under both streams: every figure comes out, of a run whose transfers were all
    checked (the bench raises on a wrong digest, a lost or reset connection, a kill the server missed)."""
    rows = _by_bench(list(nic_recovery.run(kills=2, nbytes=4 * MB)))
    assert set(rows) == set(nic_recovery.NAMES)
    moving = {r["direction"]: r for r in rows["nic_recovery_ms"]}
    assert sorted(moving) == sorted(nic_recovery.DIRECTIONS)
    for line in moving.values():
        _positive(line, "value", "p90", "max", "detection_ms", "transfers_checked")
        assert line["kills"] == 2 and line["min"] <= line["value"] <= line["p90"] <= line["max"]
        assert line["late_bytes_max"] >= 0 and line["late_looked_in_time"] <= line["kills"]
    (detection,) = rows["nic_recovery_detection_ms"]
    assert sum(detection["detected_by"].values()) == 2
    for line in moving.values():  # new bytes need a host that knows the NIC is gone: after the detection
        assert all(m > d > 0 for m, d in zip(line["each_ms"], detection["each_ms"], strict=True))
    (phases,) = rows["nic_recovery_phases_ms"]
    assert 0 < phases["failed_event"] <= phases["rebuilt"] < phases["nic_started"] <= phases["reoffloaded"]
    (sent,) = rows["nic_recovery_retransmitted_bytes"]
    assert sent["host_recovered_connections"] == 4  # both connections, at each kill
    assert sent["linux_counters"]["OutRsts"] == sent["linux_counters"]["EstabResets"] == 0


@pytest.mark.net
def test_bench_short_gives_both_rows_against_the_kernel(require_net: None) -> None:
    rows = _by_bench(list(short.run(seconds=0.5, rounds=20)))
    assert set(rows) == set(short.NAMES)
    for name in short.NAMES:
        assert sorted(r["variant"] for r in rows[name]) == sorted(short.SHORT_VARIANTS)
    for line in rows["connections_per_s"]:
        _positive(line, "value", "kernel", "ratio_to_kernel", "host_cpu_us_per_conn")
        assert (line["offloaded"][0] is None) == (line["variant"] == "host")
    for line in rows["rr_latency_us"]:
        _positive(line, "value", "p99", "kernel", "kernel_p99", "ratio_to_kernel")
        assert line["p99"] >= line["value"] and line["size"] == 64


@pytest.mark.net
def test_bench_spin_gives_a_line_per_setting_with_the_nic_holding_the_connection(require_net: None) -> None:
    rows = _by_bench(list(spin.run(spins=(0.0,), busy_polls=(50.0,), rounds=8)))
    lines = {(r["spin_us"], r["busy_poll_us"]): r for r in rows["nic_spin"]}
    assert sorted(lines) == [(0.0, 0.0), (spin.DEFAULT_SPIN_US, 50.0)]
    for line in lines.values():
        _positive(line, "value", "p99", "kernel", "ratio_to_kernel", "trickle_us", "host_cpu_us_per_rt")
        assert line["rounds"] == 8 and line["p99"] >= line["value"] and not line["default"]


@pytest.fixture
def http_tools(require_net: None) -> None:
    """ab and wrk, which ``make tools`` installs: a skip with the reason without them, a failure under
    TCPCHIMNEY_REQUIRE_NET=1."""
    if absent := load_tools.missing():
        reason = f"needs {' and '.join(absent)} (make tools installs them)"
        if os.environ.get("TCPCHIMNEY_REQUIRE_NET") == "1":
            pytest.fail(f"TCPCHIMNEY_REQUIRE_NET=1 but bench.http {reason}")
        pytest.skip(reason)


@pytest.mark.net
def test_bench_http_gives_every_tool_and_variant_from_error_free_runs(http_tools: None) -> None:
    """One second of each tool against each variant and the kernel: a JSON line per (tool, variant) with
    requests counted on both sides (the bench itself fails on a failed or non-2xx request)."""
    lines = list(http.run(seconds=1, runs=1))
    assert all(json.loads(json.dumps(line)) == line for line in lines)
    rows = _by_bench(lines)
    assert set(rows) == set(http.NAMES)
    got = {(r["tool"], r["variant"]): r for r in rows["http_requests_per_s"]}
    assert sorted(got) == sorted((t, v) for t in load_tools.TOOLS for v in short.SHORT_VARIANTS)
    for (tool, variant), line in got.items():
        _positive(line, "value", "kernel", "ratio_to_kernel", "host_cpu_us_per_req")
        assert line["requests"][0] > 0 and line["kernel_requests"][0] > 0 and line["unit"] == "req/s"
        assert line["keep_alive"] == (tool != "ab") and line["server_errors"][0] <= line["concurrency"] + 1
        assert (line["offloaded"][0] is None) == (variant == "host")
        if variant == "process":  # --offload enabled: every connection goes to the NIC
            assert line["offloaded"][0] > 0
    assert got[("wrk", "host")]["latency_p99_us"] >= got[("wrk", "host")]["latency_p50_us"] > 0


@pytest.mark.net
def test_bench_http_fails_a_run_whose_answers_are_not_2xx(
    http_tools: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http, "PATH", "/no-such-route")  # HttpApp answers 404
    with pytest.raises(load_tools.LoadError, match="status >= 400"):
        list(http.run(seconds=1, runs=1, names=("host",), tools=("wrk",)))


@pytest.mark.parametrize(
    ("module", "run"),
    [
        (nic, lambda: nic.run(MB, runs=1)),
        (nic_app, lambda: nic_app.run(MB, runs=1)),
        (nic_handoff, lambda: nic_handoff.run(rounds=1, runs=1)),
        (nic_recovery, lambda: nic_recovery.run(kills=1)),
        (short, lambda: short.run(seconds=0.1, rounds=1)),
        (spin, lambda: spin.run(rounds=1)),
        (http, lambda: http.run(seconds=1, runs=1)),
    ],
    ids=["nic", "nic_app", "nic_handoff", "nic_recovery", "short", "spin", "http"],
)
def test_without_a_tap_each_row_says_why_it_was_skipped(
    module: Any, run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nic, "unavailable_reason", lambda: "needs root (CAP_NET_ADMIN)")
    assert list(run()) == [{"bench": name, "skipped": "needs root (CAP_NET_ADMIN)"} for name in module.NAMES]


def test_bench_http_without_its_tools_says_which_are_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nic, "unavailable_reason", lambda: None)
    monkeypatch.setattr(http, "missing", lambda: ["wrk"])
    assert list(http.run(seconds=1, runs=1)) == [
        {"bench": "http_requests_per_s", "skipped": "needs wrk (make tools)"}
    ]
