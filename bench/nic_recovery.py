"""Recovery from the NIC process's death, against Linux: how soon the host notices, how soon each stream
moves again, and what is sent again, over many ``kill -9``s of the NIC.

``python -m bench.nic_recovery [--kills K] [--runs R] [--mb-per-request N] [--directions ...] [--capture]``

Each run starts ``chimney serve http --offload enabled --nic process --events FILE`` in a fresh namespace,
and there one Linux program (bench/nic_recovery_peer.py) with two streams at once that go on until the kills
are done: pipelined GETs (**stack_to_linux**) and pipelined POSTs to ``/sha256`` (**linux_to_stack**), every
body and every answer SHA-256 checked. Then K times: wait until a NIC has started, both connections were
offloaded to it and it has lived ``RESTART_YOUNG`` (so the restart's hold-down never doubles) plus a random
0-0.3 s; the Linux program notes where each stream stands in the kernel and kills the NIC (``SIGKILL``), and
reports when each stream moved again; the next kill waits for the next NIC and for both offloads to it.

Per kill (wall clock, ``time.time``, in every process):

- **detection**: ``nic_failed.detected`` in the events file minus the kill's time, and beside it when the
  NIC had exited (its pidfd readable, as the peer saw it);
- **moving again**, per direction: from the kill to the first byte the receiver got beyond what the kernel
  had at the kill plus ``margin`` (bench/nic_recovery_peer.py defines both points and the margin); for
  linux_to_stack the stack is the receiver and its acknowledgements (``tcpi_bytes_acked``) its progress;
- **later stall**, per direction: from moving again to the next kill, the longest time without progress
  (``at``: when it began), e.g. around the offload to the next NIC;
- **phases**: from the kill to the host's ``nic_failed`` line, to the last ``uploaded (nic_failed)`` (every
  connection rebuilt on the host), to the next ``nic_started`` and to both connections ``offloaded`` to it;
- **late bytes**: what the kernel still took in from before the kill once it was sent: the peer looks again
  when the NIC has died (its pidfd), before the host rebuilt anything (``late_looked_in_time`` counts the
  kills where that look came before the host's ``nic_failed`` line), the evidence that the margin covers
  what was under way; moving again is counted past the larger of the two points;
- **sent again**: Linux's ``tcpi_bytes_retrans`` of each connection and the namespace's ``TcpRetransSegs``
  (and why: ``TCPTimeouts``, ``TCPLossProbes``, ...) from this kill to the next; the host's
  ``recovered_tx_bytes`` (send bytes it took back from the dead NIC to send, of which only the part the NIC
  had already sent goes out again; the ``done`` line's ``offload.nic.host_transport`` has the run's total);
  with ``--capture``, the bytes each side really sent twice, from a capture of the TAP
  (bench/wire_retrans.py), split at the next NIC's spawn (the kill's ``nic_failed`` line plus the
  hold-down): ``recovery`` while the host carries the connections, ``restart`` from there to the next kill.

Lines: ``nic_recovery_ms`` per direction (median over every kill of every run, p90, max, the detection time,
the later stall, the bytes sent again), ``nic_recovery_detection_ms``, ``nic_recovery_phases_ms`` and
``nic_recovery_retransmitted_bytes``. A run whose checks fail (a digest, a connection lost or reset, a kill
the server did not count) raises instead of giving figures. ``--trace FILE`` keeps every kill's record.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import queue
import random
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import wire_retrans
from bench.nic import median, skipped
from bench.nic_handoff import pct
from tcpchimney.cli.apps import deterministic_sha256
from tcpchimney.link.netns import netns_exec, remove_netns, unique_name
from tcpchimney.nic.launch import RESTART_DELAY, RESTART_YOUNG

MB = 1_000_000
DIRECTIONS = ("linux_to_stack", "stack_to_linux")
STACK = "198.18.0.2"
GET_SEED, POST_SEED = 5, 6
MARGIN = 4 * 65536  # four of the largest frames one TAP write carries (bench/nic_recovery_peer.py)
INTERVAL = 0.0005  # seconds between two looks at the sender's acknowledgements once the kills began
JITTER = 0.3  # a random extra life of each NIC, so the kills land anywhere in the streams
STEP_TIMEOUT = 30.0
ROOT = Path(__file__).resolve().parent.parent
NAMES = (
    "nic_recovery_ms",
    "nic_recovery_detection_ms",
    "nic_recovery_phases_ms",
    "nic_recovery_retransmitted_bytes",
)
RESETS = ("OutRsts", "EstabResets")  # Linux's: any reset at all fails the run


def wait(what: str, predicate: Callable[[], Any], timeout: float = STEP_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {what} within {timeout:.0f} s")
        time.sleep(0.005)
    return value


# ====================================================================== the server and the Linux side


class Events:
    """The server's events file, read as it grows."""

    def __init__(self, path: Path) -> None:
        self.path, self._offset, self._rest = path, 0, b""
        self.log: list[dict[str, Any]] = []

    def read(self) -> list[dict[str, Any]]:
        with contextlib.suppress(FileNotFoundError), open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
            self._offset += len(data)
            *lines, self._rest = (self._rest + data).split(b"\n")
            self.log.extend(json.loads(line) for line in lines if line)
        return self.log

    def after(self, start: int, name: str, **match: Any) -> list[tuple[int, dict[str, Any]]]:
        """``(index, event)`` of each event ``name`` from index ``start`` on whose fields equal ``match``."""
        return [
            (i, e)
            for i, e in enumerate(self.read()[start:], start)
            if e["event"] == name and all(e.get(k) == v for k, v in match.items())
        ]


