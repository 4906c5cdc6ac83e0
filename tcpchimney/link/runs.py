"""Run records: what each process made, written down before it is made, so nothing outlives a ``kill -9``.

A process that builds a topology keeps one record, ``<run dir>/<pid>.json`` (the run dir is
``$TCPCHIMNEY_RUN_DIR``, by default ``/run/tcpchimney``). A resource (a namespace it created, a link, a file
or directory) is added to the record *before* it is created and dropped only once it is gone, so an end at
any moment leaves a record that names everything the process may have left. The record goes when it is empty.

A record is *live* while its process runs: the pid exists and has the start time the record noted (from
``/proc/PID/stat``, so a reused pid is not mistaken for the owner). A record that is not live is *stale*:
``chimney cleanup`` removes what it names, and a topology about to use a namespace first removes the TAPs a
dead run left there (``link.leftovers``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

RUN_DIR_ENV = "TCPCHIMNEY_RUN_DIR"
DEFAULT_RUN_DIR = "/run/tcpchimney"
NETNS = "netns"  # a namespace this run created (removed with everything in it)
LINK = "link"  # a link this run created, in ``netns`` (None: the initial namespace)
PATH = "path"  # a file or directory this run created (a temporary directory, a control socket)
PROCESS = "process"  # a process this run started (its NIC): "PID@START", START from /proc/PID/stat
KINDS = (NETNS, LINK, PATH, PROCESS)


def run_dir() -> str:
    return os.environ.get(RUN_DIR_ENV) or DEFAULT_RUN_DIR


@dataclass(frozen=True, slots=True)
class Resource:
    kind: str
    name: str  # namespace name, link name, or absolute path
    netns: str | None = None  # for a link: the namespace it lives in

    def describe(self) -> str:
        if self.kind == NETNS:
            return f"namespace {self.name}"
        if self.kind == LINK:
            return f"link {self.name}" + (f" in namespace {self.netns}" if self.netns else "")
        if self.kind == PROCESS:
            return f"process {self.name.split('@')[0]}"
        return f"{self.name}"

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "netns": self.netns}

    @classmethod
    def from_dict(cls, raw: Any) -> Resource:
        """Raises ValueError on anything that is not a resource this module writes."""
        if not isinstance(raw, dict) or raw.get("kind") not in KINDS or not isinstance(raw.get("name"), str):
            raise ValueError(f"not a resource: {raw!r}")
        netns = raw.get("netns")
        if netns is not None and not isinstance(netns, str):
            raise ValueError(f"not a resource: {raw!r}")
        return cls(raw["kind"], raw["name"], netns)


def process_resource(pid: int) -> Resource:
    """The record's name for process ``pid``: its pid and start time, so that a reused pid is never taken
    for it."""
    return Resource(PROCESS, f"{pid}@{process_start(pid)}")


def parse_process(name: str) -> tuple[int, int]:
    """(pid, start) of a PROCESS resource's name; ValueError for anything else."""
    pid, start = name.split("@")
    if not pid.isdigit() or not start.isdigit():
        raise ValueError(f"not a process name: {name!r}")
    return int(pid), int(start)


def process_start(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot, None if no such process runs (a zombie
    counts as gone: it can no longer clean up)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])  # field 22 of proc(5); fields[0] is field 3


@dataclass(slots=True)
class RunRecord:
    pid: int
    start: int | None
    argv: list[str]
    resources: list[Resource] = field(default_factory=list)
    directory: str = field(default_factory=run_dir)

    @property
    def path(self) -> str:
        return os.path.join(self.directory, f"{self.pid}.json")

    @property
    def alive(self) -> bool:
        return self.start is not None and process_start(self.pid) == self.start

    def command(self) -> str:
        return " ".join(self.argv) or "?"

    def save(self) -> None:
        """Written whole and renamed into place (a reader never sees half a record); removed when empty."""
        if not self.resources:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            return
        os.makedirs(self.directory, mode=0o755, exist_ok=True)
        body = {
            "pid": self.pid,
            "start": self.start,
            "argv": self.argv,
            "resources": [r.as_dict() for r in self.resources],
        }
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            json.dump(body, f)
            f.write("\n")
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, path: str) -> RunRecord:
        """Raises ValueError (or OSError) for a file that is not a record."""
        with open(path) as f:
            raw = json.load(f)
        if not isinstance(raw, dict) or not isinstance(raw.get("pid"), int):
            raise ValueError(f"{path} is not a run record")
        start = raw.get("start")
        argv = raw.get("argv") or []
        resources = [Resource.from_dict(r) for r in raw.get("resources") or []]
        return cls(
            raw["pid"],
            start if isinstance(start, int) else None,
            [str(a) for a in argv],
            resources,
            os.path.dirname(path),
        )


def load_records(directory: str | None = None) -> tuple[list[RunRecord], list[str]]:
    """Every record in the run directory, and the files there that are not records (reported, not read)."""
    directory = directory or run_dir()
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return [], []
    records, unreadable = [], []
    for name in names:
        if not name.endswith(".json"):
            continue
        path = os.path.join(directory, name)
        try:
            records.append(RunRecord.load(path))
        except (OSError, ValueError):
            unreadable.append(path)
    return records, unreadable


@contextlib.contextmanager
def locked(directory: str | None = None) -> Iterator[None]:
    """The run directory's lock: held while a namespace is checked and a TAP made in it, and while a stale
    record is edited, so two processes starting at once see each other."""
    directory = directory or run_dir()
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the directory is the lock
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


# ---------------------------------------------------------------------------------------- this process

_lock = threading.Lock()
_mine: RunRecord | None = None


def _own_record() -> RunRecord:
    global _mine
    pid = os.getpid()
    if _mine is None or _mine.pid != pid or _mine.directory != run_dir():  # forked, or directory changed
        _mine = RunRecord(pid, process_start(pid), list(sys.argv))
    return _mine


def register(resource: Resource) -> None:
    """Note ``resource`` in this process's record before creating it (raises OSError if it cannot be)."""
    with _lock:
        record = _own_record()
        record.resources.append(resource)
        try:
            record.save()
        except BaseException:
            record.resources.remove(resource)
            raise


def unregister(resource: Resource) -> None:
    """Drop ``resource`` from this process's record once it is gone (absent is fine)."""
    with _lock:
        record = _own_record()
        if resource in record.resources:
            record.resources.remove(resource)
            record.save()


def registered() -> list[Resource]:
    with _lock:
        return list(_own_record().resources)


@contextlib.contextmanager
def recorded_directory(prefix: str) -> Iterator[str]:
    """A fresh private directory in the temporary directory (``PREFIX-PID-RANDOM``), in this run's record
    before it exists, removed on the way out. ``prefix`` starts with ``chimney-``: ``chimney cleanup``
    removes only such paths."""
    path = os.path.join(tempfile.gettempdir(), f"{prefix}-{os.getpid()}-{secrets.token_hex(4)}")
    resource = Resource(PATH, path)
    register(resource)
    try:
        os.mkdir(path, 0o700)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path):
            unregister(resource)
