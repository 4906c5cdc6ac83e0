"""The software target's contract rules around a connection's life: capacity refusals, FIN and RST
indications, the TIME-WAIT upload request, pass-through of everything it does not hold, and its
fault knobs."""

from __future__ import annotations

import warnings

import pytest
from nic_kit import LOCAL_IP, Bench, Offloaded, read_all

from tcpchimney.chimney import (
    BlockList,
    Disconnect,
    DisconnectCompletion,
    InvalidateOffload,
    Layer,
    PathCached,
    PeerDisconnect,
    PeerReset,
    PostReceive,
    QueryOffload,
    Reason,
    ReceiveCompletion,
    ReceiveIndication,
    Role,
    Send,
    SendCompletion,
    StateCompletion,
    Status,
    TcpSnapshot,
    UpdateOffload,
    UploadRequest,
    walk,
)
from tcpchimney.link.sim import Impairments
from tcpchimney.tcp.config import TcpConfig
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire import ethernet
from tcpchimney.wire import ipv4 as ipv4_wire


def _ours(bench: Bench, off: Offloaded) -> list[bytes]:
    """Frames the peer received from the offloaded connection."""
    port = off.snapshot.const.local_port.to_bytes(2, "big")
    return [f for f in bench.wire.frames if f[26:30] == LOCAL_IP and f[34:36] == port]


def test_full_table_refuses_and_the_connection_stays_on_the_host() -> None:
    bench = Bench(capacity=1)
    first, _ = bench.connect()
    second, server2 = bench.connect()
    off = bench.offload(first)
    refused = bench.try_offload(second, neighbor=off.neighbor, path=off.path)
    assert isinstance(refused, StateCompletion)
    tcp = next(b for b in walk(refused.tree) if b.layer is Layer.TCP)
    assert tcp.status is Status.TCP_ENTRIES and tcp.target_handle is None
    assert refused.status is Status.FAILURE  # linkers with no dependent offloaded
    assert bench.target.dump_state()["counters"]["refusals"] == {"target_full": 1}
    # The refused connection's frames pass through to the host unchanged, both ways.
    second.send(b"still on the host")
    bench.run_until(lambda: server2.readable >= 17)
    assert server2.receive(100) == b"still on the host"
    server2.send(b"reply")
    bench.run_until(lambda: second.conn.readable >= 5)
    assert second.receive(100) == b"reply"


def test_refuse_next_offload_knob() -> None:
    bench = Bench()
    sock, _ = bench.connect()
    bench.target.refuse_next_offload(Reason.RCV_WINDOW_UNSUPPORTED)
    refused = bench.try_offload(sock)
    assert isinstance(refused, StateCompletion)
    statuses = [b.status for b in walk(refused.tree)]
    assert statuses == [Status.SUCCESS, Status.PARTIAL_SUCCESS, Status.TCP_RCV_WINDOW]  # spec 3.1 rules
    assert bench.target.dump_state()["counters"]["refusals"] == {"rcv_window_unsupported": 1}
    with pytest.raises(ValueError):
        bench.target.refuse_next_offload(Reason.ADMIN)


def test_peer_disconnect_waits_for_earlier_data() -> None:
    bench = Bench()
    sock, server = bench.connect()
    off = bench.offload(sock)
    server.send(b"last words")
    server.shutdown()
    bench.run_until(lambda: any(isinstance(o, ReceiveIndication) for o in bench.outputs))
    bench.link.run_for(1.0)  # the FIN arrived too
    assert bench.take(PeerDisconnect) == []  # not before the data was taken
    got = bytearray()
    bench.answer_indications(off, got)
    assert got == b"last words"
    fin = server.conn.snd_max + -1  # the FIN's sequence number: just after the last byte delivered
    assert bench.take(PeerDisconnect) == [PeerDisconnect(off.host_handle, fin)]
    rid = bench.rid()
    bench.submit(PostReceive(rid, off.ctx, 100))
    assert bench.completion(rid) == ReceiveCompletion(rid, Status.INVALID_STATE, b"")


def test_peer_reset_is_indicated_at_once_and_aborts_calls() -> None:
    bench = Bench()
    sock, server = bench.connect()
    off = bench.offload(sock)
    bench.set_impairments("nic", _loss())
    rid = bench.rid()
    bench.submit(Send(rid, off.ctx, b"never acked"))
    bench.link.run_for(0.1)
    server.abort()
    bench.run_until(lambda: any(isinstance(o, PeerReset) for o in bench.outputs))
    assert bench.take(PeerReset) == [PeerReset(off.host_handle)]
    assert bench.completion(rid) == SendCompletion(rid, Status.REQUEST_ABORTED, 0)
    again = bench.rid()
    bench.submit(Send(again, off.ctx, b"x"))
    assert bench.completion(again).status is Status.REQUEST_ABORTED
    delegated = bench.terminate(off)
    assert delegated.state is TcpState.CLOSED


