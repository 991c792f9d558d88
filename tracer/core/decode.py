"""Decode ring-buffer records (bpf_probes/tracer.h) into typed records.

The layouts below mirror the C structs byte for byte;
tests/test_wire_layout.py checks them against the BTF that clang emits
for the header, so a change on one side cannot silently skew the other.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable
from dataclasses import dataclass

from tracer.core import _wire

KIND_EXEC = 1
KIND_FORK = 2
KIND_EXIT = 3
KIND_FILE_OPEN = 4
KIND_CONNECT = 5
KIND_CGROUP = 6
KIND_SUMMARY = 7
KIND_PRIV = 8
KIND_FILE_ATTR = 9
KIND_NAMES = {
    KIND_EXEC: "process_exec",
    KIND_FORK: "process_fork",
    KIND_EXIT: "process_exit",
    KIND_FILE_OPEN: "file_open",
    KIND_CONNECT: "connect",
    KIND_CGROUP: "cgroup",
    KIND_SUMMARY: "policy_summary",
    KIND_PRIV: "privilege_change",
    KIND_FILE_ATTR: "file_attr",
}

# enum tr_throttle_flags
THROTTLE_BY_CGROUP = 1 << 0
THROTTLE_AGGREGATE = 1 << 1

# enum tr_cgroup_op
CGROUP_MKDIR = 1
CGROUP_RMDIR = 2

STAT_EMITTED = 0
STAT_RB_DROPPED = 1
STAT_EVALUATED = 2
STAT_PREFILTERED = 3
STAT_LIMITED = 4
STAT_COUNT = 5

EXEC_TRUNC_ARGS = 1 << 0
EXEC_TRUNC_PATH = 1 << 1
EXEC_TRUNC_CWD = 1 << 2
EXEC_NO_MM = 1 << 3
EXEC_MEMFD = 1 << 4
EXEC_DELETED = 1 << 5

# enum tr_task_flags
TASK_EXE_DELETED = 1 << 0

FILE_TRUNC_PATH = 1 << 0
FILE_UNRESOLVED = 1 << 1
FILE_USER_MEMORY = 1 << 2

# enum tr_file_op
FILE_OPS = {0: "open", 1: "rename", 2: "link", 3: "symlink"}

# enum tr_conn_via, tr_conn_flags
CONN_VIAS = {0: "connect", 1: "sendto", 2: "sendmsg", 3: "fastopen"}
CONN_USER_MEMORY = 1 << 0

# enum tr_priv_op, tr_priv_flags
PRIV_OPS = {
    1: "setuid",
    2: "setgid",
    3: "setreuid",
    4: "setregid",
    5: "setresuid",
    6: "setresgid",
    7: "setfsuid",
    8: "setfsgid",
    9: "capset",
    10: "exec",
}
PRIV_TO_ROOT = 1 << 1

# enum tr_attr_op, tr_attr_call, tr_attr_flags
ATTR_CHMOD = 1
ATTR_OPS = {ATTR_CHMOD: "chmod", 2: "chown"}
ATTR_CALLS = {
    1: "chmod",
    2: "fchmod",
    3: "fchmodat",
    4: "fchmodat2",
    5: "chown",
    6: "lchown",
    7: "fchown",
    8: "fchownat",
}
ATTR_TRUNC_PATH = 1 << 0
ATTR_UNRESOLVED = 1 << 1
ATTR_WORLD_WRITABLE_DIR = 1 << 2

# enum tr_action
ACTION_NONE = 0
ACTION_POST = 1
ACTION_IGNORE = 2
ACTION_SIGKILL = 3
ACTION_DENY = 4
ACTION_NAMES = {
    ACTION_NONE: None,
    ACTION_POST: "post",
    ACTION_IGNORE: "ignore",
    ACTION_SIGKILL: "sigkill",
    ACTION_DENY: "deny",
}

# enum tr_hook
HOOK_NAMES = {
    1: "tracepoint/sys_exit_open",
    2: "tracepoint/sys_exit_openat",
    3: "tracepoint/sys_exit_openat2",
    4: "tracepoint/sys_exit_creat",
    5: "tracepoint/sys_connect",
    6: "lsm/file_open",
    7: "fentry/security_file_open",
    8: "kprobe/security_file_open",
    9: "lsm/socket_connect",
    10: "fentry/security_socket_connect",
    11: "kprobe/security_socket_connect",
    12: "fexit/do_sys_openat2",
    13: "kretprobe/do_sys_openat2",
    # io_uring requests and 32-bit syscalls, which the syscall tracepoints miss
    14: "tp_btf/io_uring_complete",
    15: "tp_btf/inet_sock_set_state",
    16: "tp_btf/sys_exit",
    17: "fexit/io_openat2",
    18: "kretprobe/io_openat2",
    19: "tp_btf/io_uring_submit_req",
    20: "tp_btf/io_uring_submit_sqe",
    21: "tracepoint/inet_sock_set_state",
    22: "tracepoint/sys_exit_sendto",
    23: "tracepoint/sys_exit_sendmsg",
    24: "lsm/socket_sendmsg",
    25: "fentry/security_socket_sendmsg",
    26: "kprobe/security_socket_sendmsg",
    27: "tracepoint/sys_exit_rename",
    28: "tracepoint/sys_exit_renameat",
    29: "tracepoint/sys_exit_renameat2",
    30: "tracepoint/sys_exit_link",
    31: "tracepoint/sys_exit_linkat",
    32: "tracepoint/sys_exit_symlink",
    33: "tracepoint/sys_exit_symlinkat",
    34: "lsm/path_rename",
    35: "lsm/path_link",
    36: "lsm/path_symlink",
    37: "fentry/security_path_rename",
    38: "fentry/security_path_link",
    39: "fentry/security_path_symlink",
    40: "kprobe/security_path_rename",
    41: "kprobe/security_path_link",
    42: "kprobe/security_path_symlink",
    # privilege_change and file_attr: the syscall's exit (the record's op
    # or call names it), and exec's tracepoint
    43: "tracepoint/sys_exit",
    44: "tp_btf/sched_process_exec",
    # a chown whose directory the path security hook found
    45: "lsm/path_chown",
    46: "fentry/security_path_chown",
    47: "kprobe/security_path_chown",
}
# Bits or'ed into the hook: how the program made the call when not through
# its 64-bit syscall. The name is prefixed, e.g. "io_uring:lsm/file_open".
HOOK_VIA = {1 << 8: "io_uring", 1 << 9: "ia32"}
_HOOK_BASE_MASK = 0xFF


@functools.lru_cache(maxsize=1024)
def hook_name(hook: int) -> str:
    """The hook's name; every file and connect event has one, from a few values."""
    name = HOOK_NAMES.get(hook & _HOOK_BASE_MASK)
    via = [v for bit, v in HOOK_VIA.items() if hook & bit]
    if name is None or hook & ~(_HOOK_BASE_MASK | sum(HOOK_VIA)):
        return str(hook)
    return ":".join([*via, name])


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
    ("flags", "I"),
    ("pad", "I"),
)
VERDICT_FIELDS = (("policy_id", "I"), ("rule", "H"), ("action", "B"), ("pad", "B"))
EXEC_TAIL_FIELDS = (
    ("flags", "I"),
    ("path_len", "H"),
    ("cwd_len", "H"),
    ("args_len", "I"),
    ("binary_dev", "I"),
    ("binary_ino", "Q"),
    ("mnt_ns", "I"),
    ("pad", "I"),
)
EXIT_TAIL_FIELDS = (("exit_code", "I"), ("pad", "I"))
FILE_TAIL_FIELDS = (
    ("ret", "q"),
    ("open_flags", "I"),
    ("mode", "I"),
    ("flags", "I"),
    ("hook", "H"),
    ("path_len", "H"),
    ("op", "H"),
    ("source_len", "H"),
)
CONNECT_TAIL_FIELDS = (
    ("ret", "q"),
    ("family", "H"),
    ("protocol", "H"),
    ("sock_type", "H"),
    ("hook", "H"),
    ("dport", "H"),
    ("sport", "H"),
    ("path_len", "H"),
    ("via", "B"),
    ("flags", "B"),
    ("daddr", "16s"),
    ("saddr", "16s"),
    ("unix_path", "108s"),
)
SUMMARY_TAIL_FIELDS = (
    ("count", "Q"),
    ("first", "Q"),
    ("window", "Q"),
    ("per_ms", "Q"),
    ("limit", "I"),
    ("kind", "H"),
    ("flags", "H"),
)
CRED_FIELDS = (
    ("uid", "I"),
    ("euid", "I"),
    ("suid", "I"),
    ("fsuid", "I"),
    ("gid", "I"),
    ("egid", "I"),
    ("sgid", "I"),
    ("fsgid", "I"),
    ("cap_inheritable", "Q"),
    ("cap_permitted", "Q"),
    ("cap_effective", "Q"),
    ("cap_ambient", "Q"),
)
PRIV_TAIL_FIELDS = (("ret", "q"), ("op", "H"), ("hook", "H"), ("flags", "I"))
ATTR_TAIL_FIELDS = (
    ("ret", "q"),
    ("mode", "I"),
    ("uid", "I"),
    ("gid", "I"),
    ("op", "H"),
    ("hook", "H"),
    ("flags", "I"),
    ("file_mode", "I"),
    ("path_len", "H"),
    ("call", "H"),
)
CGROUP_FIELDS = (
    ("ktime", "Q"),
    ("id", "Q"),
    ("op", "I"),
    ("path_len", "H"),
    ("pad", "H"),
)


