"""Names for ``chimney proxy``: a hosts file the user gives (``/etc/hosts`` format), IPv4 entries only.

The stack has no resolver; a SOCKS client that sends a name (``curl --socks5-hostname``) gets the address
the file gives it. Lines are ``ADDRESS NAME [ALIAS...]``; ``#`` starts a comment; IPv6 entries (``::1
localhost``) are skipped, as the stack has no IPv6. Names compare case-insensitively (RFC 4343).
"""

from __future__ import annotations

import ipaddress

from tcpchimney.api.run.shim.chimney_shim import parse_hosts as shim_parse_hosts


class HostsFileError(ValueError):
    """A hosts file that cannot be read or has a line that is not an entry (one sentence)."""


def parse_hosts(text: str, source: str = "hosts file") -> dict[str, str]:
    """Name (lower case) -> dotted IPv4 address; the first entry for a name wins, as in glibc. The parser is
    the one ``chimney run`` puts in the program (standard library only), so both read a file alike."""
    try:
        return shim_parse_hosts(text)
    except ValueError as exc:
        raise HostsFileError(f"{source} {exc}") from None


def load_hosts(path: str) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError as exc:
        raise HostsFileError(f"cannot read the hosts file {path}: {exc.strerror or exc}") from exc
    return parse_hosts(text, path)


def resolve(names: dict[str, str], host: str) -> str | None:
    """A dotted IPv4 address for ``host`` (a literal address stays as it is), or None when unknown."""
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        return names.get(host.lower().rstrip("."))
