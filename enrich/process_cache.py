"""The process cache: who every pid is, and who its ancestors were.

Built from a /proc snapshot at start-up, then kept current by the
kernel's fork/exec/exit records, in ring-buffer order. An entry is one
process image; an exec replaces the pid's entry with a new one whose
parent is the parent of the image it replaced, so `bash -c 'exec true'`
shows `true` as the child of bash's parent, not of bash.

Entries hold a reference to their parent entry, so ancestry survives the
parent's exit and pid reuse; the chain of a live process is never cut.
Exited entries stay findable by pid for a grace period (late events),
then leave the index. The index is capped; early evictions are counted.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, replace

from enrich.containers import Enricher
from enrich.procfs import ProcfsProcess
from enrich.redact import Redactor
from enrich.users import UserNames
from tracer.core import text
from tracer.core.build import slot_maker
from tracer.core.clock import BootClock
from tracer.core.decode import (
    EXEC_DELETED,
    EXEC_MEMFD,
    EXEC_TRUNC_CWD,
    EXEC_TRUNC_PATH,
    TASK_EXE_DELETED,
    CgroupRecord,
    ExecRecord,
    ExitRecord,
    ForkRecord,
    Task,
)
from tracer.core.events import Context, Process

# Made for every file and connect event: slot by slot, not by its __init__.
_CONTEXT = slot_maker(Context)

# /proc reports start times in clock ticks (10 ms): a procfs entry and a
# kernel record of the same process can differ by that much.
_PROCFS_START_SLACK_NS = 20_000_000


@dataclass(slots=True)
class CacheStats:
    size: int = 0
    evicted_expired: int = 0
    evicted_early: int = 0  # over the cap before the grace period ended
    unknown_pid: int = 0  # fork/exec/exit of a pid the cache did not know
    stale_pid: int = 0  # an entry replaced because its pid had been reused


class _Fork:
    """A forked child's image, not built yet: the parent's, as of the fork, and the child's task."""

    __slots__ = ("cache", "parent", "task")

    def __init__(self, cache: ProcessCache, parent: Process, task: Task) -> None:
        self.cache = cache
        self.parent = parent
        self.task = task


class _Entry:
    __slots__ = ("_above", "_image", "exited", "parent", "pid", "procfs", "task_start")

    def __init__(
        self,
        pid: int,
        image: Process | _Fork,
        parent: _Entry | None,
        task_start: int,
        procfs: bool = False,
    ) -> None:
        self.pid = pid
        self._image = image
        self.parent = parent
        self.task_start = task_start  # boot ns of the fork: identity of the pid
        self.procfs = procfs
        self.exited: int | None = None  # boot ns when it exited or exec'd away
        # Its children's ancestors beyond their parent (see ancestors()).
        self._above: tuple[int, tuple[Process, ...]] | None = None

    @property
    def process(self) -> Process:
        """The image's Process; a forked child's is built when first asked for.

        Most children exec at once, which replaces the fork's image before
        anything reads it: an exec storm then never pays for building it.
        """
        image = self._image
        if isinstance(image, _Fork):
            image = self._image = image.cache._forked(image.parent, image.task)
        return image

    @process.setter
    def process(self, process: Process) -> None:
        self._image = process

    def ancestors(self, depth: int, generation: int) -> tuple[Process, ...]:
        """This entry's ancestors beyond its parent, nearest first.

        The chain is kept on the parent: siblings (a shell's or a loop's
        children) share one tuple, which the Enricher then enriches once
        for all of them. `generation` counts the images the cache has
        replaced (a binary found deleted): a change builds it again.
        """
        parent = self.parent
        if parent is None:
            return ()
        above = parent._above
        if above is None or above[0] != generation:
            chain: list[Process] = []
            node = parent.parent
            while node is not None and len(chain) < depth:
                process = node.process
                chain.append(process)
                if process.pid == 1:
                    break
                node = node.parent
            above = parent._above = (generation, tuple(chain))
        return above[1]


