#!/usr/bin/env python3
"""Open storm: what in-kernel filtering costs, and how fast selected opens flow out.

1. Filtered: N open+close of a file that no rule selects (the default
   library is loaded), with and without the daemon. Prints the workload's
   wall-time ratio (target <= 1.05) and the kernel's evaluation count, the
   proof that every open went through the filter.
2. Posted: the same storm with a rule that posts every open. Prints the
   events/s the daemon delivers to its JSON file, the loss (kernel and
   daemon), and the daemon's CPU seconds per 100k events.
3. Program cost (`--stages program-cost`): ns per run of each BPF program
   over the filtered storm, from the kernel's own run statistics; with
   --extra-policy, the library alone and with the extra rules in turn,
   every round, and the difference (e.g. bench/policy-pod-selector.yaml).
4. Aggregated (`--stages aggregated`): the posted storm under a rule with
   `aggregate: 60s`, daemon defaults: the workload's time against no daemon,
   the kernel's run time per open (bpf_stats), the events and summary counts
   delivered (one event and one count of the rest), and the loss.

Usage: .venv/bin/python bench/open_storm.py [--opens 1000000] [--posted 200000] [--rounds 3]
       [--capture-mode lsm|fentry|kprobe|tracepoint]  (default: the daemon's choice)
       [--extra-policy FILE]  (loaded with the library in the filtered and program-cost
                               stages, e.g. bench/policy-binary-only.yaml: a rule
                               with no path; policy-glob.yaml, policy-lineage.yaml,
                               policy-pod-selector.yaml)
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    REPO,
    OutputWatch,
    Reaper,
    RingFill,
    TracerDaemon,
    machine_summary,
    print_header,
    require_root,
    tmpdir,
)

from tracer import control

TARGET = "/usr/lib/os-release"
LIBRARY = REPO / "policy" / "library"


def build_loop(work: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        sys.exit("open_storm: needs a C compiler (cc, gcc or clang)")
    exe = work / "openloop"
    subprocess.run([cc, "-O2", "-o", str(exe), str(Path(__file__).with_name("openloop.c"))],
                   check=True)
    return exe


def run_loop(exe: Path, n: int, target: str = TARGET) -> float:
    t0 = time.perf_counter()
    subprocess.run([str(exe), target, str(n)], check=True)
    return time.perf_counter() - t0


def stats(sock: Path) -> dict[str, dict[str, int]]:
    reply = control.request(sock, {"op": "stats"})
    if not reply.get("ok"):
        raise RuntimeError(f"stats: {reply}")
    kernel: dict[str, dict[str, int]] = reply["kernel"]
    return kernel


def filtered(
    reaper: Reaper, exe: Path, work: Path, n: int, rounds: int, mode: list[str],
    rules: bool = True, extra: list[Path] | None = None,
) -> None:
    """With rules (the default library), or without any (the hooks' own cost:
    attached, they return at once when no file rule exists)."""
    what = "no rule selects it" if rules else "no policy loaded (hooks only)"
    if rules and extra:
        what += " (library and " + ", ".join(p.name for p in extra) + ")"
    print_header(f"filtered: {n:,} open+close of {TARGET}, {what}")
    without, with_ = [], []
    sock = work / "ctl.sock"
    policy = ["--policy", str(LIBRARY)] if rules else []
    if rules:
        policy += [a for p in extra or [] for a in ("--policy", str(p))]
    for r in range(rounds):
        without.append(run_loop(exe, n))
        d = TracerDaemon(reaper, work / f"filtered-{r}.jsonl",
                         [*policy, "--control-socket", str(sock), *mode])
        d.start()
        before = stats(sock)
        with_.append(run_loop(exe, n))
        after = stats(sock)
        st = d.stop()
        evaluated = after["evaluated"]["file_open"] - before["evaluated"]["file_open"]
        emitted = after["emitted"]["file_open"] - before["emitted"]["file_open"]
        print(f"  round {r + 1}: without {without[-1]:.3f} s, with {with_[-1]:.3f} s, "
              f"evaluated in kernel {evaluated:,}, emitted {emitted}, "
              f"lost kernel {st.lost_kernel} daemon {st.lost_daemon}")
    ratio = statistics.median(with_) / statistics.median(without)
    per_op = (statistics.median(with_) - statistics.median(without)) / n * 1e9
    print(f"  median without {statistics.median(without):.3f} s, with "
          f"{statistics.median(with_):.3f} s: ratio {ratio:.3f} (target <= 1.05); "
          f"added cost {per_op:.0f} ns per open+close")


def _daemon_prog_ids(pid: int) -> set[int]:
    ids = set()
    for fd in Path(f"/proc/{pid}/fdinfo").iterdir():
        for line in fd.read_text().splitlines():
            if line.startswith("prog_id:"):
                ids.add(int(line.split()[1]))
    return ids


def _program_ns(reaper: Reaper, exe: Path, work: Path, n: int, policy: list[str],
                tag: str) -> tuple[dict[str, float], float]:
    """ns per run of each of the daemon's programs that ran for every open, and
    the storm's wall time, with run statistics on."""
    d = TracerDaemon(reaper, work / f"progcost-{tag}.jsonl",
                     [*policy, "--control-socket", str(work / f"ctl-{tag}.sock")])
    d.start()
    knob = Path("/proc/sys/kernel/bpf_stats_enabled")
    old = knob.read_text().strip()
    knob.write_text("1")
    try:
        wall = run_loop(exe, n)
    finally:
        knob.write_text(old)
    ids = _daemon_prog_ids(d.pid)
    shown = json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], check=True,
                                      capture_output=True).stdout)
    d.stop()
    # Others on a shared machine may switch the statistics off mid-storm:
    # the runs counted until then still give the time per run.
    return {
        p["name"]: p["run_time_ns"] / p["run_cnt"]
        for p in shown
        if p["id"] in ids and p.get("run_cnt", 0) >= n // 10
    }, wall


