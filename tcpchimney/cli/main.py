"""The ``chimney`` command: serve, nc and demo on the user-space stack.

Every long-running command prints one JSON line ``{"event": "ready", ...}`` on stdout once it is usable and
``{"event": "done", ...}`` with its counters when it ends. Any termination signal (SIGINT, SIGTERM, SIGHUP,
SIGQUIT, SIGUSR1, ...) ends it cleanly, removing what it made; ``chimney cleanup`` removes what runs ended by
``kill -9`` left. Bad input is one sentence on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from tcpchimney.cli import relay_args
from tcpchimney.cli.choices import APP_PORTS, DEFAULT_MODE, DEFAULT_NIC, MODES, NICS
from tcpchimney.cli.common import EXIT_UNAVAILABLE, CommandError, network_unavailable_reason
from tcpchimney.cli.run import add_parser as add_run_parser
from tcpchimney.cli.run import check_args as check_run_args
from tcpchimney.link.netns import check_address, check_netns_name, check_pair
from tcpchimney.link.signals import terminate_on_signals
from tcpchimney.nic.spin import DEFAULT_SPIN_US, MAX_SPIN_US

DEFAULT_ADDR = "198.18.0.2/24"
DEFAULT_PEER = "198.18.0.1/24"
# What --help says to whoever reads it first (plain text: argparse shows it as written).
DESCRIPTION = "serve, nc, run and demo on the user-space TCP/IP stack"
ADDRESS_RULE = "addresses must be in 198.18.0.0/15 (the benchmarking range, RFC 2544)"
EPILOG = (
    "Addresses: the stack and its Linux peer get two addresses of one subnet inside 198.18.0.0/15, the only "
    "range these commands use. Any termination signal ends a command cleanly (its namespace, TAP and files "
    "are removed); after a kill -9, `chimney cleanup` removes what the run left."
)


class _Parser(argparse.ArgumentParser):
    """A usage error is one line on stderr (exit status 2), not the usage text plus the error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _interface(text: str) -> ipaddress.IPv4Interface:
    try:
        return check_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port (1-65535): {text!r}")
    return port


