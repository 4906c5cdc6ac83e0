"""Offload targets: the software target (the emulated NIC that runs the TCP data path of offloaded
connections), its connection table, frame handling and counters."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tcpchimney.nic.target import SoftwareTarget

__all__ = ["SoftwareTarget"]


def __getattr__(name: str) -> Any:
    """``SoftwareTarget`` is loaded on first use: a light module of the package (``nic.spin``) costs
    nothing more to import."""
    if name == "SoftwareTarget":
        from tcpchimney.nic.target import SoftwareTarget

        return SoftwareTarget
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
