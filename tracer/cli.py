"""`tracer` command line: run the daemon, probe the kernel, watch events."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from export import QUEUE_BYTES
from export.eventlog import DEFAULT_DIR as DEFAULT_EVENT_LOG
from export.eventlog import EventLogConfig
from export.grpc_server import DEFAULT_SOCKET, GrpcConfig, TlsFiles
from policy import PolicyError, compile_policies, parse_files, read_documents
from tracer import __version__, client, control, forensics_cli, log
from tracer.core import bpf
from tracer.core.loader import RINGBUF_DEFAULT, ConfigError
from tracer.core.probe import CAPTURE_MODES, ProbeReport, probe
from tracer.core.system import PreflightError, ensure_mounts, require_root
from tracer.daemon import DEFAULT_BPF_DIR, Config, Daemon

EXIT_USAGE = 2
EXIT_FAILURE = 1


def _size(text: str) -> int:
    """Bytes, with an optional K/M/G suffix (powers of 1024)."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    mult = 1
    if t and t[-1] in units:
        mult, t = units[t[-1]], t[:-1]
    try:
        return int(t) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 16777216 or 16M)") from None


def _duration(text: str) -> float:
    """Seconds, with an optional ms/s/m/h/d suffix."""
    t = text.strip().lower()
    for suffix, mult in (("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600), ("d", 86400)):
        if t.endswith(suffix):
            t, unit = t.removesuffix(suffix), mult
            break
    else:
        unit = 1
    try:
        return float(t) * unit
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 1s, 500ms, 7d)") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tracer", description=__doc__)
    p.add_argument("--version", action="version", version=f"tracer {__version__}")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--bpf-dir",
        type=Path,
        default=Path(os.environ.get("TRACER_BPF_DIR", DEFAULT_BPF_DIR)),
        help="where the compiled *.bpf.o objects are (default: %(default)s)",
    )
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon: events as JSON lines on stdout or to a file")
    run.add_argument(
        "--node-name",
        default=os.environ.get("NODE_NAME") or None,
        help="node name in events (default: $NODE_NAME, else the hostname)",
    )
    run.add_argument(
        "--ringbuf-size",
        type=_size,
        default=RINGBUF_DEFAULT,
        help=f"BPF ring buffer bytes, a power of two (default: {RINGBUF_DEFAULT >> 20}M)",
    )
    run.add_argument(
        "--process-hooks",
        default="auto",
        choices=["auto", "tp_btf", "raw_tp"],
        help="force the exec/fork/exit program variant (default: probe)",
    )
    run.add_argument(
        "--export-file", type=Path, help="write JSON lines here (rotated) instead of stdout"
    )
    run.add_argument(
        "--export-max-size",
        type=_size,
        default=100 << 20,
        help="rotate the export file past this size (default: 100M)",
    )
    run.add_argument(
        "--export-backups", type=int, default=5, help="rotated export files to keep (default: 5)"
    )
    run.add_argument(
        "--queue-size",
        type=int,
        default=65536,
        help="events an output may fall behind before it loses the oldest",
    )
    run.add_argument(
        "--queue-max-bytes",
        type=_size,
        default=QUEUE_BYTES,
        help="bytes of lines an output may fall behind before it loses the oldest (default: 256M)",
    )
    run.add_argument(
        "--cache-size",
        type=int,
        default=65536,
        help="process cache entries before exited ones are evicted early",
    )
    run.add_argument(
        "--exit-grace",
        type=float,
        default=30.0,
        help="seconds an exited process stays in the cache for late events",
    )
    run.add_argument(
        "--ancestor-depth",
        type=int,
        default=64,
        help="most ancestors listed in an event (beyond the parent)",
    )
    run.add_argument(
        "--capture-mode",
        default="auto",
        choices=["auto", "lsm", "fentry", "kprobe", "tracepoint"],
        help="force the file/connect hook variant (default: the best this kernel has)",
    )
    run.add_argument(
        "--exclude-capture-mode",
        action="append",
        default=[],
        choices=["lsm", "fentry", "kprobe", "tracepoint"],
        metavar="MODE",
        help="never choose this file/connect variant (repeatable), e.g. to avoid a hook "
        "a kernel mishandles; the best of the rest is used",
    )
    run.add_argument(
        "--policy",
        type=Path,
        action="append",
        default=[],
        dest="policies",
        help="policy file or directory of *.yaml (repeatable); SIGHUP re-reads them",
    )
    run.add_argument(
        "--control-socket",
        type=Path,
        default=control.DEFAULT_SOCKET,
        help="root-only control socket (default: %(default)s)",
    )
    run.add_argument(
        "--kubeconfig",
        type=Path,
        help="pod metadata from the cluster this kubeconfig names "
        "(default: the in-cluster config when in a pod, else none)",
    )

    pol = sub.add_parser("policy", help="list, check or apply policies")
    pol_sub = pol.add_subparsers(dest="policy_command", required=True)
    pl = pol_sub.add_parser("list", help="the running daemon's rules and how often each matched")
    pl.add_argument("--control-socket", type=Path, default=control.DEFAULT_SOCKET)
    pl.add_argument("--json", action="store_true")
    pa = pol_sub.add_parser(
        "apply",
        help="replace the running daemon's policies with FILEs",
        description="Locally through the daemon's control socket; with --address, "
        "through its API (ApplyPolicies), which over TCP needs a client certificate "
        "the daemon checks (mTLS).",
    )
    pa.add_argument("files", type=Path, nargs="+")
    pa.add_argument("--control-socket", type=Path, default=control.DEFAULT_SOCKET)
    pa.add_argument(
        "--address", help="apply through the gRPC API at unix:///path or HOST:PORT (TLS)"
    )
    client.add_tls_arguments(pa)
    pc = pol_sub.add_parser("check", help="validate policy files without a daemon")
    pc.add_argument("files", type=Path, nargs="+")

    api = run.add_argument_group("gRPC API")
    api.add_argument(
        "--grpc-socket",
        type=Path,
        default=DEFAULT_SOCKET,
        help="unix socket of the API, mode 0600 (default: %(default)s)",
    )
    api.add_argument(
        "--no-grpc-socket", action="store_true", help="no unix socket (needs --grpc-listen)"
    )
    api.add_argument("--no-grpc", action="store_true", help="no gRPC API at all")
    api.add_argument("--grpc-listen", metavar="HOST:PORT", help="also serve TCP, with TLS")
    api.add_argument("--tls-cert", type=Path, help="server certificate (PEM) for --grpc-listen")
    api.add_argument("--tls-key", type=Path, help="key of --tls-cert (PEM)")
    api.add_argument(
        "--tls-client-ca",
        type=Path,
        help="accept only TCP clients with a certificate this CA signed (mTLS)",
    )
    api.add_argument(
        "--grpc-queue-size",
        type=int,
        default=16384,
        help="events a subscriber may fall behind before it loses the oldest (default: 16384)",
    )
    api.add_argument(
        "--grpc-max-subscribers",
        type=int,
        default=32,
        help="concurrent GetEvents streams (default: 32)",
    )

    elog = run.add_argument_group("event log (tracer tree, tracer replay)")
    elog.add_argument(
        "--event-log-dir",
        type=Path,
        default=DEFAULT_EVENT_LOG,
        help="record every event here (default: %(default)s)",
    )
    elog.add_argument("--no-event-log", action="store_true", help="record no event log")
    for flag, kind, default, text in (
        ("--event-log-max-size", _size, 1 << 30, "all segments, oldest deleted first (1G)"),
        ("--event-log-max-age", _duration, 7 * 86400.0, "delete closed segments older (7d)"),
        ("--event-log-segment-size", _size, 64 << 20, "close a segment past this size (64M)"),
        ("--event-log-flush-interval", _duration, 1.0, "the most a crash can lose (1s)"),
    ):
        elog.add_argument(flag, type=kind, default=default, help=text)

    pr = sub.add_parser(
        "probe", help="show what this kernel supports and the mode the daemon picks"
    )
    pr.add_argument("--json", action="store_true", help="machine-readable output")

    ev = sub.add_parser(
        "events",
        help="print the daemon's events (or a JSON lines log), filtered",
        description=client.__doc__,
    )
    client.add_arguments(ev)
    forensics_cli.add_parsers(sub)
    return p