def _netns_name(text: str) -> str:
    try:
        return check_netns_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _output_file(text: str) -> str:
    """A file this command can create or overwrite; checked before anything is set up."""
    path = os.path.abspath(text) if text else ""
    parent = os.path.dirname(path)
    if not text:
        problem = "the path is empty"
    elif os.path.isdir(path):
        problem = "it is a directory"
    elif not os.path.isdir(parent):
        problem = f"directory {parent} does not exist"
    elif not os.access(parent, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        problem = "permission denied"
    else:
        return text
    raise argparse.ArgumentTypeError(f"cannot write {text!r}: {problem}")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return value


def _cpu(text: str) -> int:
    """A CPU the NIC process may be pinned to, checked before anything is set up."""
    from tcpchimney.nic.affinity import check_cpu

    try:
        cpu = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a CPU number: {text!r}") from None
    try:
        return check_cpu(cpu)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _micros(text: str) -> float:
    """A spin or a busy poll in microseconds, 0 to MAX_SPIN_US."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of microseconds") from None
    if not 0 <= value <= MAX_SPIN_US:
        raise argparse.ArgumentTypeError(f"{text} microseconds: give 0 to {MAX_SPIN_US:g}")
    return value


def _add_offload_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--offload",
        choices=MODES,
        default=DEFAULT_MODE,
        help="hand connections to the emulated NIC: never, once established, or once they moved 64 KiB "
        f"with an RTT under 50 ms (default {DEFAULT_MODE})",
    )
    parser.add_argument(
        "--nic",
        choices=NICS,
        help="where the emulated NIC runs when offload is not disabled: its own process (the host's CPU is "
        f"freed) or inside this one (default {DEFAULT_NIC}; inline with --pcap)",
    )
    parser.add_argument(
        "--nic-cpu",
        type=_cpu,
        metavar="N",
        help="pin the NIC process to CPU N (default: not pinned, the scheduler places it); needs "
        "--nic process",
    )
    parser.add_argument(
        "--nic-spin-us",
        type=_micros,
        metavar="US",
        help="how long the NIC process spins on its rings and the TAP after its last work before it sleeps "
        f"on its doorbell (default {DEFAULT_SPIN_US:g}; 0: sleep at once); longer cuts latency and costs "
        "idle CPU",
    )
    parser.add_argument(
        "--busy-poll-us",
        type=_micros,
        metavar="US",
        help="after traffic, this process keeps looking at the NIC process's rings for US microseconds "
        "instead of sleeping on its doorbell (as Linux's net.core.busy_poll; default 0: off); cuts "
        "latency, costs CPU",
    )
    parser.add_argument(
        "--churn",
        type=_seconds,
        metavar="SECONDS",
        help="stress: upload every offloaded connection after a random time of mean SECONDS (exponential), "
        "then offload it again",
    )
    parser.add_argument(
        "--events",
        type=_output_file,
        metavar="FILE",
        help="write every offload event to FILE, one JSON line each",
    )


def _control_name(text: str) -> str:
    if not text or len(text) > 64 or not all(c.isascii() and (c.isalnum() or c in "._-") for c in text):
        raise argparse.ArgumentTypeError(f"{text!r}: a name is 1-64 letters, digits, '.', '_' or '-'")
    if text.startswith((".", "-")):
        raise argparse.ArgumentTypeError(f"{text!r}: a name starts with a letter, a digit or '_'")
    return text


def add_name_option(parser: argparse.ArgumentParser) -> None:
    """--name: the stack's control socket (RUN_DIR/NAME.ctl), which the admin verbs find it by."""
    parser.add_argument(
        "--name",
        type=_control_name,
        metavar="NAME",
        help="name of this stack for the admin verbs (chimney netstat --name NAME; default chimney-PID, "
        "printed in the ready line)",
    )


def _metrics_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    try:
        if not sep or not host:
            raise ValueError
        ipaddress.ip_address(host)
        number = int(port)
        if not 0 <= number <= 65535:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give ADDR:PORT, e.g. 127.0.0.1:9464 (port 0: any free port)"
        ) from None
    return host, number


def add_metrics_option(parser: argparse.ArgumentParser) -> None:
    """--metrics: Prometheus' /metrics of this stack (tcpchimney/manage/metrics.py)."""
    parser.add_argument(
        "--metrics",
        type=_metrics_address,
        metavar="ADDR:PORT",
        help="serve Prometheus metrics at http://ADDR:PORT/metrics (port 0: any free port, printed in the "
        "ready line)",
    )


