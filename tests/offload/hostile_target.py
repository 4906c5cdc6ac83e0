"""The hostile-target harness: ``LyingNic``, a named mock of a NIC whose firmware lies, wraps the real
``SoftwareTarget`` and, at random (seeded), replays, reorders, drops, duplicates and rewrites the answers the
host gets from it (completions and indications: byte counts, sequence numbers, request ids, handles,
statuses, returned TCP states), while transfers run over the simulated link. ``run_session`` drives one
seeded session and checks what the host owes its applications whatever the target does:

- no wrong byte: each stream an application reads is a prefix of what its peer wrote, and a short one was
  reset (on either side) or comes with an OffloadFault;
- no exception escapes the stack, and the stack's safety net caught nothing but contract faults;
- no connection hangs: every one ends (EOF or reset, on both sides) within ``HANG_BOUND`` virtual seconds;
- every fault is reported: a connection the host reset comes with an OffloadFault.

A hang that is the contract's documented known limit (docs/offload-contract.md "Known limit": a copy the
target made for an initiate whose answer never reached the host, on a path whose handle the host never
learnt, so that nothing the host can send names it) is reported apart, in ``known_limits``, not as a
problem.

Out of scope by design: payload bytes the target rewrites in place (a NIC that flips bits after checking
the checksum is beyond any host check), which is why the harness rewrites every field but ``data``.

    SimLink --- SoftwareTarget (node) -> HostStack a, whose target is LyingNic(SoftwareTarget)
            \\-- HostStack b (plain peer)
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

from tcpchimney.chimney.completions import (
    Completion,
    DisconnectCompletion,
    ReceiveCompletion,
    SendCompletion,
    StateCompletion,
)
from tcpchimney.chimney.errors import ContractError
from tcpchimney.chimney.indications import (
    PeerDisconnect,
    PeerReset,
    ReceiveIndication,
    SendBacklogChanged,
    UploadRequest,
)
from tcpchimney.chimney.reason import Reason
from tcpchimney.chimney.requests import Request
from tcpchimney.chimney.status import Status
from tcpchimney.chimney.target import Output
from tcpchimney.chimney.tcp_state import TcpDelegated
from tcpchimney.chimney.tree import BlockList, Layer, walk
from tcpchimney.host.events import ConnectionEvent, OffloadFault
from tcpchimney.host.interface import InterfaceConfig
from tcpchimney.host.policy import OffloadPolicy
from tcpchimney.host.sockets import TcpSocket
from tcpchimney.host.stack import HostStack
from tcpchimney.link.sim import Impairments, SimLink
from tcpchimney.nic.target import SoftwareTarget
from tcpchimney.tcp.config import TcpConfig
from tcpchimney.tcp.errors import TcpError
from tcpchimney.tcp.events import ConnectionReset, PeerClosed
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire.seq import SeqNum

A_MAC, A_IP = "02:00:00:00:00:01", "198.18.0.1"
B_MAC, B_IP = "02:00:00:00:00:02", "198.18.0.2"
HANG_BOUND = 300.0  # virtual seconds by which every connection must have ended
STEP = 0.005  # virtual seconds between application steps
KINDS = ("drop", "duplicate", "replay", "reorder", "rewrite")


class LyingNic:
    """An offload target whose answers pass through a liar: with probability ``rate`` per output it
    applies one of ``KINDS``. ``lies`` records what it did, for the report."""

    def __init__(self, inner: SoftwareTarget, rng: random.Random, rate: float) -> None:
        self.inner = inner
        self.rng = rng
        self.rate = rate
        self.lies: list[str] = []
        self._out: deque[Output] = deque()
        self._held: Output | None = None  # reordered: goes out after the next one
        self._history: deque[Output] = deque(maxlen=64)
        self._handles: deque[int] = deque(maxlen=32)  # target handles it gave, to rewrite with
        self._host_handles: deque[int] = deque(maxlen=32)
        self._requests: deque[int] = deque(maxlen=32)
        self.told: set[int] = set()  # target handles in the state-call answers the host got

    @property
    def capabilities(self):  # type: ignore[no-untyped-def]
        return self.inner.capabilities

    def submit(self, request: Request, now: float) -> None:
        self._requests.append(request.request_id)
        self.inner.submit(request, now)

    def poll(self) -> Output | None:
        while not self._out:
            out = self.inner.poll()
            if out is None:
                if self._held is not None:
                    held, self._held = self._held, None
                    return held
                return None
            self._learn(out)
            self._lie(out)
        return self._out.popleft()

    def _learn(self, out: Output) -> None:
        if isinstance(out, StateCompletion):
            for block in walk(out.tree):
                if block.target_handle is not None:
                    self._handles.append(block.target_handle)
                if block.host_handle is not None:
                    self._host_handles.append(block.host_handle)

    def _emit(self, out: Output) -> None:
        if isinstance(out, StateCompletion):
            self.told |= {b.target_handle for b in walk(out.tree) if b.target_handle is not None}
        self._out.append(out)
        self._history.append(out)
        if self._held is not None:
            held, self._held = self._held, None
            self._out.append(held)

    def _lie(self, out: Output) -> None:
        if self.rng.random() >= self.rate:
            self._emit(out)
            return
        kind = self.rng.choice(KINDS)
        if kind == "drop":
            self.lies.append(f"drop {type(out).__name__}")
        elif kind == "duplicate":
            self.lies.append(f"duplicate {type(out).__name__}")
            self._emit(out)
            self._emit(out)
        elif kind == "replay" and self._history:
            old = self.rng.choice(list(self._history))
            self.lies.append(f"replay {type(old).__name__}")
            self._emit(out)
            self._emit(old)
        elif kind == "reorder" and self._held is None:
            self.lies.append(f"reorder {type(out).__name__}")
            self._held = out
        else:
            changed = self._rewrite(out)
            self.lies.append(f"rewrite {type(out).__name__}" if changed is not out else "none")
            self._emit(changed)

    # ------------------------------------------------------------------ rewriting one field

    def _rewrite(self, out: Output) -> Output:
        try:
            return self._rewrite_fields(out)
        except (ContractError, ValueError, TypeError):
            return out  # the lie would not even construct: tell the truth this time

    def _rewrite_fields(self, out: Output) -> Output:
        r = self.rng
        if isinstance(out, StateCompletion):
            return replace(out, tree=tuple(self._block(b) for b in out.tree))
        if isinstance(out, SendCompletion):
            return r.choice(
                [
                    lambda: replace(out, bytes_acked=r.randrange(0, 2 * out.bytes_acked + 2)),
                    lambda: replace(out, status=r.choice([Status.SUCCESS, Status.UPLOAD_IN_PROGRESS])),
                    lambda: replace(out, request_id=self._other_request(out.request_id)),
                ]
            )()
        if isinstance(out, ReceiveIndication):
            return r.choice(
                [
                    lambda: replace(out, seq=out.seq + r.choice([-1000, -1, 1, 1000])),
                    lambda: replace(out, indication_id=max(1, out.indication_id - 1)),
                    lambda: replace(out, host_handle=self._other_host_handle(out.host_handle)),
                ]
            )()
        if isinstance(out, PeerDisconnect | PeerReset | UploadRequest | SendBacklogChanged):
            if isinstance(out, SendBacklogChanged) and r.random() < 0.5:
                return replace(out, backlog=r.randrange(0, 1 << 24))
            return replace(out, host_handle=self._other_host_handle(out.host_handle))
        if isinstance(out, Completion | ReceiveCompletion | DisconnectCompletion):
            if r.random() < 0.5 and not isinstance(out, ReceiveCompletion):
                return replace(out, status=r.choice([Status.SUCCESS, Status.FAILURE, Status.REQUEST_ABORTED]))
            return replace(out, request_id=self._other_request(out.request_id))
        return out

    def _block(self, block: BlockList) -> BlockList:
        r = self.rng
        deps = tuple(self._block(d) for d in block.dependents)
        block = block.with_dependents(deps)
        if r.random() >= 0.5:
            return block
        choice = r.randrange(3)
        if choice == 0 and self._handles:
            return block.with_result(block.status, target_handle=r.choice(list(self._handles)))
        if choice == 1:
            return block.with_result(r.choice([Status.SUCCESS, Status.FAILURE]))
        if block.layer is Layer.TCP and isinstance(block.state, TcpDelegated):
            return block.with_result(block.status, state=self._delegated(block.state))
        return block

    def _delegated(self, d: TcpDelegated) -> TcpDelegated:
        r = self.rng
        name = r.choice(["state", "snd_una", "rcv_nxt", "send_data", "buffered_data"])
        if name == "state":
            return replace(d, state=r.choice(list(TcpState)))
        if name == "snd_una":
            una = d.snd_una + r.choice([-100, -1, 1, 100])
            return replace(d, snd_una=una, snd_nxt=max_seq(una, d.snd_nxt), snd_max=max_seq(una, d.snd_max))
        if name == "rcv_nxt":
            return replace(d, rcv_nxt=d.rcv_nxt + r.choice([-100, -1, 1, 100]))
        if name == "send_data":
            return replace(d, send_data=d.send_data[: r.randrange(len(d.send_data) + 1)])
        return replace(d, buffered_data=d.buffered_data[r.randrange(len(d.buffered_data) + 1) :])

    def _other_request(self, rid: int) -> int:
        others = [x for x in self._requests if x != rid]
        return self.rng.choice(others) if others else rid + 1

    def _other_host_handle(self, handle: int) -> int:
        others = [x for x in self._host_handles if x != handle]
        return self.rng.choice(others) if others else handle + 1


def max_seq(a: SeqNum, b: SeqNum) -> SeqNum:
    return a if a >= b else b


# ---------------------------------------------------------------------------------------------- sessions


@dataclass
class Side:
    """One application end of a connection: writes ``data``, reads into ``got`` until EOF or reset."""

    sock: TcpSocket
    data: bytes
    sent: int = 0
    got: bytearray = field(default_factory=bytearray)
    shut: bool = False
    peer_fin: bool = False  # PeerClosed was reported
    end: str | None = None  # "eof" (the peer's FIN, everything before it read) or "reset"

    @property
    def done(self) -> bool:
        """Reset, or everything written and shut down and the peer's EOF read."""
        return self.end == "reset" or (self.end == "eof" and self.shut)

    def step(self) -> None:
        if self.end == "reset":
            return
        try:
            while self.sent < len(self.data):
                n = self.sock.send(self.data[self.sent : self.sent + 32 * 1024])
                if n == 0:
                    break
                self.sent += n
            if self.sent == len(self.data) and not self.shut:
                self.shut = True
                self.sock.shutdown()
            while chunk := self.sock.receive(1 << 20):
                self.got += chunk
        except TcpError:
            pass  # a reset: the event says so
        if self.peer_fin and self.end is None and self.sock.readable == 0:
            self.end = "eof"


