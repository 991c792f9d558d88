"""The event contract: what every exporter receives.

These classes are the boundary between enrichment and export; the JSON
field names in export/ follow the attribute names here one to one.

Events are values: made once by the pipeline thread, then only read, by
every sink's thread. The shared parts (Process, which the cache hands to
every event of a process and its descendants, ExitStatus, PolicyMatch)
are frozen. The per-event classes are not: a frozen dataclass sets each
field through object.__setattr__, five times slower, and they are made
for every event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar


@dataclass(slots=True, frozen=True)
class Container:
    """The container a process runs in: id and runtime from its cgroup (enrich/cgroups.py),
    name and image from its pod's container statuses (enrich/kube.py)."""

    id: str
    runtime: str  # containerd, cri-o, docker, podman
    name: str | None = None  # None when no pod metadata names it
    image: str | None = None


@dataclass(slots=True, frozen=True)
class Pod:
    """The Kubernetes pod a process runs in.

    The uid comes from the cgroup path; the rest from the API server, and
    is None when the daemon has no pod metadata (no cluster configured, or
    not yet known). One object per pod version, shared by its processes.
    """

    uid: str
    namespace: str | None = None
    name: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    # The top owner (Deployment via its ReplicaSet, StatefulSet, DaemonSet,
    # CronJob via its Job, Job) or, for a bare pod, the pod itself.
    workload: str | None = None
    workload_kind: str | None = None


@dataclass(slots=True, frozen=True)
class Process:
    """One process image: a pid between an exec (or fork) and the next exec or exit."""

    exec_id: str
    pid: int
    tid: int
    uid: int
    euid: int
    gid: int
    egid: int
    auid: int | None
    user: str | None
    binary: str
    args: tuple[str, ...]
    cwd: str
    start_time: int  # wall-clock ns of the exec (of the fork for fork-only children)
    parent_exec_id: str | None
    flags: tuple[str, ...]
    cgroup_id: int
    # The executable's identity: st_dev (new_encode_dev, as stat gives it)
    # and inode, which tell a file apart from one mounted over its path;
    # and the mount namespace (its inode number) the path is resolved in.
    # None when unknown (a process seen only by a fork, a /proc entry
    # that could not be read).
    binary_dev: int | None = None
    binary_ino: int | None = None
    mnt_ns: int | None = None
    # None on the host (outside containers / pods); set at event time by enrich.Enricher.
    container: Container | None = None
    pod: Pod | None = None


@dataclass(slots=True)
class Context:
    """Who did it: the process side of an event (enrich's process cache makes it)."""

    time: int  # wall-clock ns of the event
    process: Process
    parent: Process | None
    ancestors: tuple[Process, ...]


@dataclass(slots=True, frozen=True)
class ExitStatus:
    code: int | None  # None when a signal ended the process
    signal: str | None  # e.g. "SIGKILL"
    core_dumped: bool = False


@dataclass(slots=True, frozen=True)
class PolicyMatch:
    """The rule that selected an event, what it did, and how bad its policy says that is."""

    name: str
    rule: int  # index of the rule in its policy
    action: str  # post, sigkill, deny
    severity: str = "info"  # info, low, medium, high, critical
    tags: tuple[str, ...] = ()  # ATT&CK technique ids and free tags
    message: str = ""
    # monitor: a sigkill or deny rule that did not act; `action` is what it would have done.
    mode: str = "enforce"


@dataclass(slots=True)
class ProcessEvent:
    """What every event about a process carries."""

    time: int  # wall-clock ns
    node: str
    process: Process
    parent: Process | None
    ancestors: tuple[Process, ...]


@dataclass(slots=True)
class ProcessExec(ProcessEvent):
    type: ClassVar[str] = "process_exec"
    policy: PolicyMatch | None = None


@dataclass(slots=True)
class ProcessExit(ProcessEvent):
    type: ClassVar[str] = "process_exit"
    exit: ExitStatus


@dataclass(slots=True)
class FileInfo:
    path: str
    flags: tuple[str, ...]  # O_* names
    mode: int
    result: int  # fd, or -errno
    error: str | None  # errno name when result < 0
    hook: str
    truncated: bool  # path cut at 4096 bytes or 64 components
    resolved: bool  # False: the open failed; the path is the name asked for
    non_utf8: bool = False  # path (or source) escaped (tracer.core.text)
    op: str = "open"  # open, or rename, link, symlink: a new name for a file
    source: str | None = None  # rename, link: the old name; symlink: the target
    user_memory: bool = False  # path or source read back from the process's memory


@dataclass(slots=True)
class FileOpen(ProcessEvent):
    type: ClassVar[str] = "file_open"
    file: FileInfo
    policy: PolicyMatch | None


@dataclass(slots=True)
class ConnectInfo:
    family: str  # AF_INET, AF_INET6, AF_UNIX
    protocol: str | None  # TCP, UDP, ... (None for AF_UNIX)
    sock_type: str  # SOCK_STREAM, SOCK_DGRAM, ...
    daddr: str | None
    dport: int | None
    saddr: str | None  # None until the kernel has chosen it
    sport: int | None
    unix_path: str | None
    result: int  # 0, or -errno
    error: str | None
    hook: str
    via: str = "connect"  # connect, sendto, sendmsg, fastopen
    user_memory: bool = False  # the address was read from the process's memory


