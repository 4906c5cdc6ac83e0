"""The README's asyncio example on a real TAP device, run as written, in a namespace of the test's own.

The example takes its namespace from CHIMNEY_NETNS and serves one client: Linux connects from the namespace,
sends, half-closes and must get every byte back; the example then exits by itself and removes what it made.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from docs_examples import Block, python_blocks

from tcpchimney.cli.nsutil import in_netns
from tcpchimney.link.netns import netns_exists

TAP_BLOCKS = [block for block in python_blocks() if block.needs_tap]
_CLIENT = """
import socket, sys
payload = bytes(range(256)) * 4096
with socket.create_connection(("198.18.0.2", 7), timeout=10) as s:
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    got = bytearray()
    while data := s.recv(65536):
        got += data
sys.exit(0 if got == payload else f"echoed {len(got)} bytes, not the {len(payload)} sent")
"""


@pytest.mark.parametrize("block", TAP_BLOCKS, ids=lambda block: block.name)
def test_tap_example_echoes_a_linux_client_and_cleans_up(block: Block, netns_name: str) -> None:
    example = subprocess.Popen(
        [sys.executable, "-c", block.code],
        env={**os.environ, "CHIMNEY_NETNS": netns_name},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert example.stdout is not None
        ready = example.stdout.readline()
        if netns_name not in ready:
            example.kill()
            pytest.fail(f"no ready line: {ready!r} {example.communicate()[1]}")
        client = subprocess.run(
            in_netns(netns_name, sys.executable, "-c", _CLIENT), capture_output=True, text=True, timeout=30
        )
        assert client.returncode == 0, client.stderr
        _, err = example.communicate(timeout=30)
        assert example.returncode == 0, err
        assert not netns_exists(netns_name), "the example left its namespace behind"
    finally:
        if example.poll() is None:
            example.kill()
            example.wait()
