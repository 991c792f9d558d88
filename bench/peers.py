#!/usr/bin/env python3
"""tracer beside bpftrace and auditd on the same storms, one table for BENCHMARKS.md.

Runs the workplace's peer harness (../shared/bench/peers.py: interleaved
rounds of no tracer, bpftrace, auditd and tracer on one workload) for the
three storms of the performance targets, installs bpftrace and auditd
first if they are missing, and prints one Markdown table with the date,
the commit and the machine; --record appends it to BENCHMARKS.md.

    bench/peers.py [--quick] [--record] [--peers PATH]   (as root, from the repository root)
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_LINE = re.compile(
    r"^(?P<kind>\w+) storm n=(?P<n>\d+) rounds=(?P<rounds>\d+) (?P<tracer>\S+)\s+median "
    r"(?P<median>[\d.]+)s\s+ratio (?P<ratio>\S+)\s+captured (?P<captured>\S+)$"
)
_POSTED = "policies:\n  - name: bench-every-open\n    rules:\n      - event: file_open\n" \
          "        match: {path: [/etc/hostname]}\n"


def _install_peers() -> None:
    wanted = (("bpftrace", "bpftrace"), ("auditd", "auditctl"))
    missing = [pkg for pkg, cmd in wanted if not shutil.which(cmd)]
    if missing:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env,
                       stdout=subprocess.DEVNULL)


def _storm(peers: Path, label: str, args: list[str], env: dict[str, str]) -> list[str]:
    print(f"== {label}: peers.py {' '.join(args)}", flush=True)
    out = subprocess.run(
        [sys.executable, str(peers), *args], cwd=REPO, env={**os.environ, **env},
        check=True, capture_output=True, text=True,
    ).stdout
    print(out, end="", flush=True)
    rows = {m["tracer"]: m for line in out.splitlines() if (m := _LINE.match(line.strip()))}
    cell = lambda t: (  # noqa: E731
        f"{rows[t]['ratio']} ({rows[t]['captured']} captured)" if t in rows else "-"
    )
    return [label, cell("bpftrace"), cell("auditd"), cell("tracer")]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a tenth of the work, to try it")
    p.add_argument("--record", action="store_true", help="append the table to BENCHMARKS.md")
    p.add_argument("--peers", type=Path, default=REPO.parent / "shared" / "bench" / "peers.py")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("bench/peers.py: run as root (it loads BPF and starts auditd)", file=sys.stderr)
        return 1
    if not args.peers.is_file():
        print(f"bench/peers.py: {args.peers} not found (--peers)", file=sys.stderr)
        return 1
    _install_peers()
    scale = 10 if args.quick else 1
    with tempfile.TemporaryDirectory() as tmp:
        posted = Path(tmp) / "posted.yaml"
        posted.write_text(_POSTED)
        os.chmod(tmp, 0o755)
        rows = [
            _storm(args.peers, "exec, 2,000 x 3",
                   ["exec", str(2000 // scale), "3", "none", "bpftrace", "auditd", "tracer"],
                   {"PEERS_TRACER_POLICY": "policy/library"}),
            _storm(args.peers, "open, 300,000 x 5, no rule selects it",
                   ["open", str(300000 // scale), "5", "none", "bpftrace", "auditd", "tracer"],
                   {"PEERS_FILTER_PATH": "/usr/share/nonexistent-bench",
                    "PEERS_TRACER_POLICY": "policy/library"}),
            _storm(args.peers, "open, 200,000 x 3, every open selected",
                   ["open", str(200000 // scale), "3", "none", "bpftrace", "auditd", "tracer"],
                   {"PEERS_TRACER_POLICY": str(posted)}),
        ]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip()
    head = (f"\n### Beside bpftrace and auditd ({time.strftime('%Y-%m-%d', time.gmtime())}, "
            f"commit {commit}, {os.cpu_count()} vCPUs, Linux {platform.release()})\n\n"
            "Ratios of each tracer's median storm time to no tracer's, one run of "
            "`bench/peers.py`, interleaved rounds.\n\n"
            "| storm | bpftrace | auditd | tracer |\n| --- | --- | --- | --- |\n")
    table = head + "".join(f"| {' | '.join(r)} |\n" for r in rows)
    print(table)
    if args.record:
        with open(REPO / "BENCHMARKS.md", "a") as f:
            f.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
