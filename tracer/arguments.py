"""Flags shared by several commands, and the parsers of the read-side commands.

Light on purpose: `tracer tree --help` and `tracer events --help` build
these without loading gRPC, the daemon or the log readers; each command's
code is imported only when it runs (tracer/cli.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TypeAlias

from export.config import EventLogConfig, GrpcConfig
from tracer import control
from tracer.core.events import EVENT_TYPES
from tracer.core.options import field_default

# flag suffix -> (Filter field of the API request, type of one value)
FILTER_FLAGS: dict[str, tuple[str, type]] = {
    "type": ("event_types", str),
    "binary": ("binary_regex", str),
    "args": ("args_regex", str),
    "pid": ("pid", int),
    "namespace": ("namespace", str),
    "pod": ("pod_regex", str),
    "label": ("labels", str),
    "container": ("container_id", str),
}
_FILTER_HELP = {
    "type": f"event type: {', '.join(t for t in EVENT_TYPES if t != 'lost')} "
    "(repeat, or comma-separate)",
    "binary": "RE2 regex searched in the executed file's path",
    "args": "RE2 regex searched in the arguments after argv[0], space-joined",
    "pid": "process id",
    "namespace": "Kubernetes namespace of the process's pod",
    "pod": "RE2 regex searched in the pod name",
    "label": "Kubernetes label selector, e.g. 'app=web,tier!=db'",
    "container": "container id, or a prefix of it",
}
EVENT_LOG_DIR: Path = field_default(EventLogConfig, "directory")

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_tls_arguments(p: argparse.ArgumentParser) -> None:
    """The client side of TLS for a HOST:PORT --address (`tracer events`, `policy apply`)."""
    tls = p.add_argument_group("TLS (HOST:PORT addresses)")
    tls.add_argument(
        "--tls-ca", type=Path, help="CA that signed the daemon's certificate (default: system CAs)"
    )
    tls.add_argument(
        "--tls-cert", type=Path, help="client certificate, for a daemon that asks for one"
    )
    tls.add_argument("--tls-key", type=Path, help="key of --tls-cert")
    tls.add_argument(
        "--tls-server-name", help="name to verify in the daemon's certificate (default: HOST)"
    )


def add_output_and_filter_arguments(p: argparse.ArgumentParser) -> None:
    """-o, -n, --color and the filter flags (`tracer events`, `tracer replay`)."""
    out = p.add_argument_group("output")
    out.add_argument(
        "-o",
        "--output",
        choices=["json", "compact", "ocsf", "ecs"],
        default="json",
        help="json (the native schema), compact (one readable line), or JSON lines in "
        "OCSF 1.3.0 or ECS for a SIEM (default: json)",
    )
    out.add_argument(
        "-n", "--count", type=int, metavar="N", help="stop after N events (loss reports included)"
    )
    out.add_argument(
        "--color",
        choices=["auto", "always", "never"],
        default="auto",
        help="color compact output (default: only on a terminal)",
    )
    flt = p.add_argument_group(
        "filters",
        "Given flags must all match; a repeated flag matches any of its values. "
        "Each --deny-* flag excludes what it matches. Loss reports always pass.",
    )
    for name, (_, kind) in FILTER_FLAGS.items():
        flt.add_argument(
            f"--{name}", action="append", type=kind, metavar=name.upper(), help=_FILTER_HELP[name]
        )
    for name, (_, kind) in FILTER_FLAGS.items():
        flt.add_argument(
            f"--deny-{name}",
            action="append",
            type=kind,
            metavar=name.upper(),
            help=f"exclude events whose {name} matches",
        )


def add_events_parser(sub: Subparsers, description: str | None) -> None:
    p = sub.add_parser(
        "events",
        help="print the daemon's events (or a JSON lines log), filtered",
        description=description,
    )
    src = p.add_argument_group("source")
    src.add_argument(
        "--address",
        default=f"unix://{field_default(GrpcConfig, 'socket')}",
        help="daemon address: unix:///path or HOST:PORT (TLS) (default: %(default)s)",
    )
    src.add_argument(
        "--from", dest="from_file", metavar="FILE", help="read a JSON lines log ('-': stdin)"
    )
    add_tls_arguments(p)
    add_output_and_filter_arguments(p)


def _log_command(sub: Subparsers, name: str, summary: str, epilog: str) -> argparse.ArgumentParser:
    """A subcommand that reads the event log; its --help ends with the exit codes."""
    p = sub.add_parser(
        name,
        help=summary,
        description=summary,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_log_source(p)
    return p


def add_log_source(p: argparse.ArgumentParser) -> None:
    """Which event log to read (tree, replay, policy test)."""
    src = p.add_argument_group(f"source (default: the local log, {EVENT_LOG_DIR})")
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


def add_log_parsers(sub: Subparsers, epilog: str) -> None:
    """`tracer tree` and `tracer replay`."""
    t = _log_command(sub, "tree", "the process tree around a process, from the event log", epilog)
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
    r = _log_command(
        sub, "replay", "stored events in time order, filtered like `tracer events`", epilog
    )
    r.add_argument(
        "--speed",
        type=float,
        default=0.0,
        help="pace at this many times real time (1: as recorded); 0: as fast as possible "
        "(default)",
    )
    add_output_and_filter_arguments(r)
