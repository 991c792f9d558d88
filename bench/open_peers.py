#!/usr/bin/env python3
"""The unmatched open storm beside bpftrace, each tracer attached before the workload starts.

The shared peer harness (../shared/bench/peers.py) gives each tracer a fixed
head start (6 s for tracer); on a loaded machine the daemon takes longer to
load its programs, and then part of the storm runs with nothing attached.
Here every round waits for bpftrace's "Attaching" line and for the daemon's
`ready`, then runs the harness's own workload (openstorm.py: os.open+close
of one file). Rounds interleave none, bpftrace and tracer; medians and ratios
to none, and the added ns per open+close.

    bench/open_peers.py [--opens 300000] [--rounds 5] [--path /etc/hostname]
                        [--policy DIR_OR_FILE]... [--peers-dir ../shared/bench]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, Reaper, TracerDaemon, print_header, require_root, tmpdir

# The harness's bpftrace program for this storm: a string compare on a path
# the workload never opens (PEERS_FILTER_PATH in bench/peers.py).
_BPFTRACE = ('tracepoint:syscalls:sys_enter_openat /str(args->filename) == "{}"/ '
             '{{ printf("%d %s\\n", pid, str(args->filename)); }}')


def _workload(script: Path, n: int, path: str) -> float:
    """CPU seconds (user + system) of the workload process: on a machine
    other agents load, its wall time mostly measures their share."""
    p = subprocess.Popen([sys.executable, str(script), str(n), path], stdout=subprocess.DEVNULL)
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        sys.exit(f"open_peers: the workload failed ({p.returncode})")
    return ru.ru_utime + ru.ru_stime


def _bpftrace(reaper: Reaper, out: Path) -> subprocess.Popen[bytes]:
    prog = _BPFTRACE.format("/usr/share/nonexistent-bench")
    p = reaper.popen(["bpftrace", "-e", prog], stdout=out.open("wb"), stderr=subprocess.STDOUT,
                     term_signal=2)
    deadline = time.monotonic() + 120
    while b"Attaching" not in out.read_bytes():
        if p.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"bpftrace did not attach: {out.read_text(errors='replace')[-500:]}")
        time.sleep(0.1)
    return p


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--opens", type=int, default=300_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--path", default="/etc/hostname")
    ap.add_argument("--policy", action="append", type=Path)
    ap.add_argument("--peers-dir", type=Path, default=REPO.parent / "shared" / "bench")
    args = ap.parse_args()
    require_root()
    script = args.peers_dir / "openstorm.py"
    if not script.is_file():
        sys.exit(f"open_peers: {script} not found (--peers-dir)")
    policies = args.policy or [REPO / "policy" / "library"]
    print_header(f"open storm beside bpftrace: {args.opens:,} open+close of {args.path} x "
                 f"{args.rounds}, tracer with " + ", ".join(p.name for p in policies))
    reaper = Reaper()
    work = tmpdir("open-peers")
    times: dict[str, list[float]] = {"none": [], "bpftrace": [], "tracer": []}
    try:
        for r in range(args.rounds):
            times["none"].append(_workload(script, args.opens, args.path))
            bt = _bpftrace(reaper, work / f"bpftrace-{r}.out")
            times["bpftrace"].append(_workload(script, args.opens, args.path))
            reaper.stop(bt)
            d = TracerDaemon(reaper, work / f"tracer-{r}.jsonl",
                             [a for p in policies for a in ("--policy", str(p))])
            d.start(timeout=300)
            times["tracer"].append(_workload(script, args.opens, args.path))
            d.stop()
            got = ", ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items())
            print(f"  round {r + 1}: CPU {got}", flush=True)
    finally:
        reaper.cleanup()
    base = statistics.median(times["none"])
    for name, t in times.items():
        med = statistics.median(t)
        print(f"  {name:<9} median CPU {med:.3f} s  ratio {med / base:.3f}x  "
              f"added {(med - base) / args.opens * 1e9:+.0f} ns per open+close")
    return 0


if __name__ == "__main__":
    sys.exit(main())
