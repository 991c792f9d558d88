"""Open, configure, load and attach the capture objects.

Each hook has one program per variant in the object; the loader keeps
the chosen variant's program and disables the others before load, since
one program the kernel refuses fails the whole object.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import structlog

from tracer import bpf, decode

_log = structlog.get_logger(component="loader")

PROCESS_OBJECT = "process.bpf.o"
# hook -> program per variant
PROCESS_PROGRAMS = {
    "exec": {"tp_btf": "tr_exec_btf", "raw_tp": "tr_exec_raw"},
    "fork": {"tp_btf": "tr_fork_btf", "raw_tp": "tr_fork_raw"},
    "exit": {"tp_btf": "tr_exit_btf", "raw_tp": "tr_exit_raw"},
}
PROCESS_VARIANTS = ("tp_btf", "raw_tp")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class ConfigError(ValueError):
    """A setting the daemon cannot run with; the message names the fix."""


RINGBUF_MIN = 4096
RINGBUF_MAX = 1 << 30


def check_ringbuf_size(size: int) -> None:
    if size < RINGBUF_MIN or size > RINGBUF_MAX or size & (size - 1):
        raise ConfigError(
            f"ring buffer size {size} is not a power of two between 4K and 1G "
            "(e.g. --ringbuf-size 16M)"
        )


@dataclass(slots=True)
class KernelCounters:
    emitted: dict[str, int]
    dropped: dict[str, int]


class Sensor:
    """A loaded, attached capture object and its ring buffer."""

    def __init__(self, obj: bpf.BpfObject, variant: str) -> None:
        self.obj = obj
        self.variant = variant
        self.ringbuf = bpf.RingBuffer(obj.map("tr_events"))
        self._stats = obj.map("tr_stats")

    def counters(self) -> KernelCounters:
        """Totals since load, summed over CPUs."""
        emitted: dict[str, int] = {}
        dropped: dict[str, int] = {}
        for kind, name in decode.KIND_NAMES.items():
            for stat, out in ((decode.STAT_EMITTED, emitted), (decode.STAT_RB_DROPPED, dropped)):
                key = _U32.pack(kind * decode.STAT_COUNT + stat)
                out[name] = sum(_U64.unpack(v)[0] for v in self._stats.lookup_percpu(key))
        return KernelCounters(emitted, dropped)

    def close(self) -> None:
        self.ringbuf.close()
        self.obj.close()


@contextmanager
def process_sensor(bpf_dir: Path, variant: str, ringbuf_size: int) -> Iterator[Sensor]:
    """Load and attach exec/fork/exit capture; detach everything on exit."""
    if variant not in PROCESS_VARIANTS:
        raise ConfigError(
            f"unknown process hook variant {variant!r}: use one of {PROCESS_VARIANTS}"
        )
    check_ringbuf_size(ringbuf_size)
    obj = bpf.BpfObject(bpf_dir / PROCESS_OBJECT)
    try:
        chosen = {hook: progs[variant] for hook, progs in PROCESS_PROGRAMS.items()}
        for prog in obj.programs.values():
            prog.set_autoload(prog.name in chosen.values())
        obj.map("tr_events").set_max_entries(ringbuf_size)
        obj.load()
        for name in chosen.values():
            obj.attach(name)
        sensor = Sensor(obj, variant)
    except BaseException:
        obj.close()
        raise
    try:
        yield sensor
    finally:
        sensor.close()
