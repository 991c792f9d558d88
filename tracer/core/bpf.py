"""A small object API over libbpf, loaded with ctypes.

Handles are owned by Python objects and released in close()/destroy();
every libbpf failure raises LibbpfError with the errno and the messages
libbpf logged while the call ran (its verifier log included), so the
cause reaches the user instead of only the log.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os
import platform
import select
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import structlog

from tracer.core import _libbpf, _ringsink

_log = structlog.get_logger(component="libbpf")

_lib: ctypes.CDLL | None = None
_libc: ctypes.CDLL | None = None
_lib_lock = threading.Lock()
_capture = threading.local()
# Kept alive for the life of the process: libbpf holds the raw pointer.
_print_cb: Any = None

_quiet = threading.local()

_LEVELS = {
    _libbpf.LIBBPF_WARN: "warning",
    _libbpf.LIBBPF_INFO: "info",
    _libbpf.LIBBPF_DEBUG: "debug",
}


class LibbpfError(OSError):
    """A libbpf call failed. `errno` is set; `detail` holds libbpf's own log lines."""

    errno: int

    def __init__(self, op: str, err: int, detail: list[str]) -> None:
        self.op = op
        self.detail = detail
        msg = f"{op}: {os.strerror(err)}"
        tail = [line for line in detail if line.strip()][-12:]
        if tail:
            msg += "\n  libbpf: " + "\n  libbpf: ".join(tail)
        super().__init__(err, msg)

    def __str__(self) -> str:
        return str(self.args[1])


# The callback gets a pointer to the caller's va_list state (x86_64: the
# 24-byte __va_list_tag; arm64: a 32-byte copy of the struct). Formatting
# consumes it; saving and restoring those bytes is what va_copy does.
_VA_LIST_BYTES = {"x86_64": 24, "aarch64": 32}.get(platform.machine(), 0)
_FIRST_TRY = 4096


def _format(fmt: bytes, va_list: int | None) -> bytes:
    """The whole message: a verifier log runs to megabytes, and its last
    lines (the error) are the ones that matter."""
    assert _libc is not None
    buf = ctypes.create_string_buffer(_FIRST_TRY)
    if not va_list or not _VA_LIST_BYTES:
        _libc.vsnprintf(buf, len(buf), fmt, va_list)
        return buf.value
    saved = ctypes.string_at(va_list, _VA_LIST_BYTES)
    n = _libc.vsnprintf(buf, len(buf), fmt, va_list)
    if n >= len(buf):
        ctypes.memmove(va_list, saved, len(saved))
        buf = ctypes.create_string_buffer(n + 1)
        _libc.vsnprintf(buf, len(buf), fmt, va_list)
    return buf.value


def _on_print(level: int, fmt: bytes | None, va_list: int | None) -> int:
    # Debug output (every relocation: ~11,000 messages per start) is neither
    # kept nor logged, so it is not formatted either: that was ~60 ms of a start.
    if fmt is None or _libc is None or level > _libbpf.LIBBPF_INFO:
        return 0
    text = _format(fmt, va_list).decode("utf-8", "replace").rstrip("\n")
    lines: list[str] | None = getattr(_capture, "lines", None)
    if lines is not None:
        lines.extend(text.splitlines())
    # Failures that a probe expects are not worth a warning.
    if not getattr(_quiet, "on", False):
        getattr(_log, _LEVELS.get(level, "info"))(text)
    return 0


def lib() -> ctypes.CDLL:
    """The loaded libbpf, with its log routed to structlog (loaded once)."""
    global _lib, _libc, _print_cb
    if _lib is not None:  # every map lookup comes here: no lock once loaded
        return _lib
    with _lib_lock:
        if _lib is None:
            lib = _libbpf.load()
            _libc = _libbpf.load_libc()
            _print_cb = _libbpf.PRINT_FN(_on_print)
            lib.libbpf_set_print(_print_cb)
            _lib = lib
        return _lib


class quiet:
    """Within this block libbpf's messages are captured but not logged."""

    def __enter__(self) -> None:
        self._outer = getattr(_quiet, "on", False)
        _quiet.on = True

    def __exit__(self, *exc: object) -> None:
        _quiet.on = self._outer


def libbpf_version() -> str:
    return f"{lib().libbpf_major_version()}.{lib().libbpf_minor_version()}"


def num_possible_cpus() -> int:
    n: int = lib().libbpf_num_possible_cpus()
    if n < 0:
        raise LibbpfError("libbpf_num_possible_cpus", -n, [])
    return n


# enum bpf_attach_type values that name what libbpf_find_vmlinux_btf_id
# looks for: a tracepoint's btf_trace_ typedef, or a function.
_BTF_TARGETS = {"tp_btf": 23, "function": 24}  # BPF_TRACE_RAW_TP, BPF_TRACE_FENTRY


