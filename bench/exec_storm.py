"""Exec storm: cost of the tracer on a fork+exec-heavy workload.

N times fork+exec of `/bin/true <marker>` (one child at a time), timed
without the daemon and with it (`tracer run --export-file` in a temp
dir), over several rounds with the order rotated each round. With the
daemon, after the workload, waits until the export file holds every exit
of the marker processes (or a timeout), reads the daemon's CPU time from
/proc/<pid>/stat, then stops it with SIGTERM and checks for loss.

Runs whose machine had other CPU activity above --max-noise cores (this
may be a shared machine) are repeated, up to --retries times, and shown.
A final "capacity" run stops the daemon (SIGSTOP) during the workload so
the records pile up in the ring buffer, then resumes it and times how fast
it works through the backlog (its throughput when busy, big batches).

Three extra arms (on by default; --arms to choose) split the overhead:
the same BPF programs loaded by bench/_bpf_only.py (through tracer.core.loader)
with nobody reading the ring buffer (bpf-none: kernel-side cost only), with
a consumer that polls like the daemon but discards records (bpf-discard:
adds the per-record wake-ups), and with a consumer that wakes on a 10 ms
timer and drains in batches (bpf-batch: what batching would leave). Where
the daemon also attaches file_open/connect programs (syscall
tracepoints), bpf-all attaches all of them with nobody reading.

    .venv/bin/python bench/exec_storm.py [--execs 20000] [--rounds 3] [--driver auto|bash|c]

Targets: wall(with)/wall(without) <= 1.10, exec events == execs, lost == 0.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    DaemonFailed,
    ExportTail,
    Reaper,
    TracerDaemon,
    add_quiet_arguments,
    fmt_stats,
    host_cpu,
    interrupts,
    print_header,
    run_bench,
    tmpdir,
    tracer_bpf_programs,
    wait_quiet,
)

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
TRUE = "/bin/true"
QUIET = {"max_cores": 0.1, "timeout": 900.0}  # set from --quiet-* in main()
ARMS = ("without", "bpf-none", "bpf-all", "bpf-discard", "bpf-batch", "daemon")


def pre_quiet() -> None:
    """Before starting a daemon/helper: a quiet machine with no tr_* programs of others,
    so that the tr_* programs counted after our start are ours."""
    if QUIET["max_cores"] > 0:
        wait_quiet(QUIET["max_cores"], timeout=QUIET["timeout"])


def own_programs() -> int:
    return tracer_bpf_programs() or 0



@dataclass
class WithDaemon:
    run: Run
    execs_seen: int
    exits_seen: int
    events_total: int
    lost_file: int
    lost_stopped: int
    stopped_found: bool
    rc: int | None
    drain_s: float  # workload end -> last marker exit in the file
    drained: bool
    cpu_s: float  # daemon utime+stime from workload start to drained
    cpu_user_s: float
    cpu_sys_s: float
    cpu_main_s: float  # main thread: ring buffer poll, decode, cache, offer
    cpu_other_s: float  # other threads: the file sink (serialize + write)
    events: int  # exec+exit events written from workload start to drained
    cpu_us_per_event: float
    events_per_s: float  # events written / (workload start -> drained)
    vm_hwm_kb: int
    vm_rss_kb: int
    stopped_events: dict[str, int] = field(default_factory=dict)
    cache: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def wall_s(self) -> float:
        return self.run.wall_s


@dataclass
class BpfOnly:
    mode: str
    run: Run
    cpu_s: float
    records: dict[str, int]
    programs: int

    @property
    def wall_s(self) -> float:
        return self.run.wall_s


@dataclass
class Capacity:
    run: Run  # the workload run while the daemon was stopped
    backlog_events: int
    seconds: float
    cpu_s: float
    events_per_s: float
    cpu_us_per_event: float
    lost: int
    complete: bool


def build_c(out_dir: Path) -> Path | None:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    exe = out_dir / "execloop"
    subprocess.run([cc, "-O2", "-o", str(exe), str(HERE / "execloop.c")], check=True)
    return exe


@dataclass
class Run:
    """One workload run: wall time, and who used the machine's CPU meanwhile."""

    wall_s: float
    workload_cpu_s: float  # the driver and all its children (rusage of reaped children)
    companion_cpu_s: float  # daemon / BPF-only helper during the workload
    host_busy_s: float  # whole machine, /proc/stat
    steal_s: float
    foreign_bpf: int = 0  # tr_* BPF programs loaded by someone else at start or end
    irqs: dict[str, int] = field(default_factory=dict)  # /proc/interrupts deltas, ctxt


    @property
    def other_cpu_s(self) -> float:
        """CPU used by anything else on the machine (noise): busy - workload - companion."""
        return self.host_busy_s - self.workload_cpu_s - self.companion_cpu_s

    @property
    def noise(self) -> float:
        """Average number of cores used by others during the run."""
        return self.other_cpu_s / self.wall_s

    def host(self) -> str:
        foreign = f", FOREIGN tr_* BPF programs {self.foreign_bpf}" if self.foreign_bpf else ""
        irqs = " ".join(f"{k} {v:,}" for k, v in self.irqs.items())
        return (f"[workload cpu {self.workload_cpu_s:.1f} s, other cpu on host "
                f"{self.other_cpu_s:.1f} s = {self.noise:.2f} cores, steal {self.steal_s:.1f}"
                f"{foreign}; {irqs}]")


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_workload(
    reaper: Reaper, driver: str, exe: Path | None, n: int, marker: str,
    companion_cpu: Callable[[], float] | None = None, own_bpf: int = 0,
) -> Run:
    """One run; own_bpf: tr_* programs our daemon/helper loaded (others are foreign)."""
    if driver == "bash":
        argv = ["bash", "-c", f"for i in $(seq {n}); do {TRUE} {marker}; done"]
    else:
        assert exe is not None
        argv = [str(exe), str(n), TRUE, marker]
    if QUIET["max_cores"] > 0:
        wait_quiet(QUIET["max_cores"], timeout=QUIET["timeout"], own_cpu=companion_cpu,
                   own_bpf=own_bpf)
    progs0 = tracer_bpf_programs()
    i0 = interrupts()
    c0 = companion_cpu() if companion_cpu else 0.0
    k0 = _children_cpu()
    b0, s0 = host_cpu()
    t0 = time.perf_counter()
    p = reaper.popen(argv, stdin=subprocess.DEVNULL)
    rc = p.wait()
    wall = time.perf_counter() - t0
    b1, s1 = host_cpu()
    k1 = _children_cpu()
    c1 = companion_cpu() if companion_cpu else 0.0
    i1 = interrupts()
    progs1 = tracer_bpf_programs()
    reaper.stop(p)
    if rc != 0:
        raise RuntimeError(f"workload {argv[:2]} exited {rc}")
    foreign = max((x or 0) - own_bpf for x in (progs0, progs1))
    irqs = {k: i1[k] - i0.get(k, 0) for k in i1}
    return Run(wall, k1 - k0, c1 - c0, b1 - b0, s1 - s0, max(foreign, 0), irqs)


