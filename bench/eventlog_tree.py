#!/usr/bin/env python3
"""`tracer tree` on a 1,000,000-event log: time to answer a single-process query (target < 2 s).

The log is written by the real sink (export/eventlog.py: the real
Serializer, segments, compression, sidecar indexes) from synthetic
events shaped like a busy node: an init found in /proc, services, each
handling requests by spawning `sh -c`, whose children exec, open files,
connect and exit; every event carries its parent and ancestors. Then
`tracer tree` is run as a user runs it (a new process each time, so the
time includes interpreter start-up and imports) for processes early,
in the middle and late in the log, by --exec-id and by --pid --at.

Usage: .venv/bin/python bench/eventlog_tree.py [--events 1000000] [--reps 5] [--keep]
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, machine_summary, print_header, tmpdir

sys.path.insert(0, str(REPO))
from export.eventlog import EventLog, EventLogConfig
from forensics.log import SEGMENT_RE
from tracer.core.clock import rfc3339
from tracer.core.events import (
    Connect,
    ConnectInfo,
    Event,
    ExitStatus,
    FileInfo,
    FileOpen,
    Process,
    ProcessExec,
    ProcessExit,
)

NODE = "bench-node"
T0 = 1_795_000_000_000_000_000
FILES = ["/etc/passwd", "/etc/hosts", "/etc/resolv.conf", "/var/lib/app/data.db",
         "/srv/app/config.yaml", "/etc/ssl/certs/ca-certificates.crt", "/etc/shadow"]
PROGRAMS = [("/usr/bin/curl", ["curl", "-s", "https://api.internal/v1/health"]),
            ("/usr/bin/python3", ["python3", "/srv/app/job.py", "--batch", "42"]),
            ("/usr/bin/grep", ["grep", "-c", "ERROR", "/var/log/app.log"]),
            ("/usr/bin/tar", ["tar", "czf", "/tmp/backup.tgz", "/srv/app/data"])]


def _proc(pid: int, parent: Process | None, binary: str, args: list[str], t: int,
          flags: tuple[str, ...] = ()) -> Process:
    return Process(
        exec_id=f"{NODE}:{t - T0 + 10**12}:{pid}", pid=pid, tid=pid, uid=1000, euid=1000,
        gid=1000, egid=1000, auid=1000, user="app", binary=binary, args=tuple(args),
        cwd="/srv/app", start_time=t, parent_exec_id=parent.exec_id if parent else None,
        flags=flags, cgroup_id=4242,
    )


def generate(log: Path, n: int, seed: int = 7) -> list[tuple[str, int, int]]:
    """n events into a log at `log`; returns (exec_id, pid, time) of every worker process."""
    rnd = random.Random(seed)
    init = _proc(1, None, "/sbin/init", ["/sbin/init", "splash"], T0 - 10**12, ("procfs",))
    services = [
        _proc(100 + i, init, "/usr/bin/python3", ["python3", f"/srv/svc{i}/main.py", "--port",
              str(8000 + i)], T0 - 10**11, ("procfs",))
        for i in range(40)
    ]
    sink = EventLog(EventLogConfig(directory=log), capacity=65536)
    t = T0
    pid = 1000
    workers: list[tuple[str, int, int]] = []
    count = 0
    batch: list[Event] = []

    def emit(ev: Event) -> None:
        nonlocal count
        batch.append(ev)
        count += 1

    while count < n:
        svc = rnd.choice(services)
        pid = pid + 1 if pid < 4_000_000 else 1001
        t += rnd.randint(20_000, 200_000)
        sh = _proc(pid, svc, "/usr/bin/dash", ["sh", "-c", f"run-task --id {pid}"], t)
        emit(ProcessExec(time=t, node=NODE, process=sh, parent=svc, ancestors=(init,)))
        kids = []
        for _ in range(rnd.randint(1, 3)):
            pid += 1
            t += rnd.randint(10_000, 100_000)
            binary, args = rnd.choice(PROGRAMS)
            w = _proc(pid, sh, binary, args, t)
            kids.append(w)
            workers.append((w.exec_id, w.pid, t))
            emit(ProcessExec(time=t, node=NODE, process=w, parent=sh, ancestors=(svc, init)))
            for _ in range(rnd.randint(1, 4)):
                t += rnd.randint(5_000, 50_000)
                fi = FileInfo(rnd.choice(FILES), ("O_RDONLY", "O_CLOEXEC"), 0, 3, None,
                              "tracepoint/sys_exit_openat", False, True)
                emit(FileOpen(time=t, node=NODE, process=w, parent=sh, ancestors=(svc, init),
                              file=fi, policy=None))
            if rnd.random() < 0.5:
                t += rnd.randint(5_000, 50_000)
                ci = ConnectInfo("AF_INET", "TCP", "SOCK_STREAM", "10.0.3.7", 443, "10.0.1.2",
                                 rnd.randint(30000, 60000), None, 0, None,
                                 "tracepoint/sys_connect")
                emit(Connect(time=t, node=NODE, process=w, parent=sh, ancestors=(svc, init),
                             connect=ci, policy=None))
        for w in kids:
            t += rnd.randint(5_000, 50_000)
            emit(ProcessExit(time=t, node=NODE, process=w, parent=sh, ancestors=(svc, init),
                             exit=ExitStatus(0, None)))
        t += rnd.randint(5_000, 50_000)
        emit(ProcessExit(time=t, node=NODE, process=sh, parent=svc, ancestors=(init,),
                         exit=ExitStatus(0, None)))
        if len(batch) >= 10_000:
            for ev in batch:
                sink.offer(ev)
            batch.clear()
            while sink.backlog > 20_000:  # the sink would drop the oldest: wait instead
                time.sleep(0.01)
    for ev in batch:
        sink.offer(ev)
    sink.close(timeout=600)
    lost = sink.take_dropped()
    if lost:
        sys.exit(f"the sink dropped events while generating: {lost}")
    return workers


def timed(argv: list[str], reps: int) -> tuple[list[float], subprocess.CompletedProcess[str]]:
    times = []
    r = None
    for _ in range(reps):
        t0 = time.perf_counter()
        r = subprocess.run(argv, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if r.returncode != 0:
            sys.exit(f"{' '.join(argv)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    assert r is not None
    return times, r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="keep the generated log")
    args = ap.parse_args()
    for k, v in machine_summary().items():
        print(f"{k}: {v}")
    work = tmpdir("eventlog-tree", keep=args.keep)
    log = work / "events"
    try:
        print_header(f"writing {args.events:,} synthetic events with the real sink")
        t0 = time.perf_counter()
        workers = generate(log, args.events)
        secs = time.perf_counter() - t0
        files = sorted(log.iterdir())
        size = sum(p.stat().st_size for p in files)
        segs = [p for p in files if SEGMENT_RE.match(p.name)]
        idx = sum(p.stat().st_size for p in files if p.name.endswith(".idx"))
        db = sum(p.stat().st_size for p in files if p.name.startswith("index.sqlite"))
        print(f"  {secs:.1f} s ({args.events / secs:,.0f} events/s, serializing included); "
              f"{size / 2**20:.1f} MiB on disk: {len(segs)} segments of "
              f"{sum(p.stat().st_size for p in segs) / 2**20:.1f} MiB, "
              f"{idx / 2**20:.1f} MiB of sidecars, {db / 2**20:.1f} MiB index.sqlite; "
              f"{len(workers):,} worker processes")
        tracer = [sys.executable, "-m", "tracer", "tree", "--from", str(log)]
        print_header(f"tracer tree, {args.reps} runs each (a new process per run)")
        results = []
        for label, frac in (("early", 0.02), ("middle", 0.5), ("late", 0.98)):
            exec_id, pid, t = workers[int(len(workers) * frac)]
            for how, sel in (("--exec-id", ["--exec-id", exec_id]),
                             ("--pid --at", ["--pid", str(pid), "--at", rfc3339(t + 1000)])):
                times, r = timed([*tracer, *sel], args.reps)
                results += times
                lines = r.stdout.count("\n")
                print(f"  {label:<6} {how:<11} median {statistics.median(times):.3f} s, "
                      f"max {max(times):.3f} s ({lines} lines of tree)")
        print(f"  all queries: median {statistics.median(results):.3f} s, "
              f"max {max(results):.3f} s (target < 2 s)")
        print_header("cold: the directory without index.sqlite (copied without it)")
        for p in log.glob("index.sqlite*"):
            p.unlink()
        exec_id = workers[len(workers) // 2][0]
        times, _ = timed([*tracer, "--exec-id", exec_id], 1)
        print(f"  first query, rebuilding index.sqlite from the sidecars: {times[0]:.3f} s")
        times, _ = timed([*tracer, "--exec-id", exec_id], args.reps)
        print(f"  the same query after it: median {statistics.median(times):.3f} s")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"log kept in {log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
