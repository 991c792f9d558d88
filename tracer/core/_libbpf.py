"""ctypes declarations of the part of libbpf 1.x that tracer uses.

Only prototypes live here; tracer.core.bpf wraps them in objects that own
their handles and turn failures into exceptions. Every function follows
libbpf 1.0 error conventions: pointers are NULL and ints negative on
error, with errno set.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

LIBBPF_SONAME = "libbpf.so.1"

# enum libbpf_print_level
LIBBPF_WARN = 0
LIBBPF_INFO = 1
LIBBPF_DEBUG = 2


PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


class TestRunOpts(ctypes.Structure):
    """struct bpf_test_run_opts (libbpf's bpf.h), up to `cpu`."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
    ]


class LibbpfMissing(RuntimeError):
    """libbpf.so.1 could not be loaded."""


def _declare(lib: ctypes.CDLL, name: str, restype: Any, *argtypes: Any) -> None:
    fn = getattr(lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)


def load() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(LIBBPF_SONAME, use_errno=True)
    except OSError as exc:
        raise LibbpfMissing(
            f"cannot load {LIBBPF_SONAME} ({exc}); install it: apt-get install libbpf1"
        ) from exc
    vp, cp, i, u32, sz = (
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_uint32,
        ctypes.c_size_t,
    )
    _declare(lib, "libbpf_set_print", vp, PRINT_FN)
    _declare(lib, "libbpf_num_possible_cpus", i)
    _declare(lib, "libbpf_major_version", u32)
    _declare(lib, "libbpf_minor_version", u32)
    _declare(lib, "bpf_object__open_file", vp, cp, vp)
    _declare(lib, "bpf_object__load", i, vp)
    _declare(lib, "bpf_object__close", None, vp)
    _declare(lib, "bpf_object__find_program_by_name", vp, vp, cp)
    _declare(lib, "bpf_object__find_map_by_name", vp, vp, cp)
    _declare(lib, "bpf_object__next_program", vp, vp, vp)
    _declare(lib, "bpf_program__name", cp, vp)
    _declare(lib, "bpf_program__section_name", cp, vp)
    _declare(lib, "bpf_program__set_autoload", i, vp, ctypes.c_bool)
    _declare(lib, "bpf_program__fd", i, vp)
    _declare(lib, "bpf_program__attach", vp, vp)
    _declare(lib, "bpf_program__attach_tracepoint", vp, vp, ctypes.c_char_p, ctypes.c_char_p)
    _declare(lib, "bpf_link__destroy", i, vp)
    _declare(lib, "bpf_map__set_max_entries", i, vp, u32)
    _declare(lib, "bpf_map__set_initial_value", i, vp, vp, sz)
    _declare(lib, "bpf_map__max_entries", u32, vp)
    _declare(lib, "bpf_map__fd", i, vp)
    _declare(lib, "bpf_map__value_size", u32, vp)
    _declare(lib, "bpf_map__name", cp, vp)
    _declare(lib, "bpf_map_lookup_elem", i, i, vp, vp)
    _declare(lib, "bpf_map_update_elem", i, i, vp, vp, ctypes.c_uint64)
    _declare(lib, "bpf_map_delete_elem", i, i, vp)
    _declare(lib, "libbpf_strerror", i, i, cp, sz)
    _declare(lib, "libbpf_find_vmlinux_btf_id", i, cp, i)
    _declare(lib, "bpf_obj_get_info_by_fd", i, i, vp, ctypes.POINTER(u32))
    _declare(lib, "bpf_prog_test_run_opts", i, i, ctypes.POINTER(TestRunOpts))
    return lib


def load_libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.vsnprintf.restype = ctypes.c_int
    libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
    libc.mount.restype = ctypes.c_int
    libc.mount.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_ulong,
        ctypes.c_void_p,
    ]
    return libc
