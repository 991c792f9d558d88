"""`tracer tree`, `tracer replay` and `tracer policy test`: the event log, after the fact.

Their flags are in tracer/arguments.py, their exit codes in tracer/exitcodes.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from export.filters import EventFilter, FilterError, facts_of_dict
from forensics import html, render, replay, tree
from forensics.log import (
    InputError,
    JsonDict,
    Problems,
    Segment,
    list_segments,
    parse_time,
    parse_when,
)
from forensics.store import LogIndex
from tracer import client, control, exitcodes
from tracer.arguments import EVENT_LOG_DIR
from tracer.core import terminal


def _segments(args: argparse.Namespace) -> list[Segment]:
    if args.daemon:
        if args.sources:
            raise _Usage("--daemon and --from are alternatives")
        reply = control.request(args.control_socket, {"op": "event_log"})
        if not reply.get("ok"):
            raise InputError(f"the daemon has no event log: {reply.get('error')}")
        paths = [Path(reply["directory"])]
    else:
        paths = args.sources or [EVENT_LOG_DIR]
    return list_segments(paths)


class _Usage(Exception):
    pass


def _when(text: str | None, flag: str) -> int | None:
    if text is None:
        return None
    try:
        return parse_when(text)
    except ValueError as exc:
        raise _Usage(f"{flag}: {exc}") from None


def _selection(args: argparse.Namespace) -> tree.Selection:
    pods = []
    for p in args.pod:
        ns, sep, name = p.partition("/")
        if not sep or not ns or not name:
            raise _Usage(f"--pod wants NAMESPACE/NAME, not {p!r}")
        pods.append((ns, name))
    sel = tree.Selection(
        exec_ids=args.exec_id,
        pids=args.pid,
        at_ns=_when(args.at, "--at"),
        pods=pods,
        binaries=args.binary,
        since_ns=_when(args.since, "--since"),
        until_ns=_when(args.until, "--until"),
    )
    if sel.at_ns is not None and not sel.pids:
        raise _Usage("--at goes with --pid")
    if sel.empty():
        raise _Usage("say which process: --exec-id, --pid, --pod, --binary or --since/--until")
    for b in sel.binaries:  # checked here, so that a bad one is a usage error
        try:
            tree.compile_regex(b)
        except ValueError as exc:
            raise _Usage(str(exc)) from None
    return sel


def _tree(args: argparse.Namespace, problems: Problems) -> int:
    sel = _selection(args)
    segments = _segments(args)
    if not segments:
        raise InputError("no event-log segments there")
    index = LogIndex(segments, problems)
    try:
        forest = tree.build(index, sel, problems)
    except tree.SelectionError as exc:
        problems.summary()
        print(f"tracer: {exc} (searched {len(segments)} segments)", file=sys.stderr)
        return exitcodes.NO_MATCH
    out = sys.stdout
    if args.output == "json":
        out.buffer.write(render.to_json(forest))
    elif args.output == "html":
        title = "tracer tree " + " ".join(forest.selected[:3])
        out.buffer.write(html.to_html(forest, title))
    else:
        color = args.color == "always" or (args.color == "auto" and out.isatty())
        out.write(render.to_text(forest, color))
    out.flush()
    return exitcodes.OK


def _replay(args: argparse.Namespace, problems: Problems) -> int:
    if (problem := client.output_problem(args)) is not None:
        raise _Usage(problem)
    req = client.build_request(args)
    try:
        event_filter = EventFilter.from_request(req)
    except FilterError as exc:
        raise _Usage(f"{client.flag_of(exc.field)}: {exc.problem}") from None
    if args.speed < 0:
        raise _Usage("--speed must be 0 (no pacing) or more")
    since, until = _when(args.since, "--since"), _when(args.until, "--until")
    segments = _segments(args)
    stream = replay.stored(segments, problems, since, until)
    wanted = (
        ev
        for ev in replay.paced(stream, args.speed)
        if ev["type"] == "lost" or event_filter.matches(facts_of_dict(ev))
    )
    client.print_events(wanted, args)
    return exitcodes.OK


def _summary(ev: JsonDict) -> str:
    """What a person needs to recognise one event of a rule's: who and on what."""
    proc = ev.get("process") or {}
    what = ""
    if ev["type"] == "file_open":
        what = str((ev.get("file_open") or {}).get("path", ""))
    elif ev["type"] == "connect":
        c = ev.get("connect") or {}
        what = f"{c.get('daddr')}:{c.get('dport')}" if c.get("daddr") else str(c.get("unix_path"))
    elif ev["type"] == "policy_summary":
        what = f"{(ev.get('policy_summary') or {}).get('count')} more, not posted"
    elif ev["type"] == "file_attr":
        a = ev.get("file_attr") or {}
        what = f"{a.get('call', '')} {a.get('path', '')}"
    elif ev["type"] == "privilege_change":
        what = str((ev.get("privilege_change") or {}).get("op", ""))
    return f"{ev.get('time', '')} pid {proc.get('pid')} {proc.get('binary', '')} {what}".rstrip()


