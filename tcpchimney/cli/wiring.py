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
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from tcpchimney.cli.common import EXIT_UNAVAILABLE, CommandError
from tcpchimney.cli.memory import keep_freed_memory
from tcpchimney.cli.offload import OffloadControl, OffloadOptions
from tcpchimney.host.interface import InterfaceConfig
from tcpchimney.host.stack import HostStack

T = TypeVar("T")


@dataclass(slots=True)
class Session:
    runtime: Any  # tcpchimney.api.runtime.Runtime
    stack: HostStack
    netns: str
    addr: ipaddress.IPv4Interface
    peer: ipaddress.IPv4Interface
    tap: str  # the TAP device's name (its kernel side lives in ``netns``)
    created_netns: bool
    target: Any = None  # tcpchimney.nic.target.SoftwareTarget in front of the stack (--nic inline)
    control: OffloadControl | None = None
    nic: Any = None  # tcpchimney.nic.launch.NicProcess, the target in its own process (--nic process)
    name: str = ""  # the control socket's name (chimney netstat --name NAME)
    control_path: str | None = None  # its path, once it listens
    metrics: str | None = None  # "ADDR:PORT" of its Prometheus /metrics (--metrics), once it listens
    exporter: Any = None  # tcpchimney.manage.metrics.MetricsServer behind it

    def offload_counters(self) -> dict[str, Any]:
        """The host's offload counters, the target's and the control's (events, churn cycles)."""
        if self.control is None:
            return {"mode": "disabled"}
        if self.nic is not None:
            nic = self.nic.counters()
        else:
            nic = self.target.counters.snapshot() if self.target is not None else {}
        return {**self.control.as_dict(), "host": self.stack.counters.get("offload", {}), "nic": nic}

    def target_info(self) -> dict[str, Any] | None:
        """``chimney show target``: where the target runs, what it can take, its health (None without)."""
        target = self.nic.target if self.nic is not None else self.target
        if target is None or self.control is None:
            return None
        caps = target.capabilities
        info: dict[str, Any] = {
            "kind": self.nic_kind,
            "capabilities": {
                "ipv4": caps.ipv4,
                "ipv6": caps.ipv6,
                "sack": caps.sack,
                "capacity": caps.capacity,
            },
            "offload_mode": self.control.options.mode,
        }
        if self.nic is not None:
            nic = self.nic
            info["health"] = {
                "up": nic.alive,
                "pid": nic.pid,
                "epoch": nic.epoch,
                "failures": nic.failures,
                "restarts": nic.restarts,
                "cpu": nic.cpu,
            }
        else:
            info["health"] = {"up": True, "pid": os.getpid(), "epoch": None, "failures": 0, "restarts": 0}
        return info

    @property
    def nic_kind(self) -> str | None:
        return "process" if self.nic is not None else "inline" if self.target is not None else None

    def ready_fields(self) -> dict[str, object]:
        fields: dict[str, object] = {
            "netns": self.netns,
            "addr": str(self.addr.ip),
            "peer": str(self.peer.ip),
            "tap": self.tap,
            "created_netns": self.created_netns,
            "pid": os.getpid(),
            "nic": self.nic_kind,
            "name": self.name,
            "control": self.control_path,
        }
        if self.metrics is not None:
            fields["metrics"] = self.metrics
        if self.nic is not None:
            fields["nic_pid"] = self.nic.pid
            fields["nic_cpu"] = self.nic.cpu
        return fields


def local_mac(seed: int) -> str:
    """A locally administered unicast MAC (IEEE 802: bit 1 of the first octet set, bit 0 clear)."""
    rng = random.Random(seed)
    return "02:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(5))


async def finish_in_thread(
    fn: Callable[..., T], *args: Any, on_cancel: Callable[[], object] | None = None
) -> T:
    """``fn(*args)`` on a worker thread, waited for to its end even when the caller is cancelled meanwhile
    (CancelledError is raised once it ended; ``on_cancel()`` may ask it to end early): a namespace's set-up
    or tear-down abandoned half-way would go on unwatched and leave what it made."""
    work = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(work)
            break
        except asyncio.CancelledError:
            if work.done():
                raise
            if not cancelled and on_cancel is not None:
                on_cancel()
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result


def _setup_error(netns: str, exc: BaseException) -> CommandError | None:
    """The one sentence for a failed namespace/TAP set-up, or None for a failure that is a bug."""
    from tcpchimney.link.netns import NamespaceBusy, NetworkUnavailable

    if isinstance(exc, NetworkUnavailable):
        return CommandError(f"the network set-up is not possible here: {exc}", EXIT_UNAVAILABLE)
    if isinstance(exc, NamespaceBusy):
        return CommandError(f"{exc}.")
    if isinstance(exc, OSError):
        detail = exc.strerror or str(exc)
        where = f" ({exc.filename})" if exc.filename else ""
        return CommandError(f"cannot set up namespace {netns} and its TAP device: {detail}{where}.")
    return None