def program_cost(reaper: Reaper, exe: Path, work: Path, n: int, rounds: int, mode: list[str],
                 extra: list[Path]) -> None:
    """ns per run of each of the daemon's programs (kernel.bpf_stats_enabled),
    over n opens no rule selects. The statistics add their own clock reads
    to every run, so this pass is separate from the timed rounds. With
    --extra-policy, the library alone and the library with the extra rules
    run in turn, each round, so that a machine loaded by others weighs on
    both alike; the difference is what the extra rules cost an open."""
    print_header(f"program cost: {n:,} open+close of {TARGET}, no rule selects it")
    library = ["--policy", str(LIBRARY), *mode]
    sets = [("library", library)]
    if extra:
        names = ", ".join(p.name for p in extra)
        sets.append((f"library and {names}",
                     [*library, *(a for p in extra for a in ("--policy", str(p)))]))
    totals: dict[str, list[float]] = {label: [] for label, _ in sets}
    walls: dict[str, list[float]] = {label: [] for label, _ in sets}
    for r in range(rounds):
        for i, (label, policy) in enumerate(sets):
            ns, wall = _program_ns(reaper, exe, work, n, policy, f"{r}-{i}")
            totals[label].append(sum(ns.values()))
            walls[label].append(wall)
            runs = ", ".join(f"{name} {v:.0f}" for name, v in sorted(ns.items()))
            print(f"  round {r + 1}, {label}: {runs} ns per run; wall {wall:.3f} s")
    for label, _ in sets:
        print(f"  {label}: median {statistics.median(totals[label]):.0f} ns of programs "
              "per open+close")
    if extra:
        (base, _), (more, _) = sets
        delta = [b - a for a, b in zip(totals[base], totals[more], strict=True)]
        ratio = [b / a for a, b in zip(walls[base], walls[more], strict=True)]
        print(f"  the extra rules: {statistics.median(delta):+.0f} ns of programs per open "
              f"(median of rounds {', '.join(f'{d:+.0f}' for d in delta)}); wall-time ratio "
              f"to the library alone {statistics.median(ratio):.3f} "
              f"({', '.join(f'{x:.3f}' for x in ratio)})")


