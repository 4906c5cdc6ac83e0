"""Run every benchmark: ``python -m bench [NAME ...]``.

Each benchmark module exposes ``run() -> Iterable[dict]``; each dict is printed as one JSON line
``{"bench": NAME, "value": X, "unit": U, ...}``. Benchmarks that need root and a TAP device report
``{"bench": NAME, "skipped": REASON}`` instead of failing when those are missing.
"""

from __future__ import annotations

import importlib
import json
import sys

from tcpchimney.api.gctune import tune_gc

MODULES = [
    "bench.core",
    "bench.tap_raw",
    "bench.tap",
    "bench.offload",
    "bench.attack",
    "bench.rings",
    "bench.nic",
    "bench.nic_app",
    "bench.nic_handoff",
    "bench.nic_recovery",
    "bench.short",
    "bench.spin",
    "bench.http",
    "bench.run",
    "bench.forward",
    "bench.capture",
    "bench.control",
]


def main(argv: list[str]) -> int:
    tune_gc()  # the collector setting the runtime applies (tcpchimney/api/gctune.py): same figures as in use
    selected = [m for m in MODULES if not argv or m.rsplit(".", 1)[-1] in argv]
    for name in selected:
        module = importlib.import_module(name)
        for line in module.run():
            print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
