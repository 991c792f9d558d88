"""Summarize a `py-spy record --format raw` (collapsed stacks) file.

    .venv/bin/python bench/pyspy_summary.py PROFILE.txt [--top 25]

Prints, per thread and overall, the functions with the most samples
(self = leaf frame, total = anywhere on the stack, counted once per
sample). Frames that are only waiting (Condition.wait, the ring-buffer
poll in epoll) are reported separately as idle so that the busy share is
visible.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

# A leaf in one of these means the thread was blocked, not computing.
IDLE_LEAVES = (
    "Condition.wait (threading.py",
    "Event.wait (threading.py",
    "Thread.join",
    "epoll_wait",
    "RingBuffer.poll (tracer/core/bpf.py",  # the leaf only while in poll(2)
    "_wait_for_tstate_lock",
    "socket.accept (socket.py",  # the control socket's accept loop
    "_serve (grpc/_server.py",  # gRPC's completion-queue poll
    "select (selectors.py",
)

_FRAME_RE = re.compile(r"^(?P<func>.+?) \((?P<file>[^()]*?):(?P<line>\d+)\)$")


def frame_key(frame: str, with_line: bool = False) -> str:
    """`path:function` (`:line`), paths relative to the repository or site-packages."""
    m = _FRAME_RE.match(frame)
    if not m:
        return frame
    file = m.group("file")
    for root in ("/work/main/", "site-packages/"):
        if root in file:
            file = file.split(root, 1)[1]
    if "/lib/python3" in file:
        file = file.rsplit("/", 1)[-1]
    return f"{file}:{m.group('func')}" + (f":{m.group('line')}" if with_line else "")


def load(path: Path) -> list[tuple[str, list[str], int]]:
    out = []
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        thread = "?"
        if frames and frames[0].startswith(("thread (", "process ")):
            thread = frames.pop(0)
            while frames and frames[0].startswith(("thread (", "process ")):
                thread = frames.pop(0)
        out.append((thread, frames, int(n)))
    return out


def summarize(samples: list[tuple[str, list[str], int]], top: int, out=sys.stdout) -> None:
    threads: Counter[str] = Counter()
    idle: Counter[str] = Counter()
    self_c: Counter[str] = Counter()
    total_c: Counter[str] = Counter()
    line_c: Counter[str] = Counter()
    busy = 0
    no_frames = 0
    for thread, frames, n in samples:
        threads[thread] += n
        if not frames:  # a thread caught with no Python frame (start-up, shutdown)
            no_frames += n
            idle[thread] += n
            continue
        leaf = frames[-1]
        if any(k in leaf for k in IDLE_LEAVES):
            idle[thread] += n
            continue
        busy += n
        self_c[frame_key(leaf)] += n
        line_c[frame_key(leaf, True)] += n
        for k in {frame_key(f) for f in frames}:
            total_c[k] += n
    all_n = sum(threads.values())
    print(f"samples: {all_n}, busy (not blocked in wait/poll/accept): {busy}, "
          f"with no Python frame: {no_frames}", file=out)
    for t, n in threads.most_common():
        print(f"  {t}: {n} samples, {idle[t]} idle, {n - idle[t]} busy", file=out)
    if not busy:
        return
    print(f"\ntop {top} by self samples (% of busy):", file=out)
    for k, n in self_c.most_common(top):
        print(f"  {100 * n / busy:5.1f}%  {k}", file=out)
    print(f"\ntop {top} by total (inclusive) samples (% of busy):", file=out)
    for k, n in total_c.most_common(top):
        print(f"  {100 * n / busy:5.1f}%  {k}", file=out)
    print(f"\ntop {min(top, 15)} self lines:", file=out)
    for k, n in line_c.most_common(min(top, 15)):
        print(f"  {100 * n / busy:5.1f}%  {k}", file=out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("profile", type=Path)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    summarize(load(args.profile), args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
