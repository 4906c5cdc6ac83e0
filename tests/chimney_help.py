"""What the CLI and docs tests share about ``chimney --help``: how to run it, and the address rule's words
as users must meet them (written out here, not imported, so that a changed wording fails the tests)."""

from __future__ import annotations

import functools
import subprocess
import sys

CHIMNEY = [sys.executable, "-m", "tcpchimney.cli.main"]
ADDRESS_RULE = "addresses must be in 198.18.0.0/15 (the benchmarking range, RFC 2544)"


@functools.cache
def help_text(command: str | None) -> str:
    """``chimney [command] --help`` as printed; the command must succeed."""
    argv = [*CHIMNEY, "--help"] if command is None else [*CHIMNEY, command, "--help"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{argv} failed: {result.stderr}"
    return result.stdout