@contextlib.asynccontextmanager
async def _topology(
    netns: str, addr: ipaddress.IPv4Interface, peer: ipaddress.IPv4Interface
) -> AsyncIterator[Any]:
    """The namespace and TAP, built and torn down on a worker thread (pyroute2's synchronous sockets run
    their own event loop and refuse to start inside a running one), never abandoned half-way: a signal that
    comes meanwhile lets the set-up finish, then takes it down."""
    from tcpchimney.link.netns import TapTopology

    try:
        topo = TapTopology(netns=netns, peer=str(peer), stack=str(addr))
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    try:
        entered = await finish_in_thread(topo.__enter__)
    except asyncio.CancelledError:
        await finish_in_thread(topo.__exit__, None, None, None)  # it was made: the signal came meanwhile
        raise
    except Exception as exc:  # the topology removed what it had made before raising
        error = _setup_error(netns, exc)
        if error is None:
            raise
        raise error from exc
    for line in topo.removed:
        print(f"chimney: {line}", file=sys.stderr, flush=True)
    try:
        yield entered
    finally:
        await finish_in_thread(topo.__exit__, None, None, None)


def _open_capture(path: str) -> Any:
    from tcpchimney.link.pcap import PcapWriter

    try:
        return PcapWriter(path)
    except OSError as exc:
        raise CommandError(f"cannot write the capture file {path}: {exc.strerror or exc}.") from exc


@contextlib.asynccontextmanager
async def open_session(
    netns: str,
    addr: ipaddress.IPv4Interface,
    peer: ipaddress.IPv4Interface,
    pcap: str | None = None,
    plain: bool = False,
    offload: OffloadOptions | None = None,
    name: str | None = None,
    metrics: tuple[str, int] | None = None,
) -> AsyncIterator[Session]:
    """Namespace (created if absent, removed on exit only if created here), TAP, stack and runtime; with
    offload not disabled, the software target owns the device and the stack sits behind it; a control socket
    named ``name`` (default ``chimney-PID``) for the admin verbs. The capture file is opened first: a path
    that cannot be written fails before anything exists."""
    options = offload or OffloadOptions("disabled")
    keep_freed_memory()  # buffers freed at line rate are not faulted back in (cli/memory.py)
    capture = _open_capture(pcap) if pcap else None
    try:
        async with (
            _topology(netns, addr, peer) as topo,
            _running(topo, netns, addr, peer, capture, plain, options) as session,
            _controlled(session, name or f"chimney-{os.getpid()}", metrics),
        ):
            yield session
    finally:
        if capture is not None:
            capture.close()  # flushes the buffered records: the file is complete when the session ends


@contextlib.asynccontextmanager
async def _running(
    topo: Any,
    netns: str,
    addr: ipaddress.IPv4Interface,
    peer: ipaddress.IPv4Interface,
    capture: Any,
    plain: bool,
    options: OffloadOptions,
) -> AsyncIterator[Session]:
    from tcpchimney.api.runtime import Runtime
    from tcpchimney.link.tap import TapDevice

    try:
        device = TapDevice(topo.tap_name, vnet_hdr=not plain)
    except OSError as exc:
        raise CommandError(f"cannot open TAP device {topo.tap_name}: {exc.strerror or exc}.") from exc
    target = nic = None
    try:
        mac = local_mac(os.getpid())
        iface = InterfaceConfig.parse(mac, str(addr), mtu=device.mtu, features=device.features)
        if options.enabled and options.nic == "process":
            stack, nic = _stack_behind_nic(iface, options, device)
            runtime = Runtime(
                stack, device, node=nic.target, rx=nic.target, busy_poll_us=options.busy_poll_us
            )
        else:
            stack, target = _stack(iface, options)
            runtime = Runtime(stack, device, node=target)
        device.capture = capture
        async with runtime:
            session = Session(runtime, stack, netns, addr, peer, topo.tap_name, topo.created_netns, target)
            session.nic = nic
            if options.enabled:
                session.control = _control(runtime, stack, options)
            if nic is not None:
                _watch_nic(nic, runtime, device, session.control)
            try:
                yield session
            finally:
                if session.control is not None:
                    session.control.close()
    finally:
        if nic is not None:
            nic.close()  # stopped (its last turn sends what it was asked last), else killed; always reaped
        device.close()
        if target is not None:
            target.close()  # warns (stderr) when connection state was left on the target