class Server:
    """``chimney serve http`` with the NIC in its own process, in a namespace it creates."""

    def __init__(self, netns: str, events: Path, nic_cpu: int | None) -> None:
        argv = [sys.executable, "-m", "tcpchimney.cli.main", "serve", "http", "--netns", netns]
        argv += ["--offload", "enabled", "--nic", "process", "--events", str(events)]
        argv += [] if nic_cpu is None else ["--nic-cpu", str(nic_cpu)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = json.loads(self.proc.stdout.readline() or b"{}") if ready else {}
        if line.get("event") != "ready":
            self.kill()
            raise RuntimeError(f"chimney serve did not start: {self.proc.stderr.read().decode()}")
        self.ready: dict[str, Any] = line

    def stop(self) -> dict[str, Any]:
        """SIGTERM; its ``done`` line."""
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=30)
        done = [json.loads(x) for x in out.decode().splitlines() if x.startswith('{"event": "done"')]
        if self.proc.returncode != 0 or not done:
            raise RuntimeError(f"chimney serve ended with {self.proc.returncode}: {err.decode()}")
        return dict(done[-1])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Peer:
    """bench/nic_recovery_peer.py in the namespace; its lines gathered by a thread."""

    def __init__(self, netns: str, config: dict[str, Any]) -> None:
        argv = netns_exec(netns, sys.executable, "-m", "bench.nic_recovery_peer", json.dumps(config))
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT
        )
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(json.loads(raw))
        self.lines.put(None)

    def send(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        self.proc.stdin.flush()

    def expect(self, event: str, timeout: float = STEP_TIMEOUT, **match: Any) -> dict[str, Any]:
        """The first line ``event`` with the fields ``match``, seen already or arriving within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.seen:
                if line["event"] == event and all(line.get(k) == v for k, v in match.items()):
                    self.seen.remove(line)
                    return line
            try:
                got = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"the Linux side sent no {event} {match} within {timeout:.0f} s") from None
            if got is None:
                self.proc.wait()
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"the Linux side exited ({self.proc.returncode}): {err.strip()}")
            self.seen.append(got)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# ====================================================================== one run


@dataclass
class Kill:
    """One kill and what followed; times in seconds after the kill."""

    killed: dict[str, Any]  # the peer's line: time, marks, counters
    failed: dict[str, Any]  # the nic_failed event
    moving: dict[str, float] = field(default_factory=dict)
    late: dict[str, int] = field(default_factory=dict)  # bytes from before the kill seen after it
    traces: dict[str, list[Any]] = field(default_factory=dict)  # the peer's looks until each moved
    stalls: dict[str, dict[str, float]] = field(default_factory=dict)  # the longest later stall
    phases: dict[str, float] = field(default_factory=dict)
    linux: dict[str, int] = field(default_factory=dict)  # Linux's counters, to the next kill
    # Bytes sent twice (capture): from the kill to the next NIC's spawn, and from there to the next kill.
    wire: dict[str, tuple[int, int]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)  # the server's, from the killed NIC's start

    @property
    def time(self) -> float:
        return float(self.killed["time"])

    @property
    def detection(self) -> float:
        return float(self.failed["detected"]) - self.time

    @property
    def looked_in_time(self) -> bool:
        """The peer's second look (once the NIC had died) came before the host's ``nic_failed`` line, which
        it writes before it rebuilds any connection: no byte of the host can be in what was counted late."""
        looked = float(self.killed["looked"])
        return self.killed["died"] is not None and looked < float(self.failed["time"])


@dataclass
class Run:
    kills: list[Kill]
    done: dict[str, Any]  # the server's done line
    checks: dict[str, Any]  # the peer's: digests right and wrong per direction
    before: dict[str, int]  # Linux's counters at the first kill: what came before any kill
    wire_before: dict[str, int] = field(default_factory=dict)
    capture_drops: int | None = None

    @property
    def transport(self) -> dict[str, Any]:
        return dict(self.done["offload"]["nic"]["host_transport"])


def peer_config(directions: Sequence[str], nbytes: int) -> dict[str, Any]:
    return {
        "host": STACK,
        "port": 80,
        "directions": list(directions),
        "get_bytes": nbytes,
        "get_seed": GET_SEED,
        "get_sha256": deterministic_sha256(nbytes, GET_SEED),
        "post_bytes": nbytes,
        "post_seed": POST_SEED,
        "margin": MARGIN,
        "interval": INTERVAL,
    }


class Runner:
    """The kills of one session."""

    def __init__(self, events: Events, peer: Peer, directions: Sequence[str], rng: random.Random) -> None:
        self.events, self.peer, self.directions, self.rng = events, peer, directions, rng
        self.ports = {d: int(p) for d, p in peer.expect("ready")["ports"].items() if p is not None}

    def offloaded_since(self, start: int) -> dict[str, float] | None:
        """When each stream's connection was offloaded since event ``start``; None until all were."""
        found: dict[str, float] = {}
        for _, e in self.events.after(start, "offloaded"):
            for d in self.directions:
                if e["connection"][3] == self.ports[d]:
                    found.setdefault(d, float(e["time"]))
        return found if len(found) == len(self.directions) else None

    def started_after(self, start: int, epoch: int) -> list[tuple[int, dict[str, Any]]]:
        return [x for x in self.events.after(start, "nic_started") if int(x[1]["epoch"]) > epoch]

    def kill_point(self) -> tuple[int, dict[str, Any]]:
        """Wait until the newest NIC holds both connections and has lived RESTART_YOUNG plus a random
        extra; its ``nic_started`` event and that event's index."""
        start, started = self.events.after(0, "nic_started")[-1]
        wait("offload to the new NIC", lambda: self.offloaded_since(start))
        left = float(started["time"]) + RESTART_YOUNG - time.time()
        time.sleep(max(0.0, left) + self.rng.uniform(0, JITTER))
        return start, started

    def one_kill(self, kill_id: int) -> Kill:
        start, started = self.kill_point()
        self.peer.send(op="kill", pid=started["pid"], id=kill_id)
        kill = Kill(self.peer.expect("killed", id=kill_id), {})
        found = wait("nic_failed", lambda: self.events.after(start, "nic_failed", pid=started["pid"]))
        kill.failed = found[0][1]
        epoch = int(started["epoch"])
        new = wait("new NIC", lambda: self.started_after(start, epoch))
        for d in self.directions:
            moving = self.peer.expect("moving", id=kill_id, direction=d)
            kill.moving[d], kill.traces[d] = float(moving["after_s"]), moving["trace"]
        kill.late = {d: int(n) for d, n in kill.killed["late"].items()}
        reoffloaded = wait("offload to the new NIC", lambda: self.offloaded_since(new[0][0]))
        rebuilt = [float(e["time"]) for _, e in self.events.after(start, "uploaded", reason="nic_failed")]
        kill.phases = {
            "failed_event": float(kill.failed["time"]) - kill.time,
            "rebuilt": max(rebuilt, default=float("nan")) - kill.time,
            "nic_started": float(new[0][1]["time"]) - kill.time,
            "reoffloaded": max(reoffloaded.values()) - kill.time,
        }
        kill.events = self.events.read()[start:]
        return kill

    def finish(self, kills: list[Kill]) -> dict[str, Any]:
        """One more NIC life (the last kill's later stall is watched as long as the others'), then the
        streams end; the peer's ``done`` line."""
        self.kill_point()
        self.peer.send(op="stop")
        for i, kill in enumerate(kills):
            kill.stalls = self.peer.expect("settled", id=i, timeout=120)["stalls"]
        return self.peer.expect("done", timeout=120)


def linux_between(a: dict[str, Any], b: dict[str, Any], directions: Sequence[str]) -> dict[str, int]:
    """Linux's counters from one look to the next: the namespace's and each stream's bytes sent again."""
    out = {k: int(v) - int(a["ns"][k]) for k, v in b["ns"].items()}
    for d in directions:
        out[d] = int(b[d]["bytes_retrans"]) - int(a[d]["bytes_retrans"])
    return out


def check_run(run: Run, directions: Sequence[str], kills: int) -> None:
    """The figures are of a correct run: every digest right, every kill counted, nothing lost or reset."""
    for d in directions:
        check = run.checks[d]
        if check["bad"] or not check["ok"]:
            raise RuntimeError(f"{d}: {check['bad']} corrupt of {check['ok'] + check['bad']} transfers")
    offload, transport = run.done["offload"], run.transport
    if offload["nic_failures"] != kills or transport["recoveries"] != kills:
        raise RuntimeError(f"{kills} kills, but the server counted {offload['nic_failures']} NIC failures")
    if transport["recovery_lost"] or offload["faults"]:
        raise RuntimeError(f"lost in recovery: {transport['recovery_lost']}, faults: {offload['faults']}")
    resets = {c: run.before[c] + sum(k.linux[c] for k in run.kills) for c in RESETS}
    if any(resets.values()):
        raise RuntimeError(f"Linux counted resets: {resets}")


def one_run(
    kills: int, nbytes: int, directions: Sequence[str], seed: int, nic_cpu: int | None, capture: str | None
) -> Run:
    """One session of ``kills`` kills; ``capture``: None (none), "" (a temporary file) or where to keep it."""
    netns = unique_name("nr")
    with tempfile.TemporaryDirectory(prefix="nic-recovery-") as tmp:
        events = Events(Path(tmp) / "events.jsonl")
        procs: list[Any] = []
        try:
            procs.append(server := Server(netns, events.path, nic_cpu))
            if capture is not None:
                pcap = Path(capture or Path(tmp) / "wire.pcap")
                procs.append(cap := wire_retrans.Capture(netns, server.ready["tap"], pcap))
            procs.append(peer := Peer(netns, peer_config(directions, nbytes)))
            runner = Runner(events, peer, directions, random.Random(seed))
            done = [runner.one_kill(k) for k in range(kills)]
            peer_done = runner.finish(done)
            peer.proc.wait(timeout=10)
            server_done = server.stop()
            drops = cap.stop() if capture is not None else None
            wire = wire_of(cap.path, runner.ports, done) if capture is not None else {}
        finally:
            for proc in reversed(procs):
                proc.kill()
            remove_netns(netns)
    counters = [k.killed["counters"] for k in done] + [peer_done["counters"]]
    for i, kill in enumerate(done):
        kill.linux = linux_between(counters[i], counters[i + 1], directions)
        kill.wire = {d: (sums[2 * i + 1], sums[2 * i + 2]) for d, sums in wire.items()}
    before = {k: int(v) for k, v in counters[0]["ns"].items()}
    run = Run(done, server_done, peer_done["checks"], before, {d: s[0] for d, s in wire.items()}, drops)
    check_run(run, directions, kills)
    return run


def wire_of(path: Path, ports: dict[str, int], kills: list[Kill]) -> dict[str, list[int]]:
    """Bytes each stream's sender sent twice: before the first kill, then for each kill from the kill to the
    next NIC's spawn (the recovery: the host carries the connections; nothing of a new NIC exists yet) and
    from the spawn to the next kill (the restart, the offload to the new NIC, its life)."""
    flows = {d: (port, 80) if d == "linux_to_stack" else (80, port) for d, port in ports.items()}
    cuts = [t for k in kills for t in (k.time, float(k.failed["time"]) + RESTART_DELAY)]
    return wire_retrans.resent_bytes(path, flows, cuts)


# ====================================================================== figures


def ms(values: Sequence[float]) -> dict[str, float]:
    return {
        "median": round(median(values) * 1e3, 2),
        "p90": round(pct(values, 0.9) * 1e3, 2),
        "max": round(max(values) * 1e3, 2),
        "min": round(min(values) * 1e3, 2),
    }


def common(runs: list[Run], nbytes: int) -> dict[str, Any]:
    kills = sum(len(r.kills) for r in runs)
    return {"kills": kills, "runs": len(runs), "margin_bytes": MARGIN, "request_bytes": nbytes}


def moving_lines(runs: list[Run], directions: Sequence[str], nbytes: int) -> Iterator[dict[str, Any]]:
    kills = [k for r in runs for k in r.kills]
    detection = ms([k.detection for k in kills])
    host_tx_per_kill = round(sum(int(r.transport["recovered_tx_bytes"]) for r in runs) / len(kills))
    for d in directions:
        moving = ms([k.moving[d] for k in kills])
        stalls = [k.stalls[d] for k in kills]
        yield {
            "bench": "nic_recovery_ms",
            "direction": d,
            "value": moving["median"],
            "unit": "ms",
            "p90": moving["p90"],
            "max": moving["max"],
            "min": moving["min"],
            "aim_ms": 100,
            "detection_ms": detection["median"],
            "detection_p90_ms": detection["p90"],
            "later_stall_ms": ms([s["stall_s"] for s in stalls]),
            "later_stalls_over_100ms": sum(s["stall_s"] > 0.1 for s in stalls),
            "linux_retrans_bytes_per_kill": median([k.linux[d] for k in kills]),
            "wire_resent_bytes_per_kill": median([sum(k.wire[d]) for k in kills]) if kills[0].wire else None,
            "host_recovered_tx_bytes_per_kill": host_tx_per_kill if d == "stack_to_linux" else None,
            "late_bytes_max": max(k.late[d] for k in kills),
            "late_over_margin": sum(k.late[d] > MARGIN for k in kills),
            "late_looked_in_time": sum(k.looked_in_time for k in kills),
            "runs_median_ms": [round(median([k.moving[d] for k in r.kills]) * 1e3, 2) for r in runs],
            "each_ms": [round(k.moving[d] * 1e3, 2) for k in kills],
            "transfers_checked": sum(r.checks[d]["ok"] for r in runs),
            **common(runs, nbytes),
        }


def detection_line(runs: list[Run], nbytes: int) -> dict[str, Any]:
    kills = [k for r in runs for k in r.kills]
    detection = ms([k.detection for k in kills])
    by: dict[str, int] = {}
    for k in kills:
        by[k.failed["detected_by"]] = by.get(k.failed["detected_by"], 0) + 1
    line = {"bench": "nic_recovery_detection_ms", "value": detection["median"], "unit": "ms", **detection}
    each = [round(k.detection * 1e3, 2) for k in kills]
    # The NIC's pidfd became readable (the process had exited) this long after the signal, seen by the peer:
    # how much of the detection is the kernel tearing the process down.
    death = ms([float(k.killed["died"]) - k.time for k in kills if k.killed["died"] is not None])
    return {**line, "detected_by": by, "death_ms": death, "each_ms": each, **common(runs, nbytes)}


def phases_line(runs: list[Run], nbytes: int) -> dict[str, Any]:
    kills = [k for r in runs for k in r.kills]
    phases = {p: ms([k.phases[p] for k in kills]) for p in kills[0].phases}
    return {
        "bench": "nic_recovery_phases_ms",
        "value": phases["rebuilt"]["median"],
        "unit": "ms",
        **{p: v["median"] for p, v in phases.items()},
        "p90": {p: v["p90"] for p, v in phases.items()},
        "max": {p: v["max"] for p, v in phases.items()},
        "restart_hold_down_ms": RESTART_DELAY * 1e3,
        "last_recovery_us": [r.transport["last_recovery_us"] for r in runs],
        **common(runs, nbytes),
    }


def retransmitted_line(runs: list[Run], directions: Sequence[str], nbytes: int) -> dict[str, Any]:
    kills = [k for r in runs for k in r.kills]
    host_tx = sum(int(r.transport["recovered_tx_bytes"]) for r in runs)
    linux = {c: sum(k.linux[c] for k in kills) for c in kills[0].linux if c[0].isupper()}
    wire = {d: sum(sum(k.wire[d]) for k in kills) for d in kills[0].wire}
    split = {
        d: {"recovery": sum(k.wire[d][0] for k in kills), "restart": sum(k.wire[d][1] for k in kills)}
        for d in kills[0].wire
    }
    return {
        "bench": "nic_recovery_retransmitted_bytes",
        "value": round(host_tx / len(kills)),
        "unit": "bytes/kill",
        "host_recovered_tx_bytes": host_tx,
        "host_recovered_rx_bytes": sum(int(r.transport["recovered_rx_bytes"]) for r in runs),
        "host_recovered_connections": sum(int(r.transport["recovered"]) for r in runs),
        "linux_retrans_bytes": {d: sum(k.linux[d] for k in kills) for d in directions},
        "linux_retrans_segs": linux["RetransSegs"],
        "linux_retrans_segs_per_kill": median([k.linux["RetransSegs"] for k in kills]),
        "linux_counters": linux,
        "linux_counters_before_kills": {c: sum(r.before[c] for r in runs) for c in runs[0].before},
        "wire_resent_bytes": wire or None,
        "wire_resent_bytes_split": split or None,
        "wire_resent_bytes_before_kills": {d: sum(r.wire_before[d] for r in runs) for d in wire} or None,
        "capture_drops": [r.capture_drops for r in runs] if wire else None,
        **common(runs, nbytes),
    }


def lines(runs: list[Run], directions: Sequence[str], nbytes: int) -> Iterator[dict[str, Any]]:
    yield from moving_lines(runs, directions, nbytes)
    yield detection_line(runs, nbytes)
    yield phases_line(runs, nbytes)
    yield retransmitted_line(runs, directions, nbytes)


def pcap_of(capture: str | None, i: int, runs: int) -> str | None:
    """Where run ``i`` keeps its capture: None (no capture), "" (a temporary file) or a file name."""
    if capture is None or not capture or runs == 1:
        return capture
    return f"{capture}.{i}"


def run(
    kills: int = 20,
    runs: int = 1,
    nbytes: int = 64 * MB,
    directions: Sequence[str] = DIRECTIONS,
    seed: int = 1,
    nic_cpu: int | None = None,
    capture: str | None = None,
    trace: str | None = None,
) -> Iterator[dict[str, Any]]:
    skip = skipped(NAMES)
    if skip is None and capture is not None and (why := wire_retrans.available()) is not None:
        skip = [{"bench": name, "skipped": why} for name in NAMES]
    if skip is not None:
        yield from skip
        return
    results = [
        one_run(kills, nbytes, directions, seed + i, nic_cpu, pcap_of(capture, i, runs)) for i in range(runs)
    ]
    if trace is not None:
        Path(trace).write_text(json.dumps([asdict(r) for r in results]))
    yield from lines(results, directions, nbytes)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20, help="kills of the NIC per run")
    parser.add_argument("--runs", type=int, default=1, help="runs, each a fresh server (kills are pooled)")
    parser.add_argument("--mb-per-request", type=int, default=64, help="MB per GET response and POST body")
    parser.add_argument("--directions", default=",".join(DIRECTIONS), help="comma list of the streams")
    parser.add_argument("--seed", type=int, default=1, help="of the NICs' random extra lives")
    parser.add_argument("--nic-cpu", type=int, help="pin the NIC process to this CPU")
    parser.add_argument(
        "--capture",
        nargs="?",
        const="",
        metavar="PCAP",
        help="count the bytes sent twice on the wire from a capture of the TAP (kept in PCAP if given)",
    )
    parser.add_argument("--trace", help="write every kill's record (JSON) to this file")
    args = parser.parse_args(argv)
    directions = [d for d in args.directions.split(",") if d]
    if not directions or any(d not in DIRECTIONS for d in directions):
        parser.error(f"--directions is a comma list of {', '.join(DIRECTIONS)}")
    options = (args.seed, args.nic_cpu, args.capture, args.trace)
    for line in run(args.kills, args.runs, args.mb_per_request * MB, directions, *options):
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
