"""The SOCKS5 negotiation (RFC 1928, RFC 1929) byte by byte: what each message gets back, however split."""

from __future__ import annotations

import struct

import pytest

from tcpchimney.api.socks5 import Phase, Reply, Request, Socks5Server, reply_bytes

NO_AUTH = b"\x05\x01\x00"
USERPASS = b"\x05\x01\x02"


def connect_ipv4(host: bytes = bytes([198, 18, 0, 1]), port: int = 80, cmd: int = 1) -> bytes:
    return bytes([5, cmd, 0, 1]) + host + struct.pack("!H", port)


def connect_name(name: bytes, port: int = 80) -> bytes:
    return bytes([5, 1, 0, 3, len(name)]) + name + struct.pack("!H", port)


def auth(name: bytes, password: bytes, version: int = 1) -> bytes:
    return bytes([version, len(name)]) + name + bytes([len(password)]) + password


def test_no_auth_connect_to_an_ipv4_address() -> None:
    server = Socks5Server()
    step = server.receive(NO_AUTH)
    assert step.send == b"\x05\x00" and step.request is None and not step.close
    step = server.receive(connect_ipv4(port=8080))
    assert step.request == Request("198.18.0.1", 8080, is_name=False)
    assert server.phase is Phase.CONNECTING and step.send == b""
    assert server.succeeded("198.18.0.2", 40000) == b"\x05\x00\x00\x01" + bytes([198, 18, 0, 2]) + b"\x9c\x40"
    assert server.phase is Phase.RELAYING


def test_a_name_and_the_bytes_after_the_request_in_one_segment() -> None:
    server = Socks5Server()
    step = server.receive(NO_AUTH + connect_name(b"peer.test", 443) + b"GET / HTTP/1.0\r\n")
    assert step.send == b"\x05\x00"
    assert step.request == Request("peer.test", 443, is_name=True)
    assert server.leftover == b"GET / HTTP/1.0\r\n"
    server.receive(b"more")  # while the connection is being opened
    assert server.leftover == b"GET / HTTP/1.0\r\nmore"


def test_every_split_of_the_whole_exchange_gives_the_same_result() -> None:
    whole = USERPASS + auth(b"alice", b"s3cret") + connect_name(b"peer.test")
    for cut in range(1, len(whole)):
        server = Socks5Server({"alice": "s3cret"})
        first, second = server.receive(whole[:cut]), server.receive(whole[cut:])
        assert first.send + second.send == b"\x05\x02\x01\x00", cut
        assert (first.request or second.request) == Request("peer.test", 80, is_name=True), cut
        assert server.user == "alice"


@pytest.mark.parametrize("greeting", [b"\x04\x01\x00", b"\x00", b"GET / HTTP/1.1\r\n"])
def test_a_version_other_than_5_is_closed_without_a_reply(greeting: bytes) -> None:
    step = Socks5Server().receive(greeting)
    assert step.close and step.send == b"" and step.error is not None


def test_a_request_with_a_bad_version_is_closed() -> None:
    server = Socks5Server()
    server.receive(NO_AUTH)
    step = server.receive(b"\x04\x01\x00\x01" + bytes(6))
    assert step.close and step.send == b""


def test_no_acceptable_method() -> None:
    step = Socks5Server().receive(b"\x05\x01\x02")  # only username/password offered, none required
    assert step.send == b"\x05\xff" and step.close
    step = Socks5Server({"u": "p"}).receive(NO_AUTH)  # users required, the client offers none
    assert step.send == b"\x05\xff" and step.close
    step = Socks5Server().receive(b"\x05\x00")  # no methods at all
    assert step.send == b"\x05\xff" and step.close


@pytest.mark.parametrize(
    ("message", "why"),
    [
        (auth(b"alice", b"wrong"), "authentication failed"),
        (auth(b"bob", b"s3cret"), "authentication failed"),
        (auth(b"alice", b"s3cret", version=5), "authentication version 5"),
    ],
)
def test_authentication_failures_get_status_1_and_a_close(message: bytes, why: str) -> None:
    server = Socks5Server({"alice": "s3cret"})
    assert server.receive(USERPASS).send == b"\x05\x02"
    step = server.receive(message)
    assert step.send == b"\x01\x01" and step.close and step.error == why
    assert server.receive(connect_ipv4()).request is None  # nothing after a close


@pytest.mark.parametrize(
    ("request_bytes", "reply"),
    [
        (connect_ipv4(cmd=2), Reply.COMMAND_NOT_SUPPORTED),  # BIND
        (connect_ipv4(cmd=3), Reply.COMMAND_NOT_SUPPORTED),  # UDP ASSOCIATE
        (bytes([5, 1, 0, 4]) + bytes(16) + b"\x00\x50", Reply.ADDRESS_TYPE_NOT_SUPPORTED),  # IPv6
        (bytes([5, 1, 0, 9, 0]), Reply.ADDRESS_TYPE_NOT_SUPPORTED),  # no such type
        (bytes([5, 1, 0, 3, 0, 0, 80]), Reply.GENERAL_FAILURE),  # an empty name
    ],
)
def test_refused_requests_get_the_rfc_reply_and_a_close(request_bytes: bytes, reply: Reply) -> None:
    server = Socks5Server()
    server.receive(NO_AUTH)
    step = server.receive(request_bytes)
    assert step.send == reply_bytes(reply) and step.close and step.reply is reply
    assert step.send[1] == int(reply) and len(step.send) == 10


def test_an_incomplete_request_waits() -> None:
    server = Socks5Server()
    server.receive(NO_AUTH)
    step = server.receive(connect_name(b"peer.test")[:-1])
    assert step.request is None and not step.close and step.send == b""


def test_failed_reply() -> None:
    server = Socks5Server()
    server.receive(NO_AUTH + connect_ipv4())
    assert server.failed(Reply.CONNECTION_REFUSED) == b"\x05\x05\x00\x01" + bytes(6)
    assert server.phase is Phase.CLOSED
