"""``chimney forward`` as a user runs it, both ways: the stack's port 80 in front of Linux's
``python3 -m http.server`` on this host's loopback, driven by ``ab`` and ``wrk`` from the peer namespace; a
local port whose connections the stack opens to a server in the peer namespace, driven by ``ab`` from here;
byte-exact (SHA-256), with offload enabled and churned too; a refusing target resets the accepted
connection; half-close and resets pass through."""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path

import pytest
from relay_kit import (
    PEER,
    STACK,
    Chimney,
    Peer,
    create_netns,
    files,
    free_port,
    half_close_exchange,
    http_server,
    need,
    reset_after_hello,
    reset_close,
    run,
    sha256_of,
    sha_after_eof,
    watch_for_reset,
)

from tcpchimney.cli.nsutil import socket_in_netns

pytestmark = pytest.mark.net
MB = 1_000_000


def _ab_ok(result: subprocess.CompletedProcess[bytes], requests: int) -> None:
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert re.search(rf"Complete requests:\s+{requests}\b", out), out
    assert re.search(r"Failed requests:\s+0\b", out), out
    assert "Non-2xx" not in out, out


@pytest.fixture
def www(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "www"
    root.mkdir()
    return root, files(root, {"page.html": 20_000, "big.bin": 10 * MB})


@pytest.mark.parametrize("offload", ["automatic", "enabled-churn"])
def test_the_stacks_port_in_front_of_a_kernel_server(
    netns_name: str, www: tuple[Path, dict[str, str]], commands: list[Chimney], offload: str
) -> None:
    need("curl", "ab", "wrk")
    root, digests = www
    port = free_port()
    extra = ["--offload", "enabled", "--churn", "0.01"] if offload == "enabled-churn" else []
    with http_server(root, None, "127.0.0.1", port):
        commands.append(
            fwd := Chimney(
                "forward", "--netns", netns_name, "--listen", "80", "--to", f"127.0.0.1:{port}", *extra
            )
        )
        assert fwd.ready["listen"] == f"{STACK}:80" and fwd.ready["direction"] == "forward"
        for _ in range(2):
            assert (
                sha256_of(run(["curl", "-sS", "--fail", f"http://{STACK}/big.bin"], netns_name))
                == digests["big.bin"]
            )
        _ab_ok(run(["ab", "-q", "-n", "300", "-c", "8", f"http://{STACK}/page.html"], netns_name), 300)
        wrk = run(["wrk", "-t1", "-c4", "-d1s", f"http://{STACK}/page.html"], netns_name)
        assert wrk.returncode == 0 and "Socket errors" not in wrk.stdout.decode(), wrk.stdout.decode()
        done = fwd.stop()
    stats = done["forward"]
    assert stats["connect_failed"] == 0 and stats["bytes_out"] > 20 * MB, stats
    offloaded = done["offload"]
    if offload == "enabled-churn":
        assert offloaded["offloads"] >= 2 and offloaded["churn_uploads"] >= 1, offloaded


def test_a_local_port_through_the_stack_to_a_peer_server(
    netns_name: str, www: tuple[Path, dict[str, str]], commands: list[Chimney]
) -> None:
    need("curl", "ab")
    root, digests = www
    create_netns(netns_name)
    with http_server(root, netns_name, "0.0.0.0", 5432):
        argv = ["forward", "--netns", netns_name, "--listen", "127.0.0.1:0", "--connect", f"{PEER}:5432"]
        commands.append(fwd := Chimney(*argv, "--offload", "enabled", "--churn", "0.01"))
        assert fwd.ready["direction"] == "reverse" and fwd.ready["connect"] == f"{PEER}:5432"
        url = f"http://127.0.0.1:{fwd.port}"
        assert sha256_of(run(["curl", "-sS", "--fail", f"{url}/big.bin"])) == digests["big.bin"]
        _ab_ok(run(["ab", "-q", "-n", "300", "-c", "8", f"{url}/page.html"]), 300)
        _ab_ok(run(["ab", "-q", "-n", "4", "-c", "2", f"{url}/big.bin"]), 4)
        done = fwd.stop()
    stats = done["forward"]
    # ab may open a connection more than it has requests for (and close it unused): at least 305
    assert stats["accepted"] == stats["connected"] == stats["closed"] >= 305, stats
    assert stats["reset"] == stats["connect_failed"] == 0 and stats["bytes_out"] > 50 * MB, stats
    assert done["offload"]["offloads"] >= 1


def test_a_refusing_target_resets_the_accepted_connection(netns_name: str, commands: list[Chimney]) -> None:
    with socket.socket() as unused:  # bound and not listening: a SYN to it is refused
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        commands.append(
            fwd := Chimney("forward", "--netns", netns_name, "--listen", "80", "--to", f"127.0.0.1:{port}")
        )
        with socket_in_netns(netns_name) as client:
            client.settimeout(20)
            client.connect((STACK, 80))
            with pytest.raises(ConnectionResetError):
                client.recv(10)
        done = fwd.stop()
    assert done["forward"]["connect_errors"] == {"ConnectionRefusedError": 1}
    assert done["forward"]["reset"] == 1


def test_half_close_and_resets_pass_through_both_ways(netns_name: str, commands: list[Chimney]) -> None:
    """Forward (a peer in the namespace, a target on this host) and reverse (a client here, a peer there)."""
    create_netns(netns_name)
    target = socket.socket()
    target.bind(("127.0.0.1", 0))
    commands.append(
        fwd := Chimney(
            "forward",
            "--netns",
            netns_name,
            "--listen",
            "7000",
            "--to",
            f"127.0.0.1:{target.getsockname()[1]}",
        )
    )
    payload = bytes(range(256)) * 3000

    half = Peer(target, sha_after_eof)
    with socket_in_netns(netns_name) as client:
        client.settimeout(20)
        client.connect((STACK, 7000))
        assert half_close_exchange(client, payload) == half.result()

    for behaviour in (reset_after_hello, watch_for_reset):
        target = socket.socket()
        target.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        target.bind(("127.0.0.1", int(fwd.ready["to"].rsplit(":", 1)[1])))
        peer = Peer(target, behaviour)
        client = socket_in_netns(netns_name)
        client.settimeout(20)
        client.connect((STACK, 7000))
        client.sendall(b"hello")
        if behaviour is reset_after_hello:
            with pytest.raises(ConnectionResetError):
                client.recv(10)
            client.close()
        else:
            assert client.recv(2) == b"ok"
            reset_close(client)
        assert peer.result() == "reset", behaviour.__name__
    done = fwd.stop()
    assert (done["forward"]["closed"], done["forward"]["reset"]) == (1, 2), done["forward"]

    # the reverse direction: a peer in the namespace behind a local port
    listening = socket_in_netns(netns_name)
    listening.bind(("0.0.0.0", 7100))
    half = Peer(listening, sha_after_eof)
    argv = ["forward", "--netns", netns_name, "--listen", "127.0.0.1:0", "--connect", f"{PEER}:7100"]
    commands.append(back := Chimney(*argv))
    with socket.create_connection(("127.0.0.1", back.port), timeout=20) as client:
        assert half_close_exchange(client, payload) == half.result()
    listening = socket_in_netns(netns_name)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listening.bind(("0.0.0.0", 7100))
    resetting = Peer(listening, reset_after_hello)
    with socket.create_connection(("127.0.0.1", back.port), timeout=20) as client:
        client.sendall(b"hello")
        with pytest.raises(ConnectionResetError):
            client.recv(10)
    assert resetting.result() == "reset"
    done = back.stop()
    assert (done["forward"]["closed"], done["forward"]["reset"]) == (1, 1), done["forward"]