def _parents_first(snapshot: Iterable[ProcfsProcess]) -> list[ProcfsProcess]:
    """Oldest first, but each parent before its children.

    /proc start times are 10 ms ticks: a child often shares its parent's,
    and after pid wrap-around it can have the lower pid. A parent is one
    that started no later than the child (a later one is a reused pid).
    """
    procs = sorted(snapshot, key=lambda p: p.start_boottime)
    by_pid = {p.pid: p for p in procs}
    placed: set[int] = set()
    ordered: list[ProcfsProcess] = []
    for p in procs:
        chain: list[ProcfsProcess] = []
        q: ProcfsProcess | None = p
        while q is not None and q.pid not in placed:
            placed.add(q.pid)  # marked on the way up: a racy snapshot may hold a cycle
            chain.append(q)
            up = by_pid.get(q.ppid)
            q = up if up is not None and up.start_boottime <= q.start_boottime else None
        ordered.extend(reversed(chain))
    return ordered


class ProcessCache:
    def __init__(
        self,
        node: str,
        clock: BootClock,
        users: UserNames | None = None,
        max_entries: int = 65536,
        exit_grace_ns: int = 30_000_000_000,
        ancestor_depth: int = 64,
        enricher: Enricher | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        self.node = node
        self._redactor = redactor
        self._enricher = enricher
        self._clock = clock
        self._users = users or UserNames()
        self._max = max_entries
        self._grace = exit_grace_ns
        self._depth = ancestor_depth
        self._by_pid: dict[int, _Entry] = {}
        self._retired: deque[_Entry] = deque()  # exited entries, oldest first
        self._replaced = 0  # images replaced in place (see _Entry.ancestors)
        self.stats = CacheStats()

    # -- building Process values -------------------------------------

    def _exec_id(self, start_boot_ns: int, pid: int) -> str:
        return f"{self.node}:{start_boot_ns}:{pid}"

    def _process(
        self,
        task: Task,
        exec_id: str,
        start_boot: int,
        binary: bytes,
        args: tuple[bytes, ...],
        cwd: bytes,
        parent: _Entry | None,
        flags: list[str],
        binary_id: tuple[int | None, int | None, int | None] = (None, None, None),
    ) -> Process:
        escaped = False
        bin_s, e = text.decode(binary)
        escaped |= e
        cwd_s, e = text.decode(cwd)
        escaped |= e
        args_s = []
        for a in args:
            s, e = text.decode(a)
            escaped |= e
            args_s.append(s)
        if escaped:
            flags.append("non_utf8")
        args_t = tuple(args_s)
        if self._redactor is not None:
            args_t, redacted = self._redactor.args(bin_s, args_t)
            if redacted:
                flags.append("redacted")
        return Process(
            exec_id=exec_id,
            pid=task.pid,
            tid=task.pid,
            uid=task.uid,
            euid=task.euid,
            gid=task.gid,
            egid=task.egid,
            auid=task.auid,
            user=self._users.name(task.uid),
            binary=bin_s,
            args=args_t,
            cwd=cwd_s,
            start_time=self._clock.wall(start_boot),
            parent_exec_id=parent.process.exec_id if parent else None,
            flags=tuple(flags),
            cgroup_id=task.cgroup_id,
            binary_dev=binary_id[0],
            binary_ino=binary_id[1],
            mnt_ns=binary_id[2],
        )

    # -- index maintenance -------------------------------------------

    def _current(self, task: Task) -> _Entry | None:
        """The live entry of task's pid, if it is the same process (not pid reuse)."""
        entry = self._by_pid.get(task.pid)
        if entry is None:
            return None
        slack = _PROCFS_START_SLACK_NS if entry.procfs else 0
        if abs(entry.task_start - task.start_boottime) > slack:
            self.stats.stale_pid += 1
            self._retire(entry, task.ktime)
            return None
        return entry

    def _parent_of(self, task: Task) -> _Entry | None:
        entry = self._by_pid.get(task.ppid)
        if entry is None and task.ppid != 0:
            self.stats.unknown_pid += 1
        return entry

    def _insert(self, entry: _Entry, now: int) -> None:
        self._by_pid[entry.pid] = entry
        self._expire(now)

    def _retire(self, entry: _Entry, now: int) -> None:
        if entry.exited is None:
            entry.exited = now
            self._retired.append(entry)

    def _drop(self, entry: _Entry) -> None:
        if self._by_pid.get(entry.pid) is entry:
            del self._by_pid[entry.pid]

    def _expire(self, now: int) -> None:
        retired = self._retired
        while retired:
            oldest = retired[0]
            assert oldest.exited is not None
            if self._by_pid.get(oldest.pid) is not oldest:
                pass  # already replaced in the index (exec, pid reuse): not an eviction
            elif oldest.exited + self._grace <= now:
                self.stats.evicted_expired += 1
            elif len(self._by_pid) > self._max:
                self.stats.evicted_early += 1
            else:
                break
            retired.popleft()
            self._drop(oldest)
        self.stats.size = len(self._by_pid)

    # -- inputs ------------------------------------------------------

    def bootstrap(self, snapshot: Iterable[ProcfsProcess]) -> int:
        """Seed the cache from /proc; parents are linked after all are read."""
        procs = _parents_first(snapshot)
        entries: dict[int, tuple[_Entry, int]] = {}
        for p in procs:
            task = Task(
                ktime=p.start_boottime,
                start_boottime=p.start_boottime,
                cgroup_id=p.cgroup_id,
                pid=p.pid,
                tid=p.pid,
                ppid=p.ppid,
                uid=p.uid,
                euid=p.euid,
                gid=p.gid,
                egid=p.egid,
                auid=p.auid,
                comm=p.comm,
            )
            parent = entries.get(p.ppid, (None, 0))[0]
            binary = b"[" + p.comm + b"]" if p.kernel_thread else p.binary
            flags = ["procfs"] + (["kernel_thread"] if p.kernel_thread else [])
            flags += p.binary_flags
            process = self._process(
                task,
                self._exec_id(p.start_boottime, p.pid),
                p.start_boottime,
                binary,
                p.args,
                p.cwd,
                parent,
                flags,
                (p.binary_dev, p.binary_ino, p.mnt_ns),
            )
            entries[p.pid] = (_Entry(p.pid, process, parent, p.start_boottime, procfs=True), p.ppid)
        for entry, _ in entries.values():
            # A kernel record that arrived during the scan knows better.
            self._by_pid.setdefault(entry.pid, entry)
        self.stats.size = len(self._by_pid)
        return len(entries)

    def _partial(self, task: Task, parent: _Entry | None) -> _Entry:
        """An entry for a pid the cache never saw: what the record itself says."""
        process = self._process(
            task,
            self._exec_id(task.start_boottime, task.pid),
            task.start_boottime,
            task.comm,
            (),
            b"",
            parent,
            ["partial"],
        )
        return _Entry(task.pid, process, parent, task.start_boottime)

    def on_fork(self, rec: ForkRecord) -> None:
        task = rec.task
        parent = self._parent_of(task)
        old = self._by_pid.get(task.pid)
        if old is not None and old.exited is None:  # pid reuse whose exit we missed
            self.stats.stale_pid += 1
            self._retire(old, task.ktime)
        if parent is None:
            entry = self._partial(task, None)
        else:
            entry = _Entry(task.pid, _Fork(self, parent.process, task), parent, task.start_boottime)
        self._insert(entry, task.ktime)

    def _forked(self, p: Process, task: Task) -> Process:
        """A child as its fork made it: its parent's image p, in its own identity."""
        flags = [f for f in p.flags if f not in ("procfs", "partial")] + ["fork"]
        if task.flags & TASK_EXE_DELETED:
            flags.append("deleted")
        return replace(
            p,
            exec_id=self._exec_id(task.start_boottime, task.pid),
            pid=task.pid,
            tid=task.pid,
            uid=task.uid,
            euid=task.euid,
            gid=task.gid,
            egid=task.egid,
            auid=task.auid,
            user=self._users.name(task.uid),
            start_time=self._clock.wall(task.start_boottime),
            parent_exec_id=p.exec_id,
            flags=tuple(dict.fromkeys(flags)),
            cgroup_id=task.cgroup_id,
        )

    def on_exec(self, rec: ExecRecord) -> Context:
        """The new image enters the cache; who ran it, for the exec event."""
        task = rec.task
        old = self._current(task)
        if old is not None:
            parent = old.parent
            self._retire(old, task.ktime)
        else:
            self.stats.unknown_pid += 1
            parent = self._parent_of(task)
        flags = []
        if rec.args_truncated:
            flags.append("truncated_args")
        if rec.flags & (EXEC_TRUNC_PATH | EXEC_TRUNC_CWD):
            flags.append("truncated_path")
        if rec.flags & EXEC_MEMFD:
            flags.append("memfd")
        if rec.flags & EXEC_DELETED:
            flags.append("deleted")
        process = self._process(
            task,
            self._exec_id(task.ktime, task.pid),
            task.ktime,
            rec.binary,
            rec.args,
            rec.cwd,
            parent,
            flags,
            (rec.binary_dev, rec.binary_ino, rec.mnt_ns),
        )
        entry = _Entry(task.pid, process, parent, task.start_boottime)
        self._insert(entry, task.ktime)
        process, parent_process, ancestors = self._view(entry)
        return Context(self._clock.wall(task.ktime), process, parent_process, ancestors)

    def _view(self, entry: _Entry) -> tuple[Process, Process | None, tuple[Process, ...]]:
        """The entry's process, parent and ancestors as events show them (enriched)."""
        parent = entry.parent.process if entry.parent else None
        ancestors = entry.ancestors(self._depth, self._replaced)
        if self._enricher is None:
            return entry.process, parent, ancestors
        return self._enricher.view(entry.process, parent, ancestors)

    def _entry_of(self, task: Task) -> _Entry:
        entry = self._current(task)
        if entry is None:
            self.stats.unknown_pid += 1
            entry = self._partial(task, self._parent_of(task))
            self._insert(entry, task.ktime)
        return entry

    def context(self, task: Task) -> Context:
        """Who did it, for an event of a process that keeps running (file, connect)."""
        return self._context(self._entry_of(task), task)

    def _context(self, entry: _Entry, task: Task) -> Context:
        if task.flags & TASK_EXE_DELETED and "deleted" not in entry.process.flags:
            # Unlinked since the exec: this and the image's later events
            # say so (children forked from now on inherit the flag).
            entry.process = replace(entry.process, flags=(*entry.process.flags, "deleted"))
            self._replaced += 1
        process, parent, ancestors = self._view(entry)
        if task.cgroup_id != process.cgroup_id and self._enricher is not None:
            # Moved to another cgroup since its exec (into a container, by
            # hand): this event is placed by the cgroup its record names.
            # The cached image keeps the cgroup it started in, which is the
            # one its children's ancestry shows.
            process = self._enricher.process(replace(entry.process, cgroup_id=task.cgroup_id))
        if task.tid != process.tid:
            process = replace(process, tid=task.tid)
        if (
            task.uid != process.uid
            or task.euid != process.euid
            or task.gid != process.gid
            or task.egid != process.egid
        ):
            # Credentials changed since the exec (setuid and the like): the
            # event is about what the process could do when it happened.
            process = replace(
                process,
                uid=task.uid,
                euid=task.euid,
                gid=task.gid,
                egid=task.egid,
                user=self._users.name(task.uid),
            )
        # This runs for every file and connect event (see tracer.core.build).
        return _CONTEXT(self._clock.wall(task.ktime), process, parent, ancestors)

    def on_exit(self, rec: ExitRecord) -> Context:
        """The process leaves (after a grace period); who it was, for the exit event."""
        task = rec.task
        entry = self._entry_of(task)
        self._retire(entry, task.ktime)
        return self._context(entry, task)

    def on_cgroup(self, rec: CgroupRecord) -> None:
        """cgroup_mkdir/rmdir: ids of containers learned as their cgroups come and go."""
        if self._enricher is not None:
            self._enricher.on_cgroup(rec.id, text.decode(rec.path)[0])

    def expire(self) -> None:
        """Evict what has outlived the grace period (call periodically)."""
        self._expire(self._clock.now_boot())

    def get(self, pid: int) -> Process | None:
        entry = self._by_pid.get(pid)
        return entry.process if entry else None

    def __len__(self) -> int:
        return len(self._by_pid)
