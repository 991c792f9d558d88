"""Profile the daemon with py-spy (`.venv/bin/pip install py-spy` first).

    .venv/bin/python bench/profile_daemon.py storm [--execs 5000] [--rate 100] [--native]
    .venv/bin/python bench/profile_daemon.py bootstrap [--procs 5000]

storm:     starts `tracer run` (export file in a temp dir), attaches
           `py-spy record --threads --format raw` to it, runs the exec
           storm loop (bench/execloop.c), waits for the export file to
           hold every exit, stops the daemon and summarizes the samples
           (bench/pyspy_summary.py).
bootstrap: starts N `sleep`s, then launches the daemon under py-spy so
           that the start-up (procfs scan, cache bootstrap) is sampled;
           stops it once ready.

py-spy samples pause the daemon (default blocking mode), so timings
taken while profiling are not benchmark numbers; only the shares are.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pyspy_summary
from _common import (
    REPO,
    TRACER,
    Reaper,
    TracerDaemon,
    print_header,
    private_sockets,
    require_root,
    tmpdir,
    wait_quiet,
    wait_until,
)
from exec_storm import (
    QUIET,
    MarkerCounter,
    build_c,
    own_programs,
    pre_quiet,
    run_workload,
)
from rss import count_sleeps, new_duration, spawn_sleeps

PYSPY = REPO / ".venv" / "bin" / "py-spy"


def pyspy_cmd(args: argparse.Namespace, out: Path) -> list[str]:
    cmd = [str(PYSPY), "record", "--threads", "--format", "raw", "-r", str(args.rate),
           "-o", str(out)]
    if args.native:
        cmd.append("--native")
    return cmd


def storm(reaper: Reaper, args: argparse.Namespace, work: Path) -> None:
    exe = build_c(work)
    export = work / "storm.jsonl"
    d = TracerDaemon(reaper, export, args.daemon_args)
    QUIET["max_cores"] = args.quiet_cores
    pre_quiet()
    d.start()
    time.sleep(1.0)
    own = own_programs()
    if args.tool == "perf":
        prof = args.out or work / "storm.perf.data"
        cmd = ["perf", "record", "-g", "-F", str(args.rate), "-o", str(prof), "-p", str(d.pid)]
    else:
        prof = args.out or work / "storm.pyspy.txt"
        cmd = [*pyspy_cmd(args, prof), "-p", str(d.pid)]
    spy = reaper.popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)
    marker = f"storm-{uuid.uuid4().hex}"
    cpu0 = d.cpu_seconds()
    QUIET["max_cores"] = 0  # py-spy itself is busy now; the profile gives shares, not times
    run = run_workload(reaper, "c" if exe else "bash", exe, args.execs, marker, own_bpf=own)
    wall = run.wall_s
    mc = MarkerCounter(export, marker)

    def all_exits() -> bool:
        mc.read()
        return mc.seen["process_exit"] >= args.execs

    wait_until(all_exits, 120, 0.05)
    exits = [mc.seen["process_exit"]]
    cpu = d.cpu_seconds() - cpu0
    st = d.stop()  # py-spy stops when the process exits and writes the profile
    assert spy.stderr is not None
    err = spy.stderr.read().decode(errors="replace")
    spy.wait(60)
    reaper.stop(spy)
    print(f"workload {wall:.2f} s (under {args.tool}), daemon cpu {cpu:.2f} s, "
          f"exits seen {exits[0]}, lost {st.lost_total}")
    print(f"{args.tool}: " + " | ".join(
        x for x in err.splitlines() if "Samples" in x or "rror" in x or "samples" in x))
    print(f"profile: {prof}\n")
    if args.tool == "perf":
        perf_summary(prof, args.top)
    else:
        pyspy_summary.summarize(pyspy_summary.load(prof), args.top)


def perf_summary(data: Path, top: int) -> None:
    """Self time of the daemon by shared object, then by symbol (kernel [k] and native)."""
    for sort in ("dso", "dso,sym"):
        out = subprocess.run(
            ["perf", "report", "-i", str(data), "--no-children", "--sort", sort, "--stdio",
             "-g", "none", "--percent-limit", "0.5"],
            capture_output=True, text=True, check=False,
        ).stdout
        rows = [x for x in out.splitlines() if x.strip() and not x.startswith("#")]
        print(f"self time by {sort} (perf, all threads of the daemon):")
        for row in rows[:top]:
            print("  " + row.strip())
        print()


def bootstrap(reaper: Reaper, args: argparse.Namespace, work: Path) -> None:
    if args.quiet_cores > 0:
        wait_quiet(args.quiet_cores, timeout=900)
    dur = new_duration(600)
    sh = spawn_sleeps(reaper, args.procs, dur, work / "sleeps.err")
    wait_until(lambda: count_sleeps(dur) >= args.procs, 300, 0.2)
    prof = args.out or work / "bootstrap.pyspy.txt"
    argv = [*pyspy_cmd(args, prof), "--", str(TRACER), "run", "--export-file",
            str(work / "boot.jsonl"), "--export-max-size", "4G",
            *private_sockets(work, "boot"), *args.daemon_args]
    d = TracerDaemon(reaper, work / "boot.jsonl", argv=argv)
    ready = d.start(timeout=300)
    print(f"{args.procs} sleeps; spawn->ready under py-spy {ready * 1000:.0f} ms, "
          f"startup_ms {d.ready_fields.get('startup_ms')} (profiling slows it)")
    # the daemon is py-spy's child
    kids = Path(f"/proc/{d.pid}/task/{d.pid}/children").read_text().split()
    for k in kids:
        os.kill(int(k), 15)
    assert d.proc is not None
    d.proc.wait(60)
    reaper.stop(d.proc)
    reaper.stop(sh)
    print(f"profile: {prof}\n")
    pyspy_summary.summarize(pyspy_summary.load(prof), args.top)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("scenario", choices=["storm", "bootstrap"])
    ap.add_argument("--execs", type=int, default=5000)
    ap.add_argument("--procs", type=int, default=5000)
    ap.add_argument("--rate", type=int, default=100, help="samples per second")
    ap.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    ap.add_argument("--tool", choices=["py-spy", "perf"], default="py-spy",
                    help="storm only: py-spy (Python frames) or perf (kernel + native)")
    ap.add_argument("--daemon-args", default="", type=shlex.split,
                    help='more `tracer run` options, e.g. --daemon-args="--no-grpc"')
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--quiet-cores", type=float, default=0.1,
                    help="first wait until others use less than this many cores (0: no wait)")
    ap.add_argument("--out", type=Path, help="keep the raw profile here")
    args = ap.parse_args()
    require_root()
    if not PYSPY.exists() and not shutil.which("py-spy"):
        sys.exit("py-spy is not installed: .venv/bin/pip install py-spy")
    reaper = Reaper()
    try:
        print_header(f"profile of the daemon ({args.tool}): {args.scenario}")
        work = tmpdir("tracer-bench-prof-")
        (storm if args.scenario == "storm" else bootstrap)(reaper, args, work)
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        reaper.cleanup()


if __name__ == "__main__":
    sys.exit(main())