def vmlinux_has(target: str, name: str) -> bool:
    """Whether the running kernel's BTF has the tracepoint (target "tp_btf")
    or the function (target "function") `name`: a program the kernel lacks
    must be disabled before load, or the whole object fails."""
    with quiet():
        return bool(lib().libbpf_find_vmlinux_btf_id(name.encode(), _BTF_TARGETS[target]) > 0)


class _Call:
    """Collects libbpf's log lines for the duration of one call."""

    def __init__(self, op: str) -> None:
        self.op = op

    def __enter__(self) -> Self:
        self.lines: list[str] = []
        self.outer = getattr(_capture, "lines", None)
        _capture.lines = self.lines
        ctypes.set_errno(0)
        return self

    def __exit__(self, *exc: object) -> None:
        _capture.lines = self.outer
        if self.outer is not None:
            self.outer.extend(self.lines)

    def fail(self, err: int) -> LibbpfError:
        return LibbpfError(self.op, abs(err) or ctypes.get_errno() or _errno.EINVAL, self.lines)

    def check_int(self, ret: int) -> int:
        if ret < 0:
            raise self.fail(ret)
        return ret

    def check_ptr(self, ptr: int | None) -> int:
        if not ptr:
            raise self.fail(ctypes.get_errno())
        return ptr


class Link:
    """An attached program. destroy() detaches it."""

    def __init__(self, ptr: int, program: str) -> None:
        self._ptr: int | None = ptr
        self.program = program

    def destroy(self) -> None:
        if self._ptr:
            lib().bpf_link__destroy(self._ptr)
            self._ptr = None


# struct bpf_prog_info (uapi/linux/bpf.h) up to and including run_cnt
# (Linux 5.1): run_time_ns at byte 192, run_cnt at 200. A shorter info_len
# than the kernel's struct is accepted; the kernel fills what fits.
_RUN_STATS = struct.Struct("<QQ")
_RUN_STATS_OFFSET = 192
_PROG_INFO_LEN = _RUN_STATS_OFFSET + _RUN_STATS.size


@dataclass(frozen=True, slots=True)
class RunStats:
    run_time_ns: int
    run_cnt: int


class Program:
    def __init__(self, ptr: int) -> None:
        self._ptr = ptr
        self.name: str = lib().bpf_program__name(ptr).decode()
        self.section: str = lib().bpf_program__section_name(ptr).decode()

    def set_autoload(self, on: bool) -> None:
        """Must be called before BpfObject.load()."""
        with _Call(f"set autoload of {self.name}") as c:
            c.check_int(lib().bpf_program__set_autoload(self._ptr, on))

    @property
    def fd(self) -> int:
        fd: int = lib().bpf_program__fd(self._ptr)
        return fd

    def run_stats(self) -> RunStats:
        """The kernel's run time and run count of this loaded program.

        Both stay 0 unless run-time stats are on (the sysctl
        kernel.bpf_stats_enabled=1, or a BPF_ENABLE_STATS fd held open):
        the kernel counts them only then, since timing every run costs.
        """
        buf = ctypes.create_string_buffer(_PROG_INFO_LEN)
        size = ctypes.c_uint32(_PROG_INFO_LEN)
        with _Call(f"program info of {self.name}") as c:
            c.check_int(lib().bpf_obj_get_info_by_fd(self.fd, buf, ctypes.byref(size)))
        run_time_ns, run_cnt = _RUN_STATS.unpack_from(buf.raw, _RUN_STATS_OFFSET)
        return RunStats(run_time_ns, run_cnt)

    def run(self, ctx: bytes) -> int:
        """Run a loaded program that is attached nowhere (SEC("syscall")) once,
        with `ctx` as its argument; its return value."""
        buf = ctypes.create_string_buffer(ctx, len(ctx))
        opts = _libbpf.TestRunOpts(
            sz=ctypes.sizeof(_libbpf.TestRunOpts),
            ctx_in=ctypes.cast(buf, ctypes.c_void_p),
            ctx_size_in=len(ctx),
        )
        with _Call(f"run {self.name}") as c:
            c.check_int(lib().bpf_prog_test_run_opts(self.fd, ctypes.byref(opts)))
        return int(opts.retval)

    def _attach(self, what: str, fn: Callable[[], int | None]) -> Link:
        with _Call(f"attach {self.name} ({what})") as c:
            return Link(c.check_ptr(fn()), self.name)

    def attach(self) -> Link:
        """Attach where the section name says (tp/, raw_tp/, tp_btf/, kprobe/, fentry/, lsm/)."""
        return self._attach(self.section, lambda: lib().bpf_program__attach(self._ptr))

    def attach_tracepoint(self, category: str, name: str) -> Link:
        """Attach a tp/ program to a tracepoint its section does not name."""
        return self._attach(
            f"tp/{category}/{name}",
            lambda: lib().bpf_program__attach_tracepoint(
                self._ptr, category.encode(), name.encode()
            ),
        )


