"""Where control sockets live and whether one is alive: what the admin verbs need before they ask, kept
apart from the plane so that they start without loading the stack."""

from __future__ import annotations

import os

from tcpchimney.link import leftovers, runs
from tcpchimney.link.leftovers import CONTROL_SUFFIX

SUFFIX = CONTROL_SUFFIX


def socket_path(name: str, directory: str | None = None) -> str:
    return os.path.join(directory or runs.run_dir(), name + SUFFIX)


def is_live(path: str) -> bool:
    """Whether a stack answers on ``path`` (a leftover of a dead run refuses the connection)."""
    return not leftovers.dead_control_socket(path)
