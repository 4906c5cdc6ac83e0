"""``chimney cleanup [--dry-run]``: remove what runs that ended without cleaning up left behind.

Each run notes what it makes in its record (``link.runs``) before making it; a run ended by ``kill -9`` or a
crash leaves its record, and this command removes what the records of runs no longer alive name: TAPs (also
those in namespaces the run did not create), the namespaces the run created (after killing the processes
still inside them), temporary files and control sockets. Live runs are left alone. One line per resource.
"""

from __future__ import annotations

import argparse
import os

from tcpchimney.cli.common import EXIT_UNAVAILABLE, CommandError
from tcpchimney.link.runs import run_dir


def run(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise CommandError(
            "cleanup needs root (CAP_NET_ADMIN) to look into and remove network namespaces and links.",
            EXIT_UNAVAILABLE,
        )
    from tcpchimney.link.leftovers import clean

    count = clean(args.dry_run, lambda line: print(line, flush=True))
    if count == 0:
        print(f"nothing to clean up (run records in {run_dir()})")
    elif args.dry_run:
        print(f"{count} to remove: run `chimney cleanup` to remove them")
    return 0
