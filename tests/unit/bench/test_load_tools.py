"""bench/load_tools.py reads ab's and wrk's reports: a rate only from a report with every request answered
2xx; anything else is a LoadError naming what failed. The reports are as ab 2.3 and wrk 4.1 print them."""

from __future__ import annotations

import pytest

from bench.load_tools import WRK_MARK, LoadError, command, parse

AB_HEAD = """This is ApacheBench, Version 2.3 <$Revision$>
Copyright 1996 Adam Twiss, Zeus Technology Ltd, http://www.zeustech.net/
Licensed to The Apache Software Foundation, http://www.apache.org/

Benchmarking 198.18.0.2 (be patient).....done


Server Software:
Server Hostname:        198.18.0.2
Server Port:            80

Document Path:          /bytes/64
Document Length:        64 bytes

Concurrency Level:      4
Time taken for tests:   2.001 seconds
"""
AB_TAIL = """Total transferred:      2306690 bytes
HTML transferred:       588160 bytes
Requests per second:    4594.72 [#/sec] (mean)
Time per request:       0.870 [ms] (mean)
Time per request:       0.218 [ms] (mean, across all concurrent requests)
Transfer rate:          2252.56 [Kbytes/sec] received
"""
AB_OK = (
    AB_HEAD
    + "Complete requests:      9190\nFailed requests:        0\nKeep-Alive requests:    9190\n"
    + AB_TAIL
)


def wrk(**errors: int) -> str:
    fields = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0, **errors}
    counts = ", ".join(f'"{k}": {v}' for k, v in fields.items())
    sizes = '"requests": 4883, "duration_us": 2004000, "bytes": 1111000'
    report = f'{{{sizes}, {counts}, "p50_us": 393, "p99_us": 1909}}'
    return f"Running 2s test @ http://198.18.0.2/bytes/64\n  4883 requests in 2.00s\n{WRK_MARK}{report}\n"


def test_a_clean_ab_report_gives_its_rate() -> None:
    load = parse("ab_keepalive", 0, AB_OK, "")
    assert (load.requests, load.seconds, load.keepalive_requests) == (9190, 2.001, 9190)
    assert load.rate == pytest.approx(9190 / 2.001)
    plain = parse("ab", 0, AB_OK.replace("Keep-Alive requests:    9190\n", ""), "")
    assert plain.keepalive_requests is None


@pytest.mark.parametrize(
    ("report", "says"),
    [
        (
            AB_OK.replace(
                "Failed requests:        0\n",
                "Failed requests:        3\n   (Connect: 0, Receive: 3, Length: 0, Exceptions: 0)\n",
            ),
            "3 failed requests",
        ),
        (AB_OK.replace("Keep-Alive", "Non-2xx responses:      9190\nKeep-Alive"), "9190 non-2xx responses"),
        (AB_OK.replace("Keep-Alive", "Write errors:           2\nKeep-Alive"), "2 write errors"),
        (AB_OK.replace("Complete requests:      9190", "Complete requests:      0"), "no request completed"),
        (AB_HEAD, "no complete report"),
        ("", "no complete report"),
    ],
)
def test_an_ab_report_with_failures_or_cut_short_is_an_error(report: str, says: str) -> None:
    with pytest.raises(LoadError, match=says):
        parse("ab", 0, report, "")


def test_a_failed_tool_is_an_error_with_its_last_words() -> None:
    with pytest.raises(LoadError, match=r"ab exited with 255: apr_pollset_poll: The timeout"):
        parse("ab", 255, AB_HEAD, "apr_pollset_poll: The timeout specified has expired (70007)\n")
    with pytest.raises(LoadError, match="wrk exited with 1: unable to connect"):
        parse("wrk", 1, "", "unable to connect to 198.18.0.2:80 Connection refused\n")


def test_a_clean_wrk_report_gives_its_rate_and_latency() -> None:
    load = parse("wrk", 0, wrk(), "")
    assert (load.requests, load.seconds) == (4883, 2.004)
    assert load.latency_us == {"p50": 393.0, "p99": 1909.0}


@pytest.mark.parametrize(
    ("errors", "says"),
    [
        ({"read": 3}, "3 read"),
        ({"status": 12}, "12 status >= 400"),
        ({"timeout": 1, "connect": 2}, "2 connect"),
    ],
)
def test_wrk_socket_or_status_errors_are_an_error(errors: dict[str, int], says: str) -> None:
    with pytest.raises(LoadError, match=says):
        parse("wrk", 0, wrk(**errors), "")


@pytest.mark.parametrize(
    "report", ["  4883 requests in 2.00s\nRequests/sec: 2438.14\n", f"{WRK_MARK}{{not json\n", wrk() + wrk()]
)
def test_a_wrk_report_without_exactly_one_script_line_is_an_error(report: str) -> None:
    with pytest.raises(LoadError, match="wrk: "):
        parse("wrk", 0, report, "")


def test_the_command_lines() -> None:
    url = "http://198.18.0.2/bytes/64"
    ab = command("ab_keepalive", url, 2, 4)
    assert ab[:2] == ["ab", "-k"] and ab[-1] == url and ab[ab.index("-t") + 1] == "2"
    assert "-k" not in command("ab", url, 2, 4)
    w = command("wrk", url, 3, 8, "/tmp/x.lua")
    assert w[0] == "wrk" and w[w.index("-c") + 1] == "8" and w[w.index("-d") + 1] == "3s"
    assert w[w.index("-s") + 1] == "/tmp/x.lua"
    with pytest.raises(ValueError, match="unknown load tool"):
        command("siege", url, 1, 1)
