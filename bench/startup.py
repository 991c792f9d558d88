"""Start-up time: from spawning `tracer run` to its `event='ready'` log line.

    .venv/bin/python bench/startup.py [--runs 10] [--process-hooks auto]

Each run spawns the daemon (writing to an export file in a temp dir),
timestamps its stderr lines as they arrive, stops it with SIGTERM once
ready and checks it exited 0 with no loss, timing the stop too. Also reports the daemon's own
`startup_ms` (measured inside Daemon.run, after the interpreter started
and imported everything), its `probe_ms`, and, for reference, how long
`python -c pass` and `tracer --version` (interpreter + CLI imports) take.

Target: spawn -> ready < 1 s.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    TRACER,
    Reaper,
    TracerDaemon,
    add_quiet_arguments,
    fmt_stats,
    parse_kv,
    print_header,
    quiet,
    run_bench,
    tmpdir,
)

_PACKAGES = ("tracer", "enrich", "policy", "export", "forensics")


def time_cmd(reaper: Reaper, argv: list[str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        p = reaper.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        p.wait()
        out.append(time.perf_counter() - t0)
        reaper.stop(p)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--process-hooks", default="auto", choices=["auto", "tp_btf", "raw_tp"])
    ap.add_argument("--daemon-args", default="", type=shlex.split,
                    help='more `tracer run` options, e.g. --daemon-args="--no-grpc"')
    ap.add_argument("--pause", type=float, default=0.5, help="seconds between runs")
    add_quiet_arguments(ap)
    args = ap.parse_args()
    return run_bench(bench, args)


def bench(reaper: Reaper, args: argparse.Namespace) -> int:
    print_header(f"startup: spawn `tracer run` -> ready, {args.runs} runs")
    work = tmpdir("tracer-bench-startup-")
    extra = [] if args.process_hooks == "auto" else ["--process-hooks", args.process_hooks]
    extra += args.daemon_args
    py = str(Path(sys.executable))
    # An installed daemon starts from bytecode (pip compiles it at install; a
    # `make run` tree writes it at its first start). A shell with
    # PYTHONDONTWRITEBYTECODE would otherwise time compiling ~70 modules.
    root = Path(__file__).resolve().parent.parent
    subprocess.run([py, "-m", "compileall", "-q", *(str(root / p) for p in _PACKAGES)],
                   check=True)
    # reference points (also warms the page cache for the first measured run)
    quiet(args)
    py_pass = time_cmd(reaper, [py, "-c", "pass"], 5)
    version = time_cmd(reaper, [str(TRACER), "--version"], 5)

    ready_s: list[float] = []
    startup_ms: list[float] = []
    probe_ms: list[float] = []
    first_log_s: list[float] = []
    procs: list[int] = []
    stop_ms: list[float] = []
    problems: list[str] = []
    for i in range(args.runs):
        quiet(args)
        d = TracerDaemon(reaper, work / f"run{i}.jsonl", extra)
        r = d.start()
        ready_s.append(r)
        startup_ms.append(float(d.ready_fields.get("startup_ms", "nan")))
        procs.append(int(d.ready_fields.get("procfs_processes", "-1")))
        first_log_s.append(d.lines[0][0] - d.t_spawn)
        for _, line in d.lines:
            if "event='capture mode chosen'" in line:
                probe_ms.append(float(parse_kv(line).get("probe_ms", "nan")))
        st = d.stop()
        stop_ms.append(st.exit_s * 1000)
        if st.rc != 0 or not st.found or st.lost_total:
            problems.append(f"run {i}: rc={st.rc} stopped-line={st.found} lost={st.lost_total}")
        print(f"run {i + 1}: spawn->ready {r * 1000:.0f} ms  startup_ms {startup_ms[-1]:.1f}  "
              f"probe_ms {probe_ms[-1] if probe_ms else float('nan'):.1f}  "
              f"procfs_processes {procs[-1]}  stop {stop_ms[-1]:.0f} ms  rc {st.rc}  "
              f"lost {st.lost_total}")
        sys.stdout.flush()
        time.sleep(args.pause)

    ms = [x * 1000 for x in ready_s]
    print()
    print("== summary ==")
    print(f"spawn -> ready (ms):           {fmt_stats(ms, '{:.0f}')}")
    print(f"daemon startup_ms field:       {fmt_stats(startup_ms, '{:.1f}')}")
    print(f"  of which probe_ms:           {fmt_stats(probe_ms, '{:.1f}')}")
    print(f"SIGTERM -> exit (ms):          {fmt_stats(stop_ms, '{:.0f}')}")
    print(f"spawn -> first log line (ms):  {fmt_stats((x * 1000 for x in first_log_s), '{:.0f}')}")
    print(f"reference `python -c pass` (ms): {fmt_stats((x * 1000 for x in py_pass), '{:.0f}')}")
    print(f"reference `tracer --version` (ms): "
          f"{fmt_stats((x * 1000 for x in version), '{:.0f}')}")
    med = statistics.median(ms)
    verdict = "MET" if max(ms) < 1000 else "MET (median), MISSED (max)" if med < 1000 else "MISSED"
    print(f"target < 1000 ms: median {med:.0f} ms, max {max(ms):.0f} ms -> {verdict}")
    print(f"procfs processes at start: {sorted(set(procs))}")
    for p in problems:
        print(f"PROBLEM: {p}")
    return 0 if max(ms) < 1000 and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
