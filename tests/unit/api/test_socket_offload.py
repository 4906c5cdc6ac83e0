"""The blocking socket API with offload: ``BackgroundRuntime`` takes the wiring ``Runtime`` takes (the target
as the device's node, the stack behind it), and a stack whose target is not wired keeps its connections on
the host with a reason that says so."""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Iterator

import pytest
from test_runtime import A_IP, B_IP, TIMEOUT, make_stack

from tcpchimney.api.memdev import MemoryDevicePair
from tcpchimney.api.socket import BackgroundRuntime
from tcpchimney.chimney.reason import Reason
from tcpchimney.host.events import HostEvent, Offloaded, OffloadRefused
from tcpchimney.host.interface import InterfaceConfig, mac_bytes
from tcpchimney.host.policy import OffloadPolicy
from tcpchimney.host.stack import HostStack
from tcpchimney.nic.target import SoftwareTarget

pytestmark = pytest.mark.timeout(60)
A_MAC = "02:00:00:00:00:0a"
DATA = os.urandom(1 << 20)


def offload_stack(devices: MemoryDevicePair, target_mac: bool) -> tuple[HostStack, SoftwareTarget]:
    """A stack at A_IP with a software target and offload enabled; ``target_mac``: the target is told the
    interface MAC up front (otherwise it learns it from the host's frames it carries)."""
    target = SoftwareTarget(devices.a.features, mac=mac_bytes(A_MAC) if target_mac else None)
    iface = InterfaceConfig.parse(A_MAC, A_IP + "/24", mtu=devices.a.mtu, features=devices.a.features)
    stack = HostStack(
        iface, secret=b"offload-a", rng=random.Random(1), target=target, offload=OffloadPolicy("enabled")
    )
    target.attach_host(stack)
    return stack, target


@pytest.fixture
def devices() -> Iterator[MemoryDevicePair]:
    pair = MemoryDevicePair()
    yield pair
    pair.close()


def echo_once(server: BackgroundRuntime, client: BackgroundRuntime, port: int) -> bytes:
    """A blocking echo server on ``server`` serves one blocking client of ``client``; what came back."""
    listening = server.socket()
    listening.bind(("", port))
    listening.listen()

    def serve() -> None:
        conn, _ = listening.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    got = bytearray()
    with client.create_connection((A_IP, port), timeout=TIMEOUT) as s:
        s.sendall(DATA)
        s.shutdown(1)  # SHUT_WR: the echo ends after the last byte
        while chunk := s.recv(1 << 16):
            got += chunk
    thread.join(TIMEOUT)
    listening.close()
    return bytes(got)


def test_background_runtime_with_the_target_as_node_offloads_its_connections(
    devices: MemoryDevicePair,
) -> None:
    stack, target = offload_stack(devices, target_mac=False)
    seen: list[HostEvent] = []
    with (
        BackgroundRuntime(stack, devices.a, node=target) as a,
        BackgroundRuntime(make_stack(devices.b, "02:00:00:00:00:0b", B_IP), devices.b) as b,
    ):
        a.runtime.add_event_handler(seen.append)
        assert echo_once(a, b, 7) == DATA
    offloaded = [e for e in seen if isinstance(e, Offloaded)]
    assert len(offloaded) == 1 and not [e for e in seen if isinstance(e, OffloadRefused)]
    assert target.counters.lifecycle["offloads"] == 1
    assert target.counters.tcp["in_segments"] > 0  # the data path ran on the target
    assert stack.counters["stack"]["internal_error"] == 0


@pytest.mark.parametrize("target_mac", [False, True], ids=["target-learns-mac", "target-told-mac"])
def test_a_target_that_is_not_the_node_is_never_offered_a_connection(
    devices: MemoryDevicePair, target_mac: bool
) -> None:
    # Without the target in front of the device it sees no frame: it cannot learn the interface MAC (it
    # used to refuse with TARGET_RESOURCES), and one told the MAC would take connections it can never run.
    stack, target = offload_stack(devices, target_mac)
    seen: list[HostEvent] = []
    with (
        BackgroundRuntime(stack, devices.a) as a,
        BackgroundRuntime(make_stack(devices.b, "02:00:00:00:00:0b", B_IP), devices.b) as b,
    ):
        a.runtime.add_event_handler(seen.append)
        assert echo_once(a, b, 7) == DATA
    refusals = [e.reason for e in seen if isinstance(e, OffloadRefused)]
    assert refusals == [Reason.NO_TARGET]
    assert not [e for e in seen if isinstance(e, Offloaded)]
    assert refusals[0].description.startswith("no offload target is attached")
    assert stack.counters["offload"] == {"refused_no_target": 1}
    assert target.counters.lifecycle["offloads"] == target.counters.lifecycle["offload_refusals"] == 0