@dataclass(slots=True)
class Connect(ProcessEvent):
    type: ClassVar[str] = "connect"
    connect: ConnectInfo
    policy: PolicyMatch | None


@dataclass(slots=True, frozen=True)
class Credentials:
    """A process's credentials. A capability set is named (CAP_* names)
    only where it changed."""

    uid: int
    euid: int
    suid: int
    fsuid: int
    gid: int
    egid: int
    sgid: int
    fsgid: int
    cap_inheritable: tuple[str, ...] = ()
    cap_permitted: tuple[str, ...] = ()
    cap_effective: tuple[str, ...] = ()
    cap_ambient: tuple[str, ...] = ()


@dataclass(slots=True)
class PrivilegeInfo:
    op: str  # setuid, setresuid, ..., capset, exec (of a set-id or file-capability binary)
    old: Credentials
    new: Credentials
    changed: tuple[str, ...]  # the fields of Credentials that differ
    to_root: bool  # no uid was 0 before and one is now
    hook: str


@dataclass(slots=True)
class PrivilegeChange(ProcessEvent):
    type: ClassVar[str] = "privilege_change"
    privilege: PrivilegeInfo
    policy: PolicyMatch | None


@dataclass(slots=True)
class FileAttrInfo:
    op: str  # chmod (left S_ISUID or S_ISGID set), chown (to uid 0, world-writable directory)
    call: str  # the syscall: chmod, fchmod, fchmodat, fchmodat2, chown, lchown, fchown, fchownat
    path: str
    mode: int | None  # chmod: the mode asked for
    uid: int | None  # chown: the new owner; None for a gid left as it was (and for chmod)
    gid: int | None
    file_mode: int | None  # the file's mode after the call, when it was resolved
    hook: str
    truncated: bool
    resolved: bool  # False: the name passed, joined to its directory, from the process's memory
    non_utf8: bool
    world_writable_dir: bool  # the file's directory was writable by anyone


@dataclass(slots=True)
class FileAttr(ProcessEvent):
    type: ClassVar[str] = "file_attr"
    file_attr: FileAttrInfo
    policy: PolicyMatch | None


@dataclass(slots=True)
class SummaryInfo:
    """What a throttling rule kept back: `count` events like the one posted at
    `window_start` (aggregate: same process, path or peer, access), from
    `first` to the event's time, none of them posted."""

    event: str  # the kind the rule selects: process_exec, file_open, connect
    count: int
    first: int  # wall-clock ns of the first event counted
    window_start: int  # wall-clock ns the window began
    interval_ms: int
    limit: int  # events posted per window
    by: str  # process or cgroup
    aggregate: bool
    cgroup_id: int


@dataclass(slots=True)
class PolicySummary(ProcessEvent):
    """The count of events a rule's throttle or aggregate did not post;
    the process is the one that opened the window."""

    type: ClassVar[str] = "policy_summary"
    summary: SummaryInfo
    policy: PolicyMatch | None


@dataclass(slots=True)
class Lost:
    """Events that could not be delivered since the previous Lost, by kind.

    `kernel` counts records the BPF programs could not put in the ring
    buffer; `daemon` counts records dropped in user space (undecodable, or
    an exporter that could not keep up).
    """

    type: ClassVar[str] = "lost"
    time: int
    node: str
    kernel: dict[str, int] = field(default_factory=dict)
    daemon: dict[str, int] = field(default_factory=dict)


# Every event about a process (all but Lost).
ProcessEventKind = (
    ProcessExec | ProcessExit | FileOpen | Connect | PolicySummary | PrivilegeChange | FileAttr
)
Event = ProcessEventKind | Lost
EVENT_TYPES = tuple(
    c.type
    for c in (
        ProcessExec, ProcessExit, FileOpen, Connect, PolicySummary, PrivilegeChange, FileAttr,
        Lost,
    )
)

# Lost counts are uint32 in the API, so that they are JSON numbers (uint64
# would be strings); LossCounts keeps them exact anyway.
LOST_COUNT_MAX = 2**32 - 1


class LossCounts:
    """Losses by kind, waiting to be reported in a Lost event.

    take() hands out at most LOST_COUNT_MAX per kind and keeps the rest for
    the next report: no count is ever cut. Not thread-safe; callers lock.
    """

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def add(self, counts: dict[str, int]) -> None:
        for kind, n in counts.items():
            if n:
                self._counts[kind] = self._counts.get(kind, 0) + n

    def __bool__(self) -> bool:
        return bool(self._counts)

    def take(self) -> dict[str, int]:
        out = {k: min(n, LOST_COUNT_MAX) for k, n in self._counts.items()}
        self._counts = {k: n - out[k] for k, n in self._counts.items() if n > out[k]}
        return out
