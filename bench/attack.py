"""What a hostile peer can make the TCP engine spend per crafted segment, and hold in memory.

Two attacks from the peer of one connection, each at 10, 100 (within both bounds) and 10,000 attempted
ranges:

- ``attack_sack_ack_us``: CPU microseconds per crafted ACK once the peer has SACKed ``ranges`` separate
  one-byte ranges of our data in flight (CVE-2019-11478 class). The ranges are ``[3k+1, 3k+2)`` above
  SND.UNA (two-byte holes between them); each timed ACK is a duplicate ACK whose three SACK blocks extend
  three of the highest ranges by one byte, so every one SACKs new data and the number of ranges the peer
  claims stays ``ranges``. The engine is in SACK recovery throughout (it retransmits holes as the ACKs
  arrive).
- ``attack_ooo_segment_us``: CPU microseconds per crafted out-of-order one-byte segment once the peer has
  sent ``holes`` one-byte segments with holes between them (CVE-2018-5390, SegmentSmack). Each timed
  segment extends one of the highest runs by a byte (the hole count stays ``holes``); the engine answers
  each with a duplicate ACK carrying SACK blocks.
- ``attack_rcv_memory_kb``: memory (tracemalloc) the receive buffer holds after 10,000 one-byte segments,
  each arriving in its own frame-sized ``bytes`` (as from a device): ``pattern`` ``holes`` (a hole before
  each), ``run`` (one run behind a single hole), ``in_order`` (readable, never read).

``home``: ``engine`` drives a ``TcpConnection`` directly (the host stack and the software target run this
same engine); ``host_stack`` sends the crafted segments as Ethernet frames into a ``HostStack``
(``handle_frame`` + ``frames_to_send`` timed), the host engine behind it. The state before the timed
segments is built through the engine's own structures (``sack.update``, ``rcvbuf.insert``), which apply the
same bounds as the input path; only the timed segments go through the whole input path. ``held``: the
ranges (holes) the engine actually keeps. Value: median over ``RUNS`` runs of the mean over ``TIMED``
segments (after ``WARMUP`` untimed ones), process CPU time.
"""

from __future__ import annotations

import gc
import random
import statistics
import time
import tracemalloc
from collections.abc import Callable, Iterator

from tcpchimney.host.interface import InterfaceConfig, ip_bytes, mac_bytes
from tcpchimney.host.sockets import TcpSocket
from tcpchimney.host.stack import HostStack
from tcpchimney.tcp.config import TcpConfig
from tcpchimney.tcp.connection import TcpConnection
from tcpchimney.wire import checksum, ethernet
from tcpchimney.wire import ipv4 as ipv4_wire
from tcpchimney.wire import tcp as tcp_wire
from tcpchimney.wire.frame import Frame
from tcpchimney.wire.seq import SeqNum
from tcpchimney.wire.tcp import ACK, SYN, TcpOptions, TcpSegment

SIZES = (10, 100, 10_000)  # 100: within both bounds (128 ranges, 100 runs), all held
RUNS = 5
WARMUP = 3
TIMED = 40
FLIGHT = 60_000  # bytes in flight for the SACK attack: room for 3 * (10,000 + 3 * (WARMUP + TIMED)) bytes
CONFIG = TcpConfig(initial_cwnd_segments=64, timestamps=False)  # cwnd covers FLIGHT from the start
LPORT, RPORT = 40000, 80
A_MAC, A_IP = "02:00:00:00:00:01", "198.18.0.1"
B_MAC, B_IP = "02:00:00:00:00:02", "198.18.0.2"
PORT = 9


# ---------------------------------------------------------------------------------------------- engine


def _engine() -> TcpConnection:
    """An ESTABLISHED engine with SACK, its peer's SYN-ACK crafted here (peer ISS 5000, window 65535)."""
    conn = TcpConnection.connect(CONFIG, LPORT, RPORT, SeqNum(1000), 0.0, 0)
    conn.segments_to_send(0.0)
    opts = TcpOptions(mss=1460, sack_permitted=True)
    conn.handle_segment(
        TcpSegment(RPORT, LPORT, SeqNum(5000), SeqNum(1001), SYN | ACK, 65535, b"", opts), 0.0
    )
    conn.segments_to_send(0.0)
    _drain(conn)
    return conn


def _drain(conn: TcpConnection) -> None:
    while conn.next_event() is not None:
        pass


