#!/usr/bin/env python3
"""What recording the event log costs the pipeline: events/s with and without it (target < 10%).

The posted open storm of bench/open_storm.py (a C loop opening a file
that a `post` rule selects, a 256 MiB ring buffer so that nothing is
lost), through the real daemon writing JSON lines to a file on tmpfs,
once with the event log (the default, here on the disk) and once with
--no-event-log, alternating, `--rounds` times each. Throughput is events
delivered to the JSON file per second of the storm, until the last one
is there (OutputWatch); the daemon's CPU time per 100k events is printed
too.

Usage: .venv/bin/python bench/eventlog_cost.py [--posted 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    OutputWatch,
    Reaper,
    TracerDaemon,
    machine_summary,
    print_header,
    require_root,
    tmpdir,
)
from open_storm import TARGET, build_loop, run_loop


def one(reaper: Reaper, exe: Path, work: Path, n: int, tag: str, log: bool) -> tuple[float, float]:
    pol = work / "post-all.yaml"
    pol.write_text(
        "policies:\n  - name: post-all\n    rules:\n      - event: file_open\n"
        f"        match: {{path: ['{TARGET}']}}\n"
    )
    # The JSON file on tmpfs, in both arms: on the disk, its writeback
    # (~350 MB/s of lines) varied more than the difference being measured.
    # The event log stays on the disk: its own writes are part of its cost.
    out = tmpdir("eventlog-cost-out-", base=Path("/dev/shm")) / f"{tag}.jsonl"
    logdir = work / f"{tag}.events"
    extra = ["--policy", str(pol), "--ringbuf-size", "256M", "--event-log-dir", str(logdir)]
    if not log:
        extra.append("--no-event-log")
    d = TracerDaemon(reaper, out, extra)
    d.start()
    watch = OutputWatch(out, "file_open", n, d.cpu_seconds)
    watch.start()
    run_loop(exe, n)
    # Done when all arrived, or when nothing more arrives for 5 s: an output
    # that fell behind dropped events (the stop line counts them), and
    # waiting for them would wait for ever.
    got = watch.wait(timeout=900)
    st = d.stop()
    secs, cpu, done = got.seconds, got.cpu, got.complete
    rate = got.count / secs
    size = sum(p.stat().st_size for p in logdir.glob("*")) if logdir.exists() else 0
    print(f"  {'with' if log else 'without':<7} event log: {got.count:,} events in {secs:.2f} s = "
          f"{rate:,.0f} events/s ({'complete' if done else 'INCOMPLETE: dropped'}); daemon CPU "
          f"{cpu / max(got.count, 1) * 1e5:.2f} s per 100k; lost: kernel {st.lost_kernel}, "
          f"daemon {st.lost_daemon}; log {size / 2**20:.1f} MiB", flush=True)
    out.unlink(missing_ok=True)
    shutil.rmtree(logdir, ignore_errors=True)
    return rate, cpu / max(got.count, 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--posted", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    require_root()
    for k, v in machine_summary().items():
        print(f"{k}: {v}")
    reaper = Reaper()
    try:
        work = tmpdir("eventlog-cost")
        exe = build_loop(work)
        print_header(f"posted storm, {args.posted:,} events per run, {args.rounds} rounds")
        with_, without = [], []
        for i in range(args.rounds):
            without.append(one(reaper, exe, work, args.posted, f"r{i}-off", log=False))
            with_.append(one(reaper, exe, work, args.posted, f"r{i}-on", log=True))
        on = statistics.median(r for r, _ in with_)
        off = statistics.median(r for r, _ in without)
        print(f"  median: {off:,.0f} events/s without, {on:,.0f} with: "
              f"{(1 - on / off) * 100:.1f}% less throughput (target < 10%)")
        cpu_on = statistics.median(c for _, c in with_)
        cpu_off = statistics.median(c for _, c in without)
        print(f"  daemon CPU per event: {cpu_off * 1e6:.1f} us without, {cpu_on * 1e6:.1f} us with")
    finally:
        reaper.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
