"""Decode ring-buffer records (bpf_probes/tracer.h) into typed records.

The layouts below mirror the C structs byte for byte;
tests/test_wire_layout.py checks them against the BTF that clang emits
for the header, so a change on one side cannot silently skew the other.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

KIND_EXEC = 1
KIND_FORK = 2
KIND_EXIT = 3
KIND_NAMES = {KIND_EXEC: "process_exec", KIND_FORK: "process_fork", KIND_EXIT: "process_exit"}
KIND_MAX = 4

STAT_EMITTED = 0
STAT_RB_DROPPED = 1
STAT_COUNT = 2

EXEC_TRUNC_ARGS = 1 << 0
EXEC_TRUNC_PATH = 1 << 1
EXEC_TRUNC_CWD = 1 << 2
EXEC_NO_MM = 1 << 3

AUID_UNSET = 0xFFFFFFFF

# (field, struct format) in C order; tests/test_wire_layout.py checks
# every offset against the BTF of the compiled object.
HDR_FIELDS = (("kind", "I"), ("size", "I"))
TASK_FIELDS = (
    ("ktime", "Q"),
    ("start_boottime", "Q"),
    ("cgroup_id", "Q"),
    ("tgid", "I"),
    ("tid", "I"),
    ("ppid", "I"),
    ("uid", "I"),
    ("euid", "I"),
    ("gid", "I"),
    ("egid", "I"),
    ("auid", "I"),
    ("comm", "16s"),
)
EXEC_TAIL_FIELDS = (
    ("flags", "I"),
    ("path_len", "H"),
    ("cwd_len", "H"),
    ("args_len", "I"),
    ("pad", "I"),
)
EXIT_TAIL_FIELDS = (("exit_code", "I"), ("pad", "I"))


def _struct(fields: tuple[tuple[str, str], ...]) -> struct.Struct:
    return struct.Struct("<" + "".join(fmt for _, fmt in fields))


HDR = _struct(HDR_FIELDS)
TASK = _struct(TASK_FIELDS)
EXEC_TAIL = _struct(EXEC_TAIL_FIELDS)
EXIT_TAIL = _struct(EXIT_TAIL_FIELDS)

TASK_OFFSET = HDR.size
EXEC_DATA_OFFSET = TASK_OFFSET + TASK.size + EXEC_TAIL.size
FORK_SIZE = TASK_OFFSET + TASK.size
EXIT_SIZE = FORK_SIZE + EXIT_TAIL.size


class WireError(ValueError):
    """A record that does not match the wire contract."""


@dataclass(slots=True, frozen=True)
class Task:
    """Who did it, as the kernel saw it when the event fired."""

    ktime: int  # boot-based ns
    start_boottime: int  # boot-based ns of the fork
    cgroup_id: int
    pid: int  # tgid
    tid: int
    ppid: int
    uid: int
    euid: int
    gid: int
    egid: int
    auid: int | None
    comm: bytes


@dataclass(slots=True, frozen=True)
class ExecRecord:
    task: Task
    binary: bytes
    cwd: bytes
    args: tuple[bytes, ...]
    flags: int

    @property
    def args_truncated(self) -> bool:
        return bool(self.flags & EXEC_TRUNC_ARGS)


@dataclass(slots=True, frozen=True)
class ForkRecord:
    task: Task


@dataclass(slots=True, frozen=True)
class ExitRecord:
    task: Task
    status: int  # wait(2) status

    @property
    def code(self) -> int | None:
        """Exit code, or None when a signal ended the process."""
        return (self.status >> 8) & 0xFF if self.status & 0x7F == 0 else None

    @property
    def signal(self) -> int | None:
        sig = self.status & 0x7F
        return sig or None


Record = ExecRecord | ForkRecord | ExitRecord


def _task(buf: bytes) -> Task:
    (ktime, start, cgid, tgid, tid, ppid, uid, euid, gid, egid, auid, comm) = TASK.unpack_from(
        buf, TASK_OFFSET
    )
    return Task(
        ktime,
        start,
        cgid,
        tgid,
        tid,
        ppid,
        uid,
        euid,
        gid,
        egid,
        None if auid == AUID_UNSET else auid,
        comm.split(b"\0", 1)[0],
    )


def split_args(raw: bytes) -> tuple[bytes, ...]:
    """argv as the kernel lays it out: NUL-terminated strings back to back.

    An empty argument is preserved (`prog ''` has two args); only the
    terminator of the last argument is dropped. A cut last argument has no
    terminator and is kept as far as it goes.
    """
    if not raw:
        return ()
    if raw.endswith(b"\0"):
        raw = raw[:-1]
    return tuple(raw.split(b"\0"))


def decode(buf: bytes) -> Record:
    if len(buf) < HDR.size:
        raise WireError(f"record of {len(buf)} bytes is shorter than its header")
    kind, size = HDR.unpack_from(buf)
    if size > len(buf):
        raise WireError(f"record says {size} bytes but {len(buf)} arrived")
    if kind == KIND_EXEC:
        if size < EXEC_DATA_OFFSET:
            raise WireError(f"exec record of {size} bytes is too short")
        flags, plen, clen, alen, _ = EXEC_TAIL.unpack_from(buf, TASK_OFFSET + TASK.size)
        end = EXEC_DATA_OFFSET + plen + clen + alen
        if end > size:
            raise WireError(f"exec record strings overrun the record ({end} > {size})")
        p = EXEC_DATA_OFFSET
        return ExecRecord(
            _task(buf),
            buf[p : p + plen],
            buf[p + plen : p + plen + clen],
            split_args(buf[p + plen + clen : end]),
            flags,
        )
    if kind == KIND_FORK:
        if size < FORK_SIZE:
            raise WireError(f"fork record of {size} bytes is too short")
        return ForkRecord(_task(buf))
    if kind == KIND_EXIT:
        if size < EXIT_SIZE:
            raise WireError(f"exit record of {size} bytes is too short")
        (status, _) = EXIT_TAIL.unpack_from(buf, FORK_SIZE)
        return ExitRecord(_task(buf), status)
    raise WireError(f"unknown record kind {kind}")
