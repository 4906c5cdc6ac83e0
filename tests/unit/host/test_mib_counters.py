"""Each Linux MIB counter of ``chimney stats`` moves when the event it names happens, and not otherwise:
two host stacks with the real engine on an in-test link (tcpchimney.manage.mib maps the stack's counters)."""

from __future__ import annotations

from conftest import events, make_stack
from shuttle import Shuttle

from tcpchimney.host.stack import HostStack
from tcpchimney.manage.mib import current_established, host_mib
from tcpchimney.tcp.connection import TcpConnection
from tcpchimney.tcp.state import TcpState
from tcpchimney.wire.frame import Frame
from tcpchimney.wire.tcp import RST

B_IP = "198.18.0.11"


def _pair() -> tuple[HostStack, HostStack, Shuttle]:
    a = make_stack("02:00:00:00:00:0a", "198.18.0.10/24", seed=1, engine=TcpConnection)
    b = make_stack("02:00:00:00:00:0b", "198.18.0.11/24", seed=2, engine=TcpConnection)
    return a, b, Shuttle([a, b])


def mib(stack: HostStack) -> dict[str, int]:
    return host_mib(stack.counters, current_established(s.state for s in stack.connections()))


def _tcp_payload_len(f: Frame) -> int:
    raw = f.tobytes()
    ihl = (raw[14] & 0x0F) * 4
    if raw[12:14] != b"\x08\x00" or raw[23] != 6:
        return -1
    doff = (raw[14 + ihl + 12] >> 4) * 4
    return len(raw) - 14 - ihl - doff


def test_a_connection_counts_its_opens_segments_and_establishment() -> None:
    a, b, link = _pair()
    listener = b.listen(7)
    before_a, before_b = mib(a), mib(b)
    client = a.connect(B_IP, 7, link.now)
    link.run_until(lambda: listener.pending > 0)
    server = listener.accept()
    assert server is not None
    client.send(b"x" * 5000)
    link.run_until(lambda: server.readable >= 5000)
    after_a, after_b = mib(a), mib(b)
    assert (before_a["TcpActiveOpens"], after_a["TcpActiveOpens"]) == (0, 1)
    assert after_a["TcpPassiveOpens"] == 0 and after_b["TcpPassiveOpens"] == 1
    assert after_b["TcpActiveOpens"] == 0
    assert after_a["TcpCurrEstab"] == after_b["TcpCurrEstab"] == 1
    assert after_a["TcpOutSegs"] > before_a["TcpOutSegs"] and after_b["TcpInSegs"] == after_a["TcpOutSegs"]
    assert (
        after_a["IpOutRequests"] >= after_a["TcpOutSegs"] and after_b["IpInDelivers"] >= after_b["TcpInSegs"]
    )
    assert after_a["TcpRetransSegs"] == 0 and after_a["TcpExtTCPTimeouts"] == 0 and after_a["TcpOutRsts"] == 0
    assert before_b["TcpCurrEstab"] == 0


def test_a_lost_segment_counts_a_retransmission_and_a_timeout() -> None:
    a, b, link = _pair()
    listener = b.listen(7)
    client = a.connect(B_IP, 7, link.now)
    link.run_until(lambda: listener.pending > 0)
    server = listener.accept()
    assert server is not None
    lost: list[int] = []

    def drop_first_data(sender: int, f: Frame) -> bool:
        if sender == 0 and not lost and _tcp_payload_len(f) > 0:
            lost.append(1)
            return True
        return False

    link.drop = drop_first_data
    client.send(b"y" * 1000)  # one segment: no duplicate ACKs, the timer resends it
    link.run_until(lambda: server.readable >= 1000)
    m = mib(a)
    assert lost and m["TcpRetransSegs"] >= 1 and m["TcpExtTCPTimeouts"] >= 1
    assert mib(b)["TcpRetransSegs"] == 0


def test_a_lost_syn_counts_as_a_retransmission() -> None:
    a, b, link = _pair()
    listener = b.listen(7)
    dropped: list[int] = []

    def drop_syn(sender: int, f: Frame) -> bool:
        if sender == 0 and not dropped and _tcp_payload_len(f) == 0:
            dropped.append(1)
            return True
        return False

    link.flush()  # ARP first: it is not what the test drops
    link.drop = drop_syn
    a.connect(B_IP, 7, link.now)
    link.run_until(lambda: listener.pending > 0)
    assert dropped and mib(a)["TcpRetransSegs"] == 1


def test_a_refused_connect_counts_an_attempt_failure_and_the_peer_an_out_rst() -> None:
    a, b, link = _pair()
    client = a.connect(B_IP, 9, link.now)  # nobody listens on port 9
    link.run_until(lambda: client.state is TcpState.CLOSED)
    assert mib(a)["TcpAttemptFails"] == 1 and mib(a)["TcpEstabResets"] == 0
    assert mib(b)["TcpOutRsts"] == 1 and mib(a)["TcpOutRsts"] == 0


def test_an_abort_counts_an_estab_reset_on_both_sides_and_one_out_rst() -> None:
    a, b, link = _pair()
    listener = b.listen(7)
    client = a.connect(B_IP, 7, link.now)
    link.run_until(lambda: listener.pending > 0)
    server = listener.accept()
    assert server is not None
    client.abort()
    link.run_until(lambda: server.state is TcpState.CLOSED)
    events(a)
    events(b)
    ma, mb = mib(a), mib(b)
    assert ma["TcpOutRsts"] == 1 and mb["TcpOutRsts"] == 0
    assert ma["TcpEstabResets"] == 1 and mb["TcpEstabResets"] == 1
    assert ma["TcpCurrEstab"] == mb["TcpCurrEstab"] == 0 and ma["TcpAttemptFails"] == 0
    assert any(f.tobytes()[14 + 20 + 13] & RST for i, f in link.frames if i == 0 and _tcp_payload_len(f) == 0)


def test_a_bad_checksum_counts_in_errors_and_not_in_delivers() -> None:
    a, b, link = _pair()
    listener = b.listen(7)
    client = a.connect(B_IP, 7, link.now)
    link.run_until(lambda: listener.pending > 0)
    server = listener.accept()
    assert server is not None
    before = mib(b)
    corrupted: list[int] = []
    real_drop = link.drop

    def corrupt(sender: int, f: Frame) -> bool:
        if sender == 0 and not corrupted and _tcp_payload_len(f) > 0:
            corrupted.append(1)
            raw = bytearray(f.tobytes())
            raw[-1] ^= 0xFF
            b.handle_frame(Frame(bytes(raw)), link.now)
            return True
        return real_drop(sender, f)

    link.drop = corrupt
    client.send(b"z" * 100)
    link.run_until(lambda: server.readable >= 100)
    after = mib(b)
    assert corrupted and after["TcpInErrs"] - before["TcpInErrs"] == 1
    assert after["TcpInCsumErrors"] - before["TcpInCsumErrors"] == 1
    assert after["IpInReceives"] - after["IpInDelivers"] >= before["IpInReceives"] - before["IpInDelivers"]
