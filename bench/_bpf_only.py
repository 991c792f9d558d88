"""Helper for bench/exec_storm.py: the tracer's BPF programs without the daemon.

Loads and attaches the same process.bpf.o programs the daemon uses
(through tracer.loader, unchanged), then either

  --drain none     never reads the ring buffer while running (it must be
                   big enough to hold the whole storm); measures the
                   kernel-side cost of the programs alone. With no reader
                   waiting, the kernel sends no wake-ups.
  --drain discard  polls the ring buffer like the daemon (same poll
                   timeout) and throws the records away: programs +
                   per-record consumer wake-ups + a minimal consumer.
  --drain batch    sleeps --batch-ms, then consumes everything available
                   (ring_buffer__consume) and discards it: the same minimal
                   consumer without a wake-up per record (the kernel still
                   wakes up once per batch, when the buffer was empty).

Prints `ready` on stderr once attached; on SIGTERM/SIGINT drains what is
left and prints one JSON line on stdout: records by kind, kernel counters.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tracer import decode  # noqa: E402
from tracer.daemon import DEFAULT_BPF_DIR  # noqa: E402
from tracer.loader import process_sensor  # noqa: E402
from tracer.probe import probe  # noqa: E402

_stop = False


def _on_signal(signum: int, frame: object) -> None:
    global _stop
    _stop = True


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--drain", choices=["none", "discard", "batch"], default="none")
    ap.add_argument("--ringbuf-size", type=int, default=64 << 20)
    ap.add_argument("--process-hooks", default="auto", choices=["auto", "tp_btf", "raw_tp"])
    ap.add_argument("--poll-ms", type=int, default=100)
    ap.add_argument("--batch-ms", type=float, default=10.0)
    ap.add_argument("--out", type=Path, help="write the JSON summary here (default: stdout)")
    args = ap.parse_args()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_signal)
    variant = args.process_hooks
    if variant == "auto":
        variant = probe(DEFAULT_BPF_DIR).process_hooks
    kinds: Counter[int] = Counter()
    nbytes = 0
    with process_sensor(DEFAULT_BPF_DIR, variant, args.ringbuf_size) as sensor:
        print("event='ready' variant=" + variant, file=sys.stderr, flush=True)
        rb = sensor.ringbuf
        if args.drain == "none":
            while not _stop:
                time.sleep(0.2)
        elif args.drain == "batch":
            while not _stop:
                time.sleep(args.batch_ms / 1000)
                for raw in rb.consume():
                    kinds[int.from_bytes(raw[:4], "little")] += 1
                    nbytes += len(raw)
        else:
            while not _stop:
                for raw in rb.poll(args.poll_ms):
                    kinds[int.from_bytes(raw[:4], "little")] += 1
                    nbytes += len(raw)
        for raw in rb.consume():
            kinds[int.from_bytes(raw[:4], "little")] += 1
            nbytes += len(raw)
        c = sensor.counters()
    out = {
        "variant": variant,
        "drain": args.drain,
        "records": {decode.KIND_NAMES.get(k, str(k)): n for k, n in kinds.items()},
        "bytes": nbytes,
        "kernel_emitted": c.emitted,
        "kernel_dropped": c.dropped,
    }
    if args.out:
        args.out.write_text(json.dumps(out))
    else:
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
