#!/usr/bin/env python3
"""What recording the event log costs the pipeline: events/s with and without it (target < 10%).

The posted open storm of bench/open_storm.py (a C loop opening a file
that a `post` rule selects, a 256 MiB ring buffer so that nothing is
lost), through the real daemon writing JSON lines to a file, once with
the event log (the default) and once with --no-event-log, alternating,
`--rounds` times each. Throughput is events delivered to the JSON file
per second of the storm, until the last one is there; the daemon's CPU
time per 100k events is printed too.

Usage: .venv/bin/python bench/eventlog_cost.py [--posted 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    ExportTail,
    Reaper,
    TracerDaemon,
    machine_summary,
    print_header,
    require_root,
    tmpdir,
    wait_until,
)
from open_storm import TARGET, build_loop, run_loop


def one(reaper: Reaper, exe: Path, work: Path, n: int, tag: str, log: bool) -> tuple[float, float]:
    pol = work / "post-all.yaml"
    pol.write_text(
        "policies:\n  - name: post-all\n    rules:\n      - event: file_open\n"
        f"        match: {{path: ['{TARGET}']}}\n"
    )
    out = work / f"{tag}.jsonl"
    extra = ["--policy", str(pol), "--ringbuf-size", "256M"]
    if not log:
        extra.append("--no-event-log")
    d = TracerDaemon(reaper, out, extra)
    d.start()
    tail = ExportTail(out)
    cpu0 = d.cpu_seconds()
    t0 = time.perf_counter()
    run_loop(exe, n)

    # Done when all arrived, or when nothing more arrives for 5 s: an output
    # that fell behind dropped events (the stop line counts them), and
    # waiting for them would wait for ever.
    last = [0.0, time.perf_counter()]  # events seen, when the count last moved

    def finished() -> bool:
        tail.read()
        got = tail.types["file_open"]
        if got != last[0]:
            last[:] = [got, time.perf_counter()]
        return got >= n or time.perf_counter() - last[1] > 5

    wait_until(finished, timeout=900, interval=0.2)
    done = tail.types["file_open"] >= n
    secs = (time.perf_counter() if done else last[1]) - t0
    cpu = d.cpu_seconds() - cpu0
    st = d.stop()
    got = tail.types["file_open"]
    rate = got / secs
    logdir = out.parent / f"{out.stem}.events"
    size = sum(p.stat().st_size for p in logdir.glob("*")) if logdir.exists() else 0
    print(f"  {'with' if log else 'without':<7} event log: {got:,} events in {secs:.2f} s = "
          f"{rate:,.0f} events/s ({'complete' if done else 'INCOMPLETE: dropped'}); daemon CPU "
          f"{cpu / max(got, 1) * 1e5:.2f} s per 100k; lost: kernel {st.lost_kernel}, "
          f"daemon {st.lost_daemon}; log {size / 2**20:.1f} MiB", flush=True)
    out.unlink(missing_ok=True)
    return rate, cpu / max(got, 1)


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