def _cpu_split(before: dict[int, tuple[float, float]], after: dict[int, tuple[float, float]],
               main_tid: int) -> tuple[float, float, float, float]:
    user = sys_ = main = other = 0.0
    for tid, (u1, s1) in after.items():
        u0, s0 = before.get(tid, (0.0, 0.0))
        du, ds = u1 - u0, s1 - s0
        user += du
        sys_ += ds
        if tid == main_tid:
            main += du + ds
        else:
            other += du + ds
    return user, sys_, main, other


def _daemon_args(args: argparse.Namespace) -> list[str]:
    extra = ["--ringbuf-size", args.ringbuf_size]
    if args.process_hooks != "auto":
        extra += ["--process-hooks", args.process_hooks]
    return extra + args.daemon_args


class MarkerCounter:
    """Counts exec/exit events of `/bin/true <marker>` as the export file grows."""

    def __init__(self, export: Path, marker: str) -> None:
        self.tail = ExportTail(export)
        # args exactly [/bin/true, marker], as orjson writes them (no spaces): not the
        # driver's own exec, whose argv holds the marker too. Matched as bytes, unparsed,
        # so that counting 40,000 lines does not delay the drain measurement.
        self.tail.needle = b'"args":[' + orjson.dumps(TRUE) + b"," + orjson.dumps(marker) + b"]"
        self.last_exit_at = 0.0

    @property
    def seen(self) -> dict[str, int]:
        return {t: self.tail.needle_types[t] for t in ("process_exec", "process_exit")}

    def read(self) -> None:
        before = self.tail.needle_types["process_exit"]
        self.tail.read()
        if self.tail.needle_types["process_exit"] != before:
            self.last_exit_at = time.perf_counter()

    def events(self) -> int:
        return self.tail.types["process_exec"] + self.tail.types["process_exit"]

    def wait_exits(self, n: int, d: TracerDaemon, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.read()
            if self.seen["process_exit"] >= n:
                return True
            if not d.alive():
                return False
            time.sleep(0.02)
        return False


def run_with_daemon(
    reaper: Reaper, args: argparse.Namespace, driver: str, exe: Path | None, work: Path, tag: str
) -> WithDaemon:
    n = args.execs
    marker = f"storm-{uuid.uuid4().hex}"
    export = work / f"{tag}.jsonl"
    d = TracerDaemon(reaper, export, _daemon_args(args))
    pre_quiet()
    d.start()
    time.sleep(args.settle)
    own = own_programs()
    mc = MarkerCounter(export, marker)
    mc.read()  # whatever arrived before the workload
    events_before = mc.events()
    threads0 = d.thread_cpu()
    cpu0 = d.cpu_seconds()
    t0 = time.perf_counter()
    run = run_workload(reaper, driver, exe, n, marker, d.cpu_seconds, own)
    t_end = time.perf_counter()
    mc.last_exit_at = t_end
    ok = mc.wait_exits(n, d, args.drain_timeout)
    t_drained = mc.last_exit_at
    cpu1 = d.cpu_seconds()
    threads1 = d.thread_cpu()
    mem = d.mem_kb()
    events_in_round = mc.events() - events_before
    st = d.stop()
    mc.read()  # the final flush and the final `lost` report
    cpu = cpu1 - cpu0
    user, sys_, main, other = _cpu_split(threads0, threads1, d.pid)
    span = t_drained - t0
    warnings = d.log_lines("warning") + d.log_lines("error")
    return WithDaemon(
        run=run,
        execs_seen=mc.seen["process_exec"],
        exits_seen=mc.seen["process_exit"],
        events_total=mc.events(),
        lost_file=mc.tail.lost_total,
        lost_stopped=st.lost_total,
        stopped_found=st.found,
        rc=st.rc,
        drain_s=t_drained - t_end,
        drained=ok,
        cpu_s=cpu,
        cpu_user_s=user,
        cpu_sys_s=sys_,
        cpu_main_s=main,
        cpu_other_s=other,
        events=events_in_round,
        cpu_us_per_event=cpu / events_in_round * 1e6 if events_in_round else float("nan"),
        events_per_s=events_in_round / span if span > 0 else float("nan"),
        vm_hwm_kb=mem.get("VmHWM", 0),
        vm_rss_kb=mem.get("VmRSS", 0),
        stopped_events=st.events,
        cache=st.cache,
        warnings=warnings[:5],
    )


def run_bpf_only(
    reaper: Reaper, args: argparse.Namespace, mode: str, driver: str, exe: Path | None,
    work: Path, tag: str
) -> BpfOnly:
    out = work / f"{tag}.json"
    programs = "all" if mode == "all" else "process"
    drain = "none" if mode == "all" else mode
    argv = [PYTHON, str(HERE / "_bpf_only.py"), "--drain", drain, "--programs", programs,
            "--out", str(out), "--process-hooks", args.process_hooks]
    h = TracerDaemon(reaper, out, argv=argv)
    pre_quiet()
    h.start()
    time.sleep(args.settle)
    own = own_programs()
    cpu0 = h.cpu_seconds()
    run = run_workload(reaper, driver, exe, args.execs, f"storm-{uuid.uuid4().hex}",
                       h.cpu_seconds, own)
    time.sleep(0.2)  # let a discard consumer catch up
    cpu = h.cpu_seconds() - cpu0
    st = h.stop()
    if st.rc != 0:
        raise DaemonFailed(f"bpf-only helper exited {st.rc}: {h.lines[-5:]}")
    res = json.loads(out.read_text())
    return BpfOnly(mode, run, cpu, res["records"], len(res.get("programs", ())))


def run_capacity(
    reaper: Reaper, args: argparse.Namespace, driver: str, exe: Path | None, work: Path
) -> Capacity:
    """Backlog drain: records pile up while the daemon is stopped; time the catch-up."""
    n = args.execs
    marker = f"storm-{uuid.uuid4().hex}"
    export = work / "capacity.jsonl"
    d = TracerDaemon(reaper, export, _daemon_args(args))
    pre_quiet()
    d.start()
    time.sleep(args.settle)
    own = own_programs()
    mc = MarkerCounter(export, marker)
    mc.read()
    events_before = mc.events()
    os.kill(d.pid, signal.SIGSTOP)
    try:
        run = run_workload(reaper, driver, exe, n, marker, own_bpf=own)
        cpu0 = d.cpu_seconds()
        t0 = time.perf_counter()
    finally:
        os.kill(d.pid, signal.SIGCONT)
    ok = mc.wait_exits(n, d, args.drain_timeout)
    secs = mc.last_exit_at - t0
    cpu = d.cpu_seconds() - cpu0
    events = mc.events() - events_before
    st = d.stop()
    mc.read()
    return Capacity(
        run=run, backlog_events=events, seconds=secs, cpu_s=cpu,
        events_per_s=events / secs if secs > 0 else float("nan"),
        cpu_us_per_event=cpu / events * 1e6 if events else float("nan"),
        lost=mc.tail.lost_total + st.lost_total, complete=ok,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--execs", type=int, default=20000, help="fork+execs per run (default 20000)")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each arm (default 3)")
    ap.add_argument("--driver", choices=["auto", "bash", "c"], default="auto",
                    help="workload loop; auto: the faster one in a calibration run")
    ap.add_argument("--calibrate-execs", type=int, default=2000)
    ap.add_argument("--daemon-args", default="", type=shlex.split,
                    help='more `tracer run` options, e.g. --daemon-args="--no-grpc"')
    ap.add_argument("--ringbuf-size", default="4M", help="daemon --ringbuf-size (default 4M)")
    ap.add_argument("--process-hooks", default="auto", choices=["auto", "tp_btf", "raw_tp"])
    ap.add_argument("--arms", default=",".join(ARMS),
                    help=f"comma-separated subset of {','.join(ARMS)} (default: all); "
                    "'without' and 'daemon' are required")
    ap.add_argument("--no-capacity", action="store_true", help="skip the backlog-drain run")
    ap.add_argument("--capacity-only", action="store_true", help="only the backlog-drain run")
    add_quiet_arguments(ap)
    ap.add_argument("--max-noise", type=float, default=0.15,
                    help="repeat a run if others used more than this many cores (default 0.15)")
    ap.add_argument("--retries", type=int, default=6, help="repeats of a noisy/failed run")
    ap.add_argument("--retry-wait", type=float, default=5.0, help="seconds before a repeat")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds after ready before work")
    ap.add_argument("--drain-timeout", type=float, default=120.0)
    ap.add_argument("--keep-tmp", action="store_true", help="keep the export files")
    ap.add_argument("--json", type=Path, help="also write all results here as JSON")
    args = ap.parse_args()
    QUIET.update(max_cores=args.quiet_cores, timeout=args.quiet_timeout)
    return run_bench(bench, args)


def attempt(label: str, args: argparse.Namespace, fn: Callable[[], object]) -> object:
    """Run fn; repeat (up to --retries) when the machine was busy or the daemon failed."""
    for i in range(args.retries + 1):
        try:
            res = fn()
        except DaemonFailed as exc:
            print(f"{label} daemon failed to start, repeating: {exc}")
            if i == args.retries:
                raise
            time.sleep(2)
            continue
        run = getattr(res, "run", res)
        if isinstance(run, Run) and (run.noise > args.max_noise or run.foreign_bpf):
            if i < args.retries:
                print(f"{label} DISCARDED (noisy: {run.wall_s:.3f} s, {run.host()}), repeating")
                sys.stdout.flush()
                time.sleep(args.retry_wait)
                continue
            print(f"{label} (still noisy after {args.retries} repeats: kept)")
        return res
    raise AssertionError("unreachable")


def bench(reaper: Reaper, args: argparse.Namespace) -> int:
    print_header(f"exec storm: {args.execs} x fork+exec {TRUE} <marker>")
    work = tmpdir("tracer-bench-storm-", keep=args.keep_tmp)
    if args.keep_tmp:
        print(f"temp dir (kept): {work}")
    exe = build_c(work)

    # Calibration (also warms the page cache): which loop is faster?
    samples: dict[str, list[float]] = {d: [] for d in (["bash", "c"] if exe else ["bash"])}
    for _ in range(3):  # alternated, median: one noisy run must not decide
        for drv, lst in samples.items():
            r0 = run_workload(reaper, drv, exe, args.calibrate_execs, f"calib-{uuid.uuid4().hex}")
            lst.append(args.calibrate_execs / r0.wall_s)
    rates = {k: statistics.median(v) for k, v in samples.items()}
    print("driver calibration (no daemon, 3 x {} execs each, median): {}".format(
        args.calibrate_execs, ", ".join(
            f"{k} {v:,.0f} execs/s (all {[round(x) for x in samples[k]]})"
            for k, v in rates.items())))
    driver = max(rates, key=lambda k: rates[k]) if args.driver == "auto" else args.driver
    print(f"driver: {driver}")
    sys.stdout.flush()

    if args.capacity_only:
        return capacity(reaper, args, driver, exe, work, {})

    arms = tuple(a for a in ARMS if a in args.arms.split(","))
    if "without" not in arms or "daemon" not in arms:
        raise SystemExit("--arms must include 'without' and 'daemon'")
    base: list[Run] = []
    withd: list[WithDaemon] = []
    bpf: dict[str, list[BpfOnly]] = {a: [] for a in ARMS if a.startswith("bpf-")}
    for r in range(args.rounds):
        order = arms[r % len(arms):] + arms[: r % len(arms)]
        for arm in order:
            label = f"round {r + 1} {arm:<12}"
            if arm == "without":
                w = attempt(label, args, lambda: run_workload(
                    reaper, driver, exe, args.execs, f"storm-{uuid.uuid4().hex}"))
                assert isinstance(w, Run)
                base.append(w)
                print(f"{label} {w.wall_s:.3f} s ({args.execs / w.wall_s:,.0f} execs/s)  "
                      f"{w.host()}")
            elif arm == "daemon":
                res = attempt(label, args, lambda r=r: run_with_daemon(
                    reaper, args, driver, exe, work, f"round{r}"))
                assert isinstance(res, WithDaemon)
                withd.append(res)
                print(
                    f"{label} {res.wall_s:.3f} s ({args.execs / res.wall_s:,.0f} execs/s)  "
                    f"exec events {res.execs_seen}  exit events {res.exits_seen}  "
                    f"lost file={res.lost_file} stopped-line={res.lost_stopped}  "
                    f"drain {res.drain_s:.2f} s  daemon cpu {res.cpu_s:.2f} s "
                    f"(user {res.cpu_user_s:.2f} sys {res.cpu_sys_s:.2f}; main thread "
                    f"{res.cpu_main_s:.2f} sink thread {res.cpu_other_s:.2f}) = "
                    f"{res.cpu_us_per_event:.0f} us/event  {res.events_per_s:,.0f} events/s  "
                    f"RSS {res.vm_rss_kb / 1024:.1f} MiB HWM {res.vm_hwm_kb / 1024:.1f} MiB  "
                    f"rc {res.rc}  {res.run.host()}"
                )
                for wline in res.warnings:
                    print(f"    daemon: {wline}")
            else:
                mode = arm.removeprefix("bpf-")
                b = attempt(label, args, lambda mode=mode, arm=arm, r=r: run_bpf_only(
                    reaper, args, mode, driver, exe, work, f"round{r}-{arm}"))
                assert isinstance(b, BpfOnly)
                bpf[arm].append(b)
                print(f"{label} {b.wall_s:.3f} s ({args.execs / b.wall_s:,.0f} execs/s)  "
                      f"helper cpu {b.cpu_s:.2f} s  programs {b.programs}  records {b.records}"
                      f"  {b.run.host()}")
            sys.stdout.flush()

    med_base = statistics.median(x.wall_s for x in base)
    med_with = statistics.median(x.wall_s for x in withd)
    ratio = med_with / med_base
    per_round = [w.wall_s / b.wall_s for w, b in zip(withd, base, strict=True)]
    all_exec_ok = all(x.execs_seen == args.execs for x in withd)
    all_exit_ok = all(x.exits_seen == args.execs for x in withd)
    lost = sum(x.lost_file + x.lost_stopped for x in withd)
    print()
    print(f"== summary ({args.rounds} rounds, driver {driver}, {args.execs} execs) ==")
    print(f"wall without daemon (s): {fmt_stats(x.wall_s for x in base)}")
    for arm, lst in bpf.items():
        if lst:
            m = statistics.median(x.wall_s for x in lst)
            print(f"wall {arm + ' (s):':<19} {fmt_stats(x.wall_s for x in lst)}  "
                  f"ratio {m / med_base:.3f}  helper cpu s "
                  f"{[round(x.cpu_s, 2) for x in lst]}")
    print(f"wall with daemon (s):    {fmt_stats(x.wall_s for x in withd)}")
    print("per exec, median over rounds (machine-wide; IWI = irq work, RES = reschedule IPI, "
          "CAL = call-function IPI, ctxt = context switches; workload cpu ms):")
    arm_runs: dict[str, list[Run]] = {"without": base, "daemon": [x.run for x in withd]}
    arm_runs.update({k: [x.run for x in v] for k, v in bpf.items() if v})
    for arm, runs in arm_runs.items():
        ms = statistics.median(r.workload_cpu_s for r in runs) / args.execs * 1e3
        cells = [f"workload cpu {ms:.3f}"]
        for k in ("IWI", "RES", "CAL", "ctxt"):
            vals = [r.irqs.get(k) for r in runs if r.irqs.get(k) is not None]
            if vals:
                cells.append(f"{k} {statistics.median(vals) / args.execs:.2f}")
        print(f"  {arm:<12} " + "  ".join(cells))
    print(f"ratio median/median: {ratio:.3f} (target <= 1.10: "
          f"{'MET' if ratio <= 1.10 else 'MISSED'})  per-round with/without: "
          f"[{', '.join(f'{x:.3f}' for x in per_round)}]")
    print(f"exec events with marker: {[x.execs_seen for x in withd]} of {args.execs} "
          f"({'MET' if all_exec_ok else 'MISSED'});  exit events: {[x.exits_seen for x in withd]}"
          f" ({'all' if all_exit_ok else 'NOT all'})")
    print(f"lost (file lost-records, stopped line): "
          f"{[(x.lost_file, x.lost_stopped) for x in withd]} (target 0: "
          f"{'MET' if lost == 0 else 'MISSED'})")
    print(f"daemon CPU s:            {fmt_stats((x.cpu_s for x in withd), '{:.2f}')}")
    print("  user / sys s:          "
          f"{[(round(x.cpu_user_s, 2), round(x.cpu_sys_s, 2)) for x in withd]}")
    print("  main / sink thread s:  "
          f"{[(round(x.cpu_main_s, 2), round(x.cpu_other_s, 2)) for x in withd]}")
    print(f"daemon CPU us/event:     {fmt_stats((x.cpu_us_per_event for x in withd), '{:.1f}')}")
    print(f"events/s processed:      {fmt_stats((x.events_per_s for x in withd), '{:,.0f}')}")
    print(f"drain after workload s:  {fmt_stats((x.drain_s for x in withd), '{:.2f}')}")
    print(f"daemon VmRSS MiB at end: {fmt_stats((x.vm_rss_kb / 1024 for x in withd), '{:.1f}')}")
    print(f"daemon VmHWM MiB:        {fmt_stats((x.vm_hwm_kb / 1024 for x in withd), '{:.1f}')}")
    print(f"daemon stopped-line events: {[x.stopped_events for x in withd]}")
    print(f"daemon cache stats: {[x.cache for x in withd]}")
    ok = ratio <= 1.10 and all_exec_ok and lost == 0 and all(x.drained for x in withd)
    result = {
        "driver": driver, "calibration_execs_per_s": rates, "execs": args.execs,
        "without": [asdict(x) for x in base], "with": [asdict(x) for x in withd],
        "bpf_only": {k: [asdict(x) for x in v] for k, v in bpf.items()}, "ratio": ratio,
    }
    if not args.no_capacity:
        ok &= capacity(reaper, args, driver, exe, work, result) == 0
    elif args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if ok else 1


def capacity(reaper: Reaper, args: argparse.Namespace, driver: str, exe: Path | None,
             work: Path, result: dict) -> int:
    print()
    print(f"== capacity: daemon stopped during {args.execs} execs, then resumed ==")
    c = attempt("capacity", args, lambda: run_capacity(reaper, args, driver, exe, work))
    assert isinstance(c, Capacity)
    print(f"backlog {c.backlog_events} events processed in {c.seconds:.2f} s = "
          f"{c.events_per_s:,.0f} events/s; daemon cpu {c.cpu_s:.2f} s = "
          f"{c.cpu_us_per_event:.1f} us/event; lost {c.lost}; "
          f"{'complete' if c.complete else 'INCOMPLETE (timeout)'}  {c.run.host()}")
    result["capacity"] = asdict(c)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if c.complete and c.lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
