"""The daemon's settings: one Config whose fields carry their defaults, flags and choices.

`tracer run`'s flags are built from these fields (add_arguments), so a
default or a set of choices is written once; the export settings it
composes (the event log, the gRPC API) live beside what they configure
(export/config.py) and are read the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from export.config import QUEUE_BYTES, EventLogConfig, GrpcConfig, TlsFiles
from export.jsonl import ANCESTORS
from export.siem import FORMATS
from tracer import control
from tracer.core.loader import (
    RINGBUF_DEFAULT,
    SELECTED_RINGBUF_DEFAULT,
    THROTTLE_KEYS_DEFAULT,
    UID_BUDGET_DEFAULT,
    WORKLOAD_CGROUPS_DEFAULT,
    ConfigError,
    check_ringbuf_size,
    check_throttle_keys,
    check_workload_cgroups,
)
from tracer.core.options import Option, option, option_of, parse_duration, parse_size
from tracer.core.probe import CAPTURE_MODES

DEFAULT_BPF_DIR = Path(__file__).resolve().parent.parent / "build" / "bpf"
PROCESS_HOOKS = ("auto", "tp_btf", "raw_tp")


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 as [::1]:PORT) into (host, port); ValueError naming the problem."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"--metrics-listen wants HOST:PORT (e.g. 0.0.0.0:9464), not {text!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _listen(text: str) -> str:
    parse_listen(text)
    return text


def _bpf_dir() -> Path:
    return Path(os.environ.get("TRACER_BPF_DIR", DEFAULT_BPF_DIR))


def _node() -> str:
    return os.environ.get("NODE_NAME") or socket.gethostname()


@dataclass(slots=True)
class Config:
    bpf_dir: Path = field(default_factory=_bpf_dir)  # --bpf-dir, global: probe reads it too
    node: str = option(
        default_factory=_node,
        flag="--node-name",
        help="node name in events (default: $NODE_NAME, else the hostname)",
    )
    ringbuf_size: int = option(
        RINGBUF_DEFAULT,
        flag="--ringbuf-size",
        parse=parse_size,
        help="bytes of the BPF ring for exec/fork/exit records, a power of two",
    )
    selected_ringbuf_size: int = option(
        SELECTED_RINGBUF_DEFAULT,
        flag="--selected-ringbuf-size",
        parse=parse_size,
        help="bytes of the BPF ring for what policies select and enforce, a power of two",
    )
    uid_budget: int = option(
        UID_BUDGET_DEFAULT,
        flag="--uid-budget",
        parse=int,
        help="records one uid may add per second to a ring while that ring is behind (bulk "
        "records, past an eighth full; in the selected ring, posted records past half full, "
        "never a sigkill or deny); the rest are dropped and counted as lost (0: no limit)",
    )
    throttle_keys: int = option(
        THROTTLE_KEYS_DEFAULT,
        flag="--throttle-keys",
        parse=int,
        help="keys the kernel's throttle table holds (rule, process or cgroup, and for "
        "aggregate a path or peer); the least recently used go first",
    )
    workload_cgroups: int = option(
        WORKLOAD_CGROUPS_DEFAULT,
        flag="--workload-cgroups",
        parse=int,
        help="cgroups the kernel's map of workload verdicts holds (policies' namespace, "
        "pod_labels, container, in_container); the processes of a cgroup that does not fit "
        "match no such rule (counted)",
    )
    process_hooks: str = option(
        "auto",
        flag="--process-hooks",
        choices=PROCESS_HOOKS,
        help="force the exec/fork/exit program variant (auto: the probe's choice)",
    )
    export_file: Path | None = option(  # None: stdout
        None,
        flag="--export-file",
        parse=Path,
        help="write JSON lines here (rotated) instead of stdout",
    )
    # Of the JSON output (stdout or export_file); the event log is always
    # native: `tracer tree` reads it. No argparse choices: a bad one is one
    # error line (validate).
    format: str = option(
        "native",
        flag="--format",
        metavar="FORMAT",
        help="schema of the JSON lines (stdout or --export-file): native (tracer.v1), "
        "ocsf (OCSF 1.3.0) or ecs (Elastic Common Schema); the event log stays native",
    )
    export_max_bytes: int = option(
        100 << 20,
        flag="--export-max-size",
        parse=parse_size,
        help="rotate the export file past this size",
    )
    export_backups: int = option(
        5, flag="--export-backups", parse=int, help="rotated export files to keep"
    )
    queue_capacity: int = option(
        65536,
        flag="--queue-size",
        parse=int,
        help="events an output may fall behind before it loses the oldest",
    )
    queue_max_bytes: int = option(  # of lines, per output that writes them
        QUEUE_BYTES,
        flag="--queue-max-bytes",
        parse=parse_size,
        help="bytes of lines an output may fall behind before it loses the oldest",
    )
    cache_max: int = option(
        65536,
        flag="--cache-size",
        parse=int,
        help="process cache entries before exited ones are evicted early",
    )
    exit_grace_s: float = option(
        30.0,
        flag="--exit-grace",
        parse=parse_duration,
        help="how long an exited process stays in the cache for late events",
    )
    ancestor_depth: int = option(
        64, flag="--ancestor-depth", parse=int, help="most ancestors listed in an event"
    )
    ancestors: str = option(
        "full",
        flag="--ancestors",
        choices=ANCESTORS,
        help="ancestors beyond the parent in JSON lines and gRPC events: full records, "
        "brief (exec_id, pid and binary, under `lineage`) or none; the event log keeps them "
        "full for `tracer tree`",
    )
    lost_interval_s: float = 1.0
    # The longest a record waits in the ring buffer before the reader takes
    # it (records do not wake the reader one by one: common.bpf.h tr_wakeup).
    poll_ms: int = 10
    grpc: GrpcConfig | None = field(default_factory=GrpcConfig)  # None: no API
    capture_mode: str = option(
        "auto",
        flag="--capture-mode",
        choices=("auto", *CAPTURE_MODES),
        help="force the file/connect hook variant (auto: the best this kernel has)",
    )
    exclude_capture_modes: tuple[str, ...] = option(  # never chosen by auto
        (),
        flag="--exclude-capture-mode",
        choices=CAPTURE_MODES,
        metavar="MODE",
        repeat=True,
        help="never choose this file/connect variant (repeatable), e.g. to avoid a hook "
        "a kernel mishandles; the best of the rest is used",
    )
    policy_paths: tuple[Path, ...] = option(  # files or directories
        (),
        flag="--policy",
        parse=Path,
        repeat=True,
        help="policy file or directory of *.yaml (repeatable); re-read when the files "
        "change, and on SIGHUP",
    )
    control_socket: Path = option(
        control.DEFAULT_SOCKET, flag="--control-socket", parse=Path, help="root-only control socket"
    )
    kubeconfig: Path | None = option(  # None: in-cluster config if in a pod, else no pod metadata
        None,
        flag="--kubeconfig",
        parse=Path,
        help="pod metadata from the cluster this kubeconfig names "
        "(default: the in-cluster config when in a pod, else none)",
    )
    event_log: EventLogConfig | None = field(default_factory=EventLogConfig)  # None: no log
    metrics_listen: str | None = option(  # None: off
        None,
        flag="--metrics-listen",
        parse=_listen,
        metavar="HOST:PORT",
        help="serve Prometheus /metrics, /healthz and /readyz over HTTP here (default: off)",
    )
    redact: bool = True  # --no-redact
    redact_rules: Path | None = option(  # None: the default rules (enrich/redact.py)
        None,
        flag="--redact-rules",
        parse=Path,
        help="mask secrets in command lines with these RE2 rules (YAML) instead of the "
        "default set",
    )

    def validate(self) -> None:
        check_ringbuf_size(self.ringbuf_size)
        check_ringbuf_size(self.selected_ringbuf_size, "--selected-ringbuf-size")
        check_throttle_keys(self.throttle_keys)
        check_workload_cgroups(self.workload_cgroups)
        if not 0 <= self.uid_budget < 1 << 32:
            raise ConfigError(
                f"--uid-budget must be between 0 (no limit) and 2**32-1, not {self.uid_budget}"
            )
        if self.format not in FORMATS:
            raise ConfigError(
                f"--format: unknown format {self.format!r} (choose {', '.join(FORMATS)})"
            )
        for name in ("queue_capacity", "queue_max_bytes", "cache_max", "export_max_bytes"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name.replace('_', '-')} must be positive")
        if self.ancestor_depth < 0:
            raise ConfigError("ancestor-depth must be zero or more")
        if self.capture_mode in self.exclude_capture_modes:
            raise ConfigError(
                f"--capture-mode {self.capture_mode} is also in --exclude-capture-mode"
            )
        for p in self.policy_paths:
            if not p.exists():
                raise ConfigError(f"policy path {p} does not exist")
        if self.redact_rules is not None and not self.redact:
            raise ConfigError("--redact-rules and --no-redact are alternatives")
        if self.kubeconfig is not None and not self.kubeconfig.is_file():
            raise ConfigError(f"--kubeconfig {self.kubeconfig} is not a file")
        if self.metrics_listen is not None:
            try:
                parse_listen(self.metrics_listen)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        for problem in [
            *(self.event_log.problems() if self.event_log else []),
            *(self.grpc.problems() if self.grpc else []),
        ]:
            raise ConfigError(problem)


# -- the command line -----------------------------------------------------------


_METAVARS: dict[Any, str] = {
    parse_size: "SIZE",
    parse_duration: "DURATION",
    Path: "PATH",
    int: "N",
}


def _argument(group: Any, dest: str, opt: Option, default: object) -> None:
    kwargs: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS}
    kwargs["help"] = opt.shown(default)
    if opt.parse is not None:
        kwargs["type"] = _argparse_type(opt.parse)
    if opt.choices:
        kwargs["choices"] = opt.choices
    if not opt.choices or opt.metavar:
        kwargs["metavar"] = opt.metavar or _METAVARS.get(opt.parse)
    if opt.repeat:
        kwargs["action"] = "append"
    group.add_argument(opt.flag, **kwargs)


def _argparse_type(parse: Any) -> Any:
    """argparse shows a ValueError's message only for its own types: say it ourselves."""
    if parse in (int, float, Path):
        return parse

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def _add_fields(group: Any, cls: type, prefix: str) -> None:
    defaults = cls()
    for f in dataclasses.fields(cls):
        opt = option_of(f)
        if opt is not None:
            _argument(group, prefix + f.name, opt, getattr(defaults, f.name))


