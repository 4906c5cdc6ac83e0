"""Which SOCKS5 reply a failed outgoing connection of ``chimney proxy`` gets (RFC 1928 section 6): the
errors are those the runtime raises (api/streams.py), as CPython raises them for kernel sockets."""

from __future__ import annotations

import errno

import pytest

from tcpchimney.api.socks5 import Reply
from tcpchimney.api.streams import reset_error, timed_out_error, unreachable_error
from tcpchimney.cli.proxy import reply_for


@pytest.mark.parametrize(
    ("exc", "reply"),
    [
        (reset_error(refused=True), Reply.CONNECTION_REFUSED),
        (unreachable_error(), Reply.HOST_UNREACHABLE),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), Reply.NETWORK_UNREACHABLE),
        (timed_out_error(), Reply.TTL_EXPIRED),
        (TimeoutError(), Reply.TTL_EXPIRED),  # --connect-timeout (asyncio.wait_for)
        (OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"), Reply.GENERAL_FAILURE),
        (ConnectionAbortedError(errno.ECONNABORTED, "connection closed"), Reply.GENERAL_FAILURE),
    ],
)
def test_each_connect_error_gets_its_reply(exc: BaseException, reply: Reply) -> None:
    assert reply_for(exc) is reply
