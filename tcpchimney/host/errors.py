"""Exceptions for wrong use of the host stack API (bad frames never raise: they are counted and dropped)."""

from __future__ import annotations


class HostError(Exception):
    """Base of the host stack's API errors."""


class InvalidAddress(HostError, ValueError):
    """The address cannot be used here (not IPv4, our own, broadcast, multicast, unspecified, off-route)."""


class AddressInUse(HostError):
    """The port (listen) or the 4-tuple (connect) is already taken (EADDRINUSE)."""


class NoEphemeralPort(HostError):
    """Every ephemeral port is in use towards this destination (EADDRNOTAVAIL)."""


class InvalidPort(HostError, ValueError):
    """A port outside 1..65535."""


class ListenerClosedError(HostError):
    """accept() on a listener that was closed."""