def add_arguments(run: argparse.ArgumentParser) -> None:
    """`tracer run`'s flags, from the fields of Config and of what it composes."""
    _add_fields(run, Config, "")
    api = run.add_argument_group("gRPC API")
    _add_fields(api, GrpcConfig, "grpc_")
    api.add_argument(
        "--no-grpc-socket", action="store_true", help="no unix socket (needs --grpc-listen)"
    )
    api.add_argument("--no-grpc", action="store_true", help="no gRPC API at all")
    api.add_argument("--tls-cert", type=Path, help="server certificate (PEM) for --grpc-listen")
    api.add_argument("--tls-key", type=Path, help="key of --tls-cert (PEM)")
    api.add_argument(
        "--tls-client-ca",
        type=Path,
        help="accept only TCP clients with a certificate this CA signed (mTLS); "
        "--grpc-listen needs it unless --grpc-insecure-no-client-auth",
    )
    api.add_argument(
        "--grpc-insecure-no-client-auth",
        action="store_true",
        help="serve TCP to clients without a certificate: anyone who reaches the port "
        "reads every event; read-only",
    )
    run.add_argument(
        "--no-redact",
        action="store_true",
        help="keep secrets in command lines (passwords, tokens) as they are",
    )
    elog = run.add_argument_group("event log (tracer tree, tracer replay)")
    _add_fields(elog, EventLogConfig, "event_log_")
    elog.add_argument("--no-event-log", action="store_true", help="record no event log")