@dataclass
class Session:
    seed: int
    rate: float
    pairs: list[tuple[Side, Side]]
    faults: list[OffloadFault]
    lies: list[str]
    ended_at: float
    problems: list[str]
    known_limits: list[str] = field(default_factory=list)


def _build(seed: int, rate: float) -> tuple[SimLink, HostStack, HostStack, LyingNic, SoftwareTarget]:
    rng = random.Random(seed)
    link = SimLink(seed)
    config = TcpConfig(rcv_buf=rng.choice([16, 64, 256]) * 1024, snd_buf=rng.choice([16, 64, 256]) * 1024)
    soft = SoftwareTarget(capacity=16, mac=bytes.fromhex(A_MAC.replace(":", "")), config=config)
    liar = LyingNic(soft, random.Random(seed * 7919 + 1), rate)
    a = HostStack(
        InterfaceConfig.parse(A_MAC, f"{A_IP}/24"),
        config,
        secret=f"hostile-a-{seed}".encode(),
        rng=random.Random(2 * seed + 1),
        target=liar,  # type: ignore[arg-type]
        offload=OffloadPolicy(mode="enabled"),
    )
    b = HostStack(
        InterfaceConfig.parse(B_MAC, f"{B_IP}/24"), config, secret=f"hostile-b-{seed}".encode(),
        rng=random.Random(2 * seed + 2),
    )  # fmt: skip
    soft.attach_host(a)
    loss = rng.choice([0.0, 0.0, 0.01])
    link.attach(soft, "a", Impairments(loss=loss, delay=0.001))
    link.attach(b, "b", Impairments(loss=loss, delay=0.001))
    return link, a, b, liar, soft


