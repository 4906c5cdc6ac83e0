"""``chimney demo --sim`` piped, as into a log: no table row wrapped over several lines, and the connection
table shows where each connection ran (host or NIC, and why) while data moved, and how it ended."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tcpchimney.cli.report import ConnectionRow, connections_table, with_final_states

_ADDR = re.compile(r"^198\.18\.\d+\.\d+:\d+$")
_STATES = {
    "ESTABLISHED",
    "CLOSE_WAIT",
    "FIN_WAIT_1",
    "FIN_WAIT_2",
    "LAST_ACK",
    "CLOSING",
    "TIME_WAIT",
    "CLOSED",
}


def boxed_tables(lines: list[str]) -> dict[str, tuple[list[str], list[list[str]]]]:
    """title -> (header cells, body rows as cells) of each rich table with a box."""
    tables = {}
    for i, line in enumerate(lines):
        if not line.startswith("┏"):
            continue
        header = [cell.strip() for cell in lines[i + 1].strip().strip("┃").split("┃")]
        end = next(j for j in range(i + 3, len(lines)) if lines[j].startswith("└"))
        rows = [[cell.strip() for cell in row.strip().strip("│").split("│")] for row in lines[i + 3 : end]]
        tables[lines[i - 1].strip()] = (header, rows)
    return tables


@pytest.fixture(scope="module")
def piped_demo() -> tuple[list[str], dict[str, object]]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "FORCE_COLOR", "TTY_COMPATIBLE")
    }
    argv = [
        sys.executable,
        "-m",
        "tcpchimney.cli.main",
        "demo",
        "--sim",
        "--sim-size",
        "2",
        "--offload",
        "enabled",
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    lines = [line.rstrip() for line in result.stdout.splitlines()]
    return lines[:-1], json.loads(lines[-1])


def test_no_table_row_is_wrapped(piped_demo: tuple[list[str], dict[str, object]]) -> None:
    lines, done = piped_demo
    tables = boxed_tables(lines)
    _, transfers = tables["Transfers"]
    names = [t["name"] for t in done["transfers"]]  # type: ignore[attr-defined]
    assert [row[0] for row in transfers] == names  # one line each, the name whole
    _, connections = tables["Connections, half-way through each transfer"]
    assert connections
    for row in connections:
        assert _ADDR.match(row[0]) and _ADDR.match(row[1]) and row[2] in _STATES and row[3], row
    _, counters = tables["Stack counters"]
    assert all(row[0] for row in counters), "a counters row continued on a line of its own"
    timeline = lines[lines.index("Offload timeline") + 1 : -1] if "Offload timeline" in lines else []
    assert timeline and all(line.lstrip().startswith(("t=+", "... ")) for line in timeline), timeline
    assert any(line.startswith("No TAP device") and line.endswith("simulated link.") for line in lines)


def test_connections_show_offload_state_mid_transfer_and_how_they_ended(
    piped_demo: tuple[list[str], dict[str, object]],
) -> None:
    lines, _ = piped_demo
    header, rows = boxed_tables(lines)["Connections, half-way through each transfer"]
    assert header[:5] == ["local", "remote", "state", "offload", "at the end"]
    server_side = [row for row in rows if row[0].endswith(":80")]
    assert len(server_side) == 2  # the GET and the POST, each once
    assert all(row[2] == "ESTABLISHED" and row[3] == "offloaded" for row in server_side), server_side
    # The server stack had forgotten both by the end; nothing is shown as still open.
    assert all(row[4] == "CLOSED" for row in server_side)
    assert all(row[4] in ("CLOSED", "TIME_WAIT") for row in rows), rows


class _Sock:
    """The attributes connection_row reads of a TcpSocket."""

    def __init__(self, port: int, state: str) -> None:
        self.local_ip, self.local_port = bytes([198, 18, 0, 2]), 80
        self.remote_ip, self.remote_port = bytes([198, 18, 0, 1]), port
        self.state = type("S", (), {"name": state})()
        self.offload_state = None
        self.offload_reason = None
        self.conn = type("C", (), {"cwnd": 14480, "srtt": 0.0})()


def test_final_states_name_closed_connections_as_closed() -> None:
    rows = [
        ConnectionRow("198.18.0.2:80", "198.18.0.1:40000", "ESTABLISHED", "offloaded"),
        ConnectionRow("198.18.0.2:80", "198.18.0.1:40001", "ESTABLISHED", "offloaded"),
    ]
    final = with_final_states(rows, [_Sock(40001, "TIME_WAIT")])  # type: ignore[list-item]
    assert [row.final for row in final] == ["CLOSED", "TIME_WAIT"]
    assert connections_table(final).columns[3].header == "offload"
