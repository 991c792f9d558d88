#!/usr/bin/env python3
"""Python cost of the process cache per fork+exec+exit, as an exec storm makes them.

    .venv/bin/python bench/process_cache_cost.py [--execs 20000] [--repeat 5] [--gc-gen0 N]

The daemon's own ProcessCache (bootstrapped from /proc, with the daemon's
Enricher and default redaction rules) takes, for each of --execs children
of this process, the fork, exec and exit records the kernel would send,
and the exec and exit events are built from them (tracer.core.build), as
the pipeline does; no decoding, no output. Prints thread CPU per exec
(fork + exec + exit), best and median of --repeat runs, each in a fresh
process so that every run starts from the same heap. --gc-gen0 sets the
collector's young-generation threshold (0: collector off) after
gc.freeze(), as the daemon does at start.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _one(execs: int, gen0: int | None) -> float:
    from enrich import ProcessCache, UserNames, procfs
    from enrich.containers import Enrichment
    from enrich.redact import redactor
    from tracer.core import build, decode
    from tracer.core.clock import BootClock

    clock = BootClock()
    cache = ProcessCache(
        "node", clock, UserNames(), enricher=Enrichment("node", None).enricher,
        redactor=redactor(None, True),
    )
    cache.bootstrap(procfs.scan())
    me = cache.get(os.getpid())
    assert me is not None
    now = clock.now_boot()

    def task(pid: int, start: int, ktime: int) -> decode.Task:
        return decode.Task(ktime, start, me.cgroup_id, pid, pid, me.pid, 0, 0, 0, 0, 0, b"loop")

    records = []
    for i in range(execs):
        pid, start = 4_000_000 + i, now + i * 50_000  # 20,000 execs a second
        records.append((
            decode.ForkRecord(task(pid, start, start)),
            decode.ExecRecord(task(pid, start, start + 20_000), b"/usr/bin/true", b"/tmp",
                              (b"/bin/true", b"storm-0123456789abcdef"), 0),
            decode.ExitRecord(task(pid, start, start + 40_000), 0),
        ))
    gc.freeze()
    if gen0 == 0:
        gc.disable()
    elif gen0 is not None:
        gc.set_threshold(gen0, *gc.get_threshold()[1:])
    t0 = time.thread_time()
    for fork, exec_, exit_ in records:
        cache.on_fork(fork)
        build.process_exec(cache.on_exec(exec_), "node", None)
        build.process_exit(exit_, cache.on_exit(exit_), "node")
    return (time.thread_time() - t0) / execs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--execs", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--gc-gen0", type=int, help="young-generation threshold (0: no collector)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(_one(args.execs, args.gc_gen0))
        return 0
    cmd = [sys.executable, __file__, "--child", "--execs", str(args.execs)]
    if args.gc_gen0 is not None:
        cmd += ["--gc-gen0", str(args.gc_gen0)]
    runs = [
        float(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()[-1])
        * 1e6
        for _ in range(args.repeat)
    ]
    print(f"process cache + exec/exit events, per fork+exec+exit ({args.execs:,} children, "
          f"gc gen0 {'default' if args.gc_gen0 is None else args.gc_gen0}): "
          f"best {min(runs):.1f} us, median {statistics.median(runs):.1f} us "
          f"(all {', '.join(f'{r:.1f}' for r in runs)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
