"""SOCKS5 server side, sans-I/O: RFC 1928 (CONNECT only) and RFC 1929 (username/password).

``Socks5Server.receive(data)`` takes the client's bytes as they come (any split, several messages at once)
and returns a ``Step``: the bytes to send back, the CONNECT ``Request`` once one is complete, and whether the
connection must be closed after those bytes. The caller opens the connection and then sends
``succeeded(...)`` or ``failed(reply)``. Bytes the client sent after its request (an optimistic client does)
are in ``leftover`` and belong to the relayed stream.

What is refused, and how (RFC 1928 section 6 leaves the choice to the server where it says "SHOULD"):

- a greeting or request whose version is not 5: closed without a reply (there is no version-5 way to answer
  a client that does not speak version 5);
- no acceptable method (no-auth offered when users are required, or neither): ``05 FF``, closed;
- an authentication sub-negotiation whose version is not 1, or wrong credentials: ``01 01``, closed
  (RFC 1929: "a STATUS field value other than X'00' ... the connection MUST be closed");
- a command other than CONNECT: reply 07, closed; an address type other than IPv4 or a name (IPv6 too):
  reply 08, closed; an empty name: reply 01 (general failure), closed.
"""

from __future__ import annotations

import enum
import hmac
import ipaddress
import struct
from collections.abc import Mapping
from dataclasses import dataclass

VERSION = 5
AUTH_VERSION = 1  # RFC 1929's sub-negotiation version
CMD_CONNECT = 1
ATYP_IPV4 = 1
ATYP_NAME = 3
ATYP_IPV6 = 4
METHOD_NO_AUTH = 0x00
METHOD_USERPASS = 0x02
METHOD_NONE_ACCEPTABLE = 0xFF


