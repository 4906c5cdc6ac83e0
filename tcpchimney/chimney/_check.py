"""Range checks shared by the state objects; each raises FieldRangeError naming the class and field."""

from __future__ import annotations

import math

from tcpchimney.chimney.errors import FieldRangeError

U8 = 0xFF
U16 = 0xFFFF
U32 = 0xFFFF_FFFF
U64 = 0xFFFF_FFFF_FFFF_FFFF


def int_range(owner: object, name: str, value: int, low: int, high: int) -> None:
    if type(value) is int and low <= value <= high:
        return  # the common case, without the calls below
    # int(): a SeqNum compares modulo 2**32, a range check must not
    if isinstance(value, bool) or not isinstance(value, int) or not low <= int(value) <= high:
        raise FieldRangeError(
            f"{type(owner).__name__}.{name} must be an int in [{low}, {high}], got {value!r}"
        )


def seconds(owner: object, name: str, value: float | None, *, optional: bool = False) -> None:
    """A duration in seconds: finite and >= 0 (``None`` allowed where a timer may be stopped)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise FieldRangeError(f"{type(owner).__name__}.{name} must be a finite duration >= 0, got {value!r}")


def byte_string(owner: object, name: str, value: object, sizes: tuple[int, ...]) -> None:
    if not isinstance(value, bytes) or len(value) not in sizes:
        raise FieldRangeError(f"{type(owner).__name__}.{name} must be bytes of length {sizes}, got {value!r}")


def is_bytes(owner: object, name: str, value: object) -> None:
    if not isinstance(value, bytes):
        raise FieldRangeError(f"{type(owner).__name__}.{name} must be bytes, got {type(value).__name__}")
