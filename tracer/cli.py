"""`tracer` command line: run the daemon, probe the kernel, watch events, read the log.

The parser is built from light modules only; each command's code (the
daemon, the gRPC client, the log readers) is imported when it runs, so
`tracer tree` does not pay for the daemon and `--help` for nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from tracer import __version__, arguments, control, exitcodes, log
from tracer.config import Config
from tracer.config import add_arguments as add_run_arguments
from tracer.core.options import field_default

if TYPE_CHECKING:
    from tracer.core.probe import ProbeReport

_EVENTS_DESCRIPTION = """\
The daemon's event stream, or a JSON lines log, for a person. The filter
flags are evaluated by the daemon (or here, with --from): the positive
flags form one filter that must match, each --deny-* flag excludes what
it matches."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tracer", description=__doc__)
    p.add_argument("--version", action="version", version=f"tracer {__version__}")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--bpf-dir",
        type=Path,
        default=field_default(Config, "bpf_dir"),
        help="where the compiled *.bpf.o objects are (default: $TRACER_BPF_DIR, else %(default)s)",
    )
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon: events as JSON lines on stdout or to a file")
    add_run_arguments(run)

    pol = sub.add_parser("policy", help="list, check or apply policies")
    pol_sub = pol.add_subparsers(dest="policy_command", required=True)
    pl = pol_sub.add_parser("list", help="the running daemon's rules and how often each matched")
    pl.add_argument("--control-socket", type=Path, default=control.DEFAULT_SOCKET)
    pl.add_argument("--json", action="store_true")
    pa = pol_sub.add_parser(
        "apply",
        help="replace the running daemon's policies with FILEs (or none: --clear)",
        description="Locally through the daemon's control socket; with --address, "
        "through its API (ApplyPolicies), which over TCP needs a client certificate "
        "the daemon checks (mTLS) and names with --grpc-admin.",
    )
    pa.add_argument("files", type=Path, nargs="*")
    pa.add_argument("--clear", action="store_true", help="remove every policy (no FILEs)")
    pa.add_argument("--control-socket", type=Path, default=control.DEFAULT_SOCKET)
    pa.add_argument(
        "--address", help="apply through the gRPC API at unix:///path or HOST:PORT (TLS)"
    )
    arguments.add_tls_arguments(pa)
    pc = pol_sub.add_parser("check", help="validate policy files without a daemon")
    pc.add_argument("files", type=Path, nargs="+")
    pt = pol_sub.add_parser(
        "test",
        help="what FILEs would have posted, ignored or killed in a recorded event log",
        description="Replays an event log through the policies of FILEs, evaluated as the "
        "kernel evaluates them, and prints per rule how many events it would have selected "
        "and a few of them. A log holds every exec and exit, but only the opens and "
        "connects the recording daemon's own policies selected.",
        epilog=exitcodes.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pt.add_argument("files", type=Path, nargs="+")
    arguments.add_log_source(pt)
    pt.add_argument("--json", action="store_true", help="machine-readable output")
    pt.add_argument(
        "--examples", type=int, default=3, metavar="N", help="events shown per rule (default: 3)"
    )

    pr = sub.add_parser(
        "probe", help="show what this kernel supports and the mode the daemon picks"
    )
    pr.add_argument("--json", action="store_true", help="machine-readable output")

    arguments.add_events_parser(sub, _EVENTS_DESCRIPTION)
    arguments.add_log_parsers(sub, exitcodes.__doc__ or "")
    return p


def _print_probe(report: ProbeReport, as_json: bool) -> None:
    from tracer.core.probe import CAPTURE_MODES

    if as_json:
        data = asdict(report)
        data["capture_mode"] = report.capture_mode
        data["capture_modes"] = report.capture_modes()
        data["process_hooks"] = report.process_hooks
        print(json.dumps(data, indent=2))
        return
    print(f"kernel          {report.kernel}")
    print(f"BTF             {'yes' if report.btf else 'no'}")
    print(f"libbpf          {report.libbpf}")
    print(f"BPF LSM enabled {'yes' if report.bpf_lsm_enabled else 'no'}")
    print()
    print(f"{'program type':<12} {'loads':<6} {'attaches':<9} note")
    for name, t in report.types.items():
        print(
            f"{name:<12} {'yes' if t.loads else 'no':<6} {'yes' if t.attaches else 'no':<9} "
            f"{t.error or ''}"
        )
    print()
    print(f"process hooks   {report.process_hooks}")
    order = " > ".join(CAPTURE_MODES)
    print(f"capture mode    {report.capture_mode}  (file/connect hooks, best first: {order})")
    print(f"capture modes   {', '.join(report.capture_modes()) or 'none'}  (usable here)")


def _probe(args: argparse.Namespace) -> int:
    from tracer.core.probe import probe
    from tracer.core.system import ensure_mounts, require_root

    require_root()
    ensure_mounts()  # what the daemon mounts, so the probe sees what it will
    _print_probe(probe(args.bpf_dir), args.json)
    return exitcodes.OK


def _apply_local(sock: Path, docs: list[tuple[str, str]], clear: bool) -> list[str]:
    """Through the root-only control socket; client.Refused when refused."""
    from tracer import client

    reply = control.request(
        sock, {"op": "policy_apply", "documents": [list(d) for d in docs], "clear": clear}
    )
    if not reply.get("ok"):
        raise client.Refused(str(reply.get("error")))
    return [str(w) for w in reply.get("warnings", [])]


def _policy(args: argparse.Namespace) -> int:
    from policy import compile_policies, parse_files, read_documents

    if args.policy_command == "check":
        ps = parse_files(args.files)
        compiled = compile_policies(ps, lsm_active=True)
        counts = {k.label: len(t.rules) for k, t in compiled.kinds.items()}
        print(f"ok: {len(ps.policies)} policies, rules per event: {counts}")
        return exitcodes.OK
    if args.policy_command == "apply":
        from tracer import client

        if args.clear == bool(args.files):
            print("tracer: error: give policy FILEs or --clear, not both", file=sys.stderr)
            return exitcodes.USAGE
        docs = read_documents(args.files)
        try:
            if args.address is not None:
                warnings = client.apply_policies(args, docs, clear=args.clear)
            else:
                warnings = _apply_local(args.control_socket, docs, clear=args.clear)
        except client.UsageError as exc:
            print(f"tracer: error: {exc}", file=sys.stderr)
            return exitcodes.USAGE
        except client.Refused as exc:
            print(
                f"tracer: policy refused, the previous policies stay in force: {exc}",
                file=sys.stderr,
            )
            return exitcodes.FAILURE
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        print("removed every policy" if args.clear else f"applied {len(docs)} file(s)")
        return exitcodes.OK
    reply = control.request(args.control_socket, {"op": "policy_list"})
    if not reply.get("ok"):
        print(f"tracer: error: {reply.get('error')}", file=sys.stderr)
        return exitcodes.FAILURE
    if args.json:
        print(json.dumps(reply["rules"], indent=2))
        return exitcodes.OK
    print(
        f"{'policy':<28} {'rule':>4} {'event':<10} {'action':<8} {'mode':<8} {'severity':<9}"
        f" {'hits':>10} {'suppressed':>10}  source"
    )
    for r in reply["rules"]:
        print(
            f"{r['policy']:<28} {r['rule']:>4} {r['event']:<10} {r['action']:<8} "
            f"{r.get('mode', ''):<8} {r.get('severity', ''):<9} {r['hits']:>10} "
            f"{r.get('suppressed', 0):>10}  {r['source']}"
        )
    return exitcodes.OK


def _run(args: argparse.Namespace) -> int:
    from tracer import config
    from tracer.daemon import Daemon

    return Daemon(config.from_args(args)).run()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    log.configure(args.log_level)
    if args.command == "events":
        from tracer import client

        return client.run(args)
    if args.command in ("tree", "replay") or (
        args.command == "policy" and args.policy_command == "test"
    ):
        from tracer import forensics_cli

        return forensics_cli.run(args)
    # Errors of the commands below are one line on stderr; imported here,
    # with the command, so that the light commands above do not load them.
    from policy import PolicyError
    from tracer.core import bpf
    from tracer.core.loader import ConfigError
    from tracer.core.system import PreflightError

    handlers = {"probe": _probe, "policy": _policy, "run": _run}
    try:
        return handlers[args.command](args)
    except (ConfigError, PolicyError) as exc:
        print(f"tracer: error: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    except control.ControlError as exc:
        print(f"tracer: error: {exc}", file=sys.stderr)
        return exitcodes.FAILURE
    except (PreflightError, bpf.LibbpfError, FileNotFoundError, RuntimeError, OSError) as exc:
        print(f"tracer: error: {exc}", file=sys.stderr)
        return exitcodes.FAILURE
