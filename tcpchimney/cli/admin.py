"""The admin verbs: thin clients of a running stack's control socket (tcpchimney.manage).

``chimney netstat``/``ss``, ``show global``, ``set global``, ``why``, ``history``, ``offload``, ``upload``
and ``stats`` each send one request and print the reply as a table or a sentence; ``-j`` prints the reply
as JSON instead. With one stack running they find it; with several, ``--name``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from tcpchimney.cli.common import CommandError
from tcpchimney.cli.nstat import add_options as add_stats_options
from tcpchimney.cli.nstat import print_stats
from tcpchimney.cli.nstat import shape as shape_stats

VERBS = (
    "netstat",
    "ss",
    "show",
    "set",
    "why",
    "history",
    "offload",
    "upload",
    "stats",
    "events",
    "top",
    "rule",
)
_STATES = (
    "LISTEN",
    "SYN_SENT",
    "SYN_RECEIVED",
    "ESTABLISHED",
    "FIN_WAIT_1",
    "FIN_WAIT_2",
    "CLOSE_WAIT",
    "CLOSING",
    "LAST_ACK",
    "TIME_WAIT",
    "CLOSED",
)


def add_commands(sub: Any, name_option: Callable[[argparse.ArgumentParser], None]) -> None:
    """The verbs' parsers, on the ``chimney`` command's subparsers."""
    for verb, help_text in (
        ("netstat", "the connections of a running stack with their offload state"),
        ("ss", "the same as netstat"),
    ):
        p = sub.add_parser(verb, help=help_text, description=f"{help_text.capitalize()} (docs/admin.md).")
        p.add_argument(
            "-i",
            "--internals",
            action="store_true",
            help="add cwnd, RTT, RTO, queues (live from the NIC for offloaded connections)",
        )
        p.add_argument("-a", "--all", action="store_true", help="also the listening sockets")
        p.add_argument(
            "--state", type=str.upper, choices=_STATES, metavar="STATE", help="only this TCP state"
        )
        p.add_argument(
            "--port", type=int, metavar="PORT", help="only connections with this local or remote port"
        )
        p.add_argument("--address", metavar="IP", help="only connections with this remote address")
        _common(p, name_option)
    show = sub.add_parser(
        "show", help="show global (the live offload mode) or show target (the NIC: capacity, health)"
    )
    show.add_argument("what", choices=("global", "target"))
    _common(show, name_option)
    set_ = sub.add_parser(
        "set",
        help="set global chimney=disabled|enabled|automatic [min-bytes=N] [max-rtt=MS]",
        description="Change the live offload policy: connections that no longer qualify "
        "are uploaded, those that now qualify are offloaded, each with its reason.",
    )
    set_.add_argument("what", choices=("global",))
    set_.add_argument(
        "settings", nargs="+", metavar="KEY=VALUE", help="chimney=MODE, min-bytes=N, max-rtt=MS"
    )
    set_.add_argument("--dry-run", action="store_true", help="list what would move and why; move nothing")
    _common(set_, name_option)
    for verb, help_text in (
        ("why", "why a connection is where it is: mode, rule, thresholds against what it did, the reason"),
        ("history", "a connection's moves between host and NIC, kept a while after it closed"),
        ("offload", "offload a connection now, whatever the mode (rules still apply)"),
    ):
        p = sub.add_parser(verb, help=help_text)
        p.add_argument(
            "conn",
            metavar="CONN",
            help="its number (netstat's first column), REMOTE:PORT or LOCAL:PORT-REMOTE:PORT",
        )
        _common(p, name_option)
    upload = sub.add_parser("upload", help="bring a connection (or --all) back to the host")
    upload.add_argument("conn", nargs="?", metavar="CONN", help="as for why")
    upload.add_argument("--all", action="store_true", help="every offloaded connection")
    _common(upload, name_option)
    stats = sub.add_parser(
        "stats",
        help="the running stack's counters as nstat shows them (changes since the last call)",
        description="Counters with the Linux MIB names, split by where the work happened (host, nic), and "
        "the offload lifecycle; by default what grew since the previous chimney stats of this stack.",
    )
    add_stats_options(stats)
    _common(stats, name_option)
    events = sub.add_parser(
        "events",
        help="the offload events of a running stack: the recent ones, or each as it happens (--follow)",
        description="Offloads, refusals, deferrals, uploads and faults with their reasons (and the NIC "
        "process's starts and failures), as the --events file has them.",
    )
    events.add_argument("conn", nargs="?", metavar="CONN", help="only this connection's (as for why)")
    events.add_argument(
        "-f", "--follow", action="store_true", help="print each event as it happens, until ^C"
    )
    _common(events, name_option)
    rule = sub.add_parser(
        "rule",
        help="offload rules, as netsh's chimneyport: add, del, show (with hits)",
        description="Rules are checked in order; the first that matches a connection decides: never keeps "
        "it on the host, always offloads it at once (automatic mode's thresholds or not), policy leaves it "
        "to the mode. A change applies at once, as set global.",
    )
    rule.add_argument("op", choices=("add", "del", "show"))
    rule.add_argument("number", nargs="?", type=int, metavar="N", help="del: the rule's number (rule show)")
    rule.add_argument("--action", choices=("never", "always", "policy"), default="never")
    rule.add_argument("--remote", metavar="IP[/LEN]", help="the peer's address or network")
    rule.add_argument("--remote-port", type=int, metavar="PORT")
    rule.add_argument("--local-port", type=int, metavar="PORT")
    rule.add_argument("--dry-run", action="store_true", help="list what would move; change nothing")
    _common(rule, name_option)
    top = sub.add_parser(
        "top",
        help="a live view of a running stack: connections, offload states, rates, moves (q quits)",
        description="A live view of a running stack. Keys: q quits, s cycles the sort (rate, number, "
        "state), f the filter (all, offloaded, in host), p pauses.",
    )
    top.add_argument("--interval", type=_interval, default=1.0, metavar="SECONDS", help="refresh (default 1)")
    top.add_argument("--once", action="store_true", help="print one frame and exit")
    name_option(top)


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.05 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r}: give a refresh of 0.05 to 3600 seconds")
    return value


def _common(parser: argparse.ArgumentParser, name_option: Callable[[argparse.ArgumentParser], None]) -> None:
    name_option(parser)
    parser.add_argument("-j", "--json", action="store_true", help="print the stack's reply as JSON")


def run(args: argparse.Namespace) -> int:
    from tcpchimney.manage.client import ControlError, call, find

    if args.command == "top":
        from tcpchimney.cli.top import run as run_top

        try:
            return run_top(args)
        except ControlError as exc:
            raise CommandError(f"{exc}.") from None
    command, request = _request(args)
    try:
        if args.command == "events" and args.follow:
            return _follow(find(args.name), request, args.json)
        args.control_path = find(args.name)
        result = call(args.control_path, command, request)
    except ControlError as exc:
        raise CommandError(f"{exc}.") from None
    if args.json:
        shaper = _JSON_SHAPERS.get(args.command)
        json.dump(result if shaper is None else shaper(args, result), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    _PRINTERS[args.command](args, result)
    return 0


def _request(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    verb = args.command
    if verb in ("netstat", "ss"):
        return "netstat", {"internals": args.internals, "all": True}
    if verb == "show":
        return f"show-{args.what}", {}
    if verb == "set":
        return "set-global", {**_settings(args.settings), "dry_run": args.dry_run}
    if verb == "upload":
        if args.all == (args.conn is not None):
            raise CommandError("upload takes one CONN or --all.")
        return "upload", {"all": True} if args.all else {"conn": args.conn}
    if verb == "stats":
        return "stats", {}
    if verb == "rule":
        return _rule_request(args)
    if verb == "events":
        return "events", {"follow": args.follow, **({} if args.conn is None else {"conn": args.conn})}
    return verb, {"conn": args.conn}


def _rule_request(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    if args.op == "show":
        return "rule-show", {}
    if args.op == "del":
        if args.number is None:
            raise CommandError("rule del takes the rule's number (chimney rule show lists them).")
        return "rule-del", {"number": args.number, "dry_run": args.dry_run}
    if args.number is not None:
        raise CommandError("rule add takes no number: give --remote, --remote-port or --local-port.")
    fields = {"remote": args.remote, "remote_port": args.remote_port, "local_port": args.local_port}
    if all(v is None for v in fields.values()):
        raise CommandError(
            "rule add needs --remote, --remote-port or --local-port (a rule for everything is the mode)."
        )
    return "rule-add", {
        "action": args.action,
        "dry_run": args.dry_run,
        **{k: v for k, v in fields.items() if v is not None},
    }


def _settings(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            if key == "chimney":
                out["chimney"] = value
            elif key == "min-bytes":
                out["min_bytes"] = int(value)
            elif key == "max-rtt":
                out["max_rtt_ms"] = float(value)
            else:
                raise CommandError(f"unknown setting {key!r}: give chimney=, min-bytes= or max-rtt=.")
        except ValueError:
            raise CommandError(f"{item!r}: give chimney=MODE, min-bytes=N or max-rtt=MS.") from None
    return out


# ---------------------------------------------------------------------- printing


def _table(rows: list[list[str]]) -> None:
    if not rows:
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())


def _selected(args: argparse.Namespace, row: dict[str, Any]) -> bool:
    if row["state"] == "LISTEN" and not args.all:
        return False
    if args.state is not None and row["state"] != args.state:
        return False
    ports = {row["local"].rsplit(":", 1)[1], row["remote"].rsplit(":", 1)[1]}
    if args.port is not None and str(args.port) not in ports:
        return False
    return args.address is None or row["remote"].rsplit(":", 1)[0] == args.address


def _print_netstat(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    rows = [r for r in rows if _selected(args, r)]
    now = time.time()
    table = [["ID", "LOCAL", "REMOTE", "STATE", "OFFLOAD", "NIC", "SINCE", "REASON", "SENT", "RECEIVED"]]
    for r in rows:
        since = "-" if r["since"] is None else f"{max(0.0, now - r['since']):.1f}s"
        table.append(
            [
                "-" if r["id"] is None else str(r["id"]),
                r["local"],
                r["remote"],
                r["state"],
                r["offload_state"],
                r["nic"] or "-",
                since,
                r["reason"] or "-",
                str(r["bytes_sent"]),
                str(r["bytes_received"]),
            ]
        )
    _table(table)
    if args.internals:
        for r in rows:
            if r["id"] is not None:
                print(f"#{r['id']} {r['remote']}: {_internals_line(r.get('internals'))}")


def _internals_line(i: dict[str, Any] | None) -> str:
    if i is None:
        return "(the NIC has not answered yet)"
    rtt = "-" if i["rtt_ms"] is None else f"{i['rtt_ms']:.3f}/{i['rttvar_ms']:.3f}"
    age = "" if i["source"] == "host" else f" age:{i['age_ms']:.0f}ms"
    return (
        f"from:{i['source']}{age} cwnd:{i['cwnd']} ssthresh:{i['ssthresh']} rtt:{rtt} rto:{i['rto_ms']:.0f} "
        f"mss:{i['mss']} snd_wnd:{i['snd_wnd']} rcv_wnd:{i['rcv_wnd']} unacked:{i['unacked']} "
        f"retrans:{i['retrans']} send_q:{i['send_q']} recv_q:{i['recv_q']}"
    )


def _print_global(args: argparse.Namespace, g: dict[str, Any]) -> None:
    print("TCP Global Parameters")
    print("----------------------------------------------")
    rows = [
        ("Chimney Offload State", g["chimney"]),
        ("Offload Target", g["target"] or "none"),
        ("Automatic Min Bytes", g["min_bytes"]),
        ("Automatic Max RTT (ms)", g["max_rtt_ms"]),
        ("Rules", g["rules"]),
    ]
    rows += [(f"Connections {k}", v) for k, v in g["connections"].items()]
    for key, value in rows:
        print(f"{key:<28}: {'-' if value is None else value}")


def _print_set(args: argparse.Namespace, result: dict[str, Any]) -> None:
    moves = result["moves"]
    verb = "would move" if not result["applied"] else "moving"
    print(
        f"Chimney Offload State: {result['global']['chimney']}"
        + (" (dry run: nothing changed)" if not result["applied"] else "")
    )
    if not moves:
        print("no connection moves")
    for m in moves:
        print(
            f"{verb} #{m['id']} {m['local']} -> {m['remote']}: {m['action']}"
            + (f" ({m['reason']})" if m["reason"] else "")
        )


def _print_rules(args: argparse.Namespace, result: Any) -> None:
    if args.op != "show":
        _print_set(args, result)
        return
    if not result:
        print("no rules: the mode decides for every connection")
        return
    table = [["N", "ACTION", "REMOTE", "REMOTE PORT", "LOCAL PORT", "HITS"]]
    for r in result:
        table.append([
            str(r["number"]), r["action"] or r["kind"], r["remote"] or "any", str(r["remote_port"] or "any"),
            str(r["local_port"] or "any"), str(r["hits"]),
        ])  # fmt: skip
    _table(table)


def _print_why(args: argparse.Namespace, why: dict[str, Any]) -> None:
    print(f"#{why['id']} {why['local']} -> {why['remote']} {why['state']}")
    print(f"  {why['verdict']}")
    print(f"  mode: {why['mode']}; last reason: {why['reason'] or '-'}")
    t = why.get("thresholds")
    if t is not None:
        rtt = "no sample" if t["srtt_ms"] is None else f"{t['srtt_ms']:.3f} ms"
        print(
            f"  automatic thresholds: moved {t['moved_bytes']} of {t['min_bytes']} bytes; RTT {rtt} (limit "
            f"{t['max_rtt_ms']:.0f} ms): {'met' if t['met'] else 'not met'}"
        )


def _print_history(args: argparse.Namespace, h: dict[str, Any]) -> None:
    state = (
        "open" if h["closed"] is None else "closed " + time.strftime("%H:%M:%S", time.localtime(h["closed"]))
    )
    print(f"#{h['id']} {h['local']} -> {h['remote']} ({state})")
    if not h["moves"]:
        print("  no moves: it stayed on the host and was never refused")
    for m in h["moves"]:
        stamp = time.strftime("%H:%M:%S", time.localtime(m["time"])) + f".{int(m['time'] * 1000) % 1000:03d}"
        extra = [f"reason {m['reason']}"] if m.get("reason") else []
        if "duration_ms" in m:
            extra.append(f"{m['duration_ms']:.3f} ms")
        extra.append(f"{m['bytes_sent']} sent / {m['bytes_received']} received")
        if m.get("detail"):
            extra.append(m["detail"])
        print(f"  {stamp} {m['event']:<9} {', '.join(extra)}")


def _follow(path: str, request: dict[str, Any], as_json: bool) -> int:
    from tcpchimney.manage.client import follow

    for event in follow(path, "events", request):
        print(json.dumps(event) if as_json else _event_text(event), flush=True)
    return 0


def _event_text(e: dict[str, Any]) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(e["time"])) + f".{int(e['time'] * 1000) % 1000:03d}"
    who = "-" if e["id"] is None else f"#{e['id']} {e['connection']}"
    skip = {"time", "id", "connection", "event"}
    extra = ", ".join(f"{k} {v}" for k, v in e.items() if k not in skip and v is not None)
    return f"{stamp} {who} {e['event']}" + (f" ({extra})" if extra else "")


def _print_events(args: argparse.Namespace, events: list[dict[str, Any]]) -> None:
    for event in events:
        print(_event_text(event))


def _print_offload(args: argparse.Namespace, r: dict[str, Any]) -> None:
    if r["started"]:
        print(f"#{r['id']}: offload started (chimney netstat shows Offloaded once the NIC took it)")
    else:
        print(f"#{r['id']}: stays on the host ({r['reason']})")


def _print_upload(args: argparse.Namespace, r: dict[str, Any]) -> None:
    print(f"{r['uploads']} upload(s) started")


def _print_show(args: argparse.Namespace, result: dict[str, Any]) -> None:
    (_print_target if args.what == "target" else _print_global)(args, result)


def _print_target(args: argparse.Namespace, t: dict[str, Any]) -> None:
    caps, use, health = t["capabilities"], t["use"], t["health"]
    features = ", ".join(k for k in ("ipv4", "ipv6", "sack") if caps[k]) or "none"
    rows: list[tuple[str, Any]] = [
        ("Offload Target", t["kind"]),
        ("Offload Mode", t["offload_mode"]),
        ("Capabilities", features),
        ("Capacity (connections)", caps["capacity"]),
        (
            "In Use",
            f"{use['connections']} ({use['Offloaded']} offloaded, {use['Offloading']} offloading, "
            f"{use['Uploading']} uploading)",
        ),
        ("Health", "up" if health["up"] else "down"),
        ("NIC Process PID", health["pid"]),
        ("NIC Epoch", health["epoch"]),
        ("NIC Failures", health["failures"]),
        ("NIC Restarts", health["restarts"]),
    ]
    for direction, h in t["handoff"].items():
        p50 = "-" if h["p50_ms"] is None else f"{h['p50_ms']:g}"
        p99 = "-" if h["p99_ms"] is None else f"{h['p99_ms']:g}"
        rows.append((f"{direction.capitalize()}s (p50/p99 ms <=)", f"{h['count']} ({p50}/{p99})"))
    for key, value in rows:
        print(f"{key:<28}: {'-' if value is None else value}")


_PRINTERS: dict[str, Callable[[argparse.Namespace, Any], None]] = {
    "netstat": _print_netstat,
    "ss": _print_netstat,
    "show": _print_show,
    "set": _print_set,
    "why": _print_why,
    "history": _print_history,
    "offload": _print_offload,
    "upload": _print_upload,
    "stats": print_stats,
    "events": _print_events,
    "rule": _print_rules,
}
_JSON_SHAPERS: dict[str, Callable[[argparse.Namespace, Any], Any]] = {"stats": shape_stats}
