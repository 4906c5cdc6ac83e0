"""The collector setting ``Runtime.start`` applies (tcpchimney/api/gctune.py). Each case runs in a fresh
interpreter: the setting is global and applied once per process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

_SCRIPT = """
import asyncio, gc, json, random
{before}
from tcpchimney.api.memdev import MemoryDevicePair
from tcpchimney.api.runtime import Runtime
from tcpchimney.host.interface import InterfaceConfig
from tcpchimney.host.stack import HostStack

async def main():
    pair = MemoryDevicePair()
    iface = InterfaceConfig.parse("02:00:00:00:00:0a", "198.18.0.10/24", mtu=pair.a.mtu)
    stack = HostStack(iface, None, secret=b"gc", rng=random.Random(1))
    before = gc.get_freeze_count()
    async with Runtime(stack, pair.a{option}):
        pass
    pair.close()
    print(json.dumps({{"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count() - before}}))

asyncio.run(main())
"""


def _run(before: str = "", option: str = "") -> dict[str, object]:
    code = textwrap.dedent(_SCRIPT.format(before=before, option=option))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_runtime_raises_the_young_threshold_and_freezes_what_exists() -> None:
    got = _run()
    assert got["threshold"] == [10_000, 10, 10]
    assert isinstance(got["frozen"], int) and got["frozen"] > 1000  # the imported modules' objects at least


@pytest.mark.parametrize(
    ("before", "option", "threshold"),
    [
        ("", ", tune_gc=False", [700, 10, 10]),  # the application manages the collector itself
        ("gc.set_threshold(50_000, 20, 10)", "", [50_000, 20, 10]),  # never lowered
        ("gc.set_threshold(0)", "", [0, 10, 10]),  # disabled on purpose stays disabled
    ],
)
def test_runtime_leaves_a_chosen_setting_alone(before: str, option: str, threshold: list[int]) -> None:
    assert _run(before, option)["threshold"] == threshold
