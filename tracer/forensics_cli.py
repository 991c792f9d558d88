"""`tracer tree` and `tracer replay`: the event log, after the fact.

Their flags are in tracer/arguments.py, their exit codes in tracer/exitcodes.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from export.filters import EventFilter, FilterError, facts_of_dict
from forensics import html, render, replay, tree
from forensics.log import InputError, Problems, Segment, list_segments, parse_when
from forensics.store import LogIndex
from tracer import client, control, exitcodes
from tracer.arguments import EVENT_LOG_DIR


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


def run(args: argparse.Namespace) -> int:
    sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    problems = Problems()
    try:
        rc = (_tree if args.command == "tree" else _replay)(args, problems)
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
