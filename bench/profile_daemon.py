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
    ExportTail,
    Reaper,
    TracerDaemon,
    print_header,
    require_root,
    tmpdir,
    wait_until,
)
from exec_storm import TRUE, build_c, run_workload
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
    d = TracerDaemon(reaper, export)
    d.start()
    time.sleep(1.0)
    prof = args.out or work / "storm.pyspy.txt"
    spy = reaper.popen([*pyspy_cmd(args, prof), "-p", str(d.pid)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)
    marker = f"storm-{uuid.uuid4().hex}"
    cpu0 = d.cpu_seconds()
    wall = run_workload(reaper, "c" if exe else "bash", exe, args.execs, marker)
    tail = ExportTail(export)
    want = [TRUE, marker]
    exits = [0]

    def on_event(ev: dict) -> None:
        if ev.get("type") == "process_exit" and (ev.get("process") or {}).get("args") == want:
            exits[0] += 1

    wait_until(lambda: (tail.read(on_event, marker.encode()), exits[0] >= args.execs)[1], 120, 0.05)
    cpu = d.cpu_seconds() - cpu0
    st = d.stop()  # py-spy stops when the process exits and writes the profile
    assert spy.stderr is not None
    err = spy.stderr.read().decode(errors="replace")
    spy.wait(60)
    reaper.stop(spy)
    print(f"workload {wall:.2f} s (under py-spy), daemon cpu {cpu:.2f} s, exits seen {exits[0]}, "
          f"lost {st.lost_total}")
    print("py-spy: " + " | ".join(x for x in err.splitlines() if "Samples" in x or "rror" in x))
    print(f"profile: {prof}\n")
    pyspy_summary.summarize(pyspy_summary.load(prof), args.top)


def bootstrap(reaper: Reaper, args: argparse.Namespace, work: Path) -> None:
    dur = new_duration(600)
    sh = spawn_sleeps(reaper, args.procs, dur, work / "sleeps.err")
    wait_until(lambda: count_sleeps(dur) >= args.procs, 300, 0.2)
    prof = args.out or work / "bootstrap.pyspy.txt"
    argv = [*pyspy_cmd(args, prof), "--", str(TRACER), "run", "--export-file",
            str(work / "boot.jsonl"), "--export-max-size", "4G"]
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
    ap.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    ap.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", type=Path, help="keep the raw profile here")
    args = ap.parse_args()
    require_root()
    if not PYSPY.exists() and not shutil.which("py-spy"):
        sys.exit("py-spy is not installed: .venv/bin/pip install py-spy")
    reaper = Reaper()
    try:
        print_header(f"py-spy profile of the daemon: {args.scenario}")
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
