"""Helper for bench/exec_storm.py: the tracer's BPF programs without the daemon.

Opens the daemon's capture object with tracer.core.bpf (unchanged) and
attaches exec/fork/exit only (--programs process), or loads everything
the daemon loads through the daemon's own loader (--programs all: the
capture mode it would choose, every program and attachment), then either

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
import contextlib
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


_Started = tuple[bpf.RingBuffer, list[str]]  # the reader, the programs attached


def _process_only(stack: contextlib.ExitStack, variant: str, ringbuf_size: int) -> _Started:
    progs = [p[variant] for p in loader.PROCESS_PROGRAMS.values()]
    obj = stack.enter_context(bpf.BpfObject(DEFAULT_BPF_DIR / loader.CAPTURE_OBJECT))
    for prog in obj.programs.values():
        prog.set_autoload(prog.name in progs)
    obj.map("tr_events").set_max_entries(ringbuf_size)
    obj.load()
    for name in progs:
        obj.attach(name)
    rb = bpf.RingBuffer(obj.map("tr_events"))
    stack.callback(rb.close)
    return rb, progs


def _everything(stack: contextlib.ExitStack, variant: str, ringbuf_size: int) -> _Started:
    mode = loader.choose_capture_mode(probe(DEFAULT_BPF_DIR).capture_modes())
    sensor = stack.enter_context(
        loader.capture_sensor(DEFAULT_BPF_DIR, variant, mode, ringbuf_size)
    )
    return sensor.ringbuf, list(sensor.attached)


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
    kinds: Counter[int] = Counter()
    nbytes = 0
    with contextlib.ExitStack() as stack:
        start = _everything if args.programs == "all" else _process_only
        rb, progs = start(stack, variant, args.ringbuf_size)
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