def run_session(seed: int, rate: float | None = None, connections: int = 3) -> Session:
    """One seeded session: ``connections`` connections from a (offloaded) to b, each writing a random
    amount both ways, then shutting down and reading to EOF, with random uploads and re-offloads."""
    rng = random.Random(seed)
    rate = rate if rate is not None else rng.choice([0.01, 0.05, 0.15])
    link, a, b, liar, soft = _build(seed, rate)
    sides: dict[TcpSocket, Side] = {}
    faults: list[OffloadFault] = []

    def pump() -> None:
        for stack in (a, b):
            while (ev := stack.next_event()) is not None:
                if isinstance(ev, OffloadFault):
                    faults.append(ev)
                elif isinstance(ev, ConnectionEvent) and ev.sock in sides:
                    side = sides[ev.sock]
                    if isinstance(ev.tcp_event, ConnectionReset):
                        side.end = "reset"
                    elif isinstance(ev.tcp_event, PeerClosed):
                        side.peer_fin = True

    listeners = [b.listen(7 + i) for i in range(connections)]
    clients = [a.connect(B_IP, 7 + i, link.now) for i in range(connections)]
    pairs: list[tuple[Side, Side]] = []
    problems: list[str] = []

    def accepted() -> bool:
        pump()
        return all(
            lst.pending > 0 or c.state is TcpState.CLOSED for lst, c in zip(listeners, clients, strict=True)
        )

    link.run_until(accepted, 30.0)
    for i, (lst, client) in enumerate(zip(listeners, clients, strict=True)):
        server = lst.accept()
        if server is None:  # reset by the host before b's application accepted it: faulted at once
            if client.state is not TcpState.CLOSED or not faults:
                problems.append(f"connection {i} was never accepted")
            continue
        up, down = (
            Side(client, rng.randbytes(rng.randrange(1, 400_000))),
            Side(server, rng.randbytes(rng.randrange(1, 400_000))),
        )
        sides[client], sides[server] = up, down
        pairs.append((up, down))

    def maybe_churn() -> None:
        if rng.random() < 0.05 and pairs:
            sock = rng.choice(pairs)[0].sock
            if sock.state in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT):
                if rng.random() < 0.5:
                    a.upload(sock, Reason.ADMIN)
                else:
                    a.offload_now(sock)

    def all_ended() -> bool:
        pump()
        for side in sides.values():
            side.step()
        pump()
        maybe_churn()
        return all(side.done for side in sides.values())

    start = link.now
    while not all_ended() and link.now - start <= HANG_BOUND:
        link.run_for(STEP)
    ended_at = link.now - start
    known = _unnamed_copies(pairs, liar, soft)
    problems += _check(a, pairs, faults, known)
    limits = [f"conn {i}: b hangs, connected to {copy}" for i, copy in known.items()]
    return Session(seed, rate, pairs, faults, liar.lies, ended_at, problems, limits)