def _struct(fields: tuple[tuple[str, str], ...]) -> struct.Struct:
    return struct.Struct("<" + "".join(fmt for _, fmt in fields))


HDR = _struct(HDR_FIELDS)
TASK = _struct(TASK_FIELDS)
VERDICT = _struct(VERDICT_FIELDS)
EXEC_TAIL = _struct(EXEC_TAIL_FIELDS)
EXIT_TAIL = _struct(EXIT_TAIL_FIELDS)
FILE_TAIL = _struct(FILE_TAIL_FIELDS)
CONNECT_TAIL = _struct(CONNECT_TAIL_FIELDS)
CGROUP = _struct(CGROUP_FIELDS)
SUMMARY_TAIL = _struct(SUMMARY_TAIL_FIELDS)
CRED = _struct(CRED_FIELDS)
PRIV_TAIL = _struct(PRIV_TAIL_FIELDS)
ATTR_TAIL = _struct(ATTR_TAIL_FIELDS)

TASK_OFFSET = HDR.size
VERDICT_OFFSET = TASK_OFFSET + TASK.size  # exec, file_open and connect
EXEC_TAIL_OFFSET = VERDICT_OFFSET + VERDICT.size
EXEC_DATA_OFFSET = EXEC_TAIL_OFFSET + EXEC_TAIL.size
FORK_SIZE = TASK_OFFSET + TASK.size
EXIT_SIZE = FORK_SIZE + EXIT_TAIL.size
FILE_TAIL_OFFSET = VERDICT_OFFSET + VERDICT.size
FILE_PATH_OFFSET = FILE_TAIL_OFFSET + FILE_TAIL.size
CONNECT_TAIL_OFFSET = VERDICT_OFFSET + VERDICT.size
CONNECT_SIZE = CONNECT_TAIL_OFFSET + CONNECT_TAIL.size
SUMMARY_TAIL_OFFSET = VERDICT_OFFSET + VERDICT.size
SUMMARY_SIZE = SUMMARY_TAIL_OFFSET + SUMMARY_TAIL.size
CGROUP_OFFSET = HDR.size
PRIV_TAIL_OFFSET = VERDICT_OFFSET + VERDICT.size
PRIV_OLD_OFFSET = PRIV_TAIL_OFFSET + PRIV_TAIL.size
PRIV_NEW_OFFSET = PRIV_OLD_OFFSET + CRED.size
PRIV_SIZE = PRIV_NEW_OFFSET + CRED.size
ATTR_TAIL_OFFSET = VERDICT_OFFSET + VERDICT.size
ATTR_PATH_OFFSET = ATTR_TAIL_OFFSET + ATTR_TAIL.size
CGROUP_PATH_OFFSET = CGROUP_OFFSET + CGROUP.size


