"""The code blocks of the README and the docs, for the tests that run them: an example no test runs rots.

A ``python`` block may be followed (blank lines between at most) by an ``output`` block: what the example
prints, exactly. A block that needs a real TAP device (``TapTopology``/``TapDevice``) runs in the interop
tests instead of the unit tests, and takes its namespace name from ``CHIMNEY_NETNS``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = ("README.md", "docs/api.md")
_FENCE = re.compile(r"^```(\S*)\s*$")


@dataclass(frozen=True, slots=True)
class Block:
    document: str
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    output: str | None = None  # the output block that follows a python block

    @property
    def name(self) -> str:
        return f"{self.document}:{self.line}"

    @property
    def needs_tap(self) -> bool:
        return "TapTopology(" in self.code or "TapDevice(" in self.code


def blocks(document: str) -> list[Block]:
    """Every fenced block of ``document`` (a path under the repository root), outputs joined to their code."""
    return parse((ROOT / document).read_text(), document)


def parse(text: str, document: str) -> list[Block]:
    found: list[Block] = []
    lines = text.splitlines()
    i = previous_end = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].rstrip() == "```")
        text = "\n".join(lines[i + 1 : end]) + "\n"
        lang = opening.group(1)
        previous = found[-1] if found else None
        adjacent = previous is not None and not any(lines[previous_end + 1 : i])
        if lang == "output" and previous is not None and previous.lang == "python" and adjacent:
            found[-1] = Block(previous.document, previous.line, "python", previous.code, text)
        else:
            found.append(Block(document, i + 1, lang, text))
        previous_end = end
        i = end + 1
    return found


def python_blocks() -> list[Block]:
    return [block for document in DOCUMENTS for block in blocks(document) if block.lang == "python"]


def run_python(
    code: str, *, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The example as a user runs it: a fresh interpreter, in the repository's root."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
