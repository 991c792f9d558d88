#!/usr/bin/env python3
"""CPU per record of taking records out of the BPF ring buffer: the C reader
(tracer/core/_ringsink.c, what the daemon uses: the data mapped once) against
libbpf's ring_buffer__consume() with a ctypes callback in Python (what it used
before), on the same real ring, in alternating rounds.

    .venv/bin/python bench/ring_cost.py [--execs 3000] [--rounds 3]   (as root)

Each round fills the bulk ring with the records of `--execs` fork+exec+exit
of /bin/true while nobody reads it, then drains it with one reader and
prints that thread's CPU time per record. Other processes' records on the
machine are counted and drained too; the cost per record does not depend
on whose it is.
"""

from __future__ import annotations

import argparse
import ctypes
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tracer.config import DEFAULT_BPF_DIR
from tracer.core import _libbpf, bpf
from tracer.core.loader import capture_sensor

_SAMPLE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


class _PythonCallback:
    """The reader as it was: libbpf calls a Python function for every record."""

    def __init__(self, ring: bpf.Map) -> None:
        self.batch: list[bytes] = []
        self._cb = _SAMPLE_FN(self._on_sample)
        # Held (PyDLL), as the daemon called it: no GIL hand-off per record.
        self._held = ctypes.PyDLL(_libbpf.LIBBPF_SONAME)
        vp = ctypes.c_void_p
        self._held.ring_buffer__new.restype = vp
        self._held.ring_buffer__new.argtypes = [ctypes.c_int, _SAMPLE_FN, vp, vp]
        self._held.ring_buffer__consume.argtypes = [vp]
        self._held.ring_buffer__free.argtypes = [vp]
        self._ptr = self._held.ring_buffer__new(ring.fd, self._cb, None, None)

    def _on_sample(self, ctx: int | None, data: int, size: int) -> int:
        self.batch.append(ctypes.string_at(data, size))
        return 0

    def consume(self) -> list[bytes]:
        self._held.ring_buffer__consume(self._ptr)
        batch, self.batch = self.batch, []
        return batch

    def close(self) -> None:
        self._held.ring_buffer__free(self._ptr)


def _fill(execs: int) -> None:
    subprocess.run(["sh", "-c", f"i=0; while [ $i -lt {execs} ]; do /bin/true; i=$((i+1)); done"],
                   check=True)


def _drain(consume: Callable[[], list[bytes]]) -> tuple[int, float]:
    n = 0
    t0 = time.thread_time()
    while True:
        got = len(consume())
        n += got
        if not got:
            return n, time.thread_time() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--execs", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with capture_sensor(DEFAULT_BPF_DIR, "tp_btf", "tracepoint", 256 << 20) as sensor:
        c_reader = sensor.ringbuf
        py_reader = _PythonCallback(sensor.obj.map("tr_events"))
        try:
            _drain(c_reader.consume)
            for r in range(args.rounds):
                readers = (("C", c_reader.consume), ("libbpf+Python", py_reader.consume))
                for name, consume in readers:
                    _fill(args.execs)
                    n, cpu = _drain(consume)
                    print(f"round {r + 1} {name:<13} reader: {n:,} records, "
                          f"{cpu / max(n, 1) * 1e6:.2f} us CPU per record")
        finally:
            py_reader.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