_KTIME = struct.Struct("<Q")
KTIME_OFFSET = HDR.size  # tr_task.ktime, and tr_cgroup.ktime: every kind's first field


def ktime(buf: bytes) -> int:
    """The boot-clock time a record was made (every kind has it first)."""
    if len(buf) < KTIME_OFFSET + 8:
        return 0
    return int(_KTIME.unpack_from(buf, KTIME_OFFSET)[0])


class WireError(ValueError):
    """A record that does not match the wire contract."""


# The records below are not frozen: a frozen dataclass sets each field
# through object.__setattr__, five times slower, and these are made for
# every event and read once by the pipeline thread. Treat them as values.


@dataclass(slots=True)
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
    flags: int = 0  # TASK_*


@dataclass(slots=True, frozen=True)
class Verdict:
    """The policy rule that selected the event, if any."""

    policy_id: int
    rule: int
    action: int  # ACTION_*


NO_VERDICT = Verdict(0, 0, ACTION_NONE)


@dataclass(slots=True)
class ExecRecord:
    task: Task
    binary: bytes
    cwd: bytes
    args: tuple[bytes, ...]
    flags: int
    verdict: Verdict = NO_VERDICT
    binary_dev: int = 0  # st_dev of the executable
    binary_ino: int = 0
    mnt_ns: int = 0  # inode number of the mount namespace

    @property
    def args_truncated(self) -> bool:
        return bool(self.flags & EXEC_TRUNC_ARGS)


