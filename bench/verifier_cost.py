"""What the kernel verifier checks at start-up, program by program.

    .venv/bin/python bench/verifier_cost.py [--mode tracepoint] [--runs 3]

Loads everything `loader.capture_sensor()` loads for one capture mode (the
daemon's defaults) `--runs` times and prints, per program, the kernel's
`verified_insns` (bpf_obj_get_info_by_fd; independent of machine load) and
its verification time and state counts (the verifier's BPF_LOG_STATS
summary; the time depends on load), then the wall time of the whole
load-and-attach, the median over the runs.
"""

from __future__ import annotations

import argparse
import ctypes
import re
import statistics
import struct
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, require_root

from tracer.core import bpf, loader

# struct bpf_prog_info (uapi/linux/bpf.h): verified_insns (Linux 5.16) at byte 216
_VERIFIED = struct.Struct("<I")
_VERIFIED_OFFSET = 216
_INFO_LEN = _VERIFIED_OFFSET + _VERIFIED.size
# BPF_LOG_STATS: only the summary lines, not the instruction trace
_LOG_STATS = 4
_LOG_SIZE = 4096
_STACK = re.compile(r"stack depth (?P<depth>[\d+]+)")
_STATS = re.compile(
    r"verification time (?P<us>\d+) usec.*?processed (?P<insns>\d+) insns.*?"
    r"total_states (?P<states>\d+) peak_states (?P<peak>\d+)",
    re.S,
)


def _verified_insns(prog: bpf.Program) -> int:
    buf = ctypes.create_string_buffer(_INFO_LEN)
    size = ctypes.c_uint32(_INFO_LEN)
    if bpf.lib().bpf_obj_get_info_by_fd(prog.fd, buf, ctypes.byref(size)) != 0:
        raise OSError(ctypes.get_errno(), f"program info of {prog.name}")
    (n,) = _VERIFIED.unpack_from(buf.raw, _VERIFIED_OFFSET)
    return int(n)


@contextmanager
def _stats_logs() -> Iterator[dict[str, ctypes.Array[ctypes.c_char]]]:
    """Give every program of the next BpfObject.load() a stats-only verifier log."""
    lib = bpf.lib()
    lib.bpf_program__set_log_level.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.bpf_program__set_log_buf.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    logs: dict[str, ctypes.Array[ctypes.c_char]] = {}
    real = bpf.BpfObject.load

    def load(obj: bpf.BpfObject) -> None:
        for p in obj.programs.values():
            buf = logs[p.name] = ctypes.create_string_buffer(_LOG_SIZE)
            lib.bpf_program__set_log_level(p._ptr, _LOG_STATS)
            lib.bpf_program__set_log_buf(p._ptr, buf, _LOG_SIZE)
        real(obj)

    bpf.BpfObject.load = load  # type: ignore[method-assign]
    try:
        yield logs
    finally:
        bpf.BpfObject.load = real  # type: ignore[method-assign]


@dataclass(frozen=True)
class _Row:
    insns: int  # verified_insns
    us: int  # verification time, -1: not in the log
    states: int
    peak: int
    stack: str  # each function's stack depth, caller first


def _row(prog: bpf.Program, log: str) -> _Row:
    m, st = _STATS.search(log), _STACK.search(log)
    us, states, peak = (int(m["us"]), int(m["states"]), int(m["peak"])) if m else (-1, -1, -1)
    return _Row(_verified_insns(prog), us, states, peak, st["depth"] if st else "?")


def _one_run(bpf_dir: Path, mode: str, variant: str) -> tuple[float, dict[str, _Row]]:
    rows: dict[str, _Row] = {}
    with _stats_logs() as logs:
        t0 = time.perf_counter()
        with loader.capture_sensor(bpf_dir, variant, mode, 1 << 22) as sensor:
            wall = time.perf_counter() - t0
            for name, prog in sensor.obj.programs.items():
                if prog.fd >= 0:
                    rows[name] = _row(prog, logs[name].value.decode(errors="replace"))
    return wall, rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--mode", default="tracepoint", choices=sorted(loader.CAPTURE_PROGRAMS))
    ap.add_argument("--process-hooks", default="tp_btf", choices=loader.PROCESS_VARIANTS)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--bpf-dir", type=Path, default=REPO / "build" / "bpf",
                    help="the directory of tracer.bpf.o (another checkout's, to compare)")
    args = ap.parse_args()
    require_root()
    walls: list[float] = []
    times: dict[str, list[int]] = {}
    rows: dict[str, _Row] = {}
    for _ in range(args.runs):
        wall, rows = _one_run(args.bpf_dir, args.mode, args.process_hooks)
        walls.append(wall)
        for name, row in rows.items():
            times.setdefault(name, []).append(row.us)
    print(f"{'program':<26} {'verified_insns':>14} {'verify ms':>10} {'states':>8} "
          f"{'peak':>7}  stack")
    for name, r in sorted(rows.items(), key=lambda kv: -kv[1].insns):
        ms = statistics.median(times[name]) / 1000
        print(f"{name:<26} {r.insns:>14,} {ms:>10.1f} {r.states:>8,} {r.peak:>7,}  {r.stack}")
    total = sum(r.insns for r in rows.values())
    verify = sum(statistics.median(t) for t in times.values()) / 1000
    print(f"{'all ' + str(len(rows)) + ' programs':<26} {total:>14,} {verify:>10.1f}")
    print(f"load and attach (median of {args.runs}): {statistics.median(walls):.2f} s "
          f"(runs: {', '.join(f'{w:.2f}' for w in walls)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
