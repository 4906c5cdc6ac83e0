"""chimney top's view state: keys, rates from two looks, sort and filter."""

from __future__ import annotations

from typing import Any

from tcpchimney.cli.top import View, _passes, _sort_key


def row(conn_id: int, sent: int, received: int, state: str = "Offloaded") -> dict[str, Any]:
    return {
        "id": conn_id,
        "bytes_sent": sent,
        "bytes_received": received,
        "offload_state": state,
        "state": "ESTABLISHED",
    }


def test_keys_cycle_the_sort_and_the_filter_and_q_quits() -> None:
    view = View()
    assert view.key("s") and view.sort == "id"
    assert view.key("s") and view.key("s") and view.sort == "rate"
    assert view.key("f") and view.filter == "offloaded" and view.key("f") and view.filter == "in host"
    assert view.key("p") and view.paused and view.key("p") and not view.paused
    assert view.key("x") and (view.sort, view.filter) == ("rate", "in host")
    assert not view.key("q") and not view.key("\x03")


def test_rates_are_the_bytes_between_two_looks_and_closed_connections_go() -> None:
    view = View()
    view.update_rates([row(1, 0, 0), row(2, 100, 0)], now=10.0)
    assert view.rates == {}
    view.update_rates([row(1, 2_000_000, 500), row(2, 100, 0)], now=12.0)
    assert view.rates == {1: (1_000_000.0, 250.0), 2: (0.0, 0.0)}
    view.update_rates([row(2, 300, 0)], now=13.0)
    assert view.rates == {2: (200.0, 0.0)}


def test_sort_by_rate_puts_the_busiest_first_and_filters_pick_a_state() -> None:
    view = View()
    view.update_rates([row(1, 0, 0), row(2, 0, 0, "InHost")], now=0.0)
    view.update_rates([row(1, 10, 0), row(2, 5000, 0, "InHost")], now=1.0)
    rows = [row(1, 10, 0), row(2, 5000, 0, "InHost")]
    assert [r["id"] for r in sorted(rows, key=lambda r: _sort_key(r, view))] == [2, 1]
    assert [r["id"] for r in rows if _passes(r, "offloaded")] == [1]
    assert [r["id"] for r in rows if _passes(r, "in host")] == [2]
