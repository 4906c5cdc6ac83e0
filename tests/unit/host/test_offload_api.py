"""The asyncio API works unchanged on offloaded connections: two Runtimes over a MemoryDevicePair, one
with the software target in front of its stack (docs/offload-design.md "Wiring")."""

from __future__ import annotations

import asyncio
import os
import random

from tcpchimney.api.memdev import MemoryDevicePair
from tcpchimney.api.runtime import Runtime
from tcpchimney.chimney.reason import Reason
from tcpchimney.host.events import HostEvent, Offloaded, Uploaded
from tcpchimney.host.interface import InterfaceConfig, mac_bytes
from tcpchimney.host.offload import OffloadState
from tcpchimney.host.policy import OffloadPolicy
from tcpchimney.host.stack import HostStack
from tcpchimney.nic.target import SoftwareTarget

A_MAC, A_IP = "02:00:00:00:00:0a", "198.18.0.10"
B_MAC, B_IP = "02:00:00:00:00:0b", "198.18.0.11"


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


def test_streams_echo_through_an_offloaded_connection_with_an_upload_midway() -> None:
    pair = MemoryDevicePair()
    target = SoftwareTarget(pair.a.features, mac=mac_bytes(A_MAC))
    a_stack = HostStack(
        InterfaceConfig.parse(A_MAC, A_IP + "/24", mtu=pair.a.mtu, features=pair.a.features),
        secret=b"api-a",
        rng=random.Random(1),
        target=target,
        offload=OffloadPolicy(mode="enabled"),
    )
    target.attach_host(a_stack)
    b_stack = HostStack(
        InterfaceConfig.parse(B_MAC, B_IP + "/24", mtu=pair.b.mtu, features=pair.b.features),
        secret=b"api-b",
        rng=random.Random(2),
    )
    data = os.urandom(3 << 20)
    seen: list[HostEvent] = []

    async def main() -> None:
        async with Runtime(a_stack, pair.a, node=target) as a, Runtime(b_stack, pair.b) as b:
            a.add_event_handler(seen.append)
            server = await a.start_server(_echo, port=7)
            reader, writer = await b.open_connection(A_IP, 7)
            got = bytearray()

            async def pump_in() -> None:
                while len(got) < len(data):
                    chunk = await reader.read(1 << 20)
                    assert chunk
                    got.extend(chunk)
                    if len(got) > len(data) // 2 and not any(isinstance(e, Uploaded) for e in seen):
                        (sock,) = a_stack.connections()
                        if sock.offload_state is OffloadState.OFFLOADED:
                            a_stack.upload(sock, Reason.ADMIN)
                            a.flush_soon()

            reading = asyncio.create_task(pump_in())
            for i in range(0, len(data), 1 << 18):
                writer.write(data[i : i + (1 << 18)])
                await writer.drain()
            await reading
            writer.close()
            await writer.wait_closed()
            server.close()
            await server.wait_closed()
            assert bytes(got) == data

    asyncio.run(asyncio.wait_for(main(), 60))
    pair.close()
    assert any(isinstance(e, Offloaded) for e in seen) and any(isinstance(e, Uploaded) for e in seen)
    assert a_stack.counters["stack"]["internal_error"] == 0
