"""The admin verbs against a real ``chimney serve`` over TAP with a Linux peer: netstat rows match the
connections that exist, an offloaded connection shows the NIC's live internals, ``set global`` moves
connections (and ``--dry-run`` does not), ``why``/``history`` name the reasons the events file recorded, and
every kind of bad input is one sentence with the stack unaffected."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import pwd
import select
import socket
import struct
import subprocess
import sys
import termios
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from test_interop_offload import read_events
from test_interop_serve import STACK, Command

from tcpchimney.cli.nsutil import in_netns
from tcpchimney.manage.client import ControlError, call

CHIMNEY = [sys.executable, "-m", "tcpchimney.cli.main"]
# A download the server keeps sending for a while (60 s): curl's rate limit holds it at 20 MB/s.
SLOW_CURL = "curl -sS --fail --limit-rate 20M -o /dev/null http://{stack}/bytes/{size}"


def admin(
    *argv: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*CHIMNEY, *argv], capture_output=True, text=True, timeout=30, check=False, env=env
    )
    if check:
        assert result.returncode == 0, f"chimney {' '.join(argv)}: {result.stderr}"
    return result


def admin_json(*argv: str) -> Any:
    return json.loads(admin(*argv, "-j").stdout)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture
def name() -> str:
    return f"it-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def downloads(netns_name: str) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for proc in started:
            proc.kill()
            proc.wait()


def slow_download(netns: str, size: int = 1_200_000_000) -> subprocess.Popen[bytes]:
    return subprocess.Popen(in_netns(netns, "sh", "-c", SLOW_CURL.format(stack=STACK, size=size)))


def connections(name: str) -> list[dict[str, Any]]:
    return [r for r in admin_json("netstat", "--name", name) if r["state"] != "LISTEN"]


def internals(name: str) -> dict[int, dict[str, Any]] | None:
    """netstat -i's connections by number, once the NIC answered about each of them."""
    rows = [r for r in admin_json("netstat", "-i", "--name", name) if r["id"] is not None]
    return {r["id"]: r for r in rows} if all(r["internals"] is not None for r in rows) else None


def moving(row: dict[str, Any]) -> tuple[Any, ...]:
    i = row["internals"]
    return (i["cwnd"], i["rtt_ms"], i["snd_wnd"], i["unacked"], i["send_q"])


def test_netstat_shows_each_connection_and_offloaded_internals_move(
    netns_name: str, name: str, commands: list[Command], downloads: list[Any]
) -> None:
    server = Command("serve", "http", "--netns", netns_name, "--offload", "enabled", "--name", name)
    commands.append(server)
    assert server.ready["name"] == name and server.ready["control"].endswith(f"/{name}.ctl")
    rows = admin_json("netstat", "--name", name)
    assert [(r["local"], r["state"]) for r in rows] == [(f"{STACK}:80", "LISTEN")]

    downloads += [slow_download(netns_name), slow_download(netns_name)]
    rows = wait_for(
        lambda: (
            (r := connections(name))
            and len(r) == 2
            and all(x["offload_state"] == "Offloaded" for x in r)
            and r
        ),
        what="two offloaded connections",
    )
    for row in rows:
        assert set(row) >= {"local", "remote", "state", "offload_state", "reason", "nic"}
        assert row["local"] == f"{STACK}:80" and row["remote"].startswith("198.18.0.1:")
        assert row["state"] == "ESTABLISHED" and row["nic"] == "process"
    first = wait_for(lambda: (r := internals(name)) and r, what="the NIC's answers")
    time.sleep(1.5)  # 30 MB at curl's rate: more than the send buffers hold, so the counts must move
    second = wait_for(lambda: (r := internals(name)) and r, what="the NIC's answers")
    for row_id, now in second.items():
        before = first[row_id]
        assert now["internals"]["source"] == "nic" and now["internals"]["age_ms"] < 2000
        assert now["internals"]["mss"] > 0 and now["internals"]["cwnd"] > 0
        assert now["bytes_sent"] > before["bytes_sent"], "the download goes on"
        assert moving(now) != moving(before), "the NIC's figures move during the transfer"
    text = admin("netstat", "-i", "--name", name).stdout
    assert "Offloaded" in text and "from:nic" in text