def _add_link_options(parser: argparse.ArgumentParser) -> None:
    add_name_option(parser)
    add_metrics_option(parser)
    parser.add_argument(
        "--netns",
        required=True,
        type=_netns_name,
        metavar="NAME",
        help="namespace of the Linux peer (created if absent, removed on exit only if created)",
    )
    parser.add_argument(
        "--addr",
        type=_interface,
        default=_interface(DEFAULT_ADDR),
        help=f"the stack's address/prefix; {ADDRESS_RULE} (default {DEFAULT_ADDR})",
    )
    parser.add_argument(
        "--peer",
        type=_interface,
        default=_interface(DEFAULT_PEER),
        help=f"the kernel side's address/prefix in the namespace, on the stack's subnet "
        f"(default {DEFAULT_PEER})",
    )
    parser.add_argument(
        "--pcap", type=_output_file, metavar="FILE", help="capture every frame of the TAP device to FILE"
    )
    parser.add_argument(
        "--plain",
        action="store_true",
        help="open the TAP without the virtio-net header (no checksum offload, TSO or GRO)",
    )


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("tcpchimney")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="chimney", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run echo, discard or http on the stack over a TAP device",
        description="Run echo, discard or http on the stack over a TAP device, with the Linux kernel as the "
        f"peer in a network namespace; {ADDRESS_RULE}.",
        epilog="Refuses to start where another running stack has the subnet in the namespace; removes the "
        "TAP a dead run left there first (saying so on stderr). " + EPILOG,
    )
    serve.add_argument("app", choices=sorted(APP_PORTS), help="the application")
    serve.add_argument("--port", type=_port, help="listening port (default: echo 7, discard 9, http 80)")
    _add_link_options(serve)
    _add_offload_options(serve)

    nc = sub.add_parser(
        "nc",
        help="netcat on the stack: stdin to the connection, the connection to stdout",
        description="Netcat on the stack over a TAP device: stdin to the connection, the connection to "
        f"stdout; {ADDRESS_RULE}.",
        usage="chimney nc [-h] HOST PORT --netns NAME ...\n       chimney nc -l PORT --netns NAME ...",
        epilog=EPILOG,
    )
    nc.add_argument("-l", "--listen", action="store_true", help="accept one connection instead of connecting")
    nc.add_argument(
        "target", nargs="+", metavar="HOST PORT | PORT", help="where to connect, or the port for -l"
    )
    _add_link_options(nc)
    _add_offload_options(nc)

    demo = sub.add_parser(
        "demo",
        help="curl against the stack and the stack against Linux, SHA-256 checked",
        description="curl against the stack and the stack against Linux, SHA-256 checked. As root with "
        f"/dev/net/tun the stack is at {DEFAULT_ADDR} and Linux at {DEFAULT_PEER} in a fresh namespace; "
        f"elsewhere two stacks run over the simulated link. As in serve and nc, {ADDRESS_RULE}.",
        epilog="As root it needs `ip` (iproute2) and `curl`. " + EPILOG,
    )
    demo.add_argument(
        "--size",
        type=int,
        default=200,
        metavar="MB",
        help="megabytes each way over the TAP device (default 200)",
    )
    demo.add_argument(
        "--sim-size",
        type=int,
        default=20,
        metavar="MB",
        help="megabytes each way over the simulated link (default 20)",
    )
    demo.add_argument(
        "--sim", action="store_true", help="use the simulated link even where a TAP is possible"
    )
    demo.add_argument(
        "--netns",
        type=_netns_name,
        default=None,
        metavar="NAME",
        help="namespace name (default: a fresh unique one)",
    )
    add_name_option(demo)
    add_metrics_option(demo)
    _add_offload_options(demo)

    add_run_parser(sub, [_add_link_options, _add_offload_options])
    relay_args.add_parsers(sub, _add_link_options, _add_offload_options, EPILOG)

    cleanup = sub.add_parser(
        "cleanup",
        help="remove what runs that died without cleaning up (kill -9) left: namespaces, TAPs, files",
        description="Every run notes what it makes in /run/tcpchimney/PID.json ($TCPCHIMNEY_RUN_DIR) before "
        "making it. This removes what the records of runs no longer alive name (TAPs in kept namespaces, "
        "the namespaces those runs created with the processes still in them, temporary files); live runs "
        "are left alone.",
    )
    cleanup.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    from tcpchimney.cli.admin import add_commands as add_admin_commands

    add_admin_commands(sub, add_name_option)
    from tcpchimney.cli.capture import add_command as add_capture_command

    add_capture_command(sub, add_name_option)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        check_run_args(parser, args)
    if args.command in ("serve", "nc", "run", "proxy", "forward"):
        try:
            check_pair(args.addr, args.peer)
        except ValueError as exc:
            parser.error(f"--addr {args.addr} and --peer {args.peer}: {exc}")
    if args.command == "serve" and args.port is None:
        args.port = APP_PORTS[args.app]
    if args.command == "nc":
        _resolve_nc_target(parser, args)
    if args.command in ("proxy", "forward"):
        relay_args.check(parser, args)
    if args.command == "demo" and (args.size <= 0 or args.sim_size <= 0):
        parser.error("--size and --sim-size must be positive")
    if getattr(args, "offload", None) == "disabled" and args.churn is not None:
        parser.error("--churn moves offloaded connections: it needs --offload enabled or automatic")
    _resolve_nic(parser, args)
    return args