def posted(reaper: Reaper, exe: Path, work: Path, n: int, mode: list[str], rings: str) -> None:
    print_header(f"posted: {n:,} open+close, every one selected by a post rule, rings {rings}")
    # A file of our own: the rule must not post other processes' opens (other
    # benchmarks on a shared machine open /usr/lib/os-release too).
    target = work / "posted-target"
    target.write_text("x\n")
    pol = work / "post-all.yaml"
    pol.write_text(
        "policies:\n  - name: post-all\n    rules:\n      - event: file_open\n"
        f"        match: {{path: ['{target}']}}\n"
    )
    # The JSON file on tmpfs: at several KB a line (each event carries its
    # ancestry), a disk would measure its own write speed, not the daemon.
    shm = tmpdir("open-storm-out-", base=Path("/dev/shm"))
    out = shm / "posted.jsonl"
    # 256 MiB rings (the default) absorb the burst, so the number measured is
    # the daemon's sustained delivery rate, not the kernel's buffer size;
    # `--rings default` measures the loss (and the workload's time) with the
    # daemon's own ring sizes.
    sizes = [] if rings == "default" else ["--ringbuf-size", rings,
                                           "--selected-ringbuf-size", rings]
    alone = run_loop(exe, n, str(target))
    d = TracerDaemon(reaper, out, ["--policy", str(pol), *sizes,
                                   "--control-socket", str(work / "ctl2.sock"), *mode])
    d.start()
    watch = OutputWatch(out, "file_open", n, d.cpu_seconds)
    fill = RingFill(d.pid, "tr_selected")
    threads0 = d.thread_cpu()
    watch.start()
    workload = run_loop(exe, n, str(target))
    # Done when all arrived, or when nothing more arrives for 5 s (an
    # output that fell behind drops events; the stop line counts them).
    got = watch.wait(timeout=600)
    filled = fill.stop()
    threads1 = d.thread_cpu()
    peak_kb, ring_kb = d.mem_kb()["VmHWM"], d.bpf_map_rss_kb()
    st = d.stop()
    watch.scan()  # whatever the stop flushed
    secs = got.seconds
    print(f"  workload {workload:.3f} s = {workload / alone:.2f}x its {alone:.3f} s without the "
          f"daemon; delivered {watch.count:,} of {n:,} events in {secs:.2f} s "
          f"({'complete' if got.complete else 'INCOMPLETE'})")
    print(f"  rate {got.count / secs:,.0f} events/s to the JSON file (target >= 250,000 per core)")
    per_100k = got.cpu / max(got.count, 1) * 1e5
    print(f"  daemon CPU {got.cpu:.2f} s = {per_100k:.2f} s per 100k events "
          f"= {got.count / max(got.cpu, 1e-9):,.0f} events per CPU-second")
    # The capture thread (tid == pid) against the span: below 100% it waited
    # (for the GIL, or for a CPU) rather than computed.
    for tid, (u1, s1) in sorted(threads1.items(), key=lambda kv: -sum(kv[1])):
        u0, s0 = threads0.get(tid, (0.0, 0.0))
        if u1 + s1 - u0 - s0 >= 0.01:
            who = "capture thread" if tid == d.pid else f"thread {tid}"
            print(f"    {who}: user {u1 - u0:.2f} s, sys {s1 - s0:.2f} s "
                  f"= {(u1 + s1 - u0 - s0) / secs:.0%} of the span")
    size = out.stat().st_size
    print(f"  JSON {size / max(watch.count, 1):,.0f} bytes a line, {size / secs / 1e6:,.0f} MB/s")
    print(f"  lost: kernel {st.lost_kernel}, daemon {st.lost_daemon}; {filled} (posted records "
          "past half full are subject to --uid-budget)")
    # Each ring's data is mapped once (tracer/core/_ringsink.c) and wholly
    # resident: the rest is the daemon's own peak (queued lines, mostly).
    print(f"  peak RSS {peak_kb / 1024:,.0f} MiB, of which the ring buffer mapping "
          f"{ring_kb / 1024:,.0f} MiB: {(peak_kb - ring_kb) / 1024:,.0f} MiB besides")


