"""The daemon's heap: the C heap's free pages handed back to the kernel when
the daemon says so, and malloc and the cyclic garbage collector set for a
long-lived process that posts many events.

glibc keeps freed memory in its arenas for reuse. Start-up (vmlinux BTF,
policy compilation, the /proc scan) frees megabytes that would otherwise
stay resident for the daemon's whole life, and an exec storm's evicted
processes leave the same behind. On another libc this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os

_libc: ctypes.CDLL | None
try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _libc.malloc_trim.argtypes = [ctypes.c_size_t]
    _libc.malloc_trim.restype = ctypes.c_int
    _libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _libc.mallopt.restype = ctypes.c_int
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


# glibc's malloc as the daemon runs it. A posted storm makes and frees lines
# of a few KB, and the event log's compression buffers of hundreds: at
# glibc's defaults each free that left more than 128 KiB at the top of the
# heap gave it back, and each buffer over 128 KiB was a mapping of its own,
# so every batch faulted them all in again: 0.8 page faults per posted event
# with the event log, half its writer's CPU (BENCHMARKS.md). The heap keeps
# up to TRIM_THRESHOLD until the daemon's own periodic trim() instead.
# (Setting either also stops glibc moving them by itself.)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 8 << 20
MMAP_THRESHOLD = 4 << 20


def _operator_set_malloc() -> bool:
    """An operator's own malloc settings win."""
    env = os.environ
    return (
        "MALLOC_TRIM_THRESHOLD_" in env
        or "MALLOC_MMAP_THRESHOLD_" in env
        or "glibc.malloc." in env.get("GLIBC_TUNABLES", "")
    )


def keep_freed_heap() -> bool:
    """The malloc settings above; False where not glibc or the environment sets its own."""
    if _libc is None or _operator_set_malloc():
        return False
    mmap_set: int = _libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    trim_set: int = _libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return mmap_set == 1 and trim_set == 1


def settle() -> None:
    """Once started: what exists now (modules, the policy, the cache of every
    process on the machine) lives as long as the daemon; left to the cyclic
    GC, each full collection would walk it again (0.7 us of every posted
    event's 9 in the open storm). Objects are still freed by reference count
    when dropped. The young generation is collected less often, and the C
    heap keeps what it frees until trim()."""
    gc.collect()  # cyclic garbage left now would be frozen, never freed
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    keep_freed_heap()
