"""RFC 6056 Algorithm 4 ephemeral ports."""

from __future__ import annotations

import itertools

from tcpchimney.host.ports import EPHEMERAL_MAX, EPHEMERAL_MIN, EphemeralPorts

A = b"\xc6\x12\x00\x01"


def _dst(i: int) -> bytes:
    return bytes([198, 18, 1, i])


def test_ports_are_spread_over_destinations_and_within_range() -> None:
    ports = EphemeralPorts(b"k1")
    chosen = [ports.select(A, _dst(i), 80, lambda p: True) for i in range(64)]
    assert all(p is not None and EPHEMERAL_MIN <= p <= EPHEMERAL_MAX for p in chosen)
    assert len(set(chosen)) > 56  # distinct destinations land on unrelated ports
    diffs = {(b - a) % (EPHEMERAL_MAX - EPHEMERAL_MIN + 1) for a, b in itertools.pairwise(chosen)}  # type: ignore[operator]
    assert len(diffs) > 50  # not a sequence with a fixed stride


def test_a_different_secret_gives_different_ports() -> None:
    a = [EphemeralPorts(b"k1").select(A, _dst(i), 80, lambda p: True) for i in range(16)]
    b = [EphemeralPorts(b"k2").select(A, _dst(i), 80, lambda p: True) for i in range(16)]
    assert sum(x == y for x, y in zip(a, b, strict=True)) <= 1


def test_same_destination_advances_and_skips_unsuitable_ports() -> None:
    ports = EphemeralPorts(b"k1")
    first = ports.select(A, _dst(1), 80, lambda p: True)
    assert first is not None
    taken = {first + 1, first + 2}
    second = ports.select(A, _dst(1), 80, lambda p: p not in taken)
    assert second is not None and second not in taken and second != first


def test_exhausted_range_returns_none() -> None:
    ports = EphemeralPorts(b"k1", low=40000, high=40009)
    assert ports.select(A, _dst(1), 80, lambda p: False) is None