@dataclass(slots=True)
class ForkRecord:
    task: Task


@dataclass(slots=True)
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


@dataclass(slots=True)
class FileOpenRecord:
    task: Task
    verdict: Verdict
    ret: int  # fd, or -errno
    open_flags: int
    mode: int
    flags: int  # FILE_*
    hook: int
    path: bytes
    op: int = 0  # FILE_OPS
    source: bytes = b""  # rename, link: the old name; symlink: its target


@dataclass(slots=True)
class ConnectRecord:
    task: Task
    verdict: Verdict
    ret: int
    family: int
    protocol: int
    sock_type: int
    hook: int
    dport: int
    sport: int
    daddr: bytes  # 16 bytes; IPv4 in the first 4
    saddr: bytes
    unix_path: bytes
    via: int = 0  # CONN_VIAS
    flags: int = 0  # CONN_*


@dataclass(slots=True, frozen=True)
class Cred:
    """A process's credentials: ids, and capability sets as masks (bit n: capability n)."""

    uid: int
    euid: int
    suid: int
    fsuid: int
    gid: int
    egid: int
    sgid: int
    fsgid: int
    cap_inheritable: int
    cap_permitted: int
    cap_effective: int
    cap_ambient: int


@dataclass(slots=True)
class PrivRecord:
    task: Task
    verdict: Verdict
    ret: int
    op: int  # PRIV_OPS
    hook: int
    flags: int  # PRIV_*
    old: Cred
    new: Cred


@dataclass(slots=True)
class FileAttrRecord:
    task: Task
    verdict: Verdict
    ret: int
    op: int  # ATTR_OPS
    call: int  # ATTR_CALLS
    hook: int
    flags: int  # ATTR_*
    mode: int  # chmod: the mode asked for
    uid: int  # chown: 0xFFFFFFFF leaves it as it was
    gid: int
    file_mode: int  # the file's mode after the call; 0 when not resolved
    path: bytes


@dataclass(slots=True, frozen=True)
class CgroupRecord:
    """A cgroup v2 directory made (CGROUP_MKDIR) or removed (CGROUP_RMDIR)."""

    ktime: int
    id: int
    op: int
    path: bytes  # below the cgroup2 root


@dataclass(slots=True)
class SummaryRecord:
    """Events one key of a throttling rule selected and did not post.

    The task is who opened the window; its ktime is the last event counted.
    """

    task: Task
    verdict: Verdict
    count: int
    first: int  # ktime of the first event counted
    window: int  # ktime the window began
    per_ms: int
    limit: int
    kind: int  # policy kind: 0 exec, 1 file_open, 2 connect
    flags: int  # THROTTLE_*