def test_set_global_moves_connections_and_dry_run_does_not(
    netns_name: str, name: str, commands: list[Command], downloads: list[Any], tmp_path: Any
) -> None:
    events = tmp_path / "events.jsonl"
    server = Command(
        "serve",
        "http",
        "--netns",
        netns_name,
        "--offload",
        "enabled",
        "--name",
        name,
        "--events",
        str(events),
    )
    commands.append(server)
    downloads.append(slow_download(netns_name))
    (row,) = wait_for(
        lambda: (r := connections(name)) and r[0]["offload_state"] == "Offloaded" and r, what="an offload"
    )
    dry = admin_json("set", "global", "chimney=disabled", "--dry-run", "--name", name)
    assert dry["applied"] is False
    assert [(m["id"], m["action"], m["reason"]) for m in dry["moves"]] == [
        (row["id"], "upload", "mode_change")
    ]
    time.sleep(0.3)
    assert connections(name)[0]["offload_state"] == "Offloaded", "--dry-run moved nothing"
    assert admin_json("show", "global", "--name", name)["chimney"] == "enabled"

    done = admin_json("set", "global", "chimney=disabled", "--name", name)
    assert done["applied"] is True and done["global"]["chimney"] == "disabled"
    (row,) = wait_for(
        lambda: (r := connections(name)) and r[0]["offload_state"] == "InHost" and r,
        timeout=5,
        what="the upload",
    )
    assert row["reason"] == "mode_change"
    why = admin_json("why", str(row["id"]), "--name", name)
    assert why["offload_state"] == "InHost" and why["mode"] == "disabled"
    assert "offload is disabled" in why["verdict"]

    admin("set", "global", "chimney=enabled", "--name", name)
    wait_for(lambda: connections(name)[0]["offload_state"] == "Offloaded", timeout=5, what="the re-offload")
    history = admin_json("history", str(row["id"]), "--name", name)
    moves = [(m["event"], m["reason"]) for m in history["moves"]]
    assert moves[:3] == [("offloaded", None), ("uploaded", "mode_change"), ("offloaded", None)]
    text = admin("history", str(row["id"]), "--name", name).stdout
    assert "uploaded" in text and "mode_change" in text

    # The events file, written by the same stack, records the same moves with the same reasons.
    port = int(row["remote"].rsplit(":", 1)[1])
    logged = [
        (e["event"], e["reason"]) for e in read_events(events) if e.get("connection", [0] * 4)[3] == port
    ]
    assert [m for m in logged if m[0] in ("offloaded", "uploaded")][:3] == moves[:3]

    assert admin_json("upload", str(row["id"]), "--name", name)["uploads"] == 1
    (row,) = wait_for(
        lambda: (r := connections(name)) and r[0]["offload_state"] == "InHost" and r, timeout=5, what="upload"
    )
    assert row["reason"] == "admin"


def test_why_explains_automatic_mode_thresholds(netns_name: str, name: str, commands: list[Command]) -> None:
    """A connection that moved fewer bytes than automatic mode's threshold stays on the host; why says so
    with the figures."""
    server = Command("serve", "echo", "--netns", netns_name, "--offload", "automatic", "--name", name)
    commands.append(server)
    script = (
        f"import socket,time; s=socket.create_connection(('{STACK}',7)); s.sendall(b'x'*100); time.sleep(30)"
    )
    peer = subprocess.Popen(in_netns(netns_name, "python3", "-c", script))
    try:
        (row,) = wait_for(lambda: connections(name), what="the connection")
        why = wait_for(
            lambda: (
                (w := admin_json("why", row["remote"], "--name", name))["thresholds"]["moved_bytes"] >= 200
                and w
            ),
            what="the echo to be counted",
        )
        assert why["offload_state"] == "InHost" and why["mode"] == "automatic"
        assert why["thresholds"]["met"] is False and why["thresholds"]["min_bytes"] == 65536
        assert "below automatic mode's threshold" in why["verdict"]
        offload = admin_json("offload", row["remote"], "--name", name)
        assert offload["started"] is True
        wait_for(lambda: connections(name)[0]["offload_state"] == "Offloaded", timeout=5, what="offload")
    finally:
        peer.kill()
        peer.wait()


