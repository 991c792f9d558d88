#!/usr/bin/env python3
"""What a Prometheus scraper costs the pipeline: the posted open storm of
open_storm.py, with --metrics-listen on, with and without a client scraping
/metrics every second (rounds alternate, so drift in the machine's load hits
both alike). Also prints how long one scrape takes.

Usage: .venv/bin/python bench/metrics_cost.py [--posted 200000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import OutputWatch, Reaper, TracerDaemon, machine_summary, require_root, tmpdir
from open_storm import build_loop, run_loop


class Scraper(threading.Thread):
    def __init__(self, url: str, every: float) -> None:
        super().__init__(daemon=True)
        self.url, self.every = url, every
        self.stop = threading.Event()
        self.seconds: list[float] = []
        self.sizes: list[int] = []

    def run(self) -> None:
        while not self.stop.wait(self.every):
            t0 = time.perf_counter()
            with urllib.request.urlopen(self.url, timeout=10) as r:
                self.sizes.append(len(r.read()))
            self.seconds.append(time.perf_counter() - t0)


def one(reaper: Reaper, exe: Path, work: Path, n: int, scrape: bool, i: int) -> float:
    target = work / "target"
    target.write_text("x\n")
    pol = work / "post.yaml"
    pol.write_text(
        "policies:\n  - name: post-all\n    rules:\n      - event: file_open\n"
        f"        match: {{path: ['{target}']}}\n"
    )
    shm = tmpdir("metrics-cost-", base=Path("/dev/shm"))
    out = shm / f"posted-{i}.jsonl"
    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = TracerDaemon(reaper, out, ["--policy", str(pol), "--ringbuf-size", "256M",
                                   "--metrics-listen", f"127.0.0.1:{port}", "--no-event-log",
                                   "--control-socket", str(work / f"ctl{i}.sock")])
    d.start()
    watch = OutputWatch(out, "file_open", n, d.cpu_seconds)
    scraper = Scraper(f"http://127.0.0.1:{port}/metrics", 1.0)
    if scrape:
        scraper.start()
    watch.start()
    run_loop(exe, n, str(target))
    got = watch.wait(timeout=600)
    scraper.stop.set()
    st = d.stop()
    out.unlink()
    rate = got.count / got.seconds
    extra = ""
    if scraper.seconds:
        extra = (f", {len(scraper.seconds)} scrapes of {statistics.median(scraper.sizes):,.0f} B, "
                 f"median {statistics.median(scraper.seconds) * 1000:.1f} ms")
    print(f"  {'scraped' if scrape else 'not scraped':<12} {rate:>9,.0f} events/s, "
          f"lost kernel {st.lost_kernel} daemon {st.lost_daemon}{extra}", flush=True)
    return rate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--posted", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    require_root()
    for k, v in machine_summary().items():
        print(f"{k}: {v}")
    reaper = Reaper()
    try:
        work = tmpdir("metrics-cost")
        exe = build_loop(work)
        rates: dict[bool, list[float]] = {False: [], True: []}
        runs = 0
        for r in range(args.rounds):
            for scrape in (r % 2 == 1, r % 2 == 0):
                runs += 1
                rates[scrape].append(one(reaper, exe, work, args.posted, scrape, runs))
        a, b = statistics.median(rates[False]), statistics.median(rates[True])
        print(f"median: {a:,.0f} events/s not scraped, {b:,.0f} scraped every second: "
              f"{(a - b) / a:+.1%} cost")
    finally:
        reaper.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
