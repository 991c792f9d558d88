"""`tracer events`: the daemon's event stream, or a JSON lines log, for a person.

Filter flags become the GetEventsRequest filters: the positive flags are
one allow filter (all of them must match), each --deny-* flag its own deny
filter (any of them excludes). The daemon evaluates them; with --from
FILE the same module (export/filters.py) evaluates them here.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import grpc
import orjson
from google.protobuf.json_format import MessageToDict

from export import convert, mapper_for
from export.filters import EventFilter, FilterError, facts_of_dict
from export.pb import JSON_OPTIONS
from export.proto_gen import tracer_v1_pb2 as pb
from export.proto_gen import tracer_v1_pb2_grpc as pb_grpc
from forensics.log import Problems, Segment, read_bytes, schema_problem
from tracer import __version__, exitcodes
from tracer.arguments import FILTER_FLAGS
from tracer.core import terminal


class UsageError(Exception):
    pass


class Refused(Exception):
    """The daemon refused a request; the message is its reason."""


def _values(name: str, raw: list[Any] | None) -> list[Any]:
    if not raw:
        return []
    if name == "type":  # --type process_exec,process_exit
        return [t.strip() for v in raw for t in v.split(",") if t.strip()]
    return raw


def build_request(args: argparse.Namespace) -> pb.GetEventsRequest:
    req = pb.GetEventsRequest()
    allow = pb.Filter()
    for name, (field, _) in FILTER_FLAGS.items():
        getattr(allow, field).extend(_values(name, getattr(args, name)))
        deny_values = _values(name, getattr(args, f"deny_{name}"))
        if deny_values:
            getattr(req.deny.add(), field).extend(deny_values)
    if allow.ListFields():
        req.allow.append(allow)
    return req


_FIELD_TO_FLAG = {field: name for name, (field, _) in FILTER_FLAGS.items()}
_FIELD_PATH = re.compile(r"^(allow|deny)\[\d+\]\.(\w+)\[\d+\]")


def flag_of(field_path: str) -> str:
    """The flag a request field path came from: deny[1].binary_regex[0] -> --deny-binary."""
    m = _FIELD_PATH.match(field_path)
    if m is None or m[2] not in _FIELD_TO_FLAG:
        return field_path
    prefix = "--deny-" if m[1] == "deny" else "--"
    return prefix + _FIELD_TO_FLAG[m[2]]


# -- sources --------------------------------------------------------------------


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def channel(args: argparse.Namespace) -> grpc.Channel:
    addr: str = args.address
    if addr.startswith("unix:"):
        if args.tls_ca or args.tls_cert or args.tls_key:
            raise UsageError("TLS flags apply to HOST:PORT addresses, not unix sockets")
        return grpc.insecure_channel(addr)
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    creds = grpc.ssl_channel_credentials(
        root_certificates=_read(args.tls_ca) if args.tls_ca else None,
        private_key=_read(args.tls_key) if args.tls_key else None,
        certificate_chain=_read(args.tls_cert) if args.tls_cert else None,
    )
    options = []
    if args.tls_server_name:
        options.append(("grpc.ssl_target_name_override", args.tls_server_name))
    return grpc.secure_channel(addr, creds, options=options)


def apply_policies(
    args: argparse.Namespace, docs: list[tuple[str, str]], clear: bool = False
) -> list[str]:
    """Replace the daemon's policy set through the API (ApplyPolicies); its warnings.
    `clear` (and no docs): remove every policy.

    Refused: the daemon refused it (its reason; the previous set stays).
    ConnectionError: the daemon was not reached.
    """
    req = pb.ApplyPoliciesRequest(
        documents=[pb.PolicyDocument(name=name, yaml=text) for name, text in docs], clear=clear
    )
    with channel(args) as ch:
        try:
            resp = pb_grpc.TracerServiceStub(ch).ApplyPolicies(req, timeout=60)
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details()
            if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED):
                raise Refused(details or code.name) from None
            raise ConnectionError(
                f"cannot reach the daemon at {args.address}: {code.name}: {details}"
            ) from None
    return list(resp.warnings)


def from_daemon(args: argparse.Namespace, req: pb.GetEventsRequest) -> Iterator[dict[str, Any]]:
    with channel(args) as ch:
        stub = pb_grpc.TracerServiceStub(ch)
        for resp in stub.GetEvents(req, wait_for_ready=False):
            for ev in resp.events:
                yield MessageToDict(ev, **JSON_OPTIONS)  # type: ignore[arg-type]


class BadLines:
    def __init__(self) -> None:
        self.count = 0


def from_file(
    lines: Iterable[bytes],
    name: str,
    event_filter: EventFilter,
    bad: BadLines,
) -> Iterator[dict[str, Any]]:
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            ev = orjson.loads(line)
            if not isinstance(ev, dict) or not isinstance(ev.get("type"), str):
                raise ValueError("no event type")
            if (problem := schema_problem(ev)) is not None:
                raise ValueError(problem)
            if ev["type"] != "lost" and not event_filter.matches(facts_of_dict(ev)):
                continue
        except ValueError as exc:
            bad.count += 1
            print(f"tracer: {name}:{n}: skipped, not a JSON event ({exc})", file=sys.stderr)
            continue
        yield ev


def _lines_of(f: IO[bytes], name: str, bad: BadLines) -> Iterable[bytes]:
    """A file's lines; an event-log segment's (.zst) decompressed first."""
    seg = Segment(Path(name))
    if not seg.compressed:
        return f
    problems = Problems()
    data = read_bytes(seg, problems)  # a damaged end: what precedes it, and a warning
    bad.count += problems.count
    return data.splitlines()


# -- the command ----------------------------------------------------------------


def _use_color(choice: str, out: IO[str]) -> bool:
    return choice == "always" or (choice == "auto" and out.isatty())


def output_problem(args: argparse.Namespace) -> str | None:
    """An output option the chosen -o does not take, named; None if all fit."""
    if args.output in ("ocsf", "ecs") and args.color != "auto":
        return f"--color applies to -o compact, not to -o {args.output}"
    return None


def print_events(events: Iterable[dict[str, Any]], args: argparse.Namespace) -> None:
    out = sys.stdout
    if args.count is not None:
        events = itertools.islice(events, args.count)
    if args.output in ("ocsf", "ecs"):
        # The stream (the API's tracer.v1, or the log) converted here.
        mapper = mapper_for(args.output, __version__)
        buf = out.buffer
        for ev in events:
            try:
                converted = convert(mapper, ev)
            except ValueError as exc:
                print(
                    f"tracer: skipped an event -o {args.output} cannot hold: {exc}", file=sys.stderr
                )
                continue
            buf.write(terminal.json_line(converted))
            buf.flush()
        return
    if args.output == "json":
        buf = out.buffer
        for ev in events:
            buf.write(terminal.json_line(ev))
            buf.flush()
        return
    color = _use_color(args.color, out)
    for ev in events:
        out.write(terminal.compact(ev, color) + "\n")
        out.flush()


def run(args: argparse.Namespace) -> int:
    if (problem := output_problem(args)) is not None:
        print(f"tracer: error: {problem}", file=sys.stderr)
        return exitcodes.USAGE
    req = build_request(args)
    try:
        # Checked here too, so a bad flag is named as a flag, before any connection.
        event_filter = EventFilter.from_request(req)
    except FilterError as exc:
        print(f"tracer: error: {flag_of(exc.field)}: {exc.problem}", file=sys.stderr)
        return exitcodes.USAGE
    # Strings are escaped before printing; this only keeps an odd terminal
    # encoding from turning a printable character into a crash.
    sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    try:
        if args.from_file is not None:
            bad = BadLines()
            if args.from_file == "-":
                print_events(from_file(sys.stdin.buffer, "stdin", event_filter, bad), args)
            else:
                try:
                    f = open(args.from_file, "rb")
                except OSError as exc:
                    print(
                        f"tracer: error: cannot read {args.from_file}: {exc.strerror}",
                        file=sys.stderr,
                    )
                    return exitcodes.FAILURE
                with f:
                    lines = _lines_of(f, args.from_file, bad)
                    print_events(from_file(lines, args.from_file, event_filter, bad), args)
            return exitcodes.FAILURE if bad.count else 0
        print_events(from_daemon(args, req), args)
        return 0
    except UsageError as exc:
        print(f"tracer: error: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    except grpc.RpcError as exc:
        code = exc.code() if isinstance(exc, grpc.Call) else None
        details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            print(f"tracer: error: the daemon refused the filters: {details}", file=sys.stderr)
            return exitcodes.USAGE
        print(
            f"tracer: error: {args.address}: {code.name if code else 'error'}: {details}",
            file=sys.stderr,
        )
        return exitcodes.FAILURE
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # The reader went away (`| head`): not an error. Point stdout at
        # /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