def test_bad_input_is_one_sentence_and_the_stack_runs_on(
    netns_name: str, name: str, commands: list[Command], tmp_path: Any
) -> None:
    server = Command("serve", "echo", "--netns", netns_name, "--name", name)
    commands.append(server)
    for argv, words in (
        (("why", "198.18.0.1:9", "--name", name), "no connection 198.18.0.1:9"),
        (("netstat", "--name", "no-such-stack"), "no stack named no-such-stack"),
        (("set", "global", "chimney=sideways", "--name", name), "give disabled, enabled or automatic"),
        (("set", "global", "colour=blue", "--name", name), "unknown setting"),
        (("history", "#99", "--name", name), "no connection #99"),
        (("upload", "--name", name), "one CONN or --all"),
    ):
        result = admin(*argv, check=False)
        assert result.returncode != 0 and words in result.stderr, (argv, result.stderr)
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr

    # A malformed request on the socket: an error reply, and the same connection still answers.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(10)
        raw.connect(server.ready["control"])
        raw.sendall(b"this is not json\n" + json.dumps({"command": "hello"}).encode() + b"\n")
        lines = raw.makefile("rb")
        replies = lines.readline(), lines.readline()
    first, second = (json.loads(r) for r in replies)
    assert first["ok"] is False and "not a JSON object" in first["error"]
    assert second["ok"] is True and second["result"]["name"] == name
    assert admin_json("netstat", "--name", name)[0]["state"] == "LISTEN"

    # An empty run directory: no stack; one with a dead stack's socket; one with two live stacks.
    env = {**os.environ, "TCPCHIMNEY_RUN_DIR": str(tmp_path)}
    result = admin("netstat", check=False, env=env)
    assert result.returncode != 0 and "no stack is running" in result.stderr
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(tmp_path / "dead.ctl"))
    dead.close()  # the file stays, nobody listens: what kill -9 leaves
    result = admin("netstat", check=False, env=env)
    assert "left by one that died" in result.stderr and "chimney cleanup" in result.stderr
    live = []
    for n in ("a", "b"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(tmp_path / f"{n}.ctl"))
        s.listen()
        live.append(s)
    try:
        result = admin("netstat", check=False, env=env)
        assert (
            result.returncode != 0 and "2 stacks are running (a, b): say which with --name" in result.stderr
        )
    finally:
        for s in live:
            s.close()

    # A user who is neither root nor in root's group cannot open the socket: a child of this process that
    # dropped to nobody asks (the client is loaded already, so wherever the tree lives it can run).
    assert "permission denied on" in as_nobody(lambda: call(server.ready["control"], "hello"))
    assert admin_json("netstat", "--name", name)[0]["state"] == "LISTEN", "the stack answers as before"
    status, _ = server.stop()
    assert status == 0
    assert not os.path.exists(server.ready["control"]), "the control socket is removed at the end"