Record = (
    ExecRecord | ForkRecord | ExitRecord | FileOpenRecord | ConnectRecord | CgroupRecord
    | SummaryRecord
    | PrivRecord
    | FileAttrRecord
)


def _task(buf: bytes) -> Task:
    (ktime, start, cgid, tgid, tid, ppid, uid, euid, gid, egid, auid, comm, flags, _) = (
        TASK.unpack_from(buf, TASK_OFFSET)
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
        flags,
    )


# file_open and connect, most of what is posted, are decoded in C
# (tracer/core/_wire.c), into the classes above; it also keeps the verdicts,
# shared since few rules exist, for every kind.
_C = _wire.Decoder(Task, FileOpenRecord, ConnectRecord, Verdict, WireError)
_verdict: Callable[[bytes], Verdict] = _C.verdict


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
    rec: Record | None = _C.decode(buf)
    if rec is not None:
        return rec
    if len(buf) < HDR.size:
        raise WireError(f"record of {len(buf)} bytes is shorter than its header")
    kind, size = HDR.unpack_from(buf)
    if size > len(buf):
        raise WireError(f"record says {size} bytes but {len(buf)} arrived")
    if kind == KIND_EXEC:
        if size < EXEC_DATA_OFFSET:
            raise WireError(f"exec record of {size} bytes is too short")
        flags, plen, clen, alen, dev, ino, mnt_ns, _ = EXEC_TAIL.unpack_from(
            buf, EXEC_TAIL_OFFSET
        )
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
            _verdict(buf),
            dev,
            ino,
            mnt_ns,
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
    if kind == KIND_CGROUP:
        if size < CGROUP_PATH_OFFSET:
            raise WireError(f"cgroup record of {size} bytes is too short")
        ktime, cgid, op, plen, _ = CGROUP.unpack_from(buf, CGROUP_OFFSET)
        if CGROUP_PATH_OFFSET + plen > size:
            raise WireError(f"cgroup path overruns the record ({plen} bytes)")
        path = buf[CGROUP_PATH_OFFSET : CGROUP_PATH_OFFSET + plen]
        return CgroupRecord(ktime, cgid, op, path)
    if kind == KIND_SUMMARY:
        if size < SUMMARY_SIZE:
            raise WireError(f"summary record of {size} bytes is too short")
        return SummaryRecord(
            _task(buf), _verdict(buf), *SUMMARY_TAIL.unpack_from(buf, SUMMARY_TAIL_OFFSET)
        )
    if kind == KIND_PRIV:
        return _priv(buf, size)
    if kind == KIND_FILE_ATTR:
        return _file_attr(buf, size)
    raise WireError(f"unknown record kind {kind}")


def _priv(buf: bytes, size: int) -> PrivRecord:
    if size < PRIV_SIZE:
        raise WireError(f"privilege_change record of {size} bytes is too short")
    ret, op, hook, flags = PRIV_TAIL.unpack_from(buf, PRIV_TAIL_OFFSET)
    old = Cred(*CRED.unpack_from(buf, PRIV_OLD_OFFSET))
    new = Cred(*CRED.unpack_from(buf, PRIV_NEW_OFFSET))
    return PrivRecord(_task(buf), _verdict(buf), ret, op, hook, flags, old, new)


def _file_attr(buf: bytes, size: int) -> FileAttrRecord:
    if size < ATTR_PATH_OFFSET:
        raise WireError(f"file_attr record of {size} bytes is too short")
    ret, mode, uid, gid, op, hook, flags, file_mode, plen, call = ATTR_TAIL.unpack_from(
        buf, ATTR_TAIL_OFFSET
    )
    end = ATTR_PATH_OFFSET + plen
    if end > size:
        raise WireError(f"file_attr path overruns the record ({end} > {size})")
    path = buf[ATTR_PATH_OFFSET:end]
    return FileAttrRecord(
        _task(buf), _verdict(buf), ret, op, call, hook, flags, mode, uid, gid, file_mode, path
    )
