"""Test and demo topologies on a real wire: namespaces, a TAP whose kernel side lives in one, veth pairs.

Everything is built with pyroute2 (netlink) and a few ioctls, never by shelling out to ``ip``. Every name this
module creates starts with ``chim`` and is unique per use; every context manager removes what it created, by
name, on exit (also on an exception, and so on SIGINT/SIGTERM when the caller turns those into one). Addresses
are confined to the benchmarking range 198.18.0.0/15 (RFC 2544).

Running Linux programs inside a namespace goes through ``ip netns exec`` (``netns_exec``); Python code
enters a namespace with ``setns`` (a ctypes wrapper: Python 3.11 has no ``os.setns``) on its own
thread, since setns(2) switches only the calling thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from tcpchimney.host.interface import parse_interface
from tcpchimney.link.runs import LINK, NETNS, Resource, locked, register, unregister
from tcpchimney.link.signals import deferred_signals, terminate_on_signals

if TYPE_CHECKING:
    from tcpchimney.link.tap import TapDevice

NETNS_RUN_DIR = "/var/run/netns"  # where iproute2 and pyroute2 keep named namespaces
TUN_PATH = "/dev/net/tun"
NAME_PREFIX = "chim"
ALLOWED_NET = ipaddress.IPv4Network("198.18.0.0/15")
CLONE_NEWNET = 0x40000000
DEFAULT_TXQUEUELEN = 10_000  # tun orphans its packets: a short ring drops a kernel sender's bursts silently

T = TypeVar("T")


class NetworkUnavailable(RuntimeError):
    """Root (CAP_NET_ADMIN) or /dev/net/tun is missing, so no namespace or TAP can be made here."""


def unavailable_reason(tun_path: str = TUN_PATH) -> str | None:
    """Why namespaces and TAP devices cannot be made here, in one sentence (None: they can)."""
    if os.geteuid() != 0:
        return "root (CAP_NET_ADMIN) is needed to create network namespaces and TAP devices"
    if not os.path.exists(tun_path):
        return f"{tun_path} does not exist, so no TAP device can be opened (load the tun module)"
    if not os.access(tun_path, os.R_OK | os.W_OK):
        return f"{tun_path} is not readable and writable by this user"
    return None


def check_network() -> None:
    reason = unavailable_reason()
    if reason is not None:
        raise NetworkUnavailable(reason)


def unique_name(kind: str = "") -> str:
    """``chim`` + kind + 8 hex digits; at most 15 characters (IFNAMSIZ - 1) for kinds up to 3 letters."""
    return check_ifname(f"{NAME_PREFIX}{kind}{uuid.uuid4().hex[:8]}")


# ---------------------------------------------------------------------------------------- names

NETNS_NAME_MAX = 255  # NAME_MAX: a namespace is one file in NETNS_RUN_DIR (iproute2 checks the same)
IFNAME_MAX = 15  # IFNAMSIZ - 1


def _name_problem(name: object, max_bytes: int, kind: str) -> str | None:
    """Why ``name`` cannot be one file name / interface name, or None."""
    if not isinstance(name, str):
        return f"it is a {type(name).__name__}, not a string"
    if not name:
        return "it is empty"
    if name in (".", ".."):
        return "it names a directory, not a file"
    if "/" in name:
        return "it contains '/'"
    if "\0" in name:
        return "it contains a NUL character"
    if not name.isprintable():
        return "it contains a control character"
    size = len(name.encode("utf-8", "surrogateescape"))
    if size > max_bytes:
        return f"it is {size} bytes long, and a {kind} name is at most {max_bytes}"
    return None


def check_netns_name(name: str) -> str:
    """``name`` if it can name a namespace, else ValueError saying why. A namespace name is one file name in
    /var/run/netns: with anything else a bind mount would land outside that directory."""
    problem = _name_problem(name, NETNS_NAME_MAX, "namespace")
    if problem is not None:
        raise ValueError(
            f"{name!r} is not a namespace name: {problem} "
            f"(a namespace name is one file name in {NETNS_RUN_DIR})"
        )
    return name


def check_ifname(name: str) -> str:
    """``name`` if Linux accepts it as an interface name as given, else ValueError saying why: at most 15
    bytes, not ``.``/``..``, no '/', ':', white space or '%' (the kernel would fill a '%d' template in)."""
    problem = _name_problem(name, IFNAME_MAX, "link")
    if problem is None and isinstance(name, str):
        bad = next((c for c in name if c in ":%" or c.isspace()), None)
        if bad is not None:
            problem = f"it contains {bad!r}"
    if problem is not None:
        raise ValueError(f"{name!r} is not a link name: {problem} (Linux link names are 1-15 bytes)")
    return name


# ---------------------------------------------------------------------------------------- addresses


def check_address(text: str) -> ipaddress.IPv4Interface:
    """An address with its prefix (``198.18.0.1/24``), refused outside 198.18.0.0/15 and when it is its
    network's network or broadcast address."""
    iface = parse_interface(text)
    if iface.ip not in ALLOWED_NET:
        raise ValueError(
            f"{iface.ip} is outside 198.18.0.0/15: test topologies use only the benchmarking range (RFC 2544)"
        )
    if iface.network.prefixlen <= 30 and iface.ip in (
        iface.network.network_address,
        iface.network.broadcast_address,
    ):
        which = "network" if iface.ip == iface.network.network_address else "broadcast"
        raise ValueError(f"{iface.ip} is the {which} address of {iface.network}, not a host address")
    return iface


