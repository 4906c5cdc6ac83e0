"""Run by Python's ``site`` at start-up in a program under ``chimney run`` (its directory is first on
PYTHONPATH): the stack's sockets go in, then the ``sitecustomize`` that would otherwise have run (a
distribution's, a virtualenv's) runs as before."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys


def _install() -> None:
    try:
        import chimney_socket
    except ImportError:  # loaded as part of the tcpchimney package (a test, a type check): nothing to do
        return
    chimney_socket.install()


def _chain() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


if __name__ == "sitecustomize":
    try:
        _install()
    except Exception as exc:  # never on the host's network by mistake: the program does not start
        raise SystemExit(f"chimney run: cannot put the stack's sockets into this Python: {exc}") from None
    _chain()