def _loss() -> Impairments:
    return Impairments(loss=1.0)


def test_graceful_close_then_time_wait_asks_for_upload() -> None:
    bench = Bench()
    sock, server = bench.connect()
    off = bench.offload(sock)
    rid = bench.rid()
    bench.submit(Disconnect(rid, off.ctx, data=b"bye"))
    bench.run_until(lambda: server.conn.state is TcpState.CLOSE_WAIT)
    assert read_all(server) == b"bye"
    bench.link.run_for(0.5)
    assert bench.completion(rid) == DisconnectCompletion(rid, Status.SUCCESS, 3)
    server.close()
    bench.run_until(lambda: any(isinstance(o, UploadRequest) for o in bench.outputs))
    kinds = [type(o) for o in bench.outputs]
    assert kinds.index(PeerDisconnect) < kinds.index(UploadRequest)  # the request never overtakes the FIN
    assert bench.take(UploadRequest) == [UploadRequest(off.host_handle, Reason.TIME_WAIT)]
    bench.link.run_for(120.0)  # 2*MSL is the host's: the target keeps the connection in TIME-WAIT
    delegated = bench.terminate(off, with_path=True)
    assert delegated.state is TcpState.TIME_WAIT
    assert bench.target.dump_state()["connections"] == {} and bench.target.dump_state()["paths"] == {}


def test_urgent_data_freezes_and_goes_up_raw_after_upload() -> None:
    bench = Bench()
    sock, server = bench.connect()
    off = bench.offload(sock)
    # The peer's next data segment, with URG set, built from its own engine's view of the connection.
    conn = server.conn
    from tcpchimney.wire.checksum import pseudo_base_sum
    from tcpchimney.wire.tcp import ACK, URG, TcpSegment, emit_tcp

    seg = TcpSegment(
        80, off.snapshot.const.local_port, conn.snd_nxt, conn.rcv_nxt, ACK | URG, 1000, b"!", urgent=1
    )
    tcp = emit_tcp(seg, pseudo_base_sum(bytes([198, 18, 0, 1]), LOCAL_IP, 6))
    frame = ethernet.emit_ethernet(bytes.fromhex("020000000002"), bytes.fromhex("020000000001"), 0x0800)
    frame += ipv4_wire.emit_ipv4(bytes([198, 18, 0, 1]), LOCAL_IP, 6, len(tcp), 1, flags_frag=0x4000) + tcp
    from tcpchimney.wire.frame import Frame

    rx_before = bench.host.counters["tcp"]["rx"]
    bench.target.handle_frame(Frame(frame), bench.now)
    assert bench.take(UploadRequest) == [UploadRequest(off.host_handle, Reason.URGENT_DATA)]
    rid = bench.rid()
    bench.submit(Send(rid, off.ctx, b"late"))
    assert bench.completion(rid) == SendCompletion(rid, Status.UPLOAD_IN_PROGRESS, 0)
    assert bench.target.dump_state()["connections"][off.ctx]["held_frames"] == 1
    bench.terminate(off)
    assert bench.host.counters["tcp"]["rx"] == rx_before
    bench.target.frames_to_send(bench.now)  # the next entry point hands the held frame up
    assert bench.host.counters["tcp"]["rx"] == rx_before + 1


def test_ip_ids_from_the_upper_half_and_ttl_from_cached_state() -> None:
    bench = Bench()
    sock, server = bench.connect()
    host_frames = len(_ours_all(bench))
    off = bench.offload(sock)
    bench.submit(Send(bench.rid(), off.ctx, b"z" * 5000))
    bench.run_until(lambda: server.readable >= 5000)
    mine = _ours(bench, off)[host_frames:]
    assert mine
    for f in mine:
        ip = ipv4_wire.parse_ipv4(f, 14)
        assert ip.ident >= 0x8000 and ip.dont_fragment and ip.ttl == off.snapshot.cached.ttl


def _ours_all(bench: Bench) -> list[bytes]:
    return [f for f in bench.wire.frames if f[26:30] == LOCAL_IP]


def test_invalidate_stops_sending_and_asks_for_upload() -> None:
    bench = Bench()
    sock, server = bench.connect()
    off = bench.offload(sock)
    tree = (BlockList(Layer.NEIGHBOR, Role.LINKER, None, off.neighbor),)
    rid = bench.rid()
    bench.submit(InvalidateOffload(rid, tree))
    assert bench.completion(rid).status is Status.SUCCESS
    assert bench.take(UploadRequest) == [UploadRequest(off.host_handle, Reason.INVALID_STATE)]
    sent = len(bench.wire.frames)
    late = bench.rid()
    bench.submit(Send(late, off.ctx, b"q"))
    assert bench.completion(late).status is Status.UPLOAD_IN_PROGRESS
    server.send(b"data for a frozen connection")
    bench.link.run_for(2.0)
    assert len(bench.wire.frames) == sent + 0  # not even an ACK leaves
    delegated = bench.terminate(off)
    bench.upload_into_host(off, delegated)
    bench.target.frames_to_send(bench.now)
    bench.run_until(lambda: sock.conn.readable >= 28)
    assert read_all(sock) == b"data for a frozen connection"


