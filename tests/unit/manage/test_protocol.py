"""The control socket's line format: requests checked field by field, replies both ways."""

from __future__ import annotations

import json

import pytest

from tcpchimney.manage.protocol import (
    VERSION,
    RequestError,
    arg,
    parse_reply,
    parse_request,
    reply_line,
    request_line,
)


def test_a_request_round_trips() -> None:
    request = parse_request(request_line("netstat", {"internals": True}, id=7))
    assert (request.command, request.args, request.id) == ("netstat", {"internals": True}, 7)
    assert request.version == 1


@pytest.mark.parametrize(
    ("line", "words"),
    [
        (b"not json", "not a JSON object"),
        (b"[1, 2]", "not a JSON object"),
        (b"\xff\xfe", "not a JSON object"),
        (b'{"v": 2, "command": "hello"}', "protocol version 2 is not spoken here"),
        (b'{"args": {}}', 'names no "command"'),
        (b'{"command": ""}', 'names no "command"'),
        (b'{"command": "netstat", "args": [1]}', '"args" must be a JSON object'),
    ],
)
def test_a_bad_request_is_one_sentence(line: bytes, words: str) -> None:
    with pytest.raises(RequestError, match=words):
        parse_request(line)


def test_replies_carry_the_result_or_the_sentence() -> None:
    ok = reply_line(3, {"rows": []})
    assert json.loads(ok) == {"v": VERSION, "id": 3, "ok": True, "result": {"rows": []}}
    assert parse_reply(ok) == {"rows": []}
    with pytest.raises(RequestError, match=r"^no such thing$"):
        parse_reply(reply_line(3, error="no such thing"))
    with pytest.raises(RequestError, match="not JSON"):
        parse_reply(b"garbage\n")
    with pytest.raises(RequestError, match="not a reply"):
        parse_reply(b'{"v": 1}\n')


def test_arguments_are_checked_by_kind() -> None:
    args = {"n": 3, "flag": True, "x": 1.5, "s": "a"}
    assert arg(args, "n", int) == 3 and arg(args, "missing", int, 9) == 9
    assert arg(args, "x", int | float) == 1.5 and arg(args, "n", int | float) == 3
    with pytest.raises(RequestError, match='"flag" must be int, not bool'):
        arg(args, "flag", int)
    with pytest.raises(RequestError, match='"s" must be a number, not str'):
        arg(args, "s", int | float)
    with pytest.raises(RequestError, match='"n" must be bool'):
        arg(args, "n", bool)