def test_events_follow_streams_each_move_as_it_happens(
    netns_name: str, name: str, commands: list[Command], downloads: list[Any]
) -> None:
    server = Command("serve", "http", "--netns", netns_name, "--offload", "enabled", "--name", name)
    commands.append(server)
    follower = subprocess.Popen(
        [*CHIMNEY, "events", "--follow", "-j", "--name", name], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        wait_for(
            lambda: admin_json("stats", "--name", name)["control"].get("events"),
            what="the follower to connect",
        )
        downloads.append(slow_download(netns_name))
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + 15
        while not any(e["event"] == "offloaded" for e in seen) and time.monotonic() < deadline:
            ready, _, _ = select.select([follower.stdout], [], [], 1.0)
            if ready:
                seen.append(json.loads(follower.stdout.readline()))  # type: ignore[union-attr]
        assert [e["event"] for e in seen] == ["offloaded"], seen
        (row,) = connections(name)
        assert seen[0]["id"] == row["id"] and seen[0]["connection"] == f"{row['local']}-{row['remote']}"
        admin("upload", str(row["id"]), "--name", name)
        ready, _, _ = select.select([follower.stdout], [], [], 10.0)
        assert ready, "the upload was streamed"
        upload = json.loads(follower.stdout.readline())  # type: ignore[union-attr]
        assert (upload["event"], upload["reason"], upload["id"]) == ("uploaded", "admin", row["id"])
        assert upload["duration_ms"] > 0
    finally:
        follower.terminate()
        follower.wait(timeout=10)
    assert follower.returncode in (0, -15, 130, 143)
    recent = admin_json("events", str(row["id"]), "--name", name)
    assert [(e["event"], e["reason"]) for e in recent] == [("offloaded", None), ("uploaded", "admin")]
    assert admin_json("netstat", "--name", name)[1]["offload_state"] == "InHost", "followers gone, stack fine"


def test_top_renders_the_connection_reacts_to_keys_and_quits_on_q(
    netns_name: str, name: str, commands: list[Command], downloads: list[Any]
) -> None:
    """chimney top under a pseudo-terminal: its frames show the offloaded connection, f filters it out (in
    host only), and q ends it with status 0."""
    server = Command("serve", "http", "--netns", netns_name, "--offload", "enabled", "--name", name)
    commands.append(server)
    downloads.append(slow_download(netns_name))
    (row,) = wait_for(
        lambda: (r := connections(name)) and r[0]["offload_state"] == "Offloaded" and r, what="an offload"
    )
    once = admin("top", "--once", "--interval", "0.5", "--name", name).stdout
    assert row["remote"] in once and "Offloaded" in once and "MB" in once  # a rate of MB/s
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    top = subprocess.Popen(
        [*CHIMNEY, "top", "--interval", "0.3", "--name", name],
        stdin=secondary, stdout=secondary, stderr=secondary, close_fds=True,
        env={k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")},  # the terminal's size
    )  # fmt: skip
    os.close(secondary)
    try:
        screen = Screen(primary)
        screen.wait_for(row["remote"], "the connection's row")
        screen.wait_for("Offloaded", "its offload state")
        os.write(primary, b"f")  # filter: offloaded
        screen.wait_for("filter offloaded", "the filter")
        os.write(primary, b"f")  # filter: in host -> the row goes
        screen.wait_for("filter in host", "the second filter")
        os.write(primary, b"s")
        screen.wait_for("sort id", "the sort")
        os.write(primary, b"q")
        assert top.wait(timeout=10) == 0
    finally:
        if top.poll() is None:
            top.kill()
            top.wait()
        os.close(primary)


def as_nobody(ask: Callable[[], Any]) -> str:
    """Run ``ask`` in a child process with the uid and gid of nobody; its ControlError sentence, or what it
    returned."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop privileges, ask, write the answer, end without cleaning up the parent's
        os.close(reader)
        try:
            entry = pwd.getpwnam("nobody")
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            answer = repr(ask())
        except ControlError as exc:
            answer = str(exc)
        except BaseException as exc:  # anything else is what the test reports
            answer = f"unexpected: {exc!r}"
        os.write(writer, answer.encode())
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as answer:
        text = answer.read().decode()
    os.waitpid(pid, 0)
    return text


class Screen:
    """What a program wrote to a pseudo-terminal, read as it comes."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.seen = b""

    def wait_for(self, text: str, what: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        start = len(self.seen)
        while text.encode() not in self.seen[start:]:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"chimney top never showed {what} ({text!r}); it wrote {self.seen[-2000:]!r}")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    self.seen += os.read(self.fd, 65536)
                except OSError:  # the program ended: nothing more comes
                    pytest.fail(f"chimney top ended before it showed {what}")