def _unnamed_copies(pairs: list[tuple[Side, Side]], liar: LyingNic, soft: SoftwareTarget) -> dict[int, str]:
    """The connections whose peer hangs, served still by the target from a copy on a path whose handle the
    host was never told (the known limit), by pair index."""
    copies = {}
    held = soft.dump_state()["connections"].values()
    for i, (sa, sb) in enumerate(pairs):
        if sb.done:
            continue
        local, remote = f"{A_IP}:{sa.sock.local_port}", f"{B_IP}:{sa.sock.remote_port}"
        for entry in held:
            if (entry["local"], entry["remote"]) == (local, remote) and entry["path"] not in liar.told:
                copies[i] = (
                    f"the target's copy {entry['host_handle']} on path {entry['path']}, whose handle the "
                    "host never learnt (known limit, docs/offload-contract.md)"
                )
    return copies


def _check(
    a: HostStack, pairs: list[tuple[Side, Side]], faults: list[OffloadFault], known: dict[int, str]
) -> list[str]:
    problems: list[str] = []
    faulted = {f.sock for f in faults}
    for i, (sa, sb) in enumerate(pairs):
        for name, reader, writer in (("a", sa, sb), ("b", sb, sa)):
            truth = writer.data
            if bytes(reader.got) != truth[: len(reader.got)]:
                problems.append(f"conn {i}: {name} read wrong bytes (not a prefix of what its peer wrote)")
            short = len(reader.got) < len(truth)
            if not reader.done and not (name == "b" and i in known and sa.end == "reset"):
                problems.append(f"conn {i}: {name} hangs ({len(reader.got)}/{len(truth)} bytes read)")
            elif short and reader.end == "eof" and sa.sock not in faulted and sb.end != "reset":
                problems.append(
                    f"conn {i}: {name} got a clean EOF after {len(reader.got)}/{len(truth)} bytes"
                )
        if sa.end == "reset" and sa.sock not in faulted and None not in faulted:
            problems.append(f"conn {i}: a was reset with no fault reported")
    counters = a.counters
    offload = counters.get("offload", {})
    explained = offload.get("target_faults", 0) + offload.get("precondition_refused", 0)
    unexplained = counters["stack"]["internal_error"] - explained
    if unexplained:
        problems.append(
            f"{unexplained} exception(s) caught by the stack's safety net: {a.internal_errors[-3:]}"
        )
    return problems