class Map:
    def __init__(self, ptr: int) -> None:
        self._ptr = ptr
        self.name: str = lib().bpf_map__name(ptr).decode()

    @property
    def fd(self) -> int:
        fd: int = lib().bpf_map__fd(self._ptr)
        return fd

    @property
    def value_size(self) -> int:
        n: int = lib().bpf_map__value_size(self._ptr)
        return n

    @property
    def max_entries(self) -> int:
        n: int = lib().bpf_map__max_entries(self._ptr)
        return n

    def set_max_entries(self, n: int) -> None:
        """Must be called before BpfObject.load()."""
        with _Call(f"set max_entries of map {self.name} to {n}") as c:
            c.check_int(lib().bpf_map__set_max_entries(self._ptr, n))

    def set_initial_value(self, data: bytes) -> None:
        """A global data map's contents at load (its whole size); before BpfObject.load()."""
        buf = ctypes.create_string_buffer(data, len(data))
        with _Call(f"set the initial value of map {self.name}") as c:
            c.check_int(lib().bpf_map__set_initial_value(self._ptr, buf, len(data)))

    def lookup(self, key: bytes, value_size: int | None = None) -> bytes | None:
        """The value under `key`, or None when absent."""
        size = value_size if value_size is not None else self.value_size
        kbuf = ctypes.create_string_buffer(key, len(key))
        vbuf = ctypes.create_string_buffer(size)
        with _Call(f"lookup in map {self.name}") as c:
            ret = lib().bpf_map_lookup_elem(self.fd, kbuf, vbuf)
            if ret < 0:
                if -ret == _errno.ENOENT or ctypes.get_errno() == _errno.ENOENT:
                    return None
                raise c.fail(ret)
        return vbuf.raw

    def lookup_percpu(self, key: bytes) -> list[bytes]:
        """One value per possible CPU (per-CPU maps)."""
        slot = (self.value_size + 7) & ~7
        ncpu = num_possible_cpus()
        raw = self.lookup(key, slot * ncpu)
        if raw is None:
            return []
        return [raw[i * slot : i * slot + self.value_size] for i in range(ncpu)]

    def delete(self, key: bytes) -> None:
        """Remove `key`; FileNotFoundError when it is not there."""
        kbuf = ctypes.create_string_buffer(key, len(key))
        with _Call(f"delete from map {self.name}") as c:
            ret = lib().bpf_map_delete_elem(self.fd, kbuf)
            if ret < 0:
                err = -ret if ret != -1 else ctypes.get_errno()
                if err == _errno.ENOENT:
                    raise FileNotFoundError(_errno.ENOENT, f"no such key in map {self.name}")
                raise c.fail(err)

    def update(self, key: bytes, value: bytes, flags: int = 0) -> None:
        kbuf = ctypes.create_string_buffer(key, len(key))
        vbuf = ctypes.create_string_buffer(value, len(value))
        with _Call(f"update map {self.name}") as c:
            c.check_int(lib().bpf_map_update_elem(self.fd, kbuf, vbuf, flags))