def _policy_test(args: argparse.Namespace, problems: Problems) -> int:
    """`tracer policy test`: what a policy set would have done to a recorded log."""
    from policy import PolicyError, parse_files
    from policy.evaluate import Evaluator, ThrottleModel

    if args.examples < 0:
        raise _Usage("--examples must be 0 or more")
    try:
        evaluator = Evaluator(parse_files(args.files))
    except PolicyError as exc:
        raise _Usage(str(exc)) from None
    since, until = _when(args.since, "--since"), _when(args.until, "--until")
    per_rule: dict[tuple[str, int], dict[str, Any]] = {}
    read = 0
    # Events the recording daemon's own throttles kept out of the log: counted
    # there, never seen here.
    not_recorded = 0
    throttles = ThrottleModel()
    for _, ev in replay.stored(_segments(args), problems, since, until):
        read += 1
        if ev["type"] == "policy_summary":
            count = (ev.get("policy_summary") or {}).get("count")
            not_recorded += int(count) if isinstance(count, str) and count.isdigit() else 0
            continue
        v = evaluator.verdict(ev)
        if v is None:
            continue
        entry = per_rule.setdefault(
            (v.policy.name, v.index),
            {
                "policy": v.policy.name,
                "rule": v.index,
                "event": v.rule.kind.label,
                "action": v.rule.action.label,
                "mode": v.policy.mode.value,
                "severity": v.policy.severity.value,
                "source": f"{v.policy.source}:{v.rule.line}",
                "events": 0,
                "examples": [],
            },
        )
        entry["events"] += 1
        if v.rule.throttle is not None:
            # events: what the rule selects; posted: what its throttle lets out.
            posted = throttles.posts(v, ev, parse_time(str(ev.get("time", ""))) or 0)
            entry["posted"] = entry.get("posted", 0) + posted
            entry["suppressed"] = entry.get("suppressed", 0) + (not posted)
        if len(entry["examples"]) < args.examples:
            entry["examples"].append(ev if args.json else _summary(ev))
    rules = sorted(per_rule.values(), key=lambda e: (e["policy"], e["rule"]))
    if args.json:
        sys.stdout.buffer.write(
            # escaped, like events
            terminal.json_line({"events_read": read, "not_recorded": not_recorded, "rules": rules})
        )
        return exitcodes.OK
    print(f"{read} events read; rules that would have selected some:")
    if not_recorded:
        print(
            f"  ({not_recorded} events the recording daemon's throttles kept back are in the "
            "log only as counts: not evaluated)"
        )
    if not rules:
        print("  none")
    for r in rules:
        mode = " (monitor)" if r["mode"] == "monitor" else ""
        print(
            f"  {terminal.escape(r['policy'])} rule {r['rule']} ({r['event']}, "
            f"{r['action']}{mode}): {r['events']} events  {terminal.escape(r['source'])}"
        )
        if "posted" in r:
            print(f"      throttled: {r['posted']} posted, {r['suppressed']} counted in summaries")
        for ex in r["examples"]:
            print(f"      {terminal.escape(ex)}")
    return exitcodes.OK


def run(args: argparse.Namespace) -> int:
    sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    problems = Problems()
    command = {"tree": _tree, "replay": _replay, "policy": _policy_test}[args.command]
    try:
        rc = command(args, problems)
    except _Usage as exc:
        print(f"tracer: error: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    except (InputError, control.ControlError) as exc:
        print(f"tracer: error: {exc}", file=sys.stderr)
        return exitcodes.FAILURE
    except KeyboardInterrupt:
        return exitcodes.OK
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return exitcodes.OK
    problems.summary()
    if rc == exitcodes.OK and problems.count:
        return exitcodes.PARTIAL
    return rc
