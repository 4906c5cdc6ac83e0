"""The wheel a user installs: its type hints marked (PEP 561 py.typed), the licence as SPDX metadata with its
file, and a build that prints no deprecation warning."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_the_wheel_ships_py_typed_and_the_license_and_builds_without_warnings(tmp_path: Path) -> None:
    # Built from a copy: a build in the work tree would leave build/ and egg-info behind.
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "tcpchimney", source / "tcpchimney", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "dist"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    log = result.stdout + result.stderr
    assert "Deprecat" not in log and "BuildBackendWarning" not in log, log
    (wheel,) = out.glob("tcpchimney-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        fields = archive.read(metadata).decode().split("\n\n", 1)[0].splitlines()
    assert "tcpchimney/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: MIT" in fields
    assert not any(field.startswith("Classifier: License ::") for field in fields)
