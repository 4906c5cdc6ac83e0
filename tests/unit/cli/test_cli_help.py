"""What ``chimney`` says about itself: --version from the installed package's metadata, and --help as plain
text that states the address rule where a user meets it."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest
from chimney_help import ADDRESS_RULE, CHIMNEY, help_text


def _console_script() -> list[str]:
    script = Path(sys.executable).with_name("chimney")
    return [str(script)] if script.exists() else CHIMNEY


def test_version_prints_the_installed_package_version() -> None:
    result = subprocess.run([*_console_script(), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout == f"chimney {importlib.metadata.version('tcpchimney')}\n"


@pytest.mark.parametrize("command", [None, "serve", "nc", "demo"])
def test_help_is_plain_text(command: str | None) -> None:
    text = help_text(command)
    assert "``" not in text and not re.search(r":\w+:`", text), "reStructuredText markup in --help"


@pytest.mark.parametrize("command", ["serve", "nc", "demo"])
def test_help_states_the_address_rule(command: str) -> None:
    assert ADDRESS_RULE in " ".join(help_text(command).split())
