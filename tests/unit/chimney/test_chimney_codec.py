"""The codec: every message type round-trips; malformed bytes raise CodecError and nothing else."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpchimney.chimney import (
    PLACEHOLDER,
    CodecError,
    Completion,
    Disconnect,
    DisconnectCompletion,
    Forward,
    InitiateOffload,
    InvalidateOffload,
    LinkedObject,
    LinkStatusChanged,
    NeighborCached,
    NeighborConst,
    NeighborDelegated,
    NeighborReachabilityQuery,
    NeighborState,
    NewObject,
    PathCached,
    PathConst,
    PathState,
    PeerDisconnect,
    PeerReset,
    PostReceive,
    QueryOffload,
    ReachabilityReply,
    Reason,
    ReasonGroup,
    ReceiveCompletion,
    ReceiveIndication,
    ReturnReceive,
    Send,
    SendBacklogChanged,
    SendCompletion,
    StateCompletion,
    Status,
    TargetCapabilities,
    TargetPaused,
    TargetResumed,
    TcpCached,
    TcpConst,
    TcpDelegated,
    TcpSnapshot,
    TerminateOffload,
    UpdateOffload,
    UploadAllRequested,
    UploadRequest,
    build_tree,
    complete_initiate,
)
from tcpchimney.chimney.codec import MESSAGE_CLASSES, decode, encode
from tcpchimney.chimney.tree import BlockList, Tree, mark_all
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire.seq import SeqNum

U32 = 0xFFFF_FFFF
ids = st.integers(0, 2**64 - 1)
u32 = st.integers(0, U32)
durations = st.floats(0, 1e7, allow_nan=False, allow_infinity=False)
small_bytes = st.binary(max_size=64)
unicast_mac = st.binary(min_size=6, max_size=6).map(lambda b: bytes([b[0] & 0xFE]) + b[1:])

neighbor_states = st.builds(
    NeighborState,
    st.builds(NeighborConst, st.none() | unicast_mac, st.integers(0, 4094)),
    st.builds(NeighborCached, unicast_mac, durations),
    st.builds(NeighborDelegated, durations),
)
path_states = st.builds(
    PathState,
    st.builds(PathConst, st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4)),
    st.builds(PathCached, st.integers(68, 65535)),
)
tcp_consts = st.builds(
    TcpConst,
    local_port=st.integers(1, 65535),
    remote_port=st.integers(1, 65535),
    remote_mss=st.integers(88, 65535),
    timestamps=st.booleans(),
    sack=st.booleans(),
    window_scaling=st.just(True),
    snd_wscale=st.integers(0, 14),
    rcv_wscale=st.integers(0, 14),
    hash_value=u32,
)
tcp_cacheds = st.builds(
    TcpCached,
    initial_rcv_wnd=st.integers(1, 0xFFFF << 14),
    rcv_indication_size=u32,
    nodelay=st.booleans(),
    keepalive=st.booleans(),
    keepalive_idle=durations,
    keepalive_interval=durations,
    keepalive_probes=st.integers(0, 255),
    max_rt=durations | st.just(float("inf")),
    ttl=st.integers(1, 255),
    tos=st.integers(0, 255),
    flow_label=st.integers(0, (1 << 20) - 1),
    user_priority=st.integers(0, 7),
    keepalive_restart=st.booleans(),
    max_rt_restart=st.booleans(),
    update_rcv_wnd=st.booleans(),
)


@st.composite
def tcp_delegateds(draw: st.DrawFn, offloadable: bool = False) -> TcpDelegated:
    states = [
        s
        for s in TcpState
        if not offloadable
        or s
        not in (
            TcpState.CLOSED,
            TcpState.LISTEN,
            TcpState.SYN_SENT,
            TcpState.SYN_RECEIVED,
            TcpState.TIME_WAIT,
        )
    ]
    state = draw(st.sampled_from(states))
    send = b"" if state in (TcpState.FIN_WAIT_2, TcpState.TIME_WAIT) else draw(small_bytes)
    una = SeqNum(draw(u32))
    to_max = draw(st.integers(0, len(send)))
    to_nxt = draw(st.integers(0, to_max))
    snd_wnd = draw(st.integers(0, 1 << 20))
    return TcpDelegated(
        state=state,
        rcv_nxt=SeqNum(draw(u32)),
        rcv_wnd=draw(st.integers(0, 1 << 20)),
        snd_una=una,
        snd_nxt=una + to_nxt,
        snd_max=una + to_max,
        snd_wnd=snd_wnd,
        max_snd_wnd=snd_wnd + draw(st.integers(0, 1000)),
        snd_wl1=SeqNum(draw(u32)),
        snd_wl2=SeqNum(draw(u32)),
        cwnd=draw(st.integers(1, U32)),
        ssthresh=draw(st.integers(1, U32)),
        srtt=draw(st.none() | durations),
        rttvar=draw(durations),
        rto=draw(st.floats(0.001, 120)),
        ts_recent=draw(u32),
        ts_recent_age=draw(durations),
        ts_time=draw(u32),
        total_rt=draw(durations),
        dup_ack_count=draw(st.integers(0, 0xFFFF)),
        snd_wnd_probe_count=draw(st.integers(0, 255)),
        keepalive_probe_count=draw(st.integers(0, 255)),
        keepalive_timeout=draw(st.none() | durations),
        retransmit_count=draw(st.integers(0, 255)),
        retransmit_timeout=draw(st.none() | durations),
        send_data=send,
        buffered_data=draw(small_bytes),
        send_backlog_size=draw(st.none() | u32),
        receive_backlog_size=draw(st.none() | u32),
    )


tcp_snapshots = st.builds(TcpSnapshot, tcp_consts, tcp_cacheds, tcp_delegateds(offloadable=True))


@st.composite
def initiate_trees(draw: st.DrawFn) -> Tree:
    """Random triples over a few neighbors and paths (each path under one neighbor): exercises sharing."""
    count = draw(st.integers(1, 8))
    triples = []
    for i in range(count):
        n = draw(st.integers(1, 3))
        p = 10 * n + draw(st.integers(0, 2))
        neighbor = NewObject(n, draw(neighbor_states)) if n != 3 else LinkedObject(3000 + n, n)
        path = NewObject(p, draw(path_states)) if n != 3 else LinkedObject(3000 + p, p)
        triples.append((neighbor, path, NewObject(1000 + i, draw(tcp_snapshots))))
    return build_tree(_consistent(triples))


def _consistent(triples: list) -> list:  # type: ignore[type-arg]
    """Keep the first state drawn for each neighbor and path handle (the builder refuses two states)."""
    first: dict[object, object] = {}
    out = []
    for n, p, t in triples:
        out.append((first.setdefault(("n", _k(n)), n), first.setdefault(("p", _k(p)), p), t))
    return out


def _k(node: object) -> object:
    return node.host_handle if isinstance(node, NewObject) else node.target_handle  # type: ignore[attr-defined]


linked_tcp_trees = st.lists(st.integers(1, 2**40), min_size=1, max_size=6, unique=True).map(
    lambda hs: build_tree([(PLACEHOLDER, LinkedObject(7), LinkedObject(h, h)) for h in hs])
)


@st.composite
def initiate_completions(draw: st.DrawFn) -> StateCompletion:
    tree = draw(initiate_trees())
    failures = draw(
        st.lists(
            st.sampled_from([Status.SUCCESS, Status.FAILURE, Status.TCP_ENTRIES]), min_size=20, max_size=20
        )
    )
    counter = iter(range(10**6))

    def attempt(block: BlockList) -> tuple[Status, int | None]:
        status = failures[next(counter) % 20]
        return status, (block.host_handle or 0) + 5 if status is Status.SUCCESS else None

    done = complete_initiate(tree, attempt)
    return StateCompletion(draw(ids), draw(st.sampled_from(list(Status)[2:])), done)


@st.composite
def terminate_completions(draw: st.DrawFn) -> StateCompletion:
    tree = draw(linked_tcp_trees)
    done = mark_all(tree, Status.SUCCESS)
    states = [draw(tcp_delegateds()) for _ in done[0].dependents[0].dependents]
    path = done[0].dependents[0]
    tcp = tuple(b.with_result(Status.SUCCESS, state=s) for b, s in zip(path.dependents, states, strict=True))
    new_path = BlockList(
        path.layer, path.role, path.host_handle, path.target_handle, path.state, path.status, tcp
    )
    root = BlockList(done[0].layer, done[0].role, status=Status.SUCCESS, dependents=(new_path,))
    return StateCompletion(draw(ids), Status.SUCCESS, (root,))


final_status = st.sampled_from([s for s in Status if s is not Status.PENDING])
target_reasons = st.sampled_from(Reason.of_group(ReasonGroup.TARGET_UPLOAD))

STRATEGIES = {
    InitiateOffload: st.builds(InitiateOffload, ids, initiate_trees()),
    UpdateOffload: st.builds(
        UpdateOffload,
        ids,
        st.builds(
            lambda c: build_tree([(LinkedObject(5, 1, c), None, None)]),
            st.builds(NeighborCached, unicast_mac, durations),
        ),
    ),
    InvalidateOffload: st.builds(InvalidateOffload, ids, linked_tcp_trees),
    QueryOffload: st.builds(QueryOffload, ids, linked_tcp_trees),
    TerminateOffload: st.builds(TerminateOffload, ids, linked_tcp_trees),
    Send: st.builds(Send, ids, ids, st.binary(min_size=1, max_size=200)),
    PostReceive: st.builds(
        lambda r, c, s, p, f: PostReceive(r, c, s, p, min(f, s)), ids, ids, u32, st.booleans(), u32
    ),
    Disconnect: st.builds(Disconnect, ids, ids, st.just(False), small_bytes)
    | st.builds(Disconnect, ids, ids, st.just(True)),
    Forward: st.builds(
        Forward, ids, ids, st.lists(st.binary(min_size=20, max_size=80), min_size=1, max_size=4).map(tuple)
    ),
    ReturnReceive: st.builds(ReturnReceive, ids, ids, ids, u32),
    ReachabilityReply: st.builds(ReachabilityReply, ids, ids, ids, durations),
    Completion: st.builds(Completion, ids, final_status),
    StateCompletion: initiate_completions() | terminate_completions(),
    SendCompletion: st.builds(SendCompletion, ids, final_status, u32),
    ReceiveCompletion: st.builds(ReceiveCompletion, ids, final_status, small_bytes),
    DisconnectCompletion: st.builds(DisconnectCompletion, ids, final_status, u32),
    ReceiveIndication: st.builds(
        ReceiveIndication, ids, ids, st.binary(min_size=1, max_size=100), st.builds(SeqNum, u32)
    ),
    PeerDisconnect: st.builds(PeerDisconnect, ids, st.builds(SeqNum, u32)),
    PeerReset: st.builds(PeerReset, ids),
    UploadRequest: st.builds(UploadRequest, ids, target_reasons),
    SendBacklogChanged: st.builds(SendBacklogChanged, ids, u32),
    NeighborReachabilityQuery: st.builds(NeighborReachabilityQuery, ids, ids, durations),
    TargetCapabilities: st.builds(TargetCapabilities, st.booleans(), st.booleans(), st.booleans(), u32),
    TargetPaused: st.just(TargetPaused()),
    TargetResumed: st.builds(
        TargetResumed, st.builds(TargetCapabilities, st.booleans(), st.booleans(), st.booleans(), u32)
    ),
    UploadAllRequested: st.just(UploadAllRequested()),
    LinkStatusChanged: st.builds(LinkStatusChanged, st.booleans()),
}
any_message = st.one_of(*STRATEGIES.values())


def test_every_message_class_has_a_strategy() -> None:
    assert set(STRATEGIES) == set(MESSAGE_CLASSES)


@pytest.mark.parametrize("cls", list(STRATEGIES), ids=lambda c: c.__name__)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_round_trip(cls: type, data: st.DataObject) -> None:
    message = data.draw(STRATEGIES[cls])
    encoded = encode(message)
    decoded = decode(encoded)
    assert type(decoded) is cls
    assert decoded == message
    assert encode(decoded) == encoded


@settings(max_examples=50, deadline=None)
@given(any_message)
def test_every_strict_prefix_is_truncated(message: object) -> None:
    encoded = encode(message)
    for end in range(len(encoded)):
        with pytest.raises(CodecError):
            decode(encoded[:end])


@settings(max_examples=50, deadline=None)
@given(any_message, st.binary(min_size=1, max_size=4))
def test_trailing_bytes_are_refused(message: object, extra: bytes) -> None:
    with pytest.raises(CodecError, match="trailing"):
        decode(encode(message) + extra)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_decodes_or_raises_codec_error_only(data: bytes) -> None:
    try:
        message = decode(data)
    except CodecError:
        return
    assert type(message) in MESSAGE_CLASSES


@settings(max_examples=200, deadline=None)
@given(any_message, st.data())
def test_corrupted_messages_decode_or_raise_codec_error_only(message: object, data: st.DataObject) -> None:
    encoded = bytearray(encode(message))
    index = data.draw(st.integers(0, len(encoded) - 1))
    encoded[index] ^= data.draw(st.integers(1, 255))
    with contextlib.suppress(CodecError):  # any other exception fails the test
        decode(bytes(encoded))


def test_unknown_tag_and_non_messages() -> None:
    with pytest.raises(CodecError, match="unknown message tag"):
        decode(b"\x7f")
    with pytest.raises(CodecError, match="not a contract message"):
        encode(TcpConst(local_port=1, remote_port=2, remote_mss=536))


def test_decoding_validates_again() -> None:
    encoded = bytearray(encode(Send(1, 2, b"x")))
    assert encoded[-2:] == b"\x01x"  # length 1, then the payload
    with pytest.raises(CodecError, match="invalid"):
        decode(bytes(encoded[:-2]) + b"\x00")  # an empty send is not a valid request


def test_encoding_is_compact() -> None:
    assert len(encode(PeerReset(5))) == 2
    assert len(encode(SendCompletion(300, Status.SUCCESS, 1460))) <= 6