def aggregated(reaper: Reaper, exe: Path, work: Path, n: int, rounds: int,
               mode: list[str]) -> None:
    print_header(f"aggregated: {n:,} open+close of one file, one rule `aggregate: 60s`")
    target = work / "aggregated-target"
    target.write_text("x\n")
    pol = work / "aggregate.yaml"
    pol.write_text(
        "policies:\n  - name: storm\n    rules:\n      - event: file_open\n"
        f"        match: {{path: ['{target}']}}\n        aggregate: 60s\n"
    )
    knob = Path("/proc/sys/kernel/bpf_stats_enabled")
    old = knob.read_text().strip()
    without, with_ = [], []
    for r in range(rounds):
        without.append(run_loop(exe, n, str(target)))
        out = work / f"aggregated-{r}.jsonl"
        d = TracerDaemon(reaper, out, ["--policy", str(pol),
                                       "--control-socket", str(work / "ctl4.sock"), *mode])
        d.start()
        ids = _daemon_prog_ids(d.pid)
        before = _run_stats(ids)
        knob.write_text("1")
        try:
            with_.append(run_loop(exe, n, str(target)))
            after = _run_stats(ids)
            # The same storm on a file no rule selects, for the same programs
            # under the same background: the cost the selection adds.
            run_loop(exe, n)
            unselected = _run_stats(ids)
        finally:
            knob.write_text(old)
        st = d.stop()  # the stop reports the count of the window still open
        events = [json.loads(line) for line in out.read_text().splitlines()]
        opens = [e for e in events if e["type"] == "file_open"]
        counted = sum(int(e["policy_summary"]["count"]) for e in events
                      if e["type"] == "policy_summary")
        runs = {name: (after[name][0] - before.get(name, (0, 0))[0],
                       after[name][1] - before.get(name, (0, 0))[1]) for name in after}
        # Every program that ran at least once per open; their runs include
        # other processes' syscalls on a shared machine (run counts say how many).
        busy = {k: v for k, v in runs.items() if v[1] >= n}
        print(f"  round {r + 1}: without {without[-1]:.3f} s, with {with_[-1]:.3f} s "
              f"({n / with_[-1]:,.0f} opens/s); file_open events {len(opens)}, "
              f"counted in summaries {counted:,} (sum {len(opens) + counted:,} of {n:,}); "
              f"lost kernel {st.lost_kernel} daemon {st.lost_daemon}")
        print("    kernel, aggregated opens: " + ", ".join(
            f"{k} {t / max(c, 1):.0f} ns per run x {c:,}" for k, (t, c) in busy.items()))
        plain = {k: (unselected[k][0] - after[k][0], unselected[k][1] - after[k][1])
                 for k in busy}
        print("    kernel, unselected opens: " + ", ".join(
            f"{k} {t / max(c, 1):.0f} ns per run x {c:,}" for k, (t, c) in plain.items()))
    ratio = statistics.median(with_) / statistics.median(without)
    print(f"  median without {statistics.median(without):.3f} s, with "
          f"{statistics.median(with_):.3f} s: ratio {ratio:.3f}, "
          f"{n / statistics.median(with_):,.0f} selected opens/s")


def _run_stats(ids: set[int]) -> dict[str, tuple[int, int]]:
    """(run time ns, runs) of the daemon's programs by name."""
    shown = json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], check=True,
                                      capture_output=True).stdout)
    return {p["name"]: (p.get("run_time_ns", 0), p.get("run_cnt", 0))
            for p in shown if p["id"] in ids}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--opens", type=int, default=1_000_000)
    ap.add_argument("--posted", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--stages", default="filtered,posted",
        help="which of hooks-only,filtered,program-cost,posted,aggregated to run"
    )
    ap.add_argument("--capture-mode", choices=["lsm", "fentry", "kprobe", "tracepoint"])
    ap.add_argument("--extra-policy", type=Path, action="append", default=[])
    ap.add_argument("--ancestors", choices=["full", "brief", "none"],
                    help="the daemon's --ancestors in the posted stage (default: its default)")
    ap.add_argument("--rings", default="256M",
                    help="both rings' size in the posted stage, or `default`: the daemon's own")
    ap.add_argument("--no-event-log", action="store_true",
                    help="the posted stage without the event log")
    args = ap.parse_args()
    stages = set(args.stages.split(","))
    require_root()
    for k, v in machine_summary().items():
        print(f"{k}: {v}")
    reaper = Reaper()  # stops every child on exit, error or signal
    try:
        work = tmpdir("open-storm")
        exe = build_loop(work)
        mode = ["--capture-mode", args.capture_mode] if args.capture_mode else []
        print(f"capture mode: {args.capture_mode or 'the daemon chooses'}")
        if "hooks-only" in stages:
            filtered(reaper, exe, work, args.opens, args.rounds, mode, rules=False)
        if "filtered" in stages:
            filtered(reaper, exe, work, args.opens, args.rounds, mode,
                     extra=args.extra_policy)
        if "program-cost" in stages:
            program_cost(reaper, exe, work, args.opens, args.rounds, mode, args.extra_policy)
        if "posted" in stages:
            extra = ["--ancestors", args.ancestors] if args.ancestors else []
            extra += ["--no-event-log"] if args.no_event_log else []
            posted(reaper, exe, work, args.posted, [*mode, *extra], args.rings)
        if "aggregated" in stages:
            aggregated(reaper, exe, work, args.posted, args.rounds, mode)
    finally:
        reaper.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