class Reply(enum.IntEnum):
    """RFC 1928 section 6, REP."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


class Phase(enum.Enum):
    GREETING = "greeting"
    AUTH = "auth"
    REQUEST = "request"
    CONNECTING = "connecting"  # the request is out; waiting for the caller's succeeded()/failed()
    RELAYING = "relaying"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Request:
    """A complete CONNECT request: ``host`` is a dotted IPv4 address (atyp 1) or the name as sent (atyp 3)."""

    host: str
    port: int
    is_name: bool


@dataclass(slots=True)
class Step:
    send: bytes = b""
    request: Request | None = None
    close: bool = False
    error: str | None = None  # why the connection is closed (a short reason for counters and logs)
    reply: Reply | None = None  # the failure reply in ``send``, if one was sent


def reply_bytes(reply: Reply, host: str = "0.0.0.0", port: int = 0) -> bytes:
    """VER REP RSV ATYP BND.ADDR BND.PORT, with an IPv4 bound address."""
    return struct.pack("!BBBB4sH", VERSION, reply, 0, ATYP_IPV4, ipaddress.IPv4Address(host).packed, port)


class Socks5Server:
    """One client connection's negotiation. ``users`` maps names to passwords; empty: no authentication."""

    def __init__(self, users: Mapping[str, str] | None = None) -> None:
        self._users = {k.encode(): v.encode() for k, v in (users or {}).items()}
        self._buf = bytearray()
        self.phase = Phase.GREETING
        self.leftover = b""
        self.user: str | None = None  # the authenticated user, if any

    def receive(self, data: bytes) -> Step:
        """Feed the client's bytes; everything due so far comes back in one Step."""
        step = Step()
        if self.phase in (Phase.CONNECTING, Phase.RELAYING):
            self.leftover += data
            return step
        if self.phase is Phase.CLOSED:
            return step
        self._buf += data
        progressed = True
        while progressed and not step.close and self.phase in (Phase.GREETING, Phase.AUTH, Phase.REQUEST):
            progressed = {
                Phase.GREETING: self._greeting,
                Phase.AUTH: self._auth,
                Phase.REQUEST: self._request,
            }[self.phase](step)
        if step.close:
            self.phase = Phase.CLOSED
            self._buf.clear()
        return step

    def succeeded(self, host: str, port: int) -> bytes:
        """The success reply with the address the outgoing connection is bound to."""
        self.phase = Phase.RELAYING
        return reply_bytes(Reply.SUCCEEDED, host, port)

    def failed(self, reply: Reply) -> bytes:
        """A failure reply; the caller closes the connection after sending it."""
        self.phase = Phase.CLOSED
        return reply_bytes(reply)

    # ------------------------------------------------------------------ the three messages

    def _greeting(self, step: Step) -> bool:
        buf = self._buf
        if not buf:
            return False
        if buf[0] != VERSION:
            return _close(step, f"greeting version {buf[0]}")
        if len(buf) < 2 or len(buf) < 2 + buf[1]:
            return False
        methods = set(buf[2 : 2 + buf[1]])
        del buf[: 2 + buf[1]]
        wanted = METHOD_USERPASS if self._users else METHOD_NO_AUTH
        if wanted not in methods:
            step.send += bytes([VERSION, METHOD_NONE_ACCEPTABLE])
            return _close(step, "no acceptable method")
        step.send += bytes([VERSION, wanted])
        self.phase = Phase.AUTH if self._users else Phase.REQUEST
        return True

    def _auth(self, step: Step) -> bool:
        """RFC 1929: VER ULEN UNAME PLEN PASSWD."""
        buf = self._buf
        if not buf:
            return False
        if buf[0] != AUTH_VERSION:
            step.send += bytes([AUTH_VERSION, 1])
            return _close(step, f"authentication version {buf[0]}")
        if len(buf) < 2 or len(buf) < 3 + buf[1]:
            return False
        ulen = buf[1]
        plen = buf[2 + ulen]
        if len(buf) < 3 + ulen + plen:
            return False
        name, password = bytes(buf[2 : 2 + ulen]), bytes(buf[3 + ulen : 3 + ulen + plen])
        del buf[: 3 + ulen + plen]
        expected = self._users.get(name)
        # compare_digest: the time taken does not tell how much of a guessed password was right
        if expected is None or not hmac.compare_digest(expected, password):
            step.send += bytes([AUTH_VERSION, 1])
            return _close(step, "authentication failed")
        step.send += bytes([AUTH_VERSION, 0])
        self.user = name.decode(errors="replace")
        self.phase = Phase.REQUEST
        return True

    def _request(self, step: Step) -> bool:
        """VER CMD RSV ATYP DST.ADDR DST.PORT; the whole request is read before it is judged."""
        buf = self._buf
        if not buf:
            return False
        if buf[0] != VERSION:
            return _close(step, f"request version {buf[0]}")
        if len(buf) < 5:
            return False
        atyp = buf[3]
        sizes = {ATYP_IPV4: 4, ATYP_NAME: 1 + buf[4], ATYP_IPV6: 16}
        if atyp not in sizes:
            return _refuse(step, Reply.ADDRESS_TYPE_NOT_SUPPORTED, f"address type {atyp}")
        total = 4 + sizes[atyp] + 2
        if len(buf) < total:
            return False
        cmd = buf[1]
        raw = bytes(buf[4 : total - 2])
        (port,) = struct.unpack("!H", buf[total - 2 : total])
        del buf[:total]
        if cmd != CMD_CONNECT:
            return _refuse(step, Reply.COMMAND_NOT_SUPPORTED, f"command {cmd}")
        if atyp == ATYP_IPV6:
            return _refuse(step, Reply.ADDRESS_TYPE_NOT_SUPPORTED, "IPv6 address")
        if atyp == ATYP_IPV4:
            step.request = Request(str(ipaddress.IPv4Address(raw)), port, is_name=False)
        elif len(raw) == 1:
            return _refuse(step, Reply.GENERAL_FAILURE, "empty name")
        else:
            step.request = Request(raw[1:].decode("ascii", errors="replace"), port, is_name=True)
        self.phase = Phase.CONNECTING
        self.leftover = bytes(buf)  # sent before our reply: the start of the relayed stream
        buf.clear()
        return True


def _close(step: Step, why: str) -> bool:
    step.close = True
    step.error = why
    return False


def _refuse(step: Step, reply: Reply, why: str) -> bool:
    step.send += reply_bytes(reply)
    step.reply = reply
    return _close(step, why)
