"""Names for ``chimney proxy``: a hosts file the user gives (``/etc/hosts`` format), IPv4 entries only.

The stack has no resolver; a SOCKS client that sends a name (``curl --socks5-hostname``) gets the address
the file gives it. Lines are ``ADDRESS NAME [ALIAS...]``; ``#`` starts a comment; IPv6 entries (``::1
localhost``) are skipped, as the stack has no IPv6. Names compare case-insensitively (RFC 4343).
"""

from __future__ import annotations

import ipaddress


class HostsFileError(ValueError):
    """A hosts file that cannot be read or has a line that is not an entry (one sentence)."""


def parse_hosts(text: str, source: str = "hosts file") -> dict[str, str]:
    """Name (lower case) -> dotted IPv4 address; the first entry for a name wins, as in glibc."""
    names: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        try:
            address = ipaddress.ip_address(fields[0])
        except ValueError:
            raise HostsFileError(f"{source} line {number}: {fields[0]!r} is not an IP address") from None
        if len(fields) < 2:
            raise HostsFileError(f"{source} line {number}: {fields[0]} has no name after it")
        if address.version != 4:
            continue
        for name in fields[1:]:
            names.setdefault(name.lower().rstrip("."), str(address))
    return names


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