def check_pair(stack: ipaddress.IPv4Interface, peer: ipaddress.IPv4Interface) -> None:
    """The stack and its Linux peer: two different addresses of one subnet (ValueError otherwise)."""
    if stack.ip == peer.ip:
        raise ValueError(f"the stack's address {stack.ip} is the peer's: they need two different addresses")
    if stack.network != peer.network:
        raise ValueError(
            f"the stack's {stack} and the peer's {peer} are not one subnet: give both the same prefix"
        )


# ---------------------------------------------------------------------------------------- entering a netns


def netns_path(netns: str) -> str:
    """The namespace's file: always directly in NETNS_RUN_DIR (the name is checked first)."""
    return os.path.join(NETNS_RUN_DIR, check_netns_name(netns))


def netns_exists(netns: str) -> bool:
    return os.path.exists(netns_path(netns))


def _libc_setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def setns(netns: str) -> Iterator[None]:
    """Run the body with the *calling thread* in ``netns``, then return it to where it was.

    Sockets and TAP file descriptors opened inside keep the namespace after the body ends.
    """
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
        try:
            _libc_setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _libc_setns(home)
    finally:
        os.close(home)


def run_in_netns(netns: str | None, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` inside ``netns`` on a short-lived thread (the caller's namespace is untouched)."""
    if netns is None:
        return fn(*args)
    check_netns_name(netns)

    def inside() -> T:
        with setns(netns):
            return fn(*args)

    return _on_thread(inside, f"setns-{netns}")


def _on_thread(fn: Callable[[], T], name: str) -> T:
    """``fn()`` on a short-lived thread of its own; its exception is raised here."""
    outcome: list[Any] = []

    def body() -> None:
        try:
            outcome.append((True, fn()))
        except BaseException as exc:  # handed over to the calling thread
            outcome.append((False, exc))

    thread = threading.Thread(target=body, name=name)
    thread.start()
    thread.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def netns_exec(netns: str, *argv: str) -> list[str]:
    """The argv that runs a Linux program inside ``netns``."""
    return ["ip", "netns", "exec", check_netns_name(netns), *argv]


def run(
    netns: str, *argv: str, timeout: float = 30.0, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a Linux program inside ``netns`` and wait for it (text output captured)."""
    return subprocess.run(
        netns_exec(netns, *argv), capture_output=True, text=True, timeout=timeout, check=check
    )


def popen(netns: str, *argv: str, **kwargs: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(netns_exec(netns, *argv), **kwargs)


# ------------------------------------------------------------------------------------ building blocks


def create_netns(name: str) -> None:
    """A new named namespace, made on a thread of ours rather than pyroute2's forked child: a child forked
    from a process running an asyncio loop shares the loop's signal wake-up socket, and the signal pyroute2
    stops it with would reach the loop as if sent to us (a command then ends right after starting)."""
    from pyroute2 import netns as pr_netns

    path = netns_path(name)  # absolute: pyroute2 takes a name with a '/' in it as a path of its own
    check_network()

    def unshare_and_attach() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWNET) != 0:  # this thread only: Linux keeps the network namespace per thread
            err = ctypes.get_errno()
            raise OSError(err, f"unshare(CLONE_NEWNET) failed: {os.strerror(err)}")
        pr_netns.attach(path, "thread-self")  # bind-mounts /proc/thread-self/ns/net on the new file there

    _on_thread(unshare_and_attach, f"netns-create-{name}")


def remove_netns(name: str) -> None:
    """Remove a namespace by name (its interfaces go with it); absent is fine."""
    path = netns_path(name)
    if os.path.exists(path):
        from pyroute2 import netns as pr_netns

        pr_netns.remove(path)


def _write_sysctl(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def harden_netns(netns: str) -> None:
    """IPv6 off (no autoconfiguration, DAD or MLD frames on the TAP) and loopback up, inside ``netns``."""

    def body() -> None:
        for conf in ("default", "all"):
            path = f"/proc/sys/net/ipv6/conf/{conf}/disable_ipv6"
            if os.path.exists(path):
                _write_sysctl(path, "1")

    run_in_netns(netns, body)
    with _ipr(netns) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")


def _ipr(netns: str | None) -> Any:
    """A netlink socket in ``netns``. pyroute2 opens it from a forked child: callers running an asyncio loop
    install their signal handlers only after the set-up (see ``cli.common.stop_on_signals``)."""
    from pyroute2 import IPRoute

    return IPRoute(netns=netns_path(netns), flags=0) if netns is not None else IPRoute()


def link_index(netns: str | None, ifname: str) -> int | None:
    check_ifname(ifname)
    if netns is not None and not netns_exists(netns):
        return None
    with _ipr(netns) as ipr:
        found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def configure_link(
    netns: str | None,
    ifname: str,
    address: ipaddress.IPv4Interface | None,
    mtu: int | None = None,
    txqueuelen: int = DEFAULT_TXQUEUELEN,
) -> str:
    """Address, MTU and ring length on ``ifname``, then up; returns the link's MAC address."""
    with _ipr(netns) as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        settings: dict[str, Any] = {"txqlen": txqueuelen}
        if mtu is not None:
            settings["mtu"] = mtu
        ipr.link("set", index=index, **settings)
        if address is not None:
            ipr.addr("add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen)
        ipr.link("set", index=index, state="up")
        (link,) = ipr.get_links(index)
        return str(link.get("IFLA_ADDRESS"))


def delete_link(netns: str | None, ifname: str) -> None:
    """Delete a link by name; absent (or its namespace gone) is fine."""
    index = link_index(netns, ifname)
    if index is not None:
        with _ipr(netns) as ipr, contextlib.suppress(Exception):
            ipr.link("del", index=index)


def move_link(ifname: str, netns: str, from_netns: str | None = None) -> None:
    """Move a link (set down first: a TAP is moved while down) into ``netns``."""
    check_netns_name(netns)
    with _ipr(from_netns) as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        ipr.link("set", index=index, state="down")
        ipr.link("set", index=index, net_ns_fd=netns)


def add_neighbor(netns: str | None, ifname: str, ip: str, mac: str) -> None:
    """A permanent ARP entry, so a kernel sender needs no ARP exchange (benchmarks)."""
    with _ipr(netns) as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        ipr.neigh("replace", dst=ip, lladdr=mac, ifindex=index, state=0x80)  # NUD_PERMANENT


def random_mac() -> str:
    """A locally administered unicast MAC (IEEE 802: bit 1 of the first octet set, bit 0 clear)."""
    raw = bytearray(os.urandom(6))
    raw[0] = (raw[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in raw)


# ---------------------------------------------------------------------------------------- topologies

# TAP name -> namespace, for the TAPs that live topologies of this process have put into a namespace, so
# that ``TapDevice(name)`` finds a TAP whose kernel side is no longer in the caller's namespace.
_LIVE_TAPS: dict[str, str] = {}


def netns_of_tap(tap_name: str) -> str | None:
    return _LIVE_TAPS.get(tap_name)


class NamespaceBusy(RuntimeError):
    """The namespace already has a live stack (or a foreign TAP) on the subnet a topology was asked for."""


class _Topology:
    """What both topologies share, so that nothing they make outlives the process however it ends.

    Every resource is noted in the process's run record (``link.runs``) before it is made and dropped once it
    is gone. While the topology lives, a termination signal left at its default raises ``Terminated`` (SIGINT
    ``KeyboardInterrupt``) in the main thread, so ``with`` unwinds and removes everything; while it is being
    built or taken down, the signal waits for that to finish. Building is idempotent to undo: a failure or a
    signal at any step removes what the steps before made.
    """

    def __init__(self) -> None:
        self._made: list[Resource] = []  # registered, in creation order; removed in reverse
        self._pid = os.getpid()  # a forked child's copy of the topology removes nothing
        self._signals: contextlib.ExitStack | None = None

    def _build(self) -> None:
        raise NotImplementedError

    def _before_teardown(self) -> None:
        """Hook: what must happen before the links go (a TAP's device is closed)."""

    def __enter__(self) -> Any:
        check_network()
        self._pid = os.getpid()
        self._signals = contextlib.ExitStack()
        self._signals.enter_context(terminate_on_signals())
        try:
            with deferred_signals():
                self._build()
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._close()

    def _close(self) -> None:
        if os.getpid() != self._pid:
            return
        try:
            with deferred_signals():
                self._teardown()
        finally:
            if self._signals is not None:
                signals, self._signals = self._signals, None
                signals.close()

    def _make(self, resource: Resource, create: Callable[[], object]) -> None:
        """Note ``resource``, then create it; noted first, so an end in between cannot leak it."""
        register(resource)
        self._made.append(resource)
        try:
            create()
        except FileExistsError:  # someone else's: not ours to remove
            self._made.remove(resource)
            unregister(resource)
            raise

    def _teardown(self) -> None:
        from tcpchimney.link.leftovers import remove_resource

        try:
            self._before_teardown()
        finally:
            for resource in reversed(list(self._made)):
                if remove_resource(resource):  # False: kept (in use by another live run) or not removable
                    unregister(resource)
                self._made.remove(resource)


class TapTopology(_Topology):
    """A namespace holding the Linux kernel as the peer, and a TAP whose kernel side lives there.

    ``with TapTopology(peer="198.18.0.1/24", stack="198.18.0.2/24") as topo:`` gives ``topo.netns``,
    ``topo.tap_name``, ``topo.peer_ip``, ``topo.stack_ip``, ``topo.prefixlen``, ``topo.stack_mac`` (a fresh
    locally administered MAC for the stack), ``topo.peer_mac`` (the kernel side's), ``topo.created_netns`` and
    ``topo.device``: the stack's ``TapDevice``, opened on first use (or open one yourself with
    ``TapDevice(topo.tap_name, netns=topo.netns)``; only one may be open at a time).

    Names and addresses are checked here, before anything exists: ``ValueError`` says what is wrong. The TAP
    is made persistent inside the namespace (IPv6 already off there), so it outlives a closed device; on exit
    it is deleted by name, and the namespace is removed if this topology created it (or took it over from a
    run that died without removing it). In an existing namespace, TAPs left by dead runs are removed first
    (listed in ``topo.removed``), and a live stack on the same subnet there makes ``__enter__`` raise
    ``NamespaceBusy``.
    Termination signals end the program through ``__exit__`` (see ``_Topology``).
    """

    def __init__(
        self,
        netns: str | None = None,
        peer: str = "198.18.0.1/24",
        stack: str = "198.18.0.2/24",
        tap_name: str | None = None,
        mtu: int = 1500,
        txqueuelen: int = DEFAULT_TXQUEUELEN,
        vnet_hdr: bool = True,
        offloads: bool = True,
        stack_mac: str | None = None,
    ) -> None:
        super().__init__()
        self.peer_if = check_address(peer)
        self.stack_if = check_address(stack)
        check_pair(self.stack_if, self.peer_if)
        self.netns = check_netns_name(netns) if netns is not None else unique_name("ns")
        self.tap_name = check_ifname(tap_name) if tap_name is not None else unique_name("tap")
        self.mtu = mtu
        self.txqueuelen = txqueuelen
        self.vnet_hdr = vnet_hdr
        self.offloads = offloads
        self.stack_mac = stack_mac or random_mac()
        self.peer_mac = ""
        self.created_netns = False
        self.removed: list[str] = []  # what was left in the namespace by dead runs and removed first
        self._device: TapDevice | None = None

    @property
    def peer_ip(self) -> str:
        return str(self.peer_if.ip)

    @property
    def stack_ip(self) -> str:
        return str(self.stack_if.ip)

    @property
    def prefixlen(self) -> int:
        return self.peer_if.network.prefixlen

    @property
    def device(self) -> TapDevice:
        if self._device is None:
            from tcpchimney.link.tap import TapDevice

            self._device = TapDevice(
                self.tap_name, vnet_hdr=self.vnet_hdr, offloads=self.offloads, netns=self.netns
            )
        return self._device

    def __enter__(self) -> TapTopology:
        return super().__enter__()  # type: ignore[no-any-return]

    def _build(self) -> None:
        from tcpchimney.link import leftovers
        from tcpchimney.link.tap import create_persistent_tap

        with locked():  # a second topology starting at once sees this one's TAP once it looks
            if not netns_exists(self.netns):
                self._make(Resource(NETNS, self.netns), lambda: create_netns(self.netns))
                self.created_netns = True
            else:
                self.removed = leftovers.prepare_namespace(self.netns, self.peer_if, self.tap_name)
                self.created_netns = leftovers.adopt_dead_claim(self.netns)
                if self.created_netns:
                    self._made.append(Resource(NETNS, self.netns))
            harden_netns(self.netns)  # before the TAP exists there
            if link_index(self.netns, self.tap_name) is not None:
                raise FileExistsError(
                    f"a link named {self.tap_name} already exists in namespace {self.netns}"
                )
            _LIVE_TAPS[self.tap_name] = self.netns
            self._make(
                Resource(LINK, self.tap_name, self.netns),
                lambda: create_persistent_tap(self.tap_name, self.netns),
            )
            self.peer_mac = configure_link(self.netns, self.tap_name, self.peer_if, self.mtu, self.txqueuelen)

    def _before_teardown(self) -> None:
        _LIVE_TAPS.pop(self.tap_name, None)
        if self._device is not None:
            device, self._device = self._device, None
            device.close()
        if not self.created_netns and netns_exists(self.netns):
            # The run that created this namespace may have ended meanwhile, leaving it to us (it keeps a
            # namespace other live runs use): the last one out removes it, after its TAP.
            from tcpchimney.link import leftovers

            with locked():
                if leftovers.adopt_dead_claim(self.netns):
                    self.created_netns = True
                    self._made.insert(0, Resource(NETNS, self.netns))


# ---------------------------------------------------------------------------------------- veth topology


class VethTopology(_Topology):
    """Two namespaces joined by a veth pair: kernel <-> kernel, or an AF_PACKET device on one end.

    ``topo.ns_a``/``topo.ns_b``, ``topo.if_a``/``topo.if_b``, ``topo.ip_a``/``topo.ip_b``; both namespaces and
    the pair are removed by name on exit (also after a termination signal: see ``_Topology``).
    """

    def __init__(
        self,
        ip_a: str = "198.18.1.1/24",
        ip_b: str | None = "198.18.1.2/24",
        mtu: int | None = None,
        txqueuelen: int = DEFAULT_TXQUEUELEN,
    ) -> None:
        super().__init__()
        self.addr_a = check_address(ip_a)
        self.addr_b = check_address(ip_b) if ip_b else None  # None: end b left to a user-space stack
        if self.addr_b is not None:
            check_pair(self.addr_b, self.addr_a)
        self.mtu = mtu
        self.txqueuelen = txqueuelen
        self.ns_a = unique_name("ns")
        self.ns_b = unique_name("ns")
        self.if_a = unique_name("va")
        self.if_b = unique_name("vb")
        self.mac_a = ""
        self.mac_b = ""

    @property
    def ip_a(self) -> str:
        return str(self.addr_a.ip)

    @property
    def ip_b(self) -> str | None:
        return str(self.addr_b.ip) if self.addr_b else None

    def __enter__(self) -> VethTopology:
        return super().__enter__()  # type: ignore[no-any-return]

    def _build(self) -> None:
        for ns in (self.ns_a, self.ns_b):
            self._make(Resource(NETNS, ns), lambda ns=ns: create_netns(ns))  # type: ignore[misc]
            harden_netns(ns)

        def add_pair() -> None:
            with _ipr(None) as ipr:
                ipr.link("add", ifname=self.if_a, kind="veth", peer=self.if_b)

        # Noted in the initial namespace: once moved, the pair goes with the namespaces.
        self._make(Resource(LINK, self.if_a, None), add_pair)
        move_link(self.if_a, self.ns_a)
        move_link(self.if_b, self.ns_b)
        self.mac_a = configure_link(self.ns_a, self.if_a, self.addr_a, self.mtu, self.txqueuelen)
        self.mac_b = configure_link(self.ns_b, self.if_b, self.addr_b, self.mtu, self.txqueuelen)
