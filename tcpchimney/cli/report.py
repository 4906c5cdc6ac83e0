"""Rich rendering of what the commands measured: transfers, the connection table and the stack's counters."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from tcpchimney.host.interface import ip_str
from tcpchimney.host.offload import OffloadState

if TYPE_CHECKING:
    from tcpchimney.host.sockets import TcpSocket

MB = 1_000_000


@dataclass(slots=True)
class Transfer:
    """One verified exchange of the demo."""

    name: str  # e.g. "curl GET /bytes -> Linux"
    nbytes: int
    seconds: float
    cpu_seconds: float  # CPU time of this process (the stack runs in it) during the transfer
    expected_sha256: str
    got_sha256: str

    @property
    def ok(self) -> bool:
        return self.expected_sha256 == self.got_sha256

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / MB / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "bytes": self.nbytes,
            "seconds": round(self.seconds, 3),
            "MB_per_s": round(self.mb_per_s, 1),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "sha256_ok": self.ok,
        }


@dataclass(frozen=True, slots=True)
class ConnectionRow:
    """One connection as the demo saw it half-way through its transfer, and the state it ended in."""

    local: str
    remote: str
    state: str  # the TCP state half-way through the transfer
    offload: str = ""  # where it ran then: "offloaded", "host: <reason>", ... (see offload_text)
    detail: str = ""
    final: str = ""  # its TCP state when the demo ended; CLOSED once the stack had forgotten it

    @property
    def key(self) -> tuple[str, str]:
        return self.local, self.remote


def offload_text(sock: TcpSocket) -> str:
    """Where the connection runs and, on the host, the reason of the last decision that kept it there."""
    state = sock.offload_state
    if state is None:
        return "host (no offload target)"
    if state is not OffloadState.IN_HOST:
        return str(state.value).replace("_", " ")
    reason = sock.offload_reason
    return "host" if reason is None else f"host: {reason.value.replace('_', ' ')}"


def connection_row(sock: TcpSocket) -> ConnectionRow:
    detail = ""
    if sock.offload_state in (None, OffloadState.IN_HOST):  # the host's engine is stale while offloaded
        conn = sock.conn
        detail = f"cwnd={conn.cwnd} srtt={conn.srtt * 1000:.2f}ms" if conn.srtt else f"cwnd={conn.cwnd}"
    local = f"{ip_str(sock.local_ip)}:{sock.local_port}"
    remote = f"{ip_str(sock.remote_ip)}:{sock.remote_port}"
    return ConnectionRow(local, remote, sock.state.name, offload_text(sock), detail)


def add_new_rows(seen: list[ConnectionRow], sample: Iterable[ConnectionRow]) -> None:
    """Append the connections of ``sample`` not in ``seen``: each keeps the row of its own transfer's
    midpoint, not a later one taken while it was closing."""
    known = {row.key for row in seen}
    seen.extend(row for row in sample if row.key not in known)


def with_final_states(rows: Iterable[ConnectionRow], still_open: Iterable[TcpSocket]) -> list[ConnectionRow]:
    """``rows`` with the state each connection was in when the demo ended (CLOSED: no longer known)."""
    final = {connection_row(sock).key: sock.state.name for sock in still_open}
    return [replace(row, final=final.get(row.key, "CLOSED")) for row in rows]


@dataclass(slots=True)
class DemoResult:
    link: str  # "tap" or "sim"
    transfers: list[Transfer]
    rows: list[ConnectionRow]  # each connection at its transfer's midpoint, with its final state
    counters: dict[str, dict[str, int]]
    timeline: list[str] = field(default_factory=list)  # offload events, cli.offload.timeline_lines
    offload: dict[str, Any] = field(default_factory=dict)  # offload counters (mode, cycles, host, nic)


def transfers_table(transfers: Iterable[Transfer]) -> Table:
    table = Table(title="Transfers", title_justify="left")
    table.add_column("exchange")
    table.add_column("MB", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("MB/s", justify="right", style="bold")
    table.add_column("CPU s", justify="right")
    table.add_column("CPU s/GB", justify="right")
    table.add_column("SHA-256")
    for t in transfers:
        per_gb = t.cpu_seconds / (t.nbytes / 1e9) if t.nbytes else 0.0
        verdict = Text("OK", style="bold green") if t.ok else Text("MISMATCH", style="bold red")
        table.add_row(
            t.name,
            f"{t.nbytes / MB:.0f}",
            f"{t.seconds:.2f}",
            f"{t.mb_per_s:.1f}",
            f"{t.cpu_seconds:.2f}",
            f"{per_gb:.1f}",
            verdict,
        )
    return table


def connections_table(
    rows: Iterable[ConnectionRow], title: str = "Connections, half-way through each transfer"
) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("local")
    table.add_column("remote")
    table.add_column("state")
    table.add_column("offload")
    table.add_column("at the end")
    table.add_column("detail", style="dim")
    any_row = False
    for row in rows:
        any_row = True
        table.add_row(row.local, row.remote, row.state, row.offload, row.final, row.detail)
    if not any_row:
        table.add_row("-", "-", "(none seen)", "", "", "")
    return table


def counters_table(counters: Mapping[str, Mapping[str, int]], title: str = "Stack counters") -> Table:
    """Non-zero counters, one row per layer: a person scans a row, not a JSON dump."""
    table = Table(title=title, title_justify="left")
    table.add_column("layer", style="bold")
    table.add_column("counters")
    for layer, values in counters.items():
        shown = [f"{key}={value:,}" for key, value in sorted(values.items()) if value]
        if shown:
            table.add_row(layer, Text("  ".join(shown), overflow="fold"))
    return table


def timeline_table(lines: Iterable[str], title: str = "Offload timeline") -> Table:
    """Each offload event on one line: when, which connection, what and why."""
    table = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 1))
    table.add_column("event")
    for line in lines:
        style = "green" if " offloaded (" in line else "yellow" if " uploaded (" in line else "dim"
        table.add_row(Text(line, style=style))
    return table


def summary(
    transfers: list[Transfer],
    rows: Iterable[ConnectionRow],
    counters: Mapping[str, Mapping[str, int]],
) -> Group:
    return Group(transfers_table(transfers), connections_table(rows), counters_table(counters))
