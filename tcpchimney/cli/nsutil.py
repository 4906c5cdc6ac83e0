"""Acting inside a named network namespace: run a program there, or open a kernel socket there.

A socket keeps the namespace it was created in, so ``socket_in_netns`` enters the namespace on a short-lived
thread (``setns`` on Linux changes only the calling thread's namespace), creates the socket and hands it back
to be used from any thread.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading

from tcpchimney.link.netns import netns_exec, netns_path

CLONE_NEWNET = 0x40000000
__all__ = ["in_netns", "netns_path", "socket_in_netns"]


def in_netns(netns: str, *argv: str) -> list[str]:
    """The argv that runs a program inside ``netns`` (ValueError for a name that is not a namespace's)."""
    return netns_exec(netns, *argv)


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def socket_in_netns(
    netns: str, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM, proto: int = 0
) -> socket.socket:
    """A kernel socket of ``netns``; raises OSError if the namespace cannot be entered."""
    path = netns_path(netns)  # checked here, on the caller's thread
    result: list[socket.socket | BaseException] = []

    def create() -> None:
        try:
            _setns(path)
            result.append(socket.socket(family, type, proto))
        except BaseException as exc:  # handed to the caller's thread
            result.append(exc)

    thread = threading.Thread(target=create, name=f"setns-{netns}")
    thread.start()
    thread.join()
    outcome = result[0]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome
