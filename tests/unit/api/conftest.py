"""Fixtures shared by the blocking-socket tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_runtime import A_IP, B_IP, make_stack

from tcpchimney.api.memdev import MemoryDevicePair
from tcpchimney.api.socket import BackgroundRuntime


@pytest.fixture
def pair() -> Iterator[tuple[BackgroundRuntime, BackgroundRuntime]]:
    """Two stacks (A_IP on ``a``, B_IP on ``b``) over a memory device pair, each on its own loop thread."""
    devices = MemoryDevicePair()
    a = BackgroundRuntime(make_stack(devices.a, "02:00:00:00:00:0a", A_IP), devices.a)
    b = BackgroundRuntime(make_stack(devices.b, "02:00:00:00:00:0b", B_IP), devices.b)
    with a, b:
        yield a, b
    devices.close()