def test_query_returns_the_current_state() -> None:
    bench = Bench()
    sock, server = bench.connect()
    off = bench.offload(sock)
    bench.submit(Send(bench.rid(), off.ctx, b"k" * 1000))
    bench.run_until(lambda: server.readable >= 1000)
    bench.link.run_for(0.5)
    tcp = BlockList(Layer.TCP, Role.LINKER, None, off.ctx)
    path = BlockList(Layer.PATH, Role.LINKER, None, off.path, dependents=(tcp,))
    rid = bench.rid()
    bench.submit(
        QueryOffload(rid, (BlockList(Layer.NEIGHBOR, Role.LINKER, None, off.neighbor, dependents=(path,)),))
    )
    done = bench.completion(rid)
    assert done.status is Status.SUCCESS
    state = next(b for b in walk(done.tree) if b.layer is Layer.TCP).state
    assert isinstance(state, TcpSnapshot)
    assert state.delegated.snd_una == off.snapshot.delegated.snd_una + 1000


def test_fault_knobs() -> None:
    bench = Bench()
    sock, server = bench.connect()
    off = bench.offload(sock)
    bench.target.stall(True)
    bench.target.submit(Send(bench.rid(), off.ctx, b"s" * 100), bench.now)
    bench.link.run_for(1.0)
    assert server.readable == 0 and bench.target.poll() is None
    bench.target.stall(False)
    bench.run_until(lambda: server.readable >= 100)
    bench.link.run_for(0.5)
    assert [c.status for c in bench.take(SendCompletion)] == [Status.SUCCESS]
    bench.target.request_upload(off.host_handle, Reason.LOW_ACTIVITY)
    assert bench.take(UploadRequest) == [UploadRequest(off.host_handle, Reason.LOW_ACTIVITY)]
    bench.target.fail_hardware()
    assert bench.take(UploadRequest) == [UploadRequest(off.host_handle, Reason.TARGET_HARDWARE_FAILURE)]
    rid = bench.rid()
    bench.submit(Send(rid, off.ctx, b"no"))
    assert bench.completion(rid).status is Status.UPLOAD_IN_PROGRESS
    with pytest.warns(ResourceWarning, match="1 connection"):
        bench.target.close()
    delegated = bench.terminate(off, with_path=True)  # the state survives a hardware failure
    assert delegated.snd_una == off.snapshot.delegated.snd_una + 100
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bench.target.close()


def test_retransmit_limit_asks_for_upload_and_the_host_decides() -> None:
    bench = Bench(config=TcpConfig(max_retransmits=3))
    sock, _ = bench.connect()
    off = bench.offload(sock)
    bench.set_impairments("nic", _loss())
    rid = bench.rid()
    bench.submit(Send(rid, off.ctx, b"lost" * 100))
    bench.run_until(lambda: any(isinstance(o, UploadRequest) for o in bench.outputs), 60.0)
    assert bench.take(UploadRequest) == [UploadRequest(off.host_handle, Reason.RETRANSMIT_TIMEOUT)]
    assert bench.target.next_deadline() is None or bench.target.next_deadline() != bench.now
    delegated = bench.terminate(off)
    assert bench.completion(rid) == SendCompletion(rid, Status.UPLOAD_IN_PROGRESS, 0)
    assert delegated.send_data == b"lost" * 100 and delegated.retransmit_timeout == 0.0
    bench.link.run_for(0.01)  # the host takes it over a little later; its timer fires at once
    bench.upload_into_host(off, delegated)
    bench.link.run_for(1.0)
    assert sock.conn.state is TcpState.CLOSED and sock.conn.timed_out  # the host engine gave up


def test_path_mtu_update_shrinks_segments() -> None:
    bench = Bench()
    sock, server = bench.connect()
    off = bench.offload(sock)
    path = BlockList(Layer.PATH, Role.LINKER, None, off.path, state=PathCached(path_mtu=576))
    rid = bench.rid()
    bench.submit(UpdateOffload(rid, (BlockList(Layer.NEIGHBOR, Role.PLACEHOLDER, dependents=(path,)),)))
    assert bench.completion(rid).status is Status.SUCCESS
    before = len(bench.wire.frames)
    bench.submit(Send(bench.rid(), off.ctx, b"m" * 20_000))
    bench.run_until(lambda: server.readable >= 20_000)
    sizes = [len(f) for f in bench.wire.frames[before:] if f[26:30] == LOCAL_IP]
    assert sizes and max(sizes) <= 14 + 576
    assert read_all(server) == b"m" * 20_000
