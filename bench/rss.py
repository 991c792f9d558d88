"""Daemon memory with many live processes.

    .venv/bin/python bench/rss.py [--procs 5000] [--variant live,bootstrap]

live:      start the daemon, sample its idle RSS, then start N long
           `sleep` processes (one shell, its own process group), wait
           until the export file holds all N exec events, then sample
           VmRSS/VmHWM from /proc/<pid>/status over ~3 s.
bootstrap: start the N sleeps first, then the daemon (it reads them from
           /proc at start-up); sample its RSS over ~3 s after `ready`.

Every sleep is killed at the end (process group; the benchmark is a child
subreaper, so they are reaped too). Reports lost counts from the export
file and from the daemon's final `stopped` line.

Target: steady RSS with 5,000 live processes < 80 MB (80 * 10^6 bytes;
MiB also shown). VmRSS counts every page mapped once per mapping: the
rings' data (mapped once since tracer/core/_ringsink.c) and the libraries'
code whole, though other processes may share it; Pss counts a shared page
as its share. The daemon runs with its own defaults unless --ringbuf-size
or --daemon-args say otherwise.
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    ExportTail,
    Reaper,
    TracerDaemon,
    add_quiet_arguments,
    print_header,
    quiet,
    run_bench,
    tmpdir,
    wait_until,
)

TARGET_BYTES = 80_000_000


@dataclass
class Samples:
    rss_kb: list[int] = field(default_factory=list)
    hwm_kb: list[int] = field(default_factory=list)
    anon_kb: list[int] = field(default_factory=list)
    file_kb: list[int] = field(default_factory=list)
    pss_kb: list[int] = field(default_factory=list)
    bpf_map_kb: int = 0

    def take(self, d: TracerDaemon, n: int, span: float) -> Samples:
        self.bpf_map_kb = d.bpf_map_rss_kb()
        for i in range(n):
            m = d.mem_kb()
            self.rss_kb.append(m["VmRSS"])
            self.hwm_kb.append(m["VmHWM"])
            self.anon_kb.append(m.get("RssAnon", 0))
            self.file_kb.append(m.get("RssFile", 0) + m.get("RssShmem", 0))
            self.pss_kb.append(d.pss_kb())
            if i < n - 1:
                time.sleep(span / (n - 1))
        return self

    def line(self) -> str:
        def mib(kb: float) -> str:
            return f"{kb / 1024:.1f}"

        r = self.rss_kb
        return (f"VmRSS MiB median {mib(statistics.median(r))} min {mib(min(r))} "
                f"max {mib(max(r))} (= {max(r) * 1024 / 1e6:.1f} MB max)  "
                f"VmHWM MiB {mib(max(self.hwm_kb))}  "
                f"RssAnon MiB {mib(statistics.median(self.anon_kb))}"
                f"  RssFile+Shmem MiB {mib(statistics.median(self.file_kb))}"
                f"  (of which BPF map mmaps {mib(self.bpf_map_kb)}, the rings' data once; RSS "
                f"without them {mib(statistics.median(r) - self.bpf_map_kb)})"
                f"  Pss MiB {mib(statistics.median(self.pss_kb))}  samples {len(r)}")


def ring_args(args: argparse.Namespace) -> list[str]:
    return ["--ringbuf-size", args.ringbuf_size] if args.ringbuf_size else []


def spawn_sleeps(reaper: Reaper, n: int, dur: str, log: Path) -> subprocess.Popen[bytes]:
    script = f"for i in $(seq {n}); do sleep {dur} & done; wait"
    with open(log, "wb") as err:
        return reaper.popen(["bash", "-c", script], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=err)


def count_sleeps(dur: str) -> int:
    want = b"sleep\0" + dur.encode() + b"\0"
    n = 0
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if Path(f"/proc/{d}/cmdline").read_bytes() == want:
                    n += 1
            except OSError:
                pass
    return n


def new_duration(seconds: int) -> str:
    # a unique argv to find our sleeps by: e.g. "600.482913" (GNU sleep takes fractions)
    return f"{seconds}.{random.randrange(100000, 999999)}"


def variant_live(reaper: Reaper, args: argparse.Namespace, work: Path) -> bool:
    print(f"\n-- live: daemon first, then {args.procs} sleeps --")
    quiet(args)
    export = work / "live.jsonl"
    d = TracerDaemon(reaper, export, [*ring_args(args), *args.daemon_args])
    d.start()
    time.sleep(args.settle)
    idle = Samples().take(d, args.samples, args.span)
    print(f"idle (procfs_processes={d.ready_fields.get('procfs_processes')}): {idle.line()}")
    dur = new_duration(args.sleep_seconds)
    want = ["sleep", dur]
    tail = ExportTail(export)
    seen = [0]

    def on_event(ev: dict) -> None:
        if ev.get("type") == "process_exec" and (ev.get("process") or {}).get("args") == want:
            seen[0] += 1

    t0 = time.perf_counter()
    sh = spawn_sleeps(reaper, args.procs, dur, work / "live-sleeps.err")
    def all_seen() -> bool:
        tail.read(on_event, dur.encode())
        return seen[0] >= args.procs

    ok = wait_until(all_seen, args.timeout, 0.2)
    t_seen = time.perf_counter() - t0
    alive = count_sleeps(dur)
    print(f"{seen[0]} of {args.procs} sleep exec events in the export file after {t_seen:.1f} s "
          f"({alive} sleeps alive)")
    loaded = Samples().take(d, args.samples, args.span)
    print(f"with {args.procs} live processes: {loaded.line()}")
    st = d.stop()
    tail.read(on_event, dur.encode())
    reaper.stop(sh)
    print(f"lost: export file {tail.lost_total} ({dict(tail.lost_kernel)} / "
          f"{dict(tail.lost_daemon)}), stopped line {st.lost_total}  rc {st.rc}  "
          f"events {st.events}  cache {st.cache}")
    rss_max = max(loaded.rss_kb) * 1024
    met = rss_max < TARGET_BYTES
    print(f"target < 80 MB: max VmRSS {rss_max / 1e6:.1f} MB -> {'MET' if met else 'MISSED'}")
    return ok and met and st.lost_total == 0 and tail.lost_total == 0


def variant_bootstrap(reaper: Reaper, args: argparse.Namespace, work: Path) -> bool:
    print(f"\n-- bootstrap: {args.procs} sleeps first, then the daemon (procfs scan) --")
    quiet(args)
    dur = new_duration(args.sleep_seconds)
    t0 = time.perf_counter()
    sh = spawn_sleeps(reaper, args.procs, dur, work / "boot-sleeps.err")
    ok = wait_until(lambda: count_sleeps(dur) >= args.procs, args.timeout, 0.2)
    print(f"{count_sleeps(dur)} sleeps running after {time.perf_counter() - t0:.1f} s")
    export = work / "bootstrap.jsonl"
    d = TracerDaemon(reaper, export, [*ring_args(args), *args.daemon_args])
    ready = d.start(timeout=args.timeout)
    print(f"spawn->ready {ready * 1000:.0f} ms  startup_ms {d.ready_fields.get('startup_ms')}  "
          f"procfs_processes {d.ready_fields.get('procfs_processes')}")
    s = Samples().take(d, args.samples, args.span)
    print(f"after ready with {args.procs} live processes: {s.line()}")
    st = d.stop()
    tail = ExportTail(export)
    tail.read()
    reaper.stop(sh)
    print(f"lost: export file {tail.lost_total}, stopped line {st.lost_total}  rc {st.rc}  "
          f"events {st.events}  cache {st.cache}")
    rss_max = max(s.rss_kb) * 1024
    met = rss_max < TARGET_BYTES
    print(f"target < 80 MB: max VmRSS {rss_max / 1e6:.1f} MB -> {'MET' if met else 'MISSED'}")
    return ok and met and st.lost_total == 0 and tail.lost_total == 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--procs", type=int, default=5000)
    ap.add_argument("--variant", default="live,bootstrap", help="live, bootstrap or both")
    ap.add_argument("--sleep-seconds", type=int, default=600)
    ap.add_argument("--samples", type=int, default=7, help="RSS samples per measurement")
    ap.add_argument("--span", type=float, default=3.0, help="seconds the samples span")
    ap.add_argument("--settle", type=float, default=1.0)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--daemon-args", default="", type=shlex.split,
                    help='more `tracer run` options, e.g. --daemon-args="--no-grpc"')
    ap.add_argument("--ringbuf-size", help="daemon --ringbuf-size (default: the daemon's)")
    add_quiet_arguments(ap)
    args = ap.parse_args()
    return run_bench(bench, args)


def bench(reaper: Reaper, args: argparse.Namespace) -> int:
    print_header(
        f"RSS with {args.procs} live processes (daemon --ringbuf-size "
        f"{args.ringbuf_size or 'default'})"
    )
    work = tmpdir("tracer-bench-rss-")
    ok = True
    for v in args.variant.split(","):
        if v == "live":
            ok &= variant_live(reaper, args, work)
        elif v == "bootstrap":
            ok &= variant_bootstrap(reaper, args, work)
        else:
            raise SystemExit(f"unknown variant {v!r}")
        sys.stdout.flush()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
