"""The command lines of ``chimney proxy`` and ``chimney forward`` (their subparsers and checks).

``cli.main`` hands over the stack options it shares with ``serve`` (``add_link`` and ``add_offload``) so
both commands take exactly serve's options.
"""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Callable
from typing import Any

from tcpchimney.cli.hostsfile import HostsFileError, load_hosts

AddOptions = Callable[[argparse.ArgumentParser], None]
DEFAULT_PROXY_LISTEN = "127.0.0.1:1080"


def _endpoint(text: str, default_host: str | None = None, lowest: int = 1) -> tuple[str, int]:
    """``HOST:PORT`` (IPv4) or, with a default host, ``PORT``; ValueError with the reason otherwise. A
    kernel listener may take port 0 (``lowest``): the kernel picks one, and the ready line says which."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        if default_host is None:
            raise ValueError(f"{text!r} is not HOST:PORT")
        host = default_host
    try:
        address = str(ipaddress.IPv4Address(host))
    except ValueError:
        raise ValueError(f"{host!r} in {text!r} is not an IPv4 address") from None
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not lowest <= port <= 65535:
        raise ValueError(f"{port_text!r} in {text!r} is not a TCP port ({lowest}-65535)")
    return address, port


def _endpoint_type(default_host: str | None, lowest: int = 1) -> Callable[[str], tuple[str, int]]:
    def parse(text: str) -> tuple[str, int]:
        try:
            return _endpoint(text, default_host, lowest)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    return parse


def _user(text: str) -> tuple[str, str]:
    name, sep, password = text.partition(":")
    if not sep or not name or len(name.encode()) > 255 or len(password.encode()) > 255:
        raise argparse.ArgumentTypeError("a user is NAME:PASSWORD, each 1 to 255 bytes")
    return name, password


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return value


def _connect_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--connect-timeout",
        type=_timeout,
        default=10.0,
        metavar="SECONDS",
        help="give up an outgoing connection after SECONDS (default 10)",
    )


def add_parsers(sub: Any, add_link: AddOptions, add_offload: AddOptions, epilog: str) -> None:
    proxy = sub.add_parser(
        "proxy",
        help="a SOCKS5 server on a local address whose connections go out through the stack",
        description="A SOCKS5 server (RFC 1928 CONNECT, no authentication or RFC 1929 username/password) "
        "listening on a kernel socket of this host; each connection a client asks for is opened by the "
        "user-space stack. Names are looked up in --hosts only.",
        epilog="Clients: curl --socks5-hostname 127.0.0.1:1080 URL; others through proxychains4. " + epilog,
    )
    proxy.add_argument(
        "--listen",
        type=_endpoint_type(None, lowest=0),
        default=_endpoint(DEFAULT_PROXY_LISTEN),
        metavar="HOST:PORT",
        help=f"where the SOCKS server listens (default {DEFAULT_PROXY_LISTEN}; port 0: any free one)",
    )
    proxy.add_argument(
        "--hosts", metavar="FILE", help="names for SOCKS clients that send one: a file in /etc/hosts format"
    )
    proxy.add_argument(
        "--user",
        type=_user,
        action="append",
        default=[],
        metavar="NAME:PASSWORD",
        help="require RFC 1929 username/password authentication; repeat for more users",
    )
    _connect_timeout(proxy)
    add_link(proxy)
    add_offload(proxy)

    forward = sub.add_parser(
        "forward",
        help="forward the stack's port to a local server, or a local port to a peer through the stack",
        description="--listen PORT --to HOST:PORT: the stack listens on its address and PORT and forwards "
        "each connection to a kernel socket address. --listen [HOST:]PORT --connect PEER:PORT: a kernel "
        "socket listens on HOST (default 127.0.0.1) and PORT, and the stack opens each connection to PEER. "
        "Half-close and resets pass through; a target that refuses resets the accepted connection.",
        epilog=epilog,
    )
    forward.add_argument("--listen", required=True, metavar="[HOST:]PORT", help="where connections arrive")
    to = forward.add_mutually_exclusive_group(required=True)
    to.add_argument(
        "--to",
        type=_endpoint_type(None),
        metavar="HOST:PORT",
        help="kernel address to forward the stack's port to",
    )
    to.add_argument(
        "--connect", type=_endpoint_type(None), metavar="PEER:PORT", help="peer the stack connects to"
    )
    _connect_timeout(forward)
    add_link(forward)
    add_offload(forward)


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What the types alone cannot check: the listen form each direction takes, targets on the subnet,
    the hosts file; ``parser.error`` with one sentence otherwise."""
    if args.command == "proxy":
        args.users = dict(args.user)
        try:
            args.names = load_hosts(args.hosts) if args.hosts else {}
        except HostsFileError as exc:
            parser.error(str(exc))
        return
    stack_ip = str(args.addr.ip)
    try:
        if args.to is not None:  # the stack listens: on its own address only
            args.listen = _endpoint(args.listen, stack_ip)
            if args.listen[0] != stack_ip:
                raise ValueError(f"the stack listens on its own address {stack_ip}, not {args.listen[0]}")
        else:
            args.listen = _endpoint(args.listen, "127.0.0.1", lowest=0)
    except ValueError as exc:
        parser.error(f"--listen: {exc}")
    if args.connect is not None:
        peer = ipaddress.IPv4Address(args.connect[0])
        if peer == args.addr.ip:
            parser.error(
                f"--connect {peer} is the stack's own address: connect to the peer or another host there"
            )
        if peer not in args.addr.network:
            parser.error(
                f"--connect {peer} is not on the stack's subnet {args.addr.network} (it has no gateway)"
            )


def run(args: argparse.Namespace) -> int:
    if args.command == "proxy":
        from tcpchimney.cli.proxy import run as run_proxy

        return run_proxy(args)
    from tcpchimney.cli.forward import run as run_forward

    return run_forward(args)