def _into_engine(conn: TcpConnection) -> Callable[[TcpSegment], None]:
    """One crafted segment into ``conn`` and all it causes: what it sends and the events it reports."""

    def one(seg: TcpSegment) -> None:
        conn.handle_segment(seg, 0.001)
        conn.segments_to_send(0.001)
        _drain(conn)

    return one


def _sack_block(una: SeqNum, k: int, grown: bool) -> tuple[SeqNum, SeqNum]:
    """Range ``k`` of the attack, ``[3k+1, 3k+2)`` above ``una``, or with its next byte when ``grown``."""
    return una + 3 * k + 1, una + 3 * k + (3 if grown else 2)


def _sack_prefill(conn: TcpConnection, ranges: int) -> None:
    """The scoreboard after the peer SACKed ``ranges`` one-byte ranges, four per ACK, lowest first."""
    una, top = conn.snd_una, conn.snd_max
    blocks = [_sack_block(una, k, False) for k in range(ranges)]
    for i in range(0, ranges, 4):
        conn.sack.update(una, top, blocks[i : i + 4])


def _sack_acks(una: SeqNum, ranges: int, count: int) -> list[tuple[tuple[SeqNum, SeqNum], ...]]:
    """SACK blocks of ``count`` crafted ACKs: each grows three of the highest ranges by their next byte."""
    acks = []
    for j in range(count):
        top = ranges - 1 - 3 * j
        acks.append(tuple(_sack_block(una, k % ranges, True) for k in (top, top - 1, top - 2)))
    return acks


def engine_sack(ranges: int) -> tuple[float, int]:
    """Mean CPU seconds per crafted ACK into an engine, and the ranges its scoreboard holds at the end."""
    conn = _engine()
    conn.send(b"x" * (2 * FLIGHT))
    conn.segments_to_send(0.0)
    assert conn.flight_size >= FLIGHT, conn.flight_size
    _sack_prefill(conn, ranges)
    una, peer = conn.snd_una, conn.rcv_nxt
    segs = [
        TcpSegment(RPORT, LPORT, peer, una, ACK, 65535, b"", TcpOptions(sack_blocks=b))
        for b in _sack_acks(una, ranges, WARMUP + TIMED)
    ]
    spent = _timed(segs, _into_engine(conn))
    return spent, len(conn.sack.blocks())


def engine_ooo(holes: int) -> tuple[float, int]:
    """Mean CPU seconds per crafted out-of-order segment into an engine, and the runs it holds at the end."""
    conn = _engine()
    for k in range(holes):
        conn.rcvbuf.insert(3 * k + 1, b"x")
    nxt = conn.rcv_nxt
    segs = [
        TcpSegment(RPORT, LPORT, nxt + 3 * ((holes - 1 - j) % holes) + 2, conn.snd_una, ACK, 65535, b"y")
        for j in range(WARMUP + TIMED)
    ]
    spent = _timed(segs, _into_engine(conn))
    return spent, len(conn.rcvbuf.ooo_ranges())


def _timed(items: list[TcpSegment] | list[Frame], one: Callable[..., None]) -> float:
    for item in items[:WARMUP]:
        one(item)
    gc.collect()
    clock = time.process_time
    t0 = clock()
    for item in items[WARMUP:]:
        one(item)
    return (clock() - t0) / (len(items) - WARMUP)


MEMORY_PATTERNS: dict[str, Callable[[int], int]] = {
    "holes": lambda k: 2 * k + 1,  # a one-byte hole before each segment
    "run": lambda k: k + 1,  # one run of one-byte segments behind a single hole
    "in_order": lambda k: 0,  # readable data nobody reads, one byte per segment
}


def rcv_memory(pattern: str, count: int) -> tuple[int, int]:
    """Bytes tracemalloc sees held by the receive buffer after ``count`` one-byte segments, each in its own
    66-byte frame (viewed, as a device hands it over), placed by ``pattern``; and the runs held."""
    conn = _engine()
    offsets = MEMORY_PATTERNS[pattern]
    frames = [bytes(65) + b"x" for _ in range(count)]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for k, frame in enumerate(frames):
        conn.rcvbuf.insert(offsets(k), memoryview(frame)[65:])
    del frames
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return held, len(conn.rcvbuf.ooo_ranges())


# ---------------------------------------------------------------------------------------------- host stack


def _stack(n: int) -> HostStack:
    iface = InterfaceConfig.parse(f"02:00:00:00:00:0{n}", f"198.18.0.{n}/24")
    return HostStack(iface, CONFIG, secret=f"bench-attack-{n}".encode(), rng=random.Random(n))


