"""The one place the commands assemble the stack: namespace + TAP + pcap + HostStack + Runtime.

Every contact with ``link`` and ``api`` goes through here, so ``serve``, ``nc`` and ``demo`` only see a
``Session`` (a running runtime, its stack and the addresses).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from tcpchimney.cli.common import EXIT_UNAVAILABLE, CommandError
from tcpchimney.cli.offload import OffloadControl, OffloadOptions
from tcpchimney.host.interface import InterfaceConfig
from tcpchimney.host.stack import HostStack


@dataclass(slots=True)
class Session:
    runtime: Any  # tcpchimney.api.runtime.Runtime
    stack: HostStack
    netns: str
    addr: ipaddress.IPv4Interface
    peer: ipaddress.IPv4Interface
    tap: str  # the TAP device's name (its kernel side lives in ``netns``)
    created_netns: bool
    target: Any = None  # tcpchimney.nic.target.SoftwareTarget in front of the stack, None when disabled
    control: OffloadControl | None = None

    def offload_counters(self) -> dict[str, Any]:
        """The host's offload counters, the target's and the control's (events, churn cycles)."""
        if self.control is None:
            return {"mode": "disabled"}
        return {
            **self.control.as_dict(),
            "host": self.stack.counters.get("offload", {}),
            "nic": self.target.counters.snapshot() if self.target is not None else {},
        }

    def ready_fields(self) -> dict[str, object]:
        return {
            "netns": self.netns,
            "addr": str(self.addr.ip),
            "peer": str(self.peer.ip),
            "tap": self.tap,
            "created_netns": self.created_netns,
            "pid": os.getpid(),
        }


def local_mac(seed: int) -> str:
    """A locally administered unicast MAC (IEEE 802: bit 1 of the first octet set, bit 0 clear)."""
    rng = random.Random(seed)
    return "02:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(5))


@contextlib.asynccontextmanager
async def _topology(
    netns: str, addr: ipaddress.IPv4Interface, peer: ipaddress.IPv4Interface
) -> AsyncIterator[Any]:
    """The namespace and TAP, built and torn down on a worker thread: pyroute2's synchronous sockets run
    their own event loop and refuse to start inside a running one."""
    from tcpchimney.link.netns import NetworkUnavailable, TapTopology

    topo = TapTopology(netns=netns, peer=str(peer), stack=str(addr))
    try:
        entered = await asyncio.to_thread(topo.__enter__)
    except NetworkUnavailable as exc:
        raise CommandError(f"the network set-up is not possible here: {exc}", EXIT_UNAVAILABLE) from exc
    try:
        yield entered
    finally:
        # Shielded: a Ctrl-C arriving now must not leave the namespace or the link behind.
        await asyncio.shield(asyncio.to_thread(topo.__exit__, None, None, None))


@contextlib.asynccontextmanager
async def open_session(
    netns: str,
    addr: ipaddress.IPv4Interface,
    peer: ipaddress.IPv4Interface,
    pcap: str | None = None,
    plain: bool = False,
    offload: OffloadOptions | None = None,
) -> AsyncIterator[Session]:
    """Namespace (created if absent, removed on exit only if created here), TAP, stack and runtime; with
    offload not disabled, the software target owns the device and the stack sits behind it."""
    from tcpchimney.api.runtime import Runtime
    from tcpchimney.link.tap import TapDevice

    options = offload or OffloadOptions("disabled")
    async with _topology(netns, addr, peer) as topo:
        device = TapDevice(topo.tap_name, vnet_hdr=not plain)
        target = None
        capture = None
        try:
            mac = local_mac(os.getpid())
            iface = InterfaceConfig.parse(mac, str(addr), mtu=device.mtu, features=device.features)
            stack, target = _stack(iface, options)
            if pcap:
                from tcpchimney.link.pcap import PcapWriter

                device.capture = capture = PcapWriter(pcap)
            runtime = Runtime(stack, device, node=target)
            async with runtime:
                session = Session(
                    runtime, stack, netns, addr, peer, topo.tap_name, topo.created_netns, target
                )
                if target is not None:
                    session.control = _control(runtime, stack, options)
                try:
                    yield session
                finally:
                    if session.control is not None:
                        session.control.close()
        finally:
            device.close()
            if capture is not None:
                capture.close()  # flushes the buffered records: the file is complete when the session ends
            if target is not None:
                target.close()  # warns (stderr) when connection state was left on the target


def _stack(iface: InterfaceConfig, options: OffloadOptions) -> tuple[HostStack, Any]:
    """The host stack, behind a SoftwareTarget unless offload is disabled."""
    if not options.enabled:
        return HostStack(iface, secret=os.urandom(16), rng=random.Random()), None
    from tcpchimney.host.policy import OffloadMode, OffloadPolicy
    from tcpchimney.nic.target import SoftwareTarget
    from tcpchimney.tcp.config import TcpConfig

    # The target's engines get the settings the host's would (MSS from the MTU, TSO payload size).
    config = replace(TcpConfig(), mss=iface.mss, max_segment_payload=iface.max_segment_payload)
    target = SoftwareTarget(iface.features, mac=iface.mac, config=config)
    policy = OffloadPolicy(mode=OffloadMode(options.mode))
    stack = HostStack(iface, secret=os.urandom(16), rng=random.Random(), target=target, offload=policy)
    target.attach_host(stack)
    return stack, target


def _control(runtime: Any, stack: HostStack, options: OffloadOptions) -> OffloadControl:
    loop = asyncio.get_running_loop()
    control = OffloadControl(stack, options, loop, time.monotonic, wake=runtime.flush_soon)
    runtime.add_event_handler(control.on_event)
    return control
