"""What the gRPC encoder's process caches keep alive: `python bench/pb_cache_memory.py`.

    .venv/bin/python bench/pb_cache_memory.py [--ancestors full] [--chains 275]

In process, no BPF: exec events with 64-deep chains of new processes, each
with 8 KiB of non-UTF-8 arguments (escaped by the daemon to ~32 KiB), are
encoded by one export.pb.Encoder (the hub's). Past half of the 1 MiB event
limit the chain is written cut, and with --ancestors brief the ancestors
only named, so most processes sit in the cut or lineage cache, whose bytes
are small and whose processes are not. Prints the RSS growth as it goes:
the caches are bounded by 16 MiB each of what they keep alive.
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from factories import BASH, T0, mkproc

from export.pb import Encoder
from tracer.core import text
from tracer.core.events import ProcessExec

RAW = bytes(range(128, 256)) * 64  # 8 KiB of non-UTF-8, as the kernel hands it over


def rss_mib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no VmRSS")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ancestors", default="full", choices=["full", "brief", "none"])
    p.add_argument("--chains", type=int, default=16384 // 60 + 2)
    args = p.parse_args()
    enc = Encoder(args.ancestors)
    base = rss_mib()
    for chain in range(args.chains):
        procs = []
        for k in range(64):
            arg, _ = text.decode(RAW + f"{chain}.{k}".encode())  # unique
            procs.append(
                mkproc(1000 + k, BASH, exec_id=f"{chain}:{k}", args=(arg,), flags=("non_utf8",))
            )
        data = enc.event_bytes(ProcessExec(T0, "n1", procs[0], procs[1], tuple(procs[2:])))
        del procs
        if chain % 60 == 0:
            gc.collect()
            kib, mib = len(data) >> 10, rss_mib() - base
            print(f"{64 * (chain + 1):6} processes, event {kib} KiB, rss +{mib} MiB")
    gc.collect()
    mib = rss_mib() - base
    print(f"ancestors={args.ancestors}: rss +{mib} MiB after {64 * args.chains} processes")


if __name__ == "__main__":
    main()