@contextlib.asynccontextmanager
async def _controlled(
    session: Session, name: str, metrics: tuple[str, int] | None = None
) -> AsyncIterator[None]:
    """The session's control socket (tcpchimney.manage), removed when the session ends."""
    from tcpchimney.cli.nstat import history_path
    from tcpchimney.manage.paths import socket_path
    from tcpchimney.manage.plane import ControlPlane
    from tcpchimney.manage.server import ControlServer, ControlSocketError

    identity = {
        "name": name,
        "netns": session.netns,
        "addr": str(session.addr.ip),
        "peer": str(session.peer.ip),
    }
    runtime = session.runtime
    plane = ControlPlane(
        session.stack,
        identity,
        nic=session.nic_kind,
        counters=session.offload_counters,
        target_info=session.target_info,
        wake=runtime.flush_soon,
    )
    runtime.add_event_handler(plane.on_event)
    if session.nic is not None:  # the NIC process's starts and failures go to the event stream too
        earlier = session.nic.on_event

        def on_nic_event(event: str, fields: dict[str, Any]) -> None:
            earlier(event, fields)
            plane.note(event, fields)

        session.nic.on_event = on_nic_event
    from tcpchimney.manage.capture import install as install_capture

    captures = install_capture(plane, runtime.device, session.nic, runtime.add_event_handler)
    server = ControlServer(plane, socket_path(name))
    try:
        await server.start()
    except ControlSocketError as exc:
        raise CommandError(f"{exc}.") from exc
    session.name, session.control_path = name, server.path
    exporter = None
    try:
        if metrics is not None:
            exporter = await _exporter(plane, metrics)
            session.metrics, session.exporter = f"{metrics[0]}:{exporter.port}", exporter
        yield
    finally:
        captures.close()  # the file is complete before the stack goes
        if exporter is not None:
            await exporter.close()
        await server.close()
        with contextlib.suppress(OSError):
            os.unlink(history_path(server.path))  # chimney stats's baseline dies with the run


async def _exporter(plane: Any, address: tuple[str, int]) -> Any:
    from tcpchimney.manage.metrics import MetricsServer

    exporter = MetricsServer(plane, *address)
    try:
        await exporter.start()
    except OSError as exc:
        raise CommandError(
            f"cannot serve metrics on {address[0]}:{address[1]}: {exc.strerror or exc}."
        ) from exc
    return exporter


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


def _stack_behind_nic(iface: InterfaceConfig, options: OffloadOptions, device: Any) -> tuple[HostStack, Any]:
    """The host stack behind a NIC process started here (it gets a descriptor of the TAP and is its only
    reader); a NIC that cannot start fails the command with one sentence."""
    from dataclasses import asdict

    from tcpchimney.host.policy import OffloadMode, OffloadPolicy
    from tcpchimney.link import runs
    from tcpchimney.nic.launch import NicProcess, NicStartError
    from tcpchimney.nic.process import NicConfig

    config = NicConfig(
        mac=iface.mac.hex(":"),
        features=asdict(device.features),
        mss=iface.mss,
        max_segment_payload=iface.max_segment_payload,
        vnet_hdr=device.vnet_hdr_size,
    )
    if options.nic_spin_us is not None:
        config = replace(config, spin_us=options.nic_spin_us)
    noted: dict[int, Any] = {}

    def spawned(pid: int) -> None:  # in the run record, so that `chimney cleanup` kills a NIC left behind
        with contextlib.suppress(OSError):
            noted[pid] = runs.process_resource(pid)
            runs.register(noted[pid])

    def reaped(pid: int) -> None:
        if pid in noted:
            with contextlib.suppress(OSError):
                runs.unregister(noted.pop(pid))

    try:
        nic = NicProcess(config, device.fileno(), on_spawned=spawned, on_reaped=reaped, cpu=options.nic_cpu)
    except ValueError as exc:  # a CPU that is not (or no longer) allowed; the command line checked it first
        raise CommandError(f"cannot start the NIC process: {exc}.") from exc
    try:
        target = nic.start()
    except NicStartError as exc:
        nic.close()
        raise CommandError(f"cannot start the NIC process: {exc}.") from exc
    policy = OffloadPolicy(mode=OffloadMode(options.mode))
    stack = HostStack(iface, secret=os.urandom(16), rng=random.Random(), target=target, offload=policy)
    target.attach_host(stack)
    return stack, nic


def _watch_nic(nic: Any, runtime: Any, device: Any, control: OffloadControl | None) -> None:
    """Liveness of the NIC from the running loop: while one is gone the runtime reads the TAP itself, and
    the frames a new one passes up once it runs. Its events (the start already happened) go to the events
    file."""
    if control is not None:
        for name, fields in nic.events:
            control.on_nic_event(name, fields)
        nic.on_event = control.on_nic_event
    nic.attach(
        asyncio.get_running_loop(),
        runtime.flush_soon,
        lambda: runtime.set_rx(device),
        lambda: runtime.set_rx(nic.target),
    )


def _control(runtime: Any, stack: HostStack, options: OffloadOptions) -> OffloadControl:
    loop = asyncio.get_running_loop()
    try:
        control = OffloadControl(stack, options, loop, time.monotonic, wake=runtime.flush_soon)
    except OSError as exc:
        raise CommandError(f"cannot write the events file {options.events}: {exc.strerror or exc}.") from exc
    runtime.add_event_handler(control.on_event)
    return control