def _grpc_config(args: argparse.Namespace) -> GrpcConfig | None:
    if args.no_grpc:
        return None
    tls = None
    if args.tls_cert is not None or args.tls_key is not None or args.tls_client_ca is not None:
        if args.tls_cert is None or args.tls_key is None:
            raise ConfigError("--tls-cert and --tls-key go together")
        tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca)
    return GrpcConfig(
        socket=None if args.no_grpc_socket else args.grpc_socket,
        listen=args.grpc_listen,
        tls=tls,
        queue_capacity=args.grpc_queue_size,
        max_subscribers=args.grpc_max_subscribers,
    )


def _print_probe(report: ProbeReport, as_json: bool) -> None:
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


def _apply_local(sock: Path, docs: list[tuple[str, str]]) -> list[str]:
    """Through the root-only control socket; client.Refused when refused."""
    reply = control.request(sock, {"op": "policy_apply", "documents": [list(d) for d in docs]})
    if not reply.get("ok"):
        raise client.Refused(str(reply.get("error")))
    return [str(w) for w in reply.get("warnings", [])]


def _policy_command(args: argparse.Namespace) -> int:
    if args.policy_command == "check":
        ps = parse_files(args.files)
        compiled = compile_policies(ps, lsm_active=True)
        counts = {k.label: len(t.rules) for k, t in compiled.kinds.items()}
        print(f"ok: {len(ps.policies)} policies, rules per event: {counts}")
        return 0
    if args.policy_command == "apply":
        docs = read_documents(args.files)
        try:
            if args.address is not None:
                warnings = client.apply_policies(args, docs)
            else:
                warnings = _apply_local(args.control_socket, docs)
        except client.UsageError as exc:
            print(f"tracer: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except client.Refused as exc:
            print(
                f"tracer: policy refused, the previous policies stay in force: {exc}",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        print(f"applied {len(docs)} file(s)")
        return 0
    reply = control.request(args.control_socket, {"op": "policy_list"})
    if not reply.get("ok"):
        print(f"tracer: error: {reply.get('error')}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(reply["rules"], indent=2))
        return 0
    print(f"{'policy':<28} {'rule':>4} {'event':<10} {'action':<8} {'hits':>10}  source")
    for r in reply["rules"]:
        print(
            f"{r['policy']:<28} {r['rule']:>4} {r['event']:<10} {r['action']:<8} "
            f"{r['hits']:>10}  {r['source']}"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    log.configure(args.log_level)
    if args.command == "events":
        return client.run(args)
    if args.command in forensics_cli.COMMANDS:
        return forensics_cli.run(args)
    try:
        if args.command == "probe":
            require_root()
            ensure_mounts()  # what the daemon mounts, so the probe sees what it will
            _print_probe(probe(args.bpf_dir), args.json)
            return 0
        if args.command == "policy":
            return _policy_command(args)
        config = Config(
            bpf_dir=args.bpf_dir,
            ringbuf_size=args.ringbuf_size,
            process_hooks=args.process_hooks,
            export_file=args.export_file,
            export_max_bytes=args.export_max_size,
            export_backups=args.export_backups,
            queue_capacity=args.queue_size,
            queue_max_bytes=args.queue_max_bytes,
            cache_max=args.cache_size,
            exit_grace_s=args.exit_grace,
            ancestor_depth=args.ancestor_depth,
            capture_mode=args.capture_mode,
            exclude_capture_modes=tuple(args.exclude_capture_mode),
            policy_paths=args.policies,
            control_socket=args.control_socket,
            kubeconfig=args.kubeconfig,
            grpc=_grpc_config(args),
            event_log=None
            if args.no_event_log
            else EventLogConfig(
                directory=args.event_log_dir,
                segment_bytes=args.event_log_segment_size,
                max_bytes=args.event_log_max_size,
                max_age_s=args.event_log_max_age,
                flush_interval_s=args.event_log_flush_interval,
            ),
        )
        if args.node_name:
            config.node = args.node_name
        return Daemon(config).run()
    except (ConfigError, PolicyError) as exc:
        print(f"tracer: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except control.ControlError as exc:
        print(f"tracer: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except (PreflightError, bpf.LibbpfError, FileNotFoundError, RuntimeError, OSError) as exc:
        print(f"tracer: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
