"""``chimney run [stack options] -- COMMAND [ARGS...]``: an unmodified Python program on the stack.

The stack runs in this process, as for ``serve``; COMMAND runs as a child with the shim directory
(``tcpchimney/api/run/shim``) first on its PYTHONPATH, so every Python it starts loads ``sitecustomize`` and
gets the stack's IPv4 TCP sockets (docs/unchanged-apps.md). The ``ready`` line comes before COMMAND starts,
the ``done`` line after it ended; the exit status is COMMAND's (128 + N when a signal N ended it). A
termination signal sent to this process goes to COMMAND, which then has ``STOP_GRACE_S`` to end; SIGINT
only if COMMAND did not end within ``SIGINT_GRACE_S`` (a Ctrl-C reached it already: same process group).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from tcpchimney.cli.common import StopSignal, emit, stop_on_signals

STOP_GRACE_S = 5.0  # after a forwarded termination signal, then SIGKILL
SIGINT_GRACE_S = 1.0  # COMMAND's own time to end on a Ctrl-C before the SIGINT is passed on
DRAIN_S = 2.0  # the program's connections get this long to hand their last bytes to the stack
EXIT_NOT_FOUND = 127  # as a shell: COMMAND cannot be found or run

DESCRIPTION = (
    "Run an unmodified Python program on the stack over a TAP device: every IPv4 TCP socket it opens "
    "(blocking, non-blocking, selectors, asyncio, http.server, urllib, requests, ...) is the stack's; "
    "loopback, AF_UNIX, UDP and IPv6 stay on the kernel (UDP and IPv6 only to loopback)."
)
EPILOG = (
    "COMMAND is any Python 3 interpreter and its arguments (python3 app.py, python3 -m http.server 80); it "
    "must not run with -I, -E or -S (they skip PYTHONPATH's sitecustomize). Put -- before COMMAND. The exit "
    "status is COMMAND's."
)


def add_parser(sub: Any, option_groups: Sequence[Callable[[argparse.ArgumentParser], None]]) -> None:
    """The ``run`` subcommand, with the link and offload options ``serve`` has (``option_groups``)."""
    run = sub.add_parser(
        "run",
        help="run an unmodified Python program with the stack's sockets",
        description=DESCRIPTION,
        epilog=EPILOG,
        usage="chimney run [-h] --netns NAME [options] -- COMMAND [ARGS...]",
    )
    for add in option_groups:
        add(run)
    run.add_argument(
        "--hosts",
        metavar="FILE",
        help="names the program may resolve (hosts(5) format: ADDRESS NAME...), besides IPv4 literals",
    )
    run.add_argument(
        "program", nargs=argparse.REMAINDER, metavar="COMMAND", help="the program and its arguments"
    )


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors before anything is set up: COMMAND given, a readable hosts file."""
    program = list(args.program)
    if program and program[0] == "--":
        program = program[1:]
    if not program:
        parser.error("run needs a COMMAND after -- (e.g. chimney run --netns NAME -- python3 app.py)")
    args.program = program
    if args.hosts is not None:
        from tcpchimney.api.run.shim.chimney_shim import parse_hosts

        try:
            with open(args.hosts, encoding="utf-8") as file:
                parse_hosts(file.read())
        except OSError as exc:
            parser.error(f"cannot read the hosts file {args.hosts}: {exc.strerror or exc}")
        except (ValueError, UnicodeDecodeError) as exc:
            parser.error(f"the hosts file {args.hosts} is not in hosts(5) format: {exc}")
        args.hosts = os.path.abspath(args.hosts)


def run(args: argparse.Namespace) -> int:
    return asyncio.run(run_program(args))


def _control_directory() -> contextlib.AbstractContextManager[str]:
    """A fresh private directory for the control socket, in the run record before it exists."""
    from tcpchimney.link.runs import recorded_directory

    return recorded_directory("chimney-run")


