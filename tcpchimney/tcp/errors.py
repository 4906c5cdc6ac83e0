"""Exceptions for wrong use of the connection API (hostile segments never raise: they are dropped)."""

from __future__ import annotations

from tcpchimney.tcp.state import TcpState


class TcpError(Exception):
    """Base of every wrong-API-use error; ``state`` is the connection state when it happened, if known."""

    def __init__(self, message: str, state: TcpState | None = None) -> None:
        super().__init__(message)
        self.state = state


class ConnectionClosedError(TcpError):
    """send/shutdown after shutdown or close, or any data operation on a closed connection."""


class ConnectionResetByPeerError(ConnectionClosedError):
    """The peer reset the connection (ECONNRESET at the socket layer)."""


class ConnectionTimedOutError(ConnectionClosedError):
    """Retransmissions or keepalive probes went unanswered (ETIMEDOUT at the socket layer)."""


class InvalidStateError(TcpError):
    """The operation is not allowed in the current state (e.g. connect on an established connection)."""