class BpfObject:
    """An opened (then loaded) BPF ELF object. Use as a context manager."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.is_file():
            raise FileNotFoundError(
                _errno.ENOENT, f"BPF object {path} not found; build it with `make bpf`"
            )
        with _Call(f"open {path}") as c:
            self._ptr: int | None = c.check_ptr(
                lib().bpf_object__open_file(str(path).encode(), None)
            )
        self._links: list[Link] = []
        self._programs = {p.name: p for p in self._iter_programs()}

    def _iter_programs(self) -> Iterator[Program]:
        prev: int | None = None
        while True:
            prev = lib().bpf_object__next_program(self._ptr, prev)
            if not prev:
                return
            yield Program(prev)

    @property
    def programs(self) -> dict[str, Program]:
        return self._programs

    def program(self, name: str) -> Program:
        try:
            return self._programs[name]
        except KeyError:
            raise KeyError(f"no program {name!r} in {self.path}") from None

    def map(self, name: str) -> Map:
        with _Call(f"find map {name} in {self.path}") as c:
            return Map(c.check_ptr(lib().bpf_object__find_map_by_name(self._ptr, name.encode())))

    def load(self) -> None:
        with _Call(f"load {self.path.name}") as c:
            c.check_int(lib().bpf_object__load(self._ptr))

    def attach(self, program: str) -> Link:
        """Attach one program by section name and keep the link for close()."""
        link = self.program(program).attach()
        self._links.append(link)
        return link

    def attach_tracepoint(self, program: str, category: str, name: str) -> Link:
        """Attach one program to a tracepoint of its type and keep the link for close()."""
        link = self.program(program).attach_tracepoint(category, name)
        self._links.append(link)
        return link

    def close(self) -> None:
        # One after the other: detached from a thread each (a stop of
        # 1.8 s instead of 3.4 s in tracepoint mode), the 6.12 guest's
        # qemu vanished mid-suite (README, "Supported kernels").
        for link in reversed(self._links):
            link.destroy()
        self._links.clear()
        if self._ptr:
            lib().bpf_object__close(self._ptr)
            self._ptr = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class RingBuffer:
    """Drains a BPF ring buffer map in batches, and optionally a second one first.

    The reader is C (_ringsink.Ring): it maps each ring's data once (libbpf
    maps it twice, doubling the ring in VmRSS) and appends each record to a
    list as bytes, with no Python per record until the caller processes the
    batch. A batch holds at most `batch_max` records of the main ring: a
    backlog of a whole ring (100,000s of records) is taken in steps, each
    one processed before the next is copied.

    `first` is a ring that must never wait behind the main one: each
    consume() takes all of `first` and then a batch of the main ring. Its
    records are placed among the main ring's by `key` (a time both rings'
    records carry), so a record comes after every main-ring record that was
    made before it. One is held back while the main ring may still hold such
    a record: until the main ring has been drained after it was taken, or a
    main-ring record as late as it has been read. Past `hold_max` waiting,
    all go out at once rather than grow without bound (their processes may
    then show as partial).
    """

    def __init__(
        self,
        m: Map,
        batch_max: int = 16384,
        first: Map | None = None,
        key: Callable[[bytes], int] | None = None,
        hold_max: int = 65536,
    ) -> None:
        self.batch_max = batch_max
        self._held: list[bytes] = []
        self.hold_max = hold_max
        self._key = key or (lambda _: 0)
        # What a consume() that raised had taken already: the next one returns it.
        self._batch: list[bytes] = []
        self._first_batch: list[bytes] = []
        self._wait = select.poll()
        self._rings: list[_ringsink.Ring] = []
        maps = [first, m] if first is not None else [m]
        for each in maps:
            try:
                self._rings.append(_ringsink.Ring(each.fd, each.max_entries))
            except OSError as exc:
                self.close()
                err = exc.errno or _errno.EINVAL
                raise LibbpfError(f"map ring buffer {each.name}", err, []) from exc
        self._main = self._rings[-1]
        self._first = self._rings[0] if first is not None else None
        for each in maps:
            self._wait.register(each.fd, select.POLLIN)

    def used(self) -> int:
        """Bytes of the main ring written by the programs and not yet consumed."""
        return self._main.used() if self._rings else 0

    def poll(self, timeout_ms: int) -> list[bytes]:
        """Every record available; if there is none, first wait up to timeout_ms.

        The wait is poll(2) on the maps. It sleeps until the timeout or a
        forced wake-up: our programs add records silently until an eighth
        of a ring is full (tr_wakeup in common.bpf.h), so a quiet stream
        is drained on the timer. The GIL is released only while waiting.
        """
        batch = self.consume()
        if not batch:
            self._wait.poll(timeout_ms)
            batch = self.consume()
        return batch

    def consume(self) -> list[bytes]:
        """Every record available now (up to batch_max of the main ring), without waiting."""
        # A record that cannot be copied (MemoryError) stays in its ring and
        # raises here; those taken before it are returned by the next call.
        if self._first is not None:
            self._first.consume(self._first_batch)
        self._main.consume(self._batch, self.batch_max)
        batch, self._batch = self._batch, []
        first, self._first_batch = self._first_batch, []
        if not first and not self._held:
            return batch
        return self._merge(batch, first, drained=len(batch) < self.batch_max)

    def _merge(self, batch: list[bytes], first: list[bytes], drained: bool) -> list[bytes]:
        key = self._key
        waiting = self._held + first if self._held else first
        if drained:
            out, self._held = waiting, []
        else:
            last = key(batch[-1]) if batch else -1
            out = [r for r in waiting if key(r) <= last]
            self._held = [r for r in waiting if key(r) > last]
            if len(self._held) > self.hold_max:
                out, self._held = waiting, []
        if not out:
            return batch
        if not batch:
            return out
        merged: list[bytes] = []
        i, n = 0, len(batch)
        for rec in out:
            k = key(rec)
            while i < n and key(batch[i]) <= k:
                merged.append(batch[i])
                i += 1
            merged.append(rec)
        merged += batch[i:]
        return merged

    def close(self) -> None:
        for ring in self._rings:
            ring.close()
        self._rings = []