def program_environment(base: dict[str, str], control: str, addr: str, hosts: str | None) -> dict[str, str]:
    """COMMAND's environment: the shim first on PYTHONPATH and where the control socket is."""
    from tcpchimney.api.run.shim import SHIM_DIR
    from tcpchimney.api.run.shim.chimney_shim import ADDR_ENV, HOSTS_ENV, SOCKET_ENV

    env = dict(base)
    env["PYTHONPATH"] = os.pathsep.join([SHIM_DIR, *filter(None, [base.get("PYTHONPATH")])])
    env[SOCKET_ENV] = control
    env[ADDR_ENV] = addr
    env.pop(HOSTS_ENV, None)
    if hosts:
        env[HOSTS_ENV] = hosts
    return env


async def run_program(args: argparse.Namespace) -> int:
    # Here, not at the top: the parser (add_parser) is built for every chimney command, admin verbs included.
    from tcpchimney.api.run.broker import Broker
    from tcpchimney.cli.offload import OffloadOptions
    from tcpchimney.cli.wiring import open_session

    stop = stop_on_signals(asyncio.get_running_loop())
    options = OffloadOptions.from_args(args)
    status: int | None = None
    with _control_directory() as directory:
        async with (
            open_session(
                args.netns, args.addr, args.peer, args.pcap, args.plain, options, name=args.name
            ) as session,
            Broker(session.runtime, directory) as broker,
        ):
            if stop.is_set():  # a signal during the set-up: straight to the clean-up
                return 128 + (stop.signum or 0)
            emit(
                "ready",
                command="run",
                program=args.program,
                offload=options.mode,
                **session.ready_fields(),
            )
            env = program_environment(dict(os.environ), broker.path, str(args.addr.ip), args.hosts)
            status, pid = await _run_child(args.program, env, stop)
            await broker.wait_idle(DRAIN_S)
            counters = session.stack.counters
            offload = session.offload_counters()
            run_counters = dict(broker.counters)
    emit(
        "done",
        command="run",
        program=args.program,
        pid=pid,
        exit_status=status,
        signal=stop.name,
        run_counters=run_counters,
        counters=counters,
        offload=offload,
    )
    return status


async def _run_child(program: list[str], env: dict[str, str], stop: StopSignal) -> tuple[int, int | None]:
    try:
        child = await asyncio.create_subprocess_exec(*program, env=env)
    except OSError as exc:
        print(f"chimney: cannot run {program[0]}: {exc.strerror or exc}.", file=sys.stderr, flush=True)
        return EXIT_NOT_FOUND, None
    noted = _note_child(child.pid)
    try:
        return await _wait_child(child, stop)
    finally:
        _forget_child(noted)


def _note_child(pid: int) -> Any:
    """COMMAND in the run record, so that `chimney cleanup` ends it when a kill -9 ended this process."""
    from tcpchimney.link import runs

    try:
        resource = runs.process_resource(pid)
        runs.register(resource)
    except OSError:
        return None
    return resource


def _forget_child(resource: Any) -> None:
    from tcpchimney.link import runs

    if resource is not None:
        with contextlib.suppress(OSError):
            runs.unregister(resource)


async def _wait_child(child: asyncio.subprocess.Process, stop: StopSignal) -> tuple[int, int | None]:
    waiting = asyncio.ensure_future(child.wait())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait([waiting, stopping], return_when=asyncio.FIRST_COMPLETED)
    if not waiting.done() and stop.signum == signal.SIGINT:
        # Ctrl-C reaches the terminal's whole foreground group, COMMAND included: a second SIGINT from us
        # could cut its own clean-up short. Passed on only if COMMAND is still there a moment later.
        await asyncio.wait([waiting], timeout=SIGINT_GRACE_S)
    if not waiting.done() and stop.signum is not None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(stop.signum)  # COMMAND ends as it would have ended without us in between
        try:
            await asyncio.wait_for(asyncio.shield(waiting), STOP_GRACE_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
    code = await waiting
    stopping.cancel()
    return (128 - code if code < 0 else code), child.pid


__all__ = ["add_parser", "check_args", "program_environment", "run"]
