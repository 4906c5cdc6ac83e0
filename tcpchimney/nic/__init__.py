"""Offload targets: the software target (the emulated NIC that runs the TCP data path of offloaded
connections), its connection table, frame handling and counters."""

from tcpchimney.nic.target import SoftwareTarget

__all__ = ["SoftwareTarget"]
