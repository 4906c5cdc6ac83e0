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
    name = f"{NAME_PREFIX}{kind}{uuid.uuid4().hex[:8]}"
    if len(name) > 15:
        raise ValueError(f"interface names are at most 15 characters: {name!r}")
    return name


def check_address(text: str) -> ipaddress.IPv4Interface:
    """An address with prefix (``198.18.0.1/24``), refused outside 198.18.0.0/15."""
    iface = ipaddress.IPv4Interface(text if "/" in text else f"{text}/24")
    if iface.ip not in ALLOWED_NET:
        raise ValueError(f"{iface.ip} is outside 198.18.0.0/15, the only range test topologies may use")
    return iface


# ---------------------------------------------------------------------------------------- entering a netns


def netns_path(netns: str) -> str:
    return os.path.join(NETNS_RUN_DIR, netns)


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
    return ["ip", "netns", "exec", netns, *argv]


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

    check_network()

    def unshare_and_attach() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWNET) != 0:  # this thread only: Linux keeps the network namespace per thread
            err = ctypes.get_errno()
            raise OSError(err, f"unshare(CLONE_NEWNET) failed: {os.strerror(err)}")
        pr_netns.attach(name, "thread-self")  # bind-mounts /proc/thread-self/ns/net on /run/netns/NAME

    _on_thread(unshare_and_attach, f"netns-create-{name}")


def remove_netns(name: str) -> None:
    """Remove a namespace by name (its interfaces go with it); absent is fine."""
    if netns_exists(name):
        from pyroute2 import netns as pr_netns

        pr_netns.remove(name)


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

    return IPRoute(netns=netns, flags=0) if netns else IPRoute()


def link_index(netns: str | None, ifname: str) -> int | None:
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


# ---------------------------------------------------------------------------------------- TAP topology

# TAP name -> namespace, for the TAPs that live topologies of this process have put into a namespace, so
# that ``TapDevice(name)`` finds a TAP whose kernel side is no longer in the caller's namespace.
_LIVE_TAPS: dict[str, str] = {}


def netns_of_tap(tap_name: str) -> str | None:
    return _LIVE_TAPS.get(tap_name)


class TapTopology:
    """A namespace holding the Linux kernel as the peer, and a TAP whose kernel side lives there.

    ``with TapTopology(peer="198.18.0.1/24", stack="198.18.0.2/24") as topo:`` gives ``topo.netns``,
    ``topo.tap_name``, ``topo.peer_ip``, ``topo.stack_ip``, ``topo.prefixlen``, ``topo.stack_mac`` (a fresh
    locally administered MAC for the stack), ``topo.peer_mac`` (the kernel side's), ``topo.created_netns`` and
    ``topo.device``: the stack's ``TapDevice``, opened on first use (or open one yourself with
    ``TapDevice(topo.tap_name, netns=topo.netns)``; only one may be open at a time).

    The TAP is made persistent inside the namespace (IPv6 already off there), so it outlives a closed device;
    on exit it is deleted by name, and the namespace is removed if this topology created it.
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
        self.peer_if = check_address(peer)
        self.stack_if = check_address(stack)
        if self.stack_if.ip not in self.peer_if.network:
            raise ValueError(f"{self.stack_if.ip} is not on the peer's subnet {self.peer_if.network}")
        self.netns = netns or unique_name("ns")
        self.tap_name = tap_name or unique_name("tap")
        self.mtu = mtu
        self.txqueuelen = txqueuelen
        self.vnet_hdr = vnet_hdr
        self.offloads = offloads
        self.stack_mac = stack_mac or random_mac()
        self.peer_mac = ""
        self.created_netns = False
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
        check_network()
        try:
            if not netns_exists(self.netns):
                create_netns(self.netns)
                self.created_netns = True
            harden_netns(self.netns)  # before the TAP exists there
            from tcpchimney.link.tap import create_persistent_tap

            _LIVE_TAPS[self.tap_name] = self.netns
            create_persistent_tap(self.tap_name, self.netns)
            self.peer_mac = configure_link(self.netns, self.tap_name, self.peer_if, self.mtu, self.txqueuelen)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self._device is not None:
                self._device.close()
                self._device = None
            delete_link(self.netns, self.tap_name)
        finally:
            _LIVE_TAPS.pop(self.tap_name, None)
            if self.created_netns:
                remove_netns(self.netns)


# ---------------------------------------------------------------------------------------- veth topology


class VethTopology:
    """Two namespaces joined by a veth pair: kernel <-> kernel, or an AF_PACKET device on one end.

    ``topo.ns_a``/``topo.ns_b``, ``topo.if_a``/``topo.if_b``, ``topo.ip_a``/``topo.ip_b``; both namespaces and
    the pair are removed by name on exit.
    """

    def __init__(
        self,
        ip_a: str = "198.18.1.1/24",
        ip_b: str | None = "198.18.1.2/24",
        mtu: int | None = None,
        txqueuelen: int = DEFAULT_TXQUEUELEN,
    ) -> None:
        self.addr_a = check_address(ip_a)
        self.addr_b = check_address(ip_b) if ip_b else None  # None: end b left to a user-space stack
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
        check_network()
        try:
            for ns in (self.ns_a, self.ns_b):
                create_netns(ns)
                harden_netns(ns)
            with _ipr(None) as ipr:
                ipr.link("add", ifname=self.if_a, kind="veth", peer=self.if_b)
            move_link(self.if_a, self.ns_a)
            move_link(self.if_b, self.ns_b)
            self.mac_a = configure_link(self.ns_a, self.if_a, self.addr_a, self.mtu, self.txqueuelen)
            self.mac_b = configure_link(self.ns_b, self.if_b, self.addr_b, self.mtu, self.txqueuelen)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            delete_link(None, self.if_a)  # still in the initial namespace if a move failed
        finally:
            remove_netns(self.ns_a)
            remove_netns(self.ns_b)
