"""The command line's choices and defaults, in a module that imports nothing: ``chimney netstat`` and the
other admin verbs start without loading the stack."""

from __future__ import annotations

MODES = ("disabled", "enabled", "automatic")
DEFAULT_MODE = "automatic"
NICS = ("process", "inline")  # the target in its own process (nic/process.py) or called in this one
# With offload on, the NIC runs in its own process (its CPU is not the host's); ``inline`` is asked for, or
# taken with --pcap (a capture of this process's TAP descriptor would miss the NIC's frames).
DEFAULT_NIC = "process"
ECHO_PORT = 7  # RFC 862
DISCARD_PORT = 9  # RFC 863
HTTP_PORT = 80
APP_PORTS = {"echo": ECHO_PORT, "discard": DISCARD_PORT, "http": HTTP_PORT}  # serve's apps, default ports
