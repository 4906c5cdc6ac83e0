"""``chimney proxy`` as a user runs it: curl (``--socks5-hostname``) and proxychains4 from this host, through
the SOCKS server, out of the user-space stack to Linux's ``python3 -m http.server`` in the peer namespace,
byte-exact; RFC 1928/1929 replies to requests that cannot be served; half-close and resets passing through;
the same bytes with the connections offloaded and churned."""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

import pytest
from relay_kit import (
    CHIMNEY,
    PEER,
    Chimney,
    Peer,
    create_netns,
    files,
    half_close_exchange,
    http_server,
    ipv4_request,
    name_request,
    need,
    reset_after_hello,
    reset_close,
    run,
    sha256_of,
    sha_after_eof,
    socks_connect,
    watch_for_reset,
)

from tcpchimney.cli.nsutil import netns_path, socket_in_netns

pytestmark = pytest.mark.net
MB = 1_000_000
HTTP_PORT = 8000
USER = "alice:s3cret"


@pytest.fixture
def site(netns_name: str, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The peer namespace with Linux's http.server on port 8000 and a hosts file naming the peer."""
    create_netns(netns_name)
    www = tmp_path / "www"
    www.mkdir()
    digests = files(www, {"small.bin": 100_000, "big.bin": 8 * MB})
    (tmp_path / "hosts").write_text(f"# the peer namespace\n{PEER} peer.test www.peer.test\n")
    return www, digests


def _proxy(netns: str, tmp_path: Path, *extra: str) -> Chimney:
    return Chimney(
        "proxy", "--netns", netns, "--listen", "127.0.0.1:0", "--hosts", str(tmp_path / "hosts"), *extra
    )


def _curl(port: int, url: str, *extra: str) -> list[str]:
    return [
        "curl",
        "-sS",
        "--fail",
        "--max-time",
        "60",
        "--socks5-hostname",
        f"127.0.0.1:{port}",
        *extra,
        url,
    ]


def test_curl_through_the_proxy_by_name_and_by_address(
    netns_name: str, tmp_path: Path, site: tuple[Path, dict[str, str]], commands: list[Chimney]
) -> None:
    need("curl")
    www, digests = site
    with http_server(www, netns_name, "0.0.0.0", HTTP_PORT):
        commands.append(proxy := _proxy(netns_name, tmp_path))
        assert proxy.ready["auth"] == "none" and proxy.ready["names"] == 2
        for name in ("small.bin", "big.bin"):
            got = run(_curl(proxy.port, f"http://peer.test:{HTTP_PORT}/{name}"))
            assert sha256_of(got) == digests[name]
        # --socks5: curl sends the IPv4 address itself (address type 1)
        url = f"http://{PEER}:{HTTP_PORT}/small.bin"
        got = run(["curl", "-sS", "--fail", "--socks5", f"127.0.0.1:{proxy.port}", url])
        assert sha256_of(got) == digests["small.bin"]
        done = proxy.stop()
    stats = done["proxy"]
    assert stats["replies"] == {"0x00": 3} and stats["relay"]["closed"] == 3
    assert stats["relay"]["bytes_out"] > 8 * MB and stats["relay"]["active"] == 0
    assert done["counters"]["tcp"]["rx"] > 0


def test_protocol_errors_get_the_rfc_reply_codes(
    netns_name: str, tmp_path: Path, commands: list[Chimney]
) -> None:
    create_netns(netns_name)
    (tmp_path / "hosts").write_text(f"{PEER} peer.test\n")
    commands.append(proxy := _proxy(netns_name, tmp_path))
    port = proxy.port
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:  # version 4: closed, no reply
        sock.sendall(b"\x04\x01\x00\x50" + socket.inet_aton(PEER) + b"\x00")
        assert sock.recv(10) == b""
    cases = {
        "BIND": (ipv4_request(PEER, 80, cmd=2), 0x07),
        "UDP ASSOCIATE": (ipv4_request(PEER, 80, cmd=3), 0x07),
        "IPv6": (bytes([5, 1, 0, 4]) + bytes(15) + b"\x01" + struct.pack("!H", 80), 0x08),
        "unknown name": (name_request("nowhere.test", 80), 0x04),
        "refused port": (ipv4_request(PEER, 9), 0x05),
        "no ARP answer": (ipv4_request("198.18.0.77", 80), 0x04),
        "off the subnet": (ipv4_request("198.19.0.1", 80), 0x03),
    }
    for case, (request, code) in cases.items():
        reply, sock = socks_connect(port, request)
        with sock:
            assert reply[:2] == bytes([5, code]) and len(reply) == 10, (case, reply)
            assert sock.recv(1) == b"", f"{case}: the connection stays open after the reply"
    reply, sock = socks_connect(port, b"", greeting=b"\x05\x01\x02")  # only username/password offered
    sock.close()
    assert reply == b"\x05\xff"
    done = proxy.stop()
    replies = done["proxy"]["replies"]
    assert replies == {"0x03": 1, "0x04": 2, "0x05": 1, "0x07": 2, "0x08": 1}, replies


def test_username_password_with_offload_enabled_and_churn(
    netns_name: str, tmp_path: Path, site: tuple[Path, dict[str, str]], commands: list[Chimney]
) -> None:
    need("curl")
    www, digests = site
    with http_server(www, netns_name, "0.0.0.0", HTTP_PORT):
        extra = ("--user", USER, "--offload", "enabled", "--churn", "0.01")
        commands.append(proxy := _proxy(netns_name, tmp_path, *extra))
        assert proxy.ready["auth"] == "username/password"
        url = f"http://peer.test:{HTTP_PORT}/big.bin"
        for _ in range(2):
            assert sha256_of(run(_curl(proxy.port, url, "--proxy-user", USER))) == digests["big.bin"]
        refused = run(_curl(proxy.port, url, "--proxy-user", "alice:wrong"))
        assert refused.returncode != 0 and refused.stdout == b""
        greeting = b"\x05\x01\x02"
        reply, sock = socks_connect(proxy.port, b"", greeting=greeting)
        with sock:
            assert reply == b"\x05\x02"
            sock.sendall(b"\x01\x05alice\x05wrong")
            assert sock.recv(2) == b"\x01\x01" and sock.recv(1) == b""
        done = proxy.stop()
    assert done["proxy"]["refused"]["authentication failed"] == 2
    offload = done["offload"]
    assert offload["offloads"] >= 2 and offload["churn_uploads"] >= 1, offload


def test_proxychains4_wraps_a_client_without_socks_support(
    netns_name: str, tmp_path: Path, site: tuple[Path, dict[str, str]], commands: list[Chimney]
) -> None:
    need("curl", "proxychains4")
    www, digests = site
    with http_server(www, netns_name, "0.0.0.0", HTTP_PORT):
        commands.append(proxy := _proxy(netns_name, tmp_path, "--user", USER))
        conf = tmp_path / "proxychains.conf"
        user, password = USER.split(":")
        conf.write_text(
            f"strict_chain\nproxy_dns\n[ProxyList]\nsocks5 127.0.0.1 {proxy.port} {user} {password}\n"
        )
        url = f"http://www.peer.test:{HTTP_PORT}/big.bin"
        got = run(["proxychains4", "-q", "-f", str(conf), "curl", "-sS", "--fail", url])
        assert sha256_of(got) == digests["big.bin"]
        done = proxy.stop()
    assert done["proxy"]["replies"] == {"0x00": 1}


def test_half_close_and_resets_pass_through(netns_name: str, tmp_path: Path, commands: list[Chimney]) -> None:
    create_netns(netns_name)
    (tmp_path / "hosts").write_text(f"{PEER} peer.test\n")
    commands.append(proxy := _proxy(netns_name, tmp_path))
    payload = bytes(range(256)) * 4000

    def peer(port: int, behaviour: object) -> Peer:
        listening = socket_in_netns(netns_name)
        listening.bind(("0.0.0.0", port))
        return Peer(listening, behaviour)  # type: ignore[arg-type]

    half = peer(7001, sha_after_eof)
    reply, sock = socks_connect(proxy.port, name_request("peer.test", 7001))
    with sock:
        assert reply[:2] == b"\x05\x00"
        answer = half_close_exchange(sock, payload)
    assert answer == half.result()  # the peer saw the FIN, and its answer came back after it

    resetting = peer(7002, reset_after_hello)
    reply, sock = socks_connect(proxy.port, ipv4_request(PEER, 7002))
    with sock:
        sock.sendall(b"hello")
        with pytest.raises(ConnectionResetError):
            sock.recv(10)
    assert resetting.result() == "reset"

    watching = peer(7003, watch_for_reset)
    reply, sock = socks_connect(proxy.port, ipv4_request(PEER, 7003))
    sock.sendall(b"hello")
    assert sock.recv(2) == b"ok"
    reset_close(sock)
    assert watching.result() == "reset"
    done = proxy.stop()
    assert done["proxy"]["relay"]["closed"] == 1 and done["proxy"]["relay"]["reset"] == 2


def test_a_busy_listening_port_is_one_sentence_and_leaves_nothing(netns_name: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for argv in (
            ["proxy", "--listen", f"127.0.0.1:{port}"],
            ["forward", "--listen", f"127.0.0.1:{port}", "--connect", f"{PEER}:80"],
        ):
            result = run([*CHIMNEY, *argv, "--netns", netns_name])
            err = result.stderr.decode()
            assert result.returncode == 1 and result.stdout == b"", err
            assert err == f"chimney: cannot listen on 127.0.0.1:{port}: Address already in use.\n"
            assert not os.path.exists(netns_path(netns_name)), "the namespace it made must be gone"