def describe(session: Session) -> dict[str, Any]:
    kinds: dict[str, int] = {}
    for lie in session.lies:
        kinds[lie] = kinds.get(lie, 0) + 1
    return {
        "seed": session.seed,
        "rate": session.rate,
        "lies": len(session.lies),
        "faults": len(session.faults),
        "resets": sum(s.end == "reset" for pair in session.pairs for s in pair),
        "virtual_s": round(session.ended_at, 3),
        "problems": session.problems,
        **({"known_limits": session.known_limits} if session.known_limits else {}),
    }


def main() -> None:
    """``make hostile``: seeded sessions until HOSTILE_SECONDS of wall time (or HOSTILE_SEEDS sessions)
    from HOSTILE_SEED on; one JSON line per session with a problem, a summary line at the end."""
    import json
    import os
    import time

    first = int(os.environ.get("HOSTILE_SEED", "1000"))
    seconds = float(os.environ.get("HOSTILE_SECONDS", "900"))
    count = int(os.environ.get("HOSTILE_SEEDS", "0")) or None
    started = time.monotonic()
    seed, bad, limited, lies, faults = first, 0, 0, 0, 0
    while time.monotonic() - started < seconds and (count is None or seed - first < count):
        try:
            session = run_session(seed)
        except Exception as exc:  # an exception that escaped the stack: the worst finding, keep going
            bad += 1
            print(json.dumps({"seed": seed, "raised": f"{type(exc).__name__}: {exc}"}), flush=True)
            seed += 1
            continue
        lies += len(session.lies)
        faults += len(session.faults)
        bad += bool(session.problems)
        limited += bool(session.known_limits and not session.problems)
        if session.problems or session.known_limits:
            print(json.dumps(describe(session)), flush=True)
        seed += 1
    summary = {
        "sessions": seed - first,
        "first_seed": first,
        "with_problems": bad,
        "known_limits": limited,
        "lies": lies,
        "faults_reported": faults,
        "wall_s": round(time.monotonic() - started, 1),
    }
    print(json.dumps(summary), flush=True)
    raise SystemExit(1 if bad else 0)


if __name__ == "__main__":
    main()
