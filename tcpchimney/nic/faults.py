"""The software target's fault knobs, by name, for a NIC in another process: the host sends
``{"op": "fault", "name": N, ...}`` over the control socket (``NicProcess.fault``) and the NIC applies it
to its target here, so the contract's failure tests work across the process boundary as they do in-process.

| name | arguments | what the target does (``nic/target.py``) |
|---|---|---|
| ``fail_hardware`` | ``lost``: host handles whose state is lost | corrupt hardware (spec 3.2) |
| ``stall`` | ``on`` (default true) | sends nothing, releases no completion |
| ``pause`` | ``upload_all`` (default false) | takes no offload (and asks for every upload) |
| ``resume`` | | takes offloads again |
| ``refuse_next_offload`` | ``reason`` (a refusal reason's value) | fails the next TCP block of an initiate |
| ``request_upload`` | ``host_handle``, ``reason`` (a target upload reason's value) | asks for an upload |
"""

from __future__ import annotations

from typing import Any

from tcpchimney.chimney.reason import Reason
from tcpchimney.nic.target import SoftwareTarget

FAULTS = ("fail_hardware", "stall", "pause", "resume", "refuse_next_offload", "request_upload")


def apply_fault(target: SoftwareTarget, message: dict[str, Any]) -> None:
    """Apply the fault ``message`` names. Raises ValueError (one sentence) for a bad name or argument."""
    name = message.get("name")
    try:
        if name == "fail_hardware":
            target.fail_hardware([int(h) for h in message.get("lost", ())])
        elif name == "stall":
            target.stall(bool(message.get("on", True)))
        elif name == "pause":
            target.pause(bool(message.get("upload_all", False)))
        elif name == "resume":
            target.resume()
        elif name == "refuse_next_offload":
            target.refuse_next_offload(Reason(message.get("reason", Reason.TARGET_REFUSED.value)))
        elif name == "request_upload":
            reason = Reason(message.get("reason", Reason.RESOURCE_PRESSURE.value))
            target.request_upload(int(message["host_handle"]), reason)
        else:
            raise ValueError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}")
    except (KeyError, TypeError) as exc:
        raise ValueError(f"fault {name}: missing or bad argument {exc}") from None
