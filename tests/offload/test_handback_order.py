"""A connection handed back to the host: the target's last frames of it reach the wire before the host's.

Chimney-spec 3.5 step 1: the segments the target owes (an ACK of what it received) leave before the state
does. With the target in another process its answer is read by the host while the NIC's frames may still be
on their way to the wire, so the order has to be kept by the transport (docs/nic-process.md "Hand-back
order"). The case that broke it under 1 ms churn against Linux: the peer's FIN reaches the NIC in the same
turn as the host's terminate; the NIC's ACK of that FIN left after the host, which had the connection back
and its application closed it, had sent its own FIN; the peer, by then in TIME-WAIT, answered the late ACK
and the host, which had forgotten the connection after the peer's ACK of its FIN, sent a RST.
"""

from __future__ import annotations

from typing import Any

import pytest
from offload_harness import TRANSPORTS, Net, make_net

from tcpchimney.chimney.reason import Reason
from tcpchimney.host.offload import OffloadState
from tcpchimney.host.sockets import TcpSocket
from tcpchimney.nic.loopback import LoopbackNic
from tcpchimney.tcp.events import Closed
from tcpchimney.wire.frame import Frame
from tcpchimney.wire.tcp import FIN, RST


def _upload_as_the_fin_arrives(net: Net, a: TcpSocket) -> list[bool]:
    """Once the target has taken the peer's FIN (it owes its ACK), and before it sends anything, the host
    uploads the connection and its application closes it: what a NIC turn does when the FIN from the TAP
    and the host's terminate arrive together."""
    node: Any = net.link._ports[0].node
    target: Any = node.core if isinstance(node, LoopbackNic) else node
    original = target.handle_frame
    fired: list[bool] = []

    def handle_frame(frame: Frame, now: float) -> None:
        original(frame, now)
        data = frame.tobytes()
        if not fired and len(data) > 47 and data[47] & FIN and a.offload_state is OffloadState.OFFLOADED:
            fired.append(True)
            assert net.a.upload(a, Reason.CHURN)
            a.close()

    target.handle_frame = handle_frame
    return fired


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_targets_ack_of_a_fin_leaves_before_the_hosts_fin(transport: str) -> None:
    net = make_net(71, transport=transport)
    a, b = net.connect(a_client=False)  # a is the server: its listener answers a segment of no connection
    net.wait_offloaded(a)
    b.send(b"request")
    net.run_until(lambda: a.readable == 7, 5.0)
    assert a.receive(100) == b"request"
    fired = _upload_as_the_fin_arrives(net, a)
    b.shutdown()
    net.run_until(lambda: net.has_event(a, Closed) and bool(fired), 5.0)
    net.run_for(1.0)
    out = [(s.flags, int(s.seq), int(s.ack)) for _, d, s in net.wire.segments() if d == "a>b"]
    fin = next(i for i, (flags, _, _) in enumerate(out) if flags & FIN)
    stale = [seg for seg in out[fin + 1 :] if seg[1] < out[fin][1] + 1]
    assert not stale, f"segments from before a's FIN reached the wire after it: {stale}"
    assert not any(flags & RST for flags, _, _ in out), "the host reset a connection that had ended"
