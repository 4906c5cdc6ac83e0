"""Typed parse errors, split as smoltcp splits them.

``Truncated``/``Malformed`` mean the bytes cannot be parsed safely; ``Illegal`` means they parse but carry a
value the protocol forbids (e.g. a TCP data offset below 5, an IPv4 total length beyond the frame). Every
error carries a short machine-readable ``reason`` that the stack uses as a drop-counter key.
"""

from __future__ import annotations


class WireError(Exception):
    """Base class: a frame could not be accepted. ``reason`` is a stable counter key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Truncated(WireError):
    """Fewer bytes than the header or a length field requires: cannot be parsed safely."""


class Malformed(WireError):
    """Structurally broken (e.g. an option whose length runs past the header): cannot be parsed safely."""


class Illegal(WireError):
    """Parses, but a field holds a value the protocol forbids."""


class ChecksumError(Illegal):
    """Parses, but the checksum does not verify."""


class EmitError(ValueError):
    """An emit function was handed a value its format cannot carry (wrong API use, not bad input)."""
