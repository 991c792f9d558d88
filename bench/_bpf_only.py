"""Helper for bench/exec_storm.py: the tracer's BPF programs without the daemon.

Opens the daemon's capture object with tracer.core.bpf (unchanged), attaches
the same programs the daemon picks (--programs process: exec/fork/exit
only; all: also the file_open/connect programs, where this tracer
version has them), then either

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
left and writes one JSON object (records by kind) to --out or stdout.
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

from tracer.config import DEFAULT_BPF_DIR  # noqa: E402
from tracer.core import bpf, decode, loader  # noqa: E402
from tracer.core.probe import probe  # noqa: E402
from tracer.core.system import ensure_mounts  # noqa: E402

_stop = False


def _on_signal(signum: int, frame: object) -> None:
    global _stop
    _stop = True


def chosen_programs(variant: str, which: str) -> tuple[str, list[str]]:
    """(object file name, program names), for this version of the loader."""
    progs = [p[variant] for p in loader.PROCESS_PROGRAMS.values()]
    obj = getattr(loader, "CAPTURE_OBJECT", None) or loader.PROCESS_OBJECT
    if which == "all":
        capture = getattr(loader, "CAPTURE_PROGRAMS", {})
        if capture:  # the mode the daemon would choose on this kernel
            usable = probe(DEFAULT_BPF_DIR).capture_modes()
            progs += list(capture[loader.choose_capture_mode(usable)])
    return obj, progs


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--drain", choices=["none", "discard", "batch"], default="none")
    ap.add_argument("--programs", choices=["process", "all"], default="process")
    ap.add_argument("--ringbuf-size", type=int, default=64 << 20)
    ap.add_argument("--process-hooks", default="auto", choices=["auto", "tp_btf", "raw_tp"])
    ap.add_argument("--poll-ms", type=int, default=100)
    ap.add_argument("--batch-ms", type=float, default=10.0)
    ap.add_argument("--out", type=Path, help="write the JSON summary here (default: stdout)")
    args = ap.parse_args()
    ensure_mounts()  # what the daemon mounts: a fresh host has no tracefs yet
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_signal)
    variant = args.process_hooks
    if variant == "auto":
        variant = probe(DEFAULT_BPF_DIR).process_hooks
    obj_name, progs = chosen_programs(variant, args.programs)
    kinds: Counter[int] = Counter()
    nbytes = 0
    obj = bpf.BpfObject(DEFAULT_BPF_DIR / obj_name)
    rb = None
    try:
        for prog in obj.programs.values():
            prog.set_autoload(prog.name in progs)
        obj.map("tr_events").set_max_entries(args.ringbuf_size)
        obj.load()
        for name in progs:
            obj.attach(name)
        rb = bpf.RingBuffer(obj.map("tr_events"))
        print(f"event='ready' variant={variant} programs={len(progs)}", file=sys.stderr,
              flush=True)
        def count(batch: list[bytes]) -> int:
            nonlocal nbytes
            for raw in batch:
                kinds[int.from_bytes(raw[:4], "little")] += 1
                nbytes += len(raw)
            return len(batch)

        def consume_all() -> None:
            while count(rb.consume()) == rb.batch_max:
                pass

        if args.drain == "none":
            while not _stop:
                time.sleep(0.2)
        elif args.drain == "batch":
            while not _stop:
                time.sleep(args.batch_ms / 1000)
                consume_all()
        elif args.drain == "discard":
            while not _stop:
                count(rb.poll(args.poll_ms))
        consume_all()
    finally:
        if rb is not None:
            rb.close()
        obj.close()
    out = {
        "variant": variant,
        "drain": args.drain,
        "programs": progs,
        "records": {decode.KIND_NAMES.get(k, str(k)): n for k, n in kinds.items()},
        "bytes": nbytes,
    }
    if args.out:
        args.out.write_text(json.dumps(out))
    else:
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
