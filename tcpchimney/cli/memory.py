"""The stack's process keeps the memory it frees for its next buffers (glibc's malloc).

At line rate the stack, its NIC transport and the application allocate and free buffers of 64 KiB to 1 MiB
thousands of times a second. glibc's default policy maps anything above a dynamic threshold afresh and
gives the top of the heap back to the kernel whenever more than twice that threshold is free there, so the
next buffer of that size faults its pages back in and the kernel zeroes them: measured with ``bench.nic``
(200 MB received), 50,000 to 140,000 minor faults and 0.4-0.8 s of system time per GB, in every variant,
host-only included. Fixed thresholds (buffers up to ``MMAP_THRESHOLD`` from the heap, the heap trimmed only
past ``TRIM_THRESHOLD`` free) keep those pages mapped: the same runs then fault about 1,000 times.

The commands set it once (``open_session``). A process started with glibc's own tunables in its
environment keeps them; where malloc is not glibc's, nothing happens.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 8 << 20
TRIM_THRESHOLD = 64 << 20
_TUNABLES = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")


def keep_freed_memory() -> bool:
    """Fix malloc's thresholds for this process; True if they are set (now or by an earlier call)."""
    if any(name in os.environ for name in _TUNABLES):
        return False  # whoever started this process chose
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False  # not glibc
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