def _given(args: argparse.Namespace, cls: type, prefix: str) -> dict[str, Any]:
    """The fields of cls whose flag was given, by field name."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if option_of(f) is not None and hasattr(args, prefix + f.name):
            value = getattr(args, prefix + f.name)
            out[f.name] = tuple(value) if isinstance(value, list) else value
    return out


def from_args(args: argparse.Namespace) -> Config:
    """The Config `tracer run` was given: the flags given, each field's default for the rest."""
    grpc: GrpcConfig | None = None
    if not args.no_grpc:
        grpc = GrpcConfig(**_given(args, GrpcConfig, "grpc_"))
        if args.no_grpc_socket:
            grpc.socket = None
        grpc.no_client_auth = args.grpc_insecure_no_client_auth
        if args.tls_cert is not None or args.tls_key is not None or args.tls_client_ca:
            if args.tls_cert is None or args.tls_key is None:
                raise ConfigError("--tls-cert and --tls-key go together")
            grpc.tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca)
    event_log = None
    if not args.no_event_log:
        event_log = EventLogConfig(**_given(args, EventLogConfig, "event_log_"))
    config = Config(
        grpc=grpc, event_log=event_log, redact=not args.no_redact, **_given(args, Config, "")
    )
    if getattr(args, "bpf_dir", None) is not None:
        config.bpf_dir = args.bpf_dir
    return config
