"""The daemon's heap: the C heap's free pages handed back to the kernel,
and the cyclic garbage collector set for a long-lived process.

glibc keeps freed memory in its arenas for reuse. Start-up (vmlinux BTF,
policy compilation, the /proc scan) frees megabytes that would otherwise
stay resident for the daemon's whole life, and an exec storm's evicted
processes leave the same behind. On another libc this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

_libc: ctypes.CDLL | None
try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _libc.malloc_trim.argtypes = [ctypes.c_size_t]
    _libc.malloc_trim.restype = ctypes.c_int
except (OSError, AttributeError):
    _libc = None


def trim() -> bool:
    """Free heap pages back to the kernel (all arenas). True if any were."""
    return _libc is not None and _libc.malloc_trim(0) == 1


# Allocations between two collections of the young generation (Python's
# default: 700). Each posted event makes a handful of objects that live
# until its line is written; collected every 700 allocations, they were
# walked again and again while in flight: 0.25 us of a posted open's ~4.6
# (bench/pipeline_cost.py, BENCHMARKS.md). Garbage in cycles is rare here
# and waits at most that many allocations longer.
GC_YOUNG_THRESHOLD = 10_000


def settle_collector() -> None:
    """Once started: what exists now (modules, the policy, the cache of every
    process on the machine) lives as long as the daemon; left to the cyclic
    GC, each full collection would walk it again (0.7 us of every posted
    event's 9 in the open storm). Objects are still freed by reference count
    when dropped. And the young generation is collected less often."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
