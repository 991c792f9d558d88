"""Where the daemon's per-process memory goes (in process, with tracemalloc).

    .venv/bin/python bench/memory_attribution.py [--procs 5000]

Starts N `sleep`s (killed at the end), reads /proc with the daemon's own
enrich.procfs.scan(), then measures with tracemalloc the Python memory of
  - ProcessCache.bootstrap() of that snapshot (the process cache), and
  - the JSON serializer's per-process dict cache (export.jsonl), filled
    as if one event per process had been written.
These are the daemon's own classes, used read-only; the numbers are
Python allocations (no allocator overhead, no fragmentation), so they are
a lower bound of what the daemon's RSS grows by.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _common import Reaper, print_header, require_root, tmpdir, wait_until  # noqa: E402
from rss import count_sleeps, new_duration, spawn_sleeps  # noqa: E402

from enrich import ProcessCache, UserNames, procfs  # noqa: E402
from export import jsonl  # noqa: E402
from tracer.core.clock import BootClock  # noqa: E402


def measure(fn):  # type: ignore[no-untyped-def]
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    out = fn()
    secs = time.perf_counter() - t0
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return out, used, secs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--procs", type=int, default=5000)
    args = ap.parse_args()
    require_root()
    reaper = Reaper()
    try:
        print_header(f"memory attribution with {args.procs} extra processes")
        work = tmpdir("tracer-bench-mem-")
        sh = None
        if args.procs:
            dur = new_duration(600)
            sh = spawn_sleeps(reaper, args.procs, dur, work / "sleeps.err")
            wait_until(lambda: count_sleeps(dur) >= args.procs, 300, 0.2)
        snap, snap_b, snap_s = measure(lambda: list(procfs.scan()))
        n = len(snap)
        print(f"procfs snapshot: {n} processes in {snap_s * 1000:.0f} ms "
              f"(daemon's enrich.procfs.scan); the list itself {snap_b / 1024:.0f} KiB")
        cache = ProcessCache("bench-node", BootClock(), UserNames())
        _, cache_b, cache_s = measure(lambda: cache.bootstrap(snap))
        print(f"ProcessCache.bootstrap: {cache_b / 1024 / 1024:.2f} MiB = "
              f"{cache_b / n:.0f} bytes per process ({cache_s * 1000:.0f} ms)")
        try:
            ser = jsonl.Serializer()
            procs = [cache.get(p.pid) for p in snap]
            getter = ser._procs.get  # the per-Process dict cache the writer thread fills

            def fill() -> int:
                return sum(1 for p in procs if p is not None and getter(p) is not None)

            filled, ser_b, _ = measure(fill)
            print(f"serializer dict cache for {filled} processes: "
                  f"{ser_b / 1024 / 1024:.2f} MiB = {ser_b / max(filled, 1):.0f} bytes per process "
                  f"(capped at {ser._procs._limit} entries, then cleared)")
        except (AttributeError, TypeError) as exc:
            print(f"serializer dict cache: not measured ({exc!r}: internals changed)")
        if sh is not None:
            reaper.stop(sh)
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        reaper.cleanup()


if __name__ == "__main__":
    sys.exit(main())