def _hand(src: HostStack, dst: HostStack) -> None:
    for f in src.frames_to_send(0.0):
        dst.handle_frame(Frame(f.tobytes()), 0.0)


def _pair() -> tuple[HostStack, TcpSocket]:
    """Stack a with a connection to stack b, both ESTABLISHED; b's stack is only used for the handshake
    (afterwards the test plays b by crafting its frames)."""
    a, b = _stack(1), _stack(2)
    listener = b.listen(PORT)
    client = a.connect(B_IP, PORT, 0.0)
    for _ in range(4):
        _hand(a, b)
        _hand(b, a)
    server = listener.accept()
    assert server is not None
    while a.next_event() is not None:
        pass
    return a, client


def _frame_to_a(seg: TcpSegment) -> Frame:
    """``seg`` from b (198.18.0.2) to a as a whole Ethernet frame with correct checksums."""
    src, dst = ip_bytes(B_IP), ip_bytes(A_IP)
    body = tcp_wire.emit_tcp(seg, checksum.pseudo_base_sum(src, dst, ipv4_wire.PROTO_TCP))
    ip = ipv4_wire.emit_ipv4(src, dst, ipv4_wire.PROTO_TCP, len(body), 1)
    eth = ethernet.emit_ethernet(mac_bytes(A_MAC), mac_bytes(B_MAC), ethernet.ETHERTYPE_IPV4)
    return Frame(eth + ip + body)


def host_sack(ranges: int) -> tuple[float, int]:
    a, client = _pair()
    conn = client.conn
    client.send(b"x" * (2 * FLIGHT))
    a.frames_to_send(0.0)  # the data leaves; b never sees it
    assert conn.flight_size >= FLIGHT, conn.flight_size
    _sack_prefill(conn, ranges)
    una, peer = conn.snd_una, conn.rcv_nxt
    frames = [
        _frame_to_a(
            TcpSegment(PORT, client.local_port, peer, una, ACK, 65535, b"", TcpOptions(sack_blocks=b))
        )
        for b in _sack_acks(una, ranges, WARMUP + TIMED)
    ]
    spent = _timed(frames, _into(a))
    return spent, len(conn.sack.blocks())


def host_ooo(holes: int) -> tuple[float, int]:
    a, client = _pair()
    conn = client.conn
    for k in range(holes):
        conn.rcvbuf.insert(3 * k + 1, b"x")
    nxt, una = conn.rcv_nxt, conn.snd_una
    frames = [
        _frame_to_a(
            TcpSegment(
                PORT, client.local_port, nxt + 3 * ((holes - 1 - j) % holes) + 2, una, ACK, 65535, b"y"
            )
        )
        for j in range(WARMUP + TIMED)
    ]
    spent = _timed(frames, _into(a))
    return spent, len(conn.rcvbuf.ooo_ranges())


def _into(stack: HostStack) -> Callable[[Frame], None]:
    def one(frame: Frame) -> None:
        stack.handle_frame(frame, 0.001)
        stack.frames_to_send(0.001)
        while stack.next_event() is not None:
            pass

    return one


# ---------------------------------------------------------------------------------------------- lines


def _line(
    name: str, key: str, size: int, home: str, fn: Callable[[int], tuple[float, int]]
) -> dict[str, object]:
    results = [fn(size) for _ in range(RUNS)]
    runs = sorted(spent * 1e6 for spent, _ in results)
    return {
        "bench": name,
        "value": round(statistics.median(runs), 1),
        "unit": "us",
        key: size,
        "held": results[-1][1],
        "home": home,
        "runs": [round(r, 1) for r in runs],
    }


def run() -> Iterator[dict[str, object]]:
    for home, sack, ooo in (("engine", engine_sack, engine_ooo), ("host_stack", host_sack, host_ooo)):
        for size in SIZES:
            yield _line("attack_sack_ack_us", "ranges", size, home, sack)
        for size in SIZES:
            yield _line("attack_ooo_segment_us", "holes", size, home, ooo)
    count = SIZES[-1]
    for pattern in MEMORY_PATTERNS:
        held, runs = rcv_memory(pattern, count)
        yield {
            "bench": "attack_rcv_memory_kb",
            "value": round(held / 1024, 1),
            "unit": "KiB",
            "pattern": pattern,
            "segments": count,
            "held_runs": runs,
            "bytes_per_segment": round(held / count, 1),
        }


if __name__ == "__main__":
    import json

    for line in run():
        print(json.dumps(line), flush=True)
