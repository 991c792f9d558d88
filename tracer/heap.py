"""Handing the C heap's free pages back to the kernel.

glibc keeps freed memory in its arenas for reuse. Start-up (vmlinux BTF,
policy compilation, the /proc scan) frees megabytes that would otherwise
stay resident for the daemon's whole life, and an exec storm's evicted
processes leave the same behind. On another libc this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util

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
