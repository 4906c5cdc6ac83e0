"""The stack (in this process, on a TAP device) against the Linux kernel's TCP in a fresh namespace.

Linux-side sockets are kernel sockets created inside the namespace (``socket_in_netns``) and driven by the
same asyncio loop as the stack, so a test reads as one conversation. Every namespace is removed by name at the
end, also when the test fails.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import ipaddress
import os
import random
import socket
import struct
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tcpchimney.api.socket import BackgroundRuntime
from tcpchimney.cli.apps import AppStats, deterministic_bytes, echo_app
from tcpchimney.cli.nsutil import netns_path, socket_in_netns
from tcpchimney.cli.wiring import Session, open_session
from tcpchimney.host.interface import InterfaceConfig
from tcpchimney.host.stack import HostStack
from tcpchimney.link.netns import TapTopology
from tcpchimney.tcp.state import TcpState

STACK_IF = ipaddress.IPv4Interface("198.18.0.2/24")
PEER_IF = ipaddress.IPv4Interface("198.18.0.1/24")
STACK = str(STACK_IF.ip)
PEER = str(PEER_IF.ip)
TEST_TIMEOUT = 60.0

Body = Callable[[Session], Awaitable[Any]]


def run(body: Body, pcap: str | None = None, timeout: float = TEST_TIMEOUT) -> Any:
    """Run ``body(session)`` on a fresh namespace + TAP + stack; the namespace is removed whatever happens."""
    name = f"chimney-it-{uuid.uuid4().hex[:8]}"

    async def main() -> Any:
        async with open_session(name, STACK_IF, PEER_IF, pcap=pcap) as session:
            return await asyncio.wait_for(body(session), timeout)

    try:
        return asyncio.run(main())
    finally:
        if os.path.exists(netns_path(name)):
            from pyroute2 import netns

            netns.remove(name)


async def linux_connect(session: Session, port: int, host: str = STACK) -> socket.socket:
    """A connected non-blocking kernel socket of the namespace."""
    s = socket_in_netns(session.netns)
    s.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(s, (host, port))
    except BaseException:
        s.close()
        raise
    return s


async def linux_streams(session: Session, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(sock=await linux_connect(session, port))


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def states(session: Session) -> list[TcpState]:
    return [sock.state for sock in session.stack.connections()]


pytestmark = pytest.mark.usefixtures("require_net")


# ====================================================================== data both ways


def test_linux_clients_against_echo_with_half_close() -> None:
    async def body(session: Session) -> None:
        stats = AppStats()
        server = await session.runtime.start_server(echo_app(stats), port=7)

        async def client(i: int) -> None:
            data = b"".join(deterministic_bytes(1_000_000 + i, i))
            reader, writer = await linux_streams(session, 7)
            writer.write(data)
            writer.write_eof()  # our FIN first; the echo keeps sending, then sends its own FIN
            assert await reader.read() == data
            writer.close()

        await asyncio.gather(*(client(i) for i in range(4)))
        assert stats.connections == 4 and stats.bytes_in == stats.bytes_out
        server.close()

    run(body)


def test_stack_as_client_to_a_linux_server() -> None:
    n = 20_000_000

    async def linux_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        digest = hashlib.sha256()
        while data := await reader.read(1 << 20):
            digest.update(data)
        for block in deterministic_bytes(n, 8):  # then answer with N bytes of our own
            writer.write(block)
            await writer.drain()
        writer.write(digest.hexdigest().encode())
        writer.close()

    async def body(session: Session) -> None:
        listening = socket_in_netns(session.netns)
        listening.bind((PEER, 0))
        listening.listen()
        linux = await asyncio.start_server(linux_handler, sock=listening)
        port = listening.getsockname()[1]
        reader, writer = await session.runtime.open_connection(PEER, port)
        for block in deterministic_bytes(n, 7):
            writer.write(block)
            await writer.drain()
        writer.write_eof()
        answer = await reader.read()
        assert (
            hashlib.sha256(answer[:n]).digest()
            == hashlib.sha256(b"".join(deterministic_bytes(n, 8))).digest()
        )
        assert answer[n:].decode() == hashlib.sha256(b"".join(deterministic_bytes(n, 7))).hexdigest()
        writer.close()
        linux.close()

    run(body)


# ====================================================================== who closes first


def test_linux_closes_first_and_the_stack_ends_in_closed() -> None:
    async def body(session: Session) -> None:
        seen: list[bytes] = []

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(await reader.read())  # up to Linux's FIN
            writer.close()  # our FIN second: CLOSE-WAIT -> LAST-ACK -> CLOSED, no TIME-WAIT here

        server = await session.runtime.start_server(handler, port=1000)
        s = await linux_connect(session, 1000)
        await asyncio.get_running_loop().sock_sendall(s, b"bye from linux")
        s.close()
        await eventually(lambda: seen == [b"bye from linux"] and not session.stack.connections())
        server.close()

    run(body)


def test_stack_closes_first_and_holds_time_wait() -> None:
    async def body(session: Session) -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"bye from the stack")
            writer.close()  # our FIN first

        server = await session.runtime.start_server(handler, port=1001)
        reader, writer = await linux_streams(session, 1001)
        assert await reader.read() == b"bye from the stack"  # data, then EOF
        writer.close()
        # RFC 9293 3.6: the side that closes first waits in TIME-WAIT.
        await eventually(lambda: states(session) == [TcpState.TIME_WAIT])
        server.close()

    run(body)


def test_rst_from_linux_resets_the_stack_reader() -> None:
    async def body(session: Session) -> None:
        outcome: list[BaseException | bytes] = []

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while await reader.read(65536):
                    pass
                outcome.append(b"eof")
            except ConnectionResetError as exc:
                outcome.append(exc)

        server = await session.runtime.start_server(handler, port=1002)
        s = await linux_connect(session, 1002)
        await asyncio.get_running_loop().sock_sendall(s, b"x" * 1000)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # SO_LINGER 0: close sends RST
        await eventually(lambda: bool(outcome))
        assert isinstance(outcome[0], ConnectionResetError)
        await eventually(lambda: not session.stack.connections())
        server.close()

    run(body)


def test_rst_from_the_stack_resets_the_linux_socket() -> None:
    async def body(session: Session) -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readexactly(5)
            writer.transport.abort()  # RST now

        server = await session.runtime.start_server(handler, port=1003)
        reader, writer = await linux_streams(session, 1003)
        writer.write(b"hello")
        with pytest.raises(ConnectionResetError):
            while await reader.read(65536):
                pass
        writer.close()
        await eventually(lambda: not session.stack.connections())
        server.close()

    run(body)


# ====================================================================== refusal and limits


def test_closed_port_refuses_both_ways() -> None:
    async def body(session: Session) -> None:
        with pytest.raises(ConnectionRefusedError):
            (await linux_connect(session, 4444)).close()
        with pytest.raises(ConnectionRefusedError):
            await session.runtime.open_connection(PEER, 4445)
        counters = session.stack.counters["tcp"]
        assert counters.get("tx_rst", 0) >= 1  # the stack answered Linux's SYN with RST

    run(body)


# On the namespace's subnet and nobody's: the kernel gets the ARP requests and does not answer them.
UNUSED = "198.18.0.77"


def _assert_arp_retry_time(elapsed: float) -> None:
    """Linux gives up after 3 probes 1 s apart (mcast_solicit, retrans_time_ms): about 3 s, not minutes."""
    assert 2.5 <= elapsed < 5.0, f"EHOSTUNREACH after {elapsed:.2f} s"


def test_connect_to_an_unused_address_is_ehostunreach_in_three_seconds() -> None:
    async def body(session: Session) -> None:
        start = time.monotonic()
        with pytest.raises(OSError) as info:
            await session.runtime.open_connection(UNUSED, 80)
        _assert_arp_retry_time(time.monotonic() - start)
        assert type(info.value) is OSError and info.value.errno == errno.EHOSTUNREACH
        arp = session.stack.counters["arp"]
        assert arp["resolution_failed"] == 1 and arp["drop_unresolved"] >= 1
        assert arp["tx_request"] == session.stack.arp.params.max_probes
        assert not session.stack.connections()
        # Linux, asked the same from the namespace, fails the same way: the reference for the figures above.
        kernel = socket_in_netns(session.netns)
        kernel.setblocking(False)
        with kernel, pytest.raises(OSError) as linux:
            await asyncio.get_running_loop().sock_connect(kernel, ("198.18.0.78", 80))
        assert linux.value.errno == errno.EHOSTUNREACH

    run(body)


def test_blocking_connect_to_an_unused_address_is_ehostunreach(tap_topology: TapTopology) -> None:
    topo, device = tap_topology, tap_topology.device
    iface = InterfaceConfig.parse(
        topo.stack_mac, f"{topo.stack_ip}/{topo.prefixlen}", mtu=device.mtu, features=device.features
    )
    stack = HostStack(iface, secret=os.urandom(16), rng=random.Random())
    with BackgroundRuntime(stack, device) as bg, bg.socket() as s:
        s.settimeout(30)
        start = time.monotonic()
        with pytest.raises(OSError) as info:
            s.connect((UNUSED, 80))
        _assert_arp_retry_time(time.monotonic() - start)
        assert type(info.value) is OSError and info.value.errno == errno.EHOSTUNREACH
        assert str(info.value) == "[Errno 113] No route to host"


def test_listen_backlog_overflow_drops_syns_until_accepted() -> None:
    backlog, clients = 2, 6

    async def body(session: Session) -> None:
        listener = session.stack.listen(1004, backlog=backlog)
        loop = asyncio.get_running_loop()
        sockets = [socket_in_netns(session.netns) for _ in range(clients)]
        for s in sockets:
            s.setblocking(False)
        pending = [asyncio.ensure_future(loop.sock_connect(s, (STACK, 1004))) for s in sockets]
        await asyncio.sleep(0.5)  # well below Linux's 1 s SYN retransmission
        # Linux's connect() returns once it has a SYN-ACK, so the clients cannot tell; the listener can: never
        # more than ``backlog`` connections wait, and the rest were held back (a SYN dropped while the queue
        # was full, or the handshake's last ACK ignored until there is room, as Linux does).
        assert len(listener.accept_queue) == backlog
        tcp = session.stack.counters["tcp"]
        assert tcp.get("drop_syn_accept_queue_full", 0) + tcp.get("drop_accept_queue_full", 0) >= 1
        # Each client sends a byte once connected: a handshake whose last ACK was ignored is completed by it
        # (its ACK field still carries the SYN cookie or matches the SYN-RECEIVED connection).
        for s, p in zip(sockets, pending, strict=True):
            p.add_done_callback(lambda _, s=s: loop.create_task(loop.sock_sendall(s, b"x")))
        accepted: list[Any] = []

        async def drain_queue() -> None:
            while len(accepted) < clients:
                if (sock := listener.accept()) is not None:
                    accepted.append(sock)
                else:
                    await asyncio.sleep(0.02)

        # Once the application accepts, Linux's SYN retransmissions get through.
        await asyncio.wait_for(asyncio.gather(drain_queue(), *pending), 15)
        for s in sockets:
            s.close()
        listener.close()

    run(body)


def test_500_concurrent_connections() -> None:
    count, wave = 500, 100

    async def body(session: Session) -> None:
        stats = AppStats()
        server = await session.runtime.start_server(echo_app(stats), port=7)
        streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        # Connect in waves so that a burst of SYNs does not overflow the accept queue; all stay open.
        for first in range(0, count, wave):
            streams += await asyncio.gather(*(linux_streams(session, 7) for _ in range(first, first + wave)))
            opened = len(streams)
            await eventually(lambda: stats.active == opened, timeout=20)  # noqa: B023 (awaited here)
        assert len(session.stack.connections()) >= count

        async def exchange(i: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
            writer.write(i.to_bytes(4, "big") * 256)
            writer.write_eof()
            got = await reader.read()
            writer.close()
            return got

        results = await asyncio.gather(*(exchange(i, r, w) for i, (r, w) in enumerate(streams)))
        assert results == [i.to_bytes(4, "big") * 256 for i in range(count)]
        server.close()

    run(body, timeout=90)


# ====================================================================== ICMP and capture


def _icmp_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def test_icmp_echo_from_the_namespace_is_answered() -> None:
    async def body(session: Session) -> None:
        raw = socket_in_netns(session.netns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        raw.setblocking(False)
        loop = asyncio.get_running_loop()
        with raw:
            for seq in range(3):
                payload = os.urandom(56)
                header = struct.pack("!BBHHH", 8, 0, 0, 0x4321, seq)
                packet = (
                    header[:2] + struct.pack("!H", _icmp_checksum(header + payload)) + header[4:] + payload
                )
                await loop.sock_sendto(raw, packet, (STACK, 0))
                while True:
                    reply = await asyncio.wait_for(loop.sock_recv(raw, 2048), 5)
                    icmp = reply[(reply[0] & 0x0F) * 4 :]
                    kind, _, _, ident, got_seq = struct.unpack_from("!BBHHH", icmp)
                    if kind == 0 and ident == 0x4321 and got_seq == seq:
                        break
                assert icmp[8:] == payload
                assert _icmp_checksum(icmp) == 0
        assert session.stack.counters["icmp"]["tx"] >= 3

    run(body)


def test_pcap_shows_the_segments_the_stack_counted(tmp_path: Any) -> None:
    dpkt = pytest.importorskip("dpkt")
    pcap = str(tmp_path / "run.pcap")
    final: dict[str, Any] = {}

    async def body(session: Session) -> None:
        server = await session.runtime.start_server(echo_app(AppStats()), port=7)
        reader, writer = await linux_streams(session, 7)
        data = b"".join(deterministic_bytes(2_000_000, 5))
        writer.write(data)
        writer.write_eof()
        assert await reader.read() == data
        writer.close()
        await eventually(lambda: not session.stack.connections())
        server.close()
        final["stack"] = session.stack

    run(body, pcap=pcap)
    mac = final["stack"].iface.mac
    rx = tx = 0
    with open(pcap, "rb") as f:
        for _, frame in dpkt.pcap.Reader(f):
            eth = dpkt.ethernet.Ethernet(frame)
            if isinstance(eth.data, dpkt.ip.IP) and isinstance(eth.data.data, dpkt.tcp.TCP):
                if eth.src == mac:
                    tx += 1
                elif eth.dst == mac:
                    rx += 1
    tcp = final["stack"].counters["tcp"]  # read after the run: every frame sent is in the capture
    assert (rx, tx) == (tcp["rx"], tcp["tx"])
    assert rx > 10 and tx > 10
