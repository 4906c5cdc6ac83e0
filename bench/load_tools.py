"""The HTTP load tools of bench/http.py, ``ab`` (ApacheBench) and ``wrk``: their command lines and their
reports read into one ``Load``. Pure functions of text, so the parsing is unit-tested on real reports.

A report that does not say how many requests completed, or says some failed, is an error (``LoadError``),
never a rate: ab's ``Failed requests`` (connect, receive, length, exceptions), ``Write errors`` and
``Non-2xx responses``; wrk's ``Socket errors`` (connect, read, write, timeout) and its status errors (answers
of 400 and over: ``Non-2xx or 3xx responses`` in its text). wrk's report comes from ``WRK_SCRIPT``'s
``done()`` as one JSON line, so that no figure is read from text laid out for people.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

TOOLS = ("ab_keepalive", "ab", "wrk")  # ab -k, ab (a connection per request), wrk (keep-alive)
TIMEOUT_S = 10  # a request unanswered this long fails the run (ab -s, wrk --timeout)
# ab stops at -t seconds or -n requests: -n far beyond any rate here, so the time decides.
AB_MAX_REQUESTS = 10_000_000
WRK_MARK = "wrk-json "
WRK_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, "write": %d, '
    .. '"status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d}\\n',
    "WRK_MARK", summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(99)))
end
""".replace("WRK_MARK", WRK_MARK)


class LoadError(RuntimeError):
    """The tool failed, reported failed requests, or its report could not be read."""


@dataclass(frozen=True)
class Load:
    """What one run of a load tool reports."""

    tool: str
    requests: int  # completed, every one a 2xx answer (else LoadError)
    seconds: float
    keepalive_requests: int | None = None  # ab -k: requests on a kept connection
    latency_us: dict[str, float] = field(default_factory=dict)  # wrk: p50, p99

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def command(tool: str, url: str, seconds: int, concurrency: int, script: str = "") -> list[str]:
    """The argv of ``tool`` (one of TOOLS) loading ``url`` for ``seconds`` with ``concurrency`` connections;
    wrk needs ``script``, a file holding WRK_SCRIPT. Both tools take whole seconds."""
    if tool in ("ab", "ab_keepalive"):
        keep = ["-k"] if tool == "ab_keepalive" else []
        # -r: a receive error is counted as a failed request (read below) instead of ending ab at once
        limits = ["-s", str(TIMEOUT_S), "-t", str(seconds), "-n", str(AB_MAX_REQUESTS)]
        return ["ab", *keep, "-q", "-r", "-c", str(concurrency), *limits, url]
    if tool == "wrk":
        limits = ["-d", f"{seconds}s", "--timeout", f"{TIMEOUT_S}s"]
        return ["wrk", "-t", "1", "-c", str(concurrency), *limits, "-s", script, url]
    raise ValueError(f"unknown load tool {tool!r}")


def parse(tool: str, returncode: int, stdout: str, stderr: str) -> Load:
    """The report of one run; LoadError if the tool failed or counted a failed request."""
    if returncode != 0:
        raise LoadError(f"{tool} exited with {returncode}: {_last_line(stderr or stdout)}")
    if tool == "wrk":
        return parse_wrk(stdout)
    return parse_ab(tool, stdout)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _ab_field(text: str, label: str, pattern: str = r"(\d+)") -> str | None:
    found = re.search(rf"^{re.escape(label)}:\s+{pattern}", text, re.MULTILINE)
    return found.group(1) if found else None


def parse_ab(tool: str, text: str) -> Load:
    complete = _ab_field(text, "Complete requests")
    taken = _ab_field(text, "Time taken for tests", r"([0-9.]+) seconds")
    failed = _ab_field(text, "Failed requests")
    if complete is None or taken is None or failed is None:
        raise LoadError(f"{tool}: no complete report ({_last_line(text)})")
    problems = {
        "failed requests": int(failed),
        "write errors": int(_ab_field(text, "Write errors") or 0),
        "non-2xx responses": int(_ab_field(text, "Non-2xx responses") or 0),
    }
    _refuse(tool, problems, int(complete))
    kept = _ab_field(text, "Keep-Alive requests")
    return Load(tool, int(complete), float(taken), None if kept is None else int(kept))


def parse_wrk(text: str) -> Load:
    lines = [line[len(WRK_MARK) :] for line in text.splitlines() if line.startswith(WRK_MARK)]
    if len(lines) != 1:
        raise LoadError(f"wrk: no report from its script ({_last_line(text)})")
    try:
        r = json.loads(lines[0])
        problems = {k: int(r[k]) for k in ("connect", "read", "write", "timeout")}
        problems["status >= 400"] = int(r["status"])
        requests, seconds = int(r["requests"]), int(r["duration_us"]) / 1e6
        latency = {"p50": float(r["p50_us"]), "p99": float(r["p99_us"])}
    except (ValueError, KeyError, TypeError) as exc:
        raise LoadError(f"wrk: unreadable report {lines[0]!r}") from exc
    _refuse("wrk", problems, requests)
    return Load("wrk", requests, seconds, latency_us=latency)


def _refuse(tool: str, problems: dict[str, int], complete: int) -> None:
    bad = {k: v for k, v in problems.items() if v}
    if bad:
        said = ", ".join(f"{v} {k}" for k, v in bad.items())
        raise LoadError(f"{tool}: {said} (of {complete} completed requests)")
    if complete <= 0:
        raise LoadError(f"{tool}: no request completed")


def missing(tools: Sequence[str] = ("ab", "wrk")) -> list[str]:
    """The programs of ``tools`` not on PATH (``make tools`` installs them)."""
    import shutil

    return [t for t in tools if shutil.which(t) is None]
