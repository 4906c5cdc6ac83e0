"""Pinning the NIC process to one CPU (``--nic-cpu N``): a NIC is a processor of its own, and a pinned NIC
process keeps its caches and never migrates while the host and the Linux peer share the other CPUs.

Off by default: on a small machine (2 vCPUs) the scheduler may do better by moving the NIC to whichever CPU
is idle; bench/nic.py measures both. The CPU is checked against the CPUs this process may run on
(``os.sched_getaffinity(0)``: a cgroup's cpuset or a ``taskset`` narrows it), since the child inherits that
set and the kernel refuses a mask outside it. The child is pinned right after it is spawned, before it has
started a thread (threads inherit the mask), with ``os.sched_setaffinity`` on its pid.
"""

from __future__ import annotations

import os


def allowed_cpus() -> frozenset[int]:
    """The CPUs this process may run on (and so its children)."""
    return frozenset(os.sched_getaffinity(0))


def present_cpus() -> frozenset[int]:
    """The CPUs the machine has (online or not), from sysfs; ``os.cpu_count()`` when sysfs is absent."""
    try:
        with open("/sys/devices/system/cpu/present") as f:
            return parse_cpu_list(f.read())
    except (OSError, ValueError):
        return frozenset(range(os.cpu_count() or 1))


def parse_cpu_list(text: str) -> frozenset[int]:
    """The kernel's CPU list format: ``0-3,6,8-9``."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return frozenset(cpus)


def format_cpu_list(cpus: frozenset[int] | set[int]) -> str:
    """The inverse of ``parse_cpu_list``: ``{0, 1, 2, 5}`` -> ``0-2,5``."""
    runs: list[str] = []
    for cpu in sorted(cpus):
        if runs and runs[-1].split("-")[-1] == str(cpu - 1):
            runs[-1] = f"{runs[-1].split('-')[0]}-{cpu}"
        else:
            runs.append(str(cpu))
    return ",".join(runs)


def _cpus(cpus: frozenset[int]) -> str:
    return f"CPU {next(iter(cpus))}" if len(cpus) == 1 else f"CPUs {format_cpu_list(cpus)}"


def check_cpu(cpu: int) -> int:
    """``cpu`` if the NIC process may be pinned to it; else ValueError with one sentence saying why."""
    allowed = allowed_cpus()
    if cpu in allowed:
        return cpu
    present = present_cpus()
    if cpu < 0 or cpu not in present:
        raise ValueError(f"CPU {cpu} does not exist: this machine has {_cpus(present)}")
    raise ValueError(f"CPU {cpu} is not allowed for this process: it may run on {_cpus(allowed)}")


def pin(pid: int, cpu: int) -> None:
    """Run process ``pid`` (its main thread, and every thread it starts afterwards) on ``cpu`` only.
    Raises OSError (the CPU went offline or left the cpuset since it was checked; the process is gone)."""
    os.sched_setaffinity(pid, {cpu})
