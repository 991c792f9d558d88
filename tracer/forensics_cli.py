"""`tracer tree` and `tracer replay`: the event log, after the fact.

Exit codes, the same for both commands:

  0  done, and every line of the input was read
  1  no input could be read (no log directory, the daemon did not answer)
  2  bad usage (an unknown flag, a malformed time or regex)
  3  done, but some input was skipped (torn last line, corrupt or
     truncated segment, a line that is not JSON, an event of a newer
     schema): the output is partial, the warnings on stderr say where
  4  (tree) no process in the log matches the selection
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from export.eventlog import DEFAULT_DIR
from export.filters import EventFilter, FilterError, facts_of_dict
from forensics import html, render, replay, tree
from forensics.log import InputError, Problems, Segment, list_segments, parse_when
from forensics.store import LogIndex
from tracer import client, control

COMMANDS = ("tree", "replay")
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_NO_MATCH = 4


def _command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, summary: str
) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with the exit codes, taking the event log as input."""
    p = sub.add_parser(
        name, help=summary, description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_argument_group("source (default: the local log, " + str(DEFAULT_DIR) + ")")
    src.add_argument(
        "--from",
        dest="sources",
        type=Path,
        action="append",
        metavar="PATH",
        help="a log directory or segment file, e.g. copied from another node (repeatable)",
    )
    src.add_argument(
        "--daemon",
        action="store_true",
        help="the log of the daemon listening on --control-socket",
    )
    src.add_argument("--control-socket", type=Path, default=control.DEFAULT_SOCKET)
    src.add_argument("--since", help="from this time: RFC 3339, or an age like 15m, 2h")
    src.add_argument("--until", help="up to this time: RFC 3339, or an age like 15m")
    return p


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    t = _command(sub, "tree", "the process tree around a process, from the event log")
    sel = t.add_argument_group("selection (given flags must all match; repeat to widen)")
    sel.add_argument("--exec-id", action="append", default=[], help="a process image's exec_id")
    sel.add_argument("--pid", action="append", type=int, default=[], help="process id")
    sel.add_argument("--at", help="with --pid: the process that had the pid at this time")
    sel.add_argument(
        "--pod", action="append", default=[], metavar="NS/NAME", help="Kubernetes pod"
    )
    sel.add_argument(
        "--binary", action="append", default=[], help="regex searched in the executed file's path"
    )
    t.add_argument("-o", "--output", choices=["text", "json", "html"], default="text")
    t.add_argument(
        "--color", choices=["auto", "always", "never"], default="auto", help="color text output"
    )

    r = _command(sub, "replay", "stored events in time order, filtered like `tracer events`")
    r.add_argument(
        "--speed",
        type=float,
        default=0.0,
        help="pace at this many times real time (1: as recorded); 0: as fast as possible "
        "(default)",
    )
    client.add_output_and_filter_arguments(r)


def _segments(args: argparse.Namespace) -> list[Segment]:
    if args.daemon:
        if args.sources:
            raise _Usage("--daemon and --from are alternatives")
        reply = control.request(args.control_socket, {"op": "event_log"})
        if not reply.get("ok"):
            raise InputError(f"the daemon has no event log: {reply.get('error')}")
        paths = [Path(reply["directory"])]
    else:
        paths = args.sources or [DEFAULT_DIR]
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
        return EXIT_NO_MATCH
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
    return EXIT_OK


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
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    problems = Problems()
    try:
        rc = (_tree if args.command == "tree" else _replay)(args, problems)
    except _Usage as exc:
        print(f"tracer: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (InputError, control.ControlError) as exc:
        print(f"tracer: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    problems.summary()
    if rc == EXIT_OK and problems.count:
        return EXIT_PARTIAL
    return rc
