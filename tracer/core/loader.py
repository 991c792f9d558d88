"""Open, configure, load and attach the capture objects.

Each hook has one program per variant in the object; the loader keeps
the chosen variant's program and disables the others before load, since
one program the kernel refuses fails the whole object.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from tracer.core import bpf, decode

_log = structlog.get_logger(component="loader")

CAPTURE_OBJECT = "tracer.bpf.o"
# hook -> program per variant (tp_btf or raw_tp, chosen once for all of
# them). The cgroup hooks feed the container enrichment (enrich/cgroups.py).
PROCESS_PROGRAMS = {
    "exec": {"tp_btf": "tr_exec_btf", "raw_tp": "tr_exec_raw"},
    "fork": {"tp_btf": "tr_fork_btf", "raw_tp": "tr_fork_raw"},
    "exit": {"tp_btf": "tr_exit_btf", "raw_tp": "tr_exit_raw"},
    "cgroup_mkdir": {"tp_btf": "tr_cgroup_mkdir_btf", "raw_tp": "tr_cgroup_mkdir_raw"},
    "cgroup_rmdir": {"tp_btf": "tr_cgroup_rmdir_btf", "raw_tp": "tr_cgroup_rmdir_raw"},
}
PROCESS_VARIANTS = ("tp_btf", "raw_tp")
# file_open and connect programs per capture mode (bpf_probes/hooks.bpf.h
# for lsm, fentry and kprobe). Attached in this order: the exit programs
# first, so that no selected call can start before its exit is watched
# (a verdict left in flight would be reported with another call's result).
# Capture programs on typed tracepoints, with a `_raw` twin for kernels where
# the process hooks fell back to raw_tp.
_TYPED_TRACEPOINTS = ("tr_tcp_syn_sent", "tr_priv_exec_btf")
_FEXIT = ("tr_fexit_openat2", "tr_fexit_connect", "tr_fexit_sendto", "tr_fexit_sendmsg")
CAPTURE_PROGRAMS = {
    "lsm": (
        *_FEXIT,
        "tr_lsm_file_open",
        "tr_lsm_connect",
        "tr_lsm_sendmsg",
        "tr_lsm_path_rename",
        "tr_lsm_path_link",
        "tr_lsm_path_symlink",
    ),
    "fentry": (
        *_FEXIT,
        "tr_fentry_file_open",
        "tr_fentry_connect",
        "tr_fentry_sendmsg",
        "tr_fentry_path_rename",
        "tr_fentry_path_link",
        "tr_fentry_path_symlink",
    ),
    "kprobe": (
        "tr_kret_openat2",
        "tr_kret_connect",
        "tr_kret_sendto",
        "tr_kret_sendmsg",
        "tr_kprobe_openat2",
        "tr_kprobe_file_open",
        "tr_kprobe_connect",
        "tr_kprobe_sendmsg",
        "tr_kprobe_path_rename",
        "tr_kprobe_path_link",
        "tr_kprobe_path_symlink",
    ),
    "tracepoint": (
        "tr_open_exit",
        "tr_connect_exit",
        "tr_sendto_exit",
        "tr_sendmsg_exit",
        "tr_tcp_syn_sent",
        "tr_new_name_exit",
    ),
}
# privilege_change and file_attr (bpf_probes/priv.bpf.h): syscall and exec
# tracepoints, the same in every capture mode. Exits before entries, as
# above; a call whose enter was not seen is not reported.
_CRED_CALLS = (
    "setuid",
    "setgid",
    "setreuid",
    "setregid",
    "setresuid",
    "setresgid",
    "setfsuid",
    "setfsgid",
    "capset",
)
PRIVILEGE_PROGRAMS = (
    "tr_cred_exit",
    "tr_priv_exec_btf",
    "tr_attr_exit",
    "tr_cred_enter",
    "tr_execve_enter",
    "tr_execveat_enter",
)
# The path security hook that finds a chown's directory for tr_attr_exit
# (CONFIG_SECURITY_PATH); tracepoint mode has none.
CHOWN_HOOKS = {
    "lsm": ("tr_lsm_path_chown", "function", "bpf_lsm_path_chown"),
    "fentry": ("tr_fentry_path_chown", "function", "security_path_chown"),
    "kprobe": ("tr_kprobe_path_chown", "function", "security_path_chown"),
}
CHOWN_GAP = (
    "a chown to root is judged on the directory its name is in, found again in the dentry "
    "cache at the syscall's exit: a name that is itself a symlink by the link's directory, "
    "and one the walk cannot follow (a symlink with a long target, any on an overlay) is "
    "reported with world_writable_dir false"
)
# Programs that serve a family of syscalls, attached to the exit (an
# _enter program: the entry) of each call in it (an exit program tells
# the calls apart by the syscall number): the
# verifier checks one program, not one per call, which was a third of the
# start-up. A call the kernel lacks (fchmodat2 before 6.6; rename, link,
# symlink, chmod, chown, lchown, open and creat on arm64) is left out.
SYSCALL_FAMILIES = {
    "tr_open_exit": ("openat", "openat2", "open", "creat"),
    "tr_new_name_exit": (
        "renameat2",
        "renameat",
        "rename",
        "linkat",
        "link",
        "symlinkat",
        "symlink",
    ),
    "tr_attr_exit": (
        "fchmodat",
        "fchmodat2",
        "chmod",
        "fchmod",
        "chown",
        "lchown",
        "fchown",
        "fchownat",
    ),
    "tr_cred_exit": _CRED_CALLS,
    "tr_cred_enter": _CRED_CALLS,
}
# Of those, what a kernel without the call loses (one without the others
# is arm64, which never had them: nothing is lost).
_NEWER_SYSCALLS = ("fchmodat2",)
_TRACEFS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))


def _has_syscall(name: str) -> bool:
    return any((t / "events" / "syscalls" / f"sys_exit_{name}").exists() for t in _TRACEFS)


# What each capture mode can only read back from the process's memory after
# the kernel used its own copy (events flag it `user_memory`): logged once
# at start, so that an operator knows where a racing thread can lie.
USER_MEMORY_LIMITS = {
    "lsm": "a failed open's name",
    "fentry": "a failed open's name",
    "kprobe": "a failed open's name",
    "tracepoint": (
        "a failed open's name, a datagram's address (sendto/sendmsg), "
        "and the new name of a rename, link or symlink (not resolved either)"
    ),
}
# Programs for the calls the syscall hooks above never see: io_uring
# requests and syscalls through x86's 32-bit entry (bpf_probes/evasion.bpf.h,
# priv.bpf.h). The security hooks judge io_uring and 32-bit opens and
# connects; 32-bit set*id, capset, chmod and chown reach none of them, so
# every mode has the raw sys_exit program for those (in tracepoint mode the
# one that also takes opens and connects) and the raw sys_enter that saves
# the credentials before a set*id or an exec. Each needs a tracepoint or
# function of the kernel's: one the kernel lacks (a kernel without
# io_uring) is left out, and so is one the object lacks (the 32-bit
# programs exist on x86 only). Exits before entries, as above.
_IO_OPEN = ("function", "io_openat2")
_IA32_ENTER = ("tr_tp_ia32_enter", "tp_btf", "sys_enter")
_IA32_PRIV = (("tr_tp_ia32_priv_exit", "tp_btf", "sys_exit"), _IA32_ENTER)
# lsm and fentry: the same trampolines on io_openat2, the same 32-bit programs.
_TRAMPOLINES = (
    ("tr_fexit_io_openat2", *_IO_OPEN),
    ("tr_fentry_io_openat2", *_IO_OPEN),
    *_IA32_PRIV,
)
EVASION_PROGRAMS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "lsm": _TRAMPOLINES,
    "fentry": _TRAMPOLINES,
    "kprobe": (
        ("tr_kret_io_openat2", *_IO_OPEN),
        ("tr_kprobe_io_openat2", *_IO_OPEN),
        *_IA32_PRIV,
    ),
    "tracepoint": (
        ("tr_tp_uring_complete", "tp_btf", "io_uring_complete"),
        # one of the two, by kernel version
        ("tr_tp_uring_submit_req", "tp_btf", "io_uring_submit_req"),
        ("tr_tp_uring_submit_sqe", "tp_btf", "io_uring_submit_sqe"),
        ("tr_tp_sock_state", "tp_btf", "inet_sock_set_state"),
        ("tr_tp_ia32_exit", "tp_btf", "sys_exit"),
        _IA32_ENTER,
    ),
}
# What a capture mode cannot see of those calls even with every program
# loaded (the README's capture-mode table says the same).
MODE_GAPS = {
    "tracepoint": (
        "io_uring opens that fail, and io_uring opens into a fixed-file slot, are not "
        "reported (the kernel has freed the name by the completion; a slot has no fd)",
        "io_uring opens that post no completion (IOSQE_CQE_SKIP_SUCCESS) are judged when "
        "submitted, on the name asked for: a symlink or `..` in it is not resolved",
        "io_uring connects other than TCP (UDP, unix) are not reported",
        "32-bit connects are judged when the syscall returns: a sigkill lands after the "
        "connection is made, before the program can use it",
        "x32-ABI syscalls are not reported (the syscall tracepoints skip them)",
    ),
}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class ConfigError(ValueError):
    """A setting the daemon cannot run with; the message names the fix."""


RINGBUF_MIN = 4096
RINGBUF_MAX = 1 << 30
# 4 MiB: the kernel maps the ring twice into the reader (for records that
# wrap), and that mapping is resident, so the ring is the largest part of
# the daemon's memory. The reader is woken at an eighth full and drains
# every 10 ms, so bursts of ~15,000 typical records fit; raise it for
# hosts whose bursts do not (`lost` events say so).
RINGBUF_DEFAULT = 4 << 20
# The ring of policy-selected and enforcement records (tr_selected),
# drained before the bulk ring on every poll. Any user can make a rule
# select thousands of opens a second (a post rule on a file they can read),
# and a record lost here is one a policy asked for: 16 MiB holds ~100,000
# typical file_open records, a burst the reader drains in about a second.
SELECTED_RINGBUF_DEFAULT = 16 << 20
# Bulk (exec, fork, exit, cgroup) records a uid may put in the ring per
# second before the rest of its second's records are dropped and counted
# (`lost`): one user's exec storm cannot fill the ring for everyone.
# Three records per process (fork, exec, exit): ~6,600 processes a second.
UID_BUDGET_DEFAULT = 20000
# cgroups the workload map holds (TR_WORKLOAD_CGROUPS, policy/workload_map.py).
WORKLOAD_CGROUPS_DEFAULT = 16384
MAX_WORKLOAD_CGROUPS = 1 << 20
_CONFIG = struct.Struct("<II")  # struct tr_config
# Reports the counts of throttle windows that ended (throttle.bpf.h): loaded
# with every capture mode, attached nowhere, run by the daemon.
THROTTLE_FLUSH = "tr_throttle_flush"
_FLUSH_ARGS = struct.Struct("<II")  # struct tr_flush_args
# enum tr_throttle_stat, after the per-rule counts of tr_throttle_stats
THROTTLE_STATS = ("suppressed", "reported", "unthrottled")
RULE_SLOTS = 2 * 5 * 64  # TR_RULE_SLOTS: generations x kinds (TR_PK_MAX) x rules
# Keys of the throttle table (tr_throttle, TR_THROTTLE_KEYS): a rule, a
# process or cgroup, and for aggregate a path or peer; ~256 bytes each.
THROTTLE_KEYS_DEFAULT = 16384
THROTTLE_KEYS_MAX = 1 << 20


def check_throttle_keys(n: int) -> None:
    if not 1 <= n <= THROTTLE_KEYS_MAX:
        raise ConfigError(f"--throttle-keys must be between 1 and {THROTTLE_KEYS_MAX}, not {n}")


def check_ringbuf_size(size: int, flag: str = "--ringbuf-size") -> None:
    if size < RINGBUF_MIN or size > RINGBUF_MAX or size & (size - 1):
        raise ConfigError(
            f"ring buffer size {size} is not a power of two between 4K and 1G "
            f"(e.g. {flag} 8M)"
        )


@dataclass(slots=True)
class KernelCounters:
    emitted: dict[str, int]
    dropped: dict[str, int]
    evaluated: dict[str, int]  # policy evaluations, by kind
    prefiltered: dict[str, int]  # of those, opens settled before their path was copied
    limited: dict[str, int] = field(default_factory=dict)  # bulk records over their uid budget
    # Throttled rules: events not posted, of those reported in summaries,
    # and events posted unthrottled (no key could be kept or updated).
    throttle: dict[str, int] = field(default_factory=dict)


class Sensor:
    """A loaded, attached capture object and its ring buffer.

    counters(), run_stats() and ring_used() may be called from any thread
    (the API's GetInfo, metrics scrapes): they and close() take one lock,
    so none reads a map or program that close() has freed. After close
    they answer empty.
    """

    def __init__(
        self,
        obj: bpf.BpfObject,
        variant: str,
        capture_mode: str,
        gaps: list[str],
        attached: list[str],
    ) -> None:
        self.obj = obj
        self.variant = variant
        self.capture_mode = capture_mode
        # What this mode on this kernel cannot report or enforce, in words.
        self.gaps = gaps
        self.attached = tuple(attached)  # program names, in attach order
        self.ringbuf = bpf.RingBuffer(
            obj.map("tr_events"), first=obj.map("tr_selected"), key=decode.ktime
        )
        self._stats = obj.map("tr_stats")
        self._lock = threading.Lock()
        self._closed = False

    def run_stats(self) -> dict[str, bpf.RunStats]:
        """Run time and count of every attached program (0 while kernel stats are off)."""
        with self._lock:
            if self._closed:
                return {}
            return {name: self.obj.program(name).run_stats() for name in self.attached}

    def ring_used(self) -> int:
        """Bytes in the ring buffer the reader has not consumed yet."""
        with self._lock:
            return 0 if self._closed else self.ringbuf.used()

    def counters(self) -> KernelCounters:
        """Totals since load, summed over CPUs."""
        out = KernelCounters({}, {}, {}, {}, {})
        with self._lock:
            if not self._closed:
                self._count(out)
        return out

    def _count(self, out: KernelCounters) -> None:
        stats = (
            (decode.STAT_EMITTED, out.emitted),
            (decode.STAT_RB_DROPPED, out.dropped),
            (decode.STAT_EVALUATED, out.evaluated),
            (decode.STAT_PREFILTERED, out.prefiltered),
            (decode.STAT_LIMITED, out.limited),
        )
        for kind, name in decode.KIND_NAMES.items():
            for stat, dest in stats:
                key = _U32.pack(kind * decode.STAT_COUNT + stat)
                dest[name] = sum(_U64.unpack(v)[0] for v in self._stats.lookup_percpu(key))
        throttle = self.obj.map("tr_throttle_stats")
        for i, name in enumerate(THROTTLE_STATS):
            values = throttle.lookup_percpu(_U32.pack(RULE_SLOTS + i))
            out.throttle[name] = sum(_U64.unpack(v)[0] for v in values)

    def flush_throttle(self, everything: bool = False) -> None:
        """Have the kernel report (as summary records in the selected ring) the
        counts of throttle windows that ended; `everything`: of open ones too."""
        with self._lock:
            if not self._closed:
                self.obj.program(THROTTLE_FLUSH).run(_FLUSH_ARGS.pack(int(everything), 0))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self.ringbuf.close()
            self.obj.close()


class CaptureModeUnavailable(RuntimeError):
    """The kernel cannot run the capture mode asked for (or any left)."""


def choose_capture_mode(
    usable: list[str], forced: str = "auto", excluded: tuple[str, ...] = ()
) -> str:
    """The mode to load: the forced one if the kernel can run it, else the
    best the kernel can run that is not excluded (usable is best first)."""
    if forced != "auto":
        if forced not in usable:
            raise CaptureModeUnavailable(
                f"capture mode {forced} is not available on this kernel "
                f"(available: {', '.join(usable) or 'none'}); run `tracer probe`"
            )
        return forced
    left = [m for m in usable if m not in excluded]
    if not left:
        raise CaptureModeUnavailable(
            f"no capture mode left: this kernel has {', '.join(usable) or 'none'}, "
            f"--exclude-capture-mode removed {', '.join(excluded)}"
        )
    return left[0]


def check_workload_cgroups(n: int) -> None:
    if not 1 <= n <= MAX_WORKLOAD_CGROUPS:
        raise ConfigError(
            f"--workload-cgroups must be between 1 and {MAX_WORKLOAD_CGROUPS}, not {n}"
        )


@contextmanager
def capture_sensor(
    bpf_dir: Path,
    variant: str,
    capture_mode: str,
    ringbuf_size: int,
    uid_budget: int = UID_BUDGET_DEFAULT,
    selected_ringbuf_size: int = SELECTED_RINGBUF_DEFAULT,
    throttle_keys: int = THROTTLE_KEYS_DEFAULT,
    workload_cgroups: int = WORKLOAD_CGROUPS_DEFAULT,
) -> Iterator[Sensor]:
    """Load and attach every capture program; detach everything on exit."""
    if variant not in PROCESS_VARIANTS:
        raise ConfigError(
            f"unknown process hook variant {variant!r}: use one of {PROCESS_VARIANTS}"
        )
    if capture_mode not in CAPTURE_PROGRAMS:
        raise ConfigError(
            f"no file/connect programs for capture mode {capture_mode!r} "
            f"(available: {', '.join(CAPTURE_PROGRAMS)})"
        )
    check_ringbuf_size(ringbuf_size)
    check_ringbuf_size(selected_ringbuf_size, "--selected-ringbuf-size")
    check_throttle_keys(throttle_keys)
    if not 0 <= uid_budget < 1 << 32:
        raise ConfigError(f"uid budget {uid_budget} is not between 0 (no limit) and 2**32-1")
    check_workload_cgroups(workload_cgroups)
    obj = bpf.BpfObject(bpf_dir / CAPTURE_OBJECT)
    try:
        chosen = [progs[variant] for progs in PROCESS_PROGRAMS.values()]
        chosen += [
            f"{p}_raw" if p in _TYPED_TRACEPOINTS and variant == "raw_tp" else p
            for p in CAPTURE_PROGRAMS[capture_mode]
        ]
        chosen += [
            f"{p}_raw" if p in _TYPED_TRACEPOINTS and variant == "raw_tp" else p
            for p in PRIVILEGE_PROGRAMS
        ]
        gaps = list(MODE_GAPS.get(capture_mode, ()))
        families = {
            name: [c for c in calls if _has_syscall(c)]
            for name, calls in SYSCALL_FAMILIES.items()
            if name in chosen
        }
        present = {c for calls in families.values() for c in calls}
        gaps += [
            f"{c} is not reported (the kernel has no such syscall)"
            for c in _NEWER_SYSCALLS
            if c not in present
        ]
        for name, target, what in EVASION_PROGRAMS[capture_mode]:
            if name not in obj.programs:
                continue
            if bpf.vmlinux_has(target, what):
                chosen.append(name)
            elif what == "inet_sock_set_state":
                gaps.append("io_uring TCP connects are not reported (no inet_sock_set_state)")
            elif what == "io_openat2" and bpf.vmlinux_has("tp_btf", "io_uring_complete"):
                gap = f"io_uring opens are judged but not reported ({what} is not in the BTF)"
                if gap not in gaps:
                    gaps.append(gap)
        chown_hook = CHOWN_HOOKS.get(capture_mode)
        if chown_hook and bpf.vmlinux_has(*chown_hook[1:]):
            chosen.append(chown_hook[0])
        else:
            gaps.append(CHOWN_GAP)
        for prog in obj.programs.values():
            prog.set_autoload(prog.name in chosen or prog.name == THROTTLE_FLUSH)
        # Plain loads instead of a helper call per kernel field (common.bpf.h).
        direct = bpf.vmlinux_has("function", "bpf_rdonly_cast")
        obj.map(".rodata.tr_kernel").set_initial_value(_U32.pack(int(direct)))
        obj.map("tr_events").set_max_entries(ringbuf_size)
        obj.map("tr_selected").set_max_entries(selected_ringbuf_size)
        obj.map("tr_throttle").set_max_entries(throttle_keys)
        obj.map("tr_workload").set_max_entries(workload_cgroups)
        obj.load()
        obj.map("tr_config").update(_U32.pack(0), _CONFIG.pack(uid_budget, 0))
        for name in chosen:
            if name in families:
                event = "enter" if name.endswith("_enter") else "exit"
                for call in families[name]:
                    obj.attach_tracepoint(name, "syscalls", f"sys_{event}_{call}")
            else:
                obj.attach(name)
        sensor = Sensor(obj, variant, capture_mode, gaps, chosen)
    except BaseException:
        obj.close()
        raise
    try:
        yield sensor
    finally:
        sensor.close()
