"""The commands' malloc policy (cli/memory.py): set on glibc, and only where the environment did not
choose (glibc's own tunables are the operator's)."""

from __future__ import annotations

import ctypes
import platform
import subprocess
import sys

import pytest

from tcpchimney.cli.memory import keep_freed_memory

_FAULTS = """
import random, resource, sys
from tcpchimney.cli.memory import keep_freed_memory
if sys.argv[1] == "set":
    assert keep_freed_memory()
rng, keep = random.Random(1), []
def turn():  # what a receive path does: buffers of 64 KiB to 1.2 MiB, a few kept a while, then freed
    keep.append(bytes(rng.randrange(64 << 10, 1200 << 10)))
    if len(keep) > 3:
        del keep[rng.randrange(len(keep))]
for _ in range(300):
    turn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(1000):
    turn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True)
    return int(out.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the policy is glibc's mallopt")
def test_freed_buffers_are_reused_without_faults() -> None:
    """Buffers of mixed sizes: glibc's default gives the heap's top back and maps big ones afresh (faults
    by the thousand); with the policy the pages stay mapped."""
    assert ctypes.CDLL(None).mallopt is not None
    default, kept = _faults("default"), _faults("set")
    assert kept * 10 < default, (default, kept)


def test_the_environment_chooses_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert keep_freed_memory() is False
