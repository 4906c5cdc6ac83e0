"""The NIC process's spin limits, apart from the doorbell so that the command line reads them cheaply."""

from __future__ import annotations

DEFAULT_SPIN_US = 75.0  # the NIC process's spin (``chimney serve --nic-spin-us``; docs/nic-process.md)
MAX_SPIN_US = 10_000.0  # beyond this a spin is a busy loop: the sleep bound is the tool for that