def _resolve_nic(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The NIC process reads the TAP and writes the offloaded connections' frames itself, so a capture of
    this process's device would miss them: with --pcap the NIC runs inline unless asked otherwise."""
    if not hasattr(args, "nic"):
        return
    pcap = getattr(args, "pcap", None)
    if args.nic is None:
        args.nic = "inline" if pcap else DEFAULT_NIC
    elif args.nic == "process" and pcap and args.offload != "disabled":
        parser.error(
            "--pcap captures this process's TAP descriptor only: with --nic process the NIC's frames "
            "would be missing (use --nic inline)"
        )
    tuning = (
        ("nic_cpu", "--nic-cpu pins"),
        ("nic_spin_us", "--nic-spin-us tunes"),
        ("busy_poll_us", "--busy-poll-us polls"),
    )
    for option, what in tuning:
        if getattr(args, option, None) is not None and (args.nic != "process" or args.offload == "disabled"):
            parser.error(f"{what} the NIC process: it needs --nic process and --offload enabled or automatic")


def _resolve_nc_target(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    target: list[str] = args.target
    expected = 1 if args.listen else 2
    if len(target) != expected:
        parser.error("nc -l takes one PORT" if args.listen else "nc takes HOST PORT")
    try:
        args.port = _port(target[-1])
        args.host = None if args.listen else ipaddress.IPv4Address(target[0])
    except (argparse.ArgumentTypeError, ValueError) as exc:
        parser.error(str(exc))
    if args.host is not None and args.host == args.addr.ip:
        parser.error(f"{args.host} is the stack's own address: connect to the peer or another host there")
    if args.host is not None and args.host not in args.addr.network:
        parser.error(f"{args.host} is not on the stack's subnet {args.addr.network} (it has no gateway)")


def main(argv: Sequence[str] | None = None) -> int:
    # From the first line on, a termination signal unwinds (Terminated, exit 128 + N) instead of killing the
    # process where it stands; the commands' event loops then take the signals over for a graceful end.
    with terminate_on_signals():
        args = parse_args(argv)
        try:
            return _run(args)
        except CommandError as exc:
            print(f"chimney: {exc}", file=sys.stderr)
            return exc.code
        except KeyboardInterrupt:
            return 130
        except BrokenPipeError:  # whoever read our output went away; everything was cleaned up on the way
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141  # 128 + SIGPIPE, as a shell reports it


def _run(args: argparse.Namespace) -> int:
    if args.command == "cleanup":
        from tcpchimney.cli.cleanup import run as run_cleanup

        return run_cleanup(args)
    if args.command == "capture":
        from tcpchimney.cli.capture import run as run_capture

        return run_capture(args)
    from tcpchimney.cli.admin import VERBS

    if args.command in VERBS:
        from tcpchimney.cli.admin import run as run_admin

        return run_admin(args)
    if args.command == "demo":
        from tcpchimney.cli.demo import run as run_demo

        return run_demo(args)
    reason = network_unavailable_reason()
    if reason is not None:
        raise CommandError(f"cannot run {args.command}: {reason}.", EXIT_UNAVAILABLE)
    if args.command == "serve":
        from tcpchimney.cli.serve import run as run_serve

        return run_serve(args)
    if args.command in ("proxy", "forward"):
        return relay_args.run(args)
    if args.command == "run":
        from tcpchimney.cli.run import run as run_program

        return run_program(args)
    from tcpchimney.cli.nc import run as run_nc

    return run_nc(args)


if __name__ == "__main__":
    sys.exit(main())
