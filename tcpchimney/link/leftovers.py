"""What runs left behind when they ended without removing it (``kill -9``, a crash): found from the run
records (``link.runs``), removed by name.

- ``prepare_namespace``: before a topology puts its TAP in an existing namespace, the TAPs dead runs left
  there are removed (the kernel would keep routing the subnet to a dead TAP), and a live stack on the same
  subnet there is a refusal (``NamespaceBusy``): a second stack would get none of the traffic.
- ``adopt_dead_claim``: a namespace a dead run created is taken over by the run that now uses it, which then
  removes it on exit.
- ``clean``: what ``chimney cleanup`` does: every stale record's resources, removed (or listed, dry run).

A namespace is never removed while another live run has a link in it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from tcpchimney.link.netns import (
    NamespaceBusy,
    check_ifname,
    check_netns_name,
    delete_link,
    link_index,
    netns_exists,
    netns_path,
    remove_netns,
)
from tcpchimney.link.runs import (
    LINK,
    NETNS,
    PATH,
    PROCESS,
    Resource,
    RunRecord,
    load_records,
    locked,
    parse_process,
    process_start,
    register,
    run_dir,
)

# A recorded path is removed only if its file name starts with this, or it is a control socket in the run
# directory (RUN_DIR/NAME.ctl, tcpchimney.manage.server).
REMOVABLE_PATH_PREFIX = "chimney-"
CONTROL_SUFFIX = ".ctl"


@dataclass(frozen=True, slots=True)
class _Link:
    name: str
    kind: str
    carrier: bool  # a TAP has carrier while a process holds it open
    addresses: tuple[ipaddress.IPv4Interface, ...]


def _links(netns: str) -> list[_Link]:
    from tcpchimney.link.netns import _ipr

    with _ipr(netns) as ipr:
        addresses: dict[int, list[ipaddress.IPv4Interface]] = {}
        for msg in ipr.get_addr(family=2):  # AF_INET
            iface = ipaddress.IPv4Interface(f"{msg.get('IFA_ADDRESS')}/{msg['prefixlen']}")
            addresses.setdefault(msg["index"], []).append(iface)
        links = []
        for msg in ipr.get_links():
            info = msg.get("IFLA_LINKINFO")
            kind = info.get("IFLA_INFO_KIND") if info is not None else ""
            links.append(
                _Link(
                    str(msg.get("IFLA_IFNAME")),
                    str(kind or ""),
                    bool(msg.get("IFLA_CARRIER")),
                    tuple(addresses.get(msg["index"], ())),
                )
            )
    return links


def _link_owners(
    records: list[RunRecord], exclude_pid: int | None = None
) -> dict[tuple[str | None, str], RunRecord]:
    return {
        (r.netns, r.name): rec
        for rec in records
        if rec.pid != exclude_pid
        for r in rec.resources
        if r.kind == LINK
    }


def _drop(record: RunRecord, resource: Resource) -> None:
    """Edit a dead run's record (the caller holds the run directory's lock). The processes it names that are
    gone go too (a run's NIC process dies with it), and its control socket, which died with it: a record
    naming only them would never be removed."""
    if resource in record.resources:
        record.resources.remove(resource)
        record.resources[:] = [
            r
            for r in record.resources
            if not (r.kind == PROCESS and not exists(r)) and not (_control_socket(r) and remove_resource(r))
        ]
        record.save()


def _control_socket(resource: Resource) -> bool:
    """A run's control socket (tcpchimney.manage.server), RUN_DIR/NAME.ctl, that no stack answers on: a
    later run of the same name may have made its own there, and that one is left alone."""
    name = resource.name
    if resource.kind != PATH or not name.endswith(CONTROL_SUFFIX) or os.path.dirname(name) != run_dir():
        return False
    return dead_control_socket(name)


def dead_control_socket(path: str) -> bool:
    """Whether nothing answers on the Unix socket ``path`` (what a killed stack leaves)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            return True
    return False


def prepare_namespace(netns: str, peer: ipaddress.IPv4Interface, own_tap: str) -> list[str]:
    """Remove the TAPs dead runs left in ``netns``; raise NamespaceBusy if a TAP there that is not ours holds
    an address on ``peer``'s subnet. Returns one sentence per removal. Call with ``runs.locked()`` held."""
    records, _ = load_records()
    owners = _link_owners(records)
    removed = []
    for link in _links(netns):
        if link.name == own_tap or link.kind != "tun":
            continue
        owner = owners.get((netns, link.name))
        if owner is not None and not owner.alive and not link.carrier:
            delete_link(netns, link.name)
            _drop(owner, Resource(LINK, link.name, netns))
            removed.append(
                f"removed TAP {link.name} in namespace {netns}, left by run {owner.pid} "
                f"({owner.command()}), which ended without removing it"
            )
            continue
        clash = next((a for a in link.addresses if a.network.overlaps(peer.network)), None)
        if clash is None:
            continue
        if owner is not None and owner.alive:
            holder = f"chimney run {owner.pid} ({owner.command()}), still running"
        elif link.carrier:
            holder = "a running program"
        else:
            holder = "no chimney run (remove it with `ip -n NETNS link del NAME` if it is stale)"
        raise NamespaceBusy(
            f"namespace {netns} already has {clash} on TAP {link.name}, held by {holder}: a second stack "
            f"on {peer.network} there would get none of its traffic"
        )
    return removed


def adopt_dead_claim(netns: str) -> bool:
    """If a dead run created ``netns``, take the claim over (this run removes it on exit); True if so.
    Call with ``runs.locked()`` held."""
    claim = Resource(NETNS, netns)
    records, _ = load_records()
    dead = [rec for rec in records if claim in rec.resources and not rec.alive]
    if not dead:
        return False
    register(claim)
    for rec in dead:
        _drop(rec, claim)
    return True


def used_by_another_run(netns: str) -> RunRecord | None:
    """A live run of another process with a link in ``netns``, if any."""
    records, _ = load_records()
    for (ns, _name), rec in _link_owners(records, exclude_pid=os.getpid()).items():
        if ns == netns and rec.alive:
            return rec
    return None


def exists(resource: Resource) -> bool:
    if resource.kind == NETNS:
        return netns_exists(resource.name)
    if resource.kind == LINK:
        if resource.netns is not None and not netns_exists(resource.netns):
            return False
        return link_index(resource.netns, resource.name) is not None
    if resource.kind == PROCESS:
        pid, start = parse_process(resource.name)
        return process_start(pid) == start  # the same process, not a later one with its pid
    return os.path.lexists(resource.name)


def remove_resource(resource: Resource) -> bool:
    """Remove one resource if it is there; True once it is gone. False: a namespace kept because another
    live run uses it, or a path this module does not remove (a name not starting with ``chimney-``, a
    control socket a live stack answers on)."""
    if resource.kind == LINK:
        delete_link(resource.netns, resource.name)
        return not exists(resource)
    if resource.kind == NETNS:
        if used_by_another_run(resource.name) is not None:
            return False
        remove_netns(resource.name)
        return not netns_exists(resource.name)
    if resource.kind == PROCESS:
        if exists(resource):
            with contextlib.suppress(ProcessLookupError):
                os.kill(parse_process(resource.name)[0], signal.SIGKILL)
        return not _still_there(resource)
    path = resource.name
    removable = os.path.basename(path).startswith(REMOVABLE_PATH_PREFIX) or _control_socket(resource)
    if not os.path.isabs(path) or not removable:
        return False
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return not os.path.lexists(path)


def _still_there(resource: Resource, wait: float = 1.0) -> bool:
    """A killed process is gone once it is a zombie or reaped (``process_start`` treats both as gone)."""
    end = time.monotonic() + wait
    while exists(resource):
        if time.monotonic() > end:
            return True
        time.sleep(0.01)
    return False


def processes_in(netns: str) -> list[int]:
    """The pids whose network namespace is ``netns`` (what ``ip netns pids`` lists)."""
    try:
        target = os.stat(netns_path(netns))
    except FileNotFoundError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                st = os.stat(f"/proc/{entry}/ns/net")
                if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                    pids.append(int(entry))
    return pids


def _valid(resource: Resource) -> bool:
    """A record names only what this package writes; anything else is not acted on."""
    try:
        if resource.kind == NETNS:
            check_netns_name(resource.name)
        elif resource.kind == LINK:
            check_ifname(resource.name)
            if resource.netns is not None:
                check_netns_name(resource.netns)
        elif resource.kind == PROCESS:
            parse_process(resource.name)
    except ValueError:
        return False
    return True


def clean(dry_run: bool, say: Callable[[str], None]) -> int:
    """Remove (or, dry run, list) what stale records name; live runs are left alone. One sentence per
    resource through ``say``; returns how many resources were (or would be) removed."""
    count = 0
    with locked():
        records, unreadable = load_records()
        for path in unreadable:
            say(f"skipped {path}: not a run record")
        for record in records:
            if record.alive:
                say(f"run {record.pid} ({record.command()}) is still running: left alone")
                continue
            count += _clean_record(record, dry_run, say)
    return count


def _clean_record(record: RunRecord, dry_run: bool, say: Callable[[str], None]) -> int:
    count = 0
    origin = f"run {record.pid} ({record.command()})"
    for resource in reversed(list(record.resources)):
        if not _valid(resource):
            say(f"skipped {resource.describe()!r} of {origin}: not a name chimney makes")
            continue
        if not exists(resource):
            if not dry_run:
                _drop(record, resource)
            continue
        if resource.kind == NETNS and (user := used_by_another_run(resource.name)) is not None:
            say(f"kept {resource.describe()} of {origin}: run {user.pid} uses it now")
            continue
        count += 1
        if dry_run:
            say(f"would remove {resource.describe()}, left by {origin}")
            continue
        if resource.kind == NETNS:
            for pid in processes_in(resource.name):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if remove_resource(resource):
            _drop(record, resource)
            say(f"removed {resource.describe()}, left by {origin}")
        else:
            say(f"could not remove {resource.describe()}, left by {origin}")
    if not dry_run and not record.resources:
        record.save()  # empty: the record goes
    return count
