"""The demo's pieces that need no network: payload files, header parsing, the simulated-link pumps."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tcpchimney.cli import demo
from tcpchimney.cli.apps import deterministic_bytes, deterministic_sha256
from tcpchimney.cli.common import CommandError
from tcpchimney.cli.simdemo import Receiver, Sender


class FakeSock:
    """A send buffer with ``space`` free bytes: send() takes what fits; the test frees space between steps."""

    def __init__(self, space: int) -> None:
        self.space = space
        self.sent = bytearray()
        self.shutdowns = 0
        self.inbox = bytearray()
        self.readable = 0

    def send(self, data: memoryview) -> int:
        n = min(self.space, len(data))
        self.space -= n
        self.sent += data[:n]
        return n

    def shutdown(self) -> None:
        self.shutdowns += 1

    def receive(self, n: int) -> bytes:
        out = bytes(self.inbox[:n])
        del self.inbox[:n]
        return out


def test_write_payload_matches_the_generator(tmp_path: Path) -> None:
    path = tmp_path / "p"
    demo.write_payload(str(path), 3_000_001, 4)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == deterministic_sha256(3_000_001, 4)


def test_header_and_content_length_parsing(tmp_path: Path) -> None:
    path = tmp_path / "h"
    path.write_bytes(b"HTTP/1.1 200 OK\r\nX-Content-SHA256: abc\r\nContent-Length: 12\r\n\r\n")
    assert demo._header(str(path), "x-content-sha256") == "abc"
    assert demo._header(str(path), "missing") == ""
    assert demo._content_length(b"HTTP/1.0 200 OK\r\ncontent-length: 12\r\n\r\n") == 12
    with pytest.raises(CommandError):
        demo._content_length(b"HTTP/1.0 200 OK\r\n\r\n")


def test_sender_feeds_everything_then_shuts_down_once() -> None:
    sock = FakeSock(space=0)
    sender = Sender(sock, 2_500_000, 6)  # type: ignore[arg-type]
    steps = 0
    while not sender.finished:
        sock.space = 300_000  # the peer acknowledged: room for more
        sender.step()
        steps += 1
    sender.step()
    assert bytes(sock.sent) == b"".join(deterministic_bytes(2_500_000, 6))
    assert sock.shutdowns == 1
    assert steps == 9  # 2.5 MB through 300 kB of space: it yielded each time the buffer was full


def test_receiver_hashes_what_arrives() -> None:
    sock = FakeSock(space=0)
    receiver = Receiver(sock)  # type: ignore[arg-type]
    sock.inbox += b"a" * 1_500_000
    receiver.step()
    sock.inbox += b"b" * 10
    receiver.step()
    assert receiver.received == 1_500_010
    assert receiver.digest.hexdigest() == hashlib.sha256(b"a" * 1_500_000 + b"b" * 10).hexdigest()
