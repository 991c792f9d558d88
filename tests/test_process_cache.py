"""The process cache (enrich/process_cache.py) and user names (enrich/users.py).

Records are built as tracer/core/decode.py would return them; the clock is a
BootClock whose "now" the test sets, so grace periods are exact.
"""

from __future__ import annotations

import itertools
import os
import pwd
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from enrich.process_cache import ProcessCache
from enrich.procfs import ProcfsProcess
from enrich.users import UserNames
from tracer.core import build, text
from tracer.core.clock import BootClock
from tracer.core.decode import (
    EXEC_DELETED,
    EXEC_MEMFD,
    EXEC_TRUNC_ARGS,
    EXEC_TRUNC_CWD,
    NO_VERDICT,
    TASK_EXE_DELETED,
    ExecRecord,
    ExitRecord,
    ForkRecord,
    Task,
)
from tracer.core.events import Process, ProcessExec, ProcessExit

NODE = "node-a"
OFFSET = 1_700_000_000_000_000_000  # wall ns at boot
GRACE = 30_000_000_000
SEC = 1_000_000_000


class FakeClock(BootClock):
    """A boot clock that stands still until the test moves it."""

    def __init__(self, now: int = 0) -> None:  # no super(): nothing real is measured
        self.offset_ns = OFFSET
        self.now = now

    def now_boot(self) -> int:
        return self.now


def task(
    pid: int,
    ppid: int,
    start: int,
    ktime: int | None = None,
    tid: int | None = None,
    uid: int = 0,
    comm: bytes = b"comm",
) -> Task:
    return Task(
        ktime=start if ktime is None else ktime,
        start_boottime=start,
        cgroup_id=4242,
        pid=pid,
        tid=pid if tid is None else tid,
        ppid=ppid,
        uid=uid,
        euid=uid,
        gid=uid,
        egid=uid,
        auid=None,
        comm=comm,
    )


def snap(
    pid: int,
    ppid: int,
    start: int,
    binary: bytes = b"",
    args: tuple[bytes, ...] = (),
    comm: bytes = b"",
    kernel_thread: bool = False,
    cwd: bytes = b"/",
) -> ProcfsProcess:
    return ProcfsProcess(
        pid=pid,
        ppid=ppid,
        start_boottime=start,
        uid=0,
        euid=0,
        gid=0,
        egid=0,
        auid=None,
        comm=comm or os.path.basename(binary)[:15],
        cgroup_id=1,
        binary=binary,
        args=args or ((binary,) if binary else ()),
        cwd=cwd,
        kernel_thread=kernel_thread,
    )


def new_cache(tmp_path: Path, **kw: int) -> tuple[ProcessCache, FakeClock]:
    clock = FakeClock()
    users = UserNames(str(tmp_path / "passwd"), check_interval=3600)
    return ProcessCache(NODE, clock, users, **kw), clock


def fork(cache: ProcessCache, pid: int, ppid: int, start: int) -> None:
    cache.on_fork(ForkRecord(task(pid, ppid, start)))


def exec_(
    cache: ProcessCache,
    pid: int,
    ppid: int,
    start: int,
    ktime: int,
    binary: bytes,
    args: tuple[bytes, ...] | None = None,
    cwd: bytes = b"/work",
    flags: int = 0,
) -> ProcessExec:
    rec = ExecRecord(
        task(pid, ppid, start, ktime), binary, cwd, args if args is not None else (binary,), flags
    )
    return build.process_exec(cache.on_exec(rec), NODE, None)


def exit_(
    cache: ProcessCache,
    pid: int,
    ppid: int,
    start: int,
    ktime: int,
    status: int = 0,
    tid: int | None = None,
) -> ProcessExit:
    rec = ExitRecord(task(pid, ppid, start, ktime, tid=tid), status)
    return build.process_exit(rec, cache.on_exit(rec), NODE)


# pid 1 and a login shell under sshd, as a /proc snapshot would show them.
INIT = snap(1, 0, 1 * SEC, b"/sbin/init", (b"/sbin/init",))
SSHD = snap(50, 1, 2 * SEC, b"/usr/sbin/sshd", (b"sshd: u",))
BASH = snap(100, 50, 3 * SEC, b"/bin/bash", (b"-bash",))


@pytest.fixture
def cache_clock(tmp_path: Path) -> Iterator[tuple[ProcessCache, FakeClock]]:
    cache, clock = new_cache(tmp_path)
    assert cache.bootstrap([INIT, SSHD, BASH]) == 3
    yield cache, clock


def proc(cache: ProcessCache, pid: int) -> Process:
    p = cache.get(pid)
    assert p is not None, f"pid {pid} not in cache"
    return p


# -- parent semantics ------------------------------------------------------


def test_fork_then_exec_parent_is_the_forking_process(
    cache_clock: tuple[ProcessCache, FakeClock],
) -> None:
    cache, _ = cache_clock
    bash = proc(cache, 100)
    fork(cache, 200, 100, 10 * SEC)
    ev = exec_(cache, 200, 100, 10 * SEC, 11 * SEC, b"/bin/ls", (b"ls", b"-l"))

    assert ev.node == NODE
    assert ev.time == OFFSET + 11 * SEC
    assert ev.parent == bash
    assert ev.process.parent_exec_id == bash.exec_id
    assert ev.process.pid == 200 and ev.process.tid == 200
    assert ev.process.binary == "/bin/ls"
    assert ev.process.args == ("ls", "-l")
    assert ev.process.cwd == "/work"
    assert ev.process.exec_id == f"{NODE}:{11 * SEC}:200"
    assert ev.process.start_time == OFFSET + 11 * SEC
    assert ev.process.user == pwd.getpwuid(0).pw_name
    assert ev.process.cgroup_id == 4242
    assert ev.process.flags == ()
    assert [a.pid for a in ev.ancestors] == [50, 1]
    assert proc(cache, 200) == ev.process


def test_exec_in_place_parent_is_the_replaced_images_parent(
    cache_clock: tuple[ProcessCache, FakeClock],
) -> None:
    cache, _ = cache_clock
    sshd = proc(cache, 50)
    bash = proc(cache, 100)
    # bash -c 'exec true': the kernel's ppid is sshd anyway, the point is
    # that the replaced image (bash) is not the parent of the new one.
    ev = exec_(cache, 100, 50, BASH.start_boottime, 20 * SEC, b"/usr/bin/true")
    assert ev.parent == sshd
    assert ev.process.parent_exec_id == sshd.exec_id
    assert ev.process.exec_id != bash.exec_id
    assert [a.pid for a in ev.ancestors] == [1]
    assert proc(cache, 100) == ev.process

    # A second exec in place still hangs off sshd, not off `true`.
    ev2 = exec_(cache, 100, 50, BASH.start_boottime, 21 * SEC, b"/usr/bin/env")
    assert ev2.parent == sshd
    assert ev2.process.exec_id not in (bash.exec_id, ev.process.exec_id)


def test_exec_after_reparenting_keeps_the_original_parent(
    cache_clock: tuple[ProcessCache, FakeClock],
) -> None:
    cache, clock = cache_clock
    fork(cache, 200, 100, 10 * SEC)
    daemon = exec_(cache, 200, 100, 10 * SEC, 11 * SEC, b"/usr/bin/daemonize")
    exit_(cache, 100, 50, BASH.start_boottime, 12 * SEC)  # bash exits
    clock.now = 12 * SEC + 2 * GRACE
    cache.expire()
    assert cache.get(100) is None
    # The orphan was reparented to init (ppid 1) and now execs in place.
    ev = exec_(cache, 200, 1, 10 * SEC, 13 * SEC, b"/usr/bin/worker")
    assert ev.parent == daemon.parent
    assert ev.parent is not None and ev.parent.pid == 100
    assert [a.pid for a in ev.ancestors] == [50, 1]


def test_fork_exec_exec_in_place_keeps_the_forker_as_parent(
    cache_clock: tuple[ProcessCache, FakeClock],
) -> None:
    cache, _ = cache_clock
    bash = proc(cache, 100)
    fork(cache, 300, 100, 30 * SEC)
    sh = exec_(cache, 300, 100, 30 * SEC, 31 * SEC, b"/bin/sh", (b"sh", b"-c", b"exec true"))
    true = exec_(cache, 300, 100, 30 * SEC, 32 * SEC, b"/bin/true")
    assert sh.parent == bash
    assert true.parent == bash
    assert true.process.parent_exec_id == bash.exec_id
    assert cache.stats.stale_pid == 0
    assert cache.stats.unknown_pid == 0


def test_exec_of_procfs_process_within_a_clock_tick_is_the_same_process(tmp_path: Path) -> None:
    # /proc start times are clock ticks; the kernel's are ns, a bit later.
    cache, _ = new_cache(tmp_path)
    cache.bootstrap([INIT, SSHD, BASH])
    ev = exec_(cache, 100, 50, BASH.start_boottime + 7_000_000, 40 * SEC, b"/usr/bin/vim")
    assert ev.parent == proc(cache, 50)
    assert cache.stats.stale_pid == 0
    assert cache.stats.unknown_pid == 0


def test_fork_only_child_inherits_the_parents_image(
    cache_clock: tuple[ProcessCache, FakeClock],
) -> None:
    cache, _ = cache_clock
    bash = proc(cache, 100)
    fork(cache, 201, 100, 12 * SEC)
    child = proc(cache, 201)
    assert child.binary == bash.binary == "/bin/bash"
    assert child.args == bash.args
    assert child.exec_id == f"{NODE}:{12 * SEC}:201"
    assert child.start_time == OFFSET + 12 * SEC
    assert child.parent_exec_id == bash.exec_id
    assert child.flags == ("fork",)  # "procfs" describes bash's entry, not the child's

    ev = exit_(cache, 201, 100, 12 * SEC, 13 * SEC)
    assert ev.process == child
    assert ev.parent == bash


# -- ancestry --------------------------------------------------------------


def chain_snapshot() -> list[ProcfsProcess]:
    # 1 <- 10 <- 11 <- 12 <- 13, given in scrambled order.
    procs = [snap(1, 0, SEC, b"/sbin/init")]
    procs += [
        snap(10 + i, (10 + i - 1) if i else 1, (2 + i) * SEC, f"/bin/p{i}".encode())
        for i in range(4)
    ]
    return [procs[3], procs[0], procs[4], procs[2], procs[1]]


def test_ancestors_are_nearest_first_beyond_the_parent(tmp_path: Path) -> None:
    cache, _ = new_cache(tmp_path)
    cache.bootstrap(chain_snapshot())
    fork(cache, 14, 13, 20 * SEC)
    ev = exec_(cache, 14, 13, 20 * SEC, 21 * SEC, b"/bin/leaf")
    assert ev.parent is not None and ev.parent.pid == 13
    assert [a.pid for a in ev.ancestors] == [12, 11, 10, 1]
    # Each ancestor is the parent of the one before it.
    chain = [ev.process, ev.parent, *ev.ancestors]
    for child, parent in itertools.pairwise(chain):
        assert child.parent_exec_id == parent.exec_id


def test_ancestors_stop_at_ancestor_depth(tmp_path: Path) -> None:
    cache, _ = new_cache(tmp_path, ancestor_depth=2)
    cache.bootstrap(chain_snapshot())
    fork(cache, 14, 13, 20 * SEC)
    ev = exec_(cache, 14, 13, 20 * SEC, 21 * SEC, b"/bin/leaf")
    assert ev.parent is not None and ev.parent.pid == 13
    assert [a.pid for a in ev.ancestors] == [12, 11]

    cache0, _ = new_cache(tmp_path, ancestor_depth=0)
    cache0.bootstrap(chain_snapshot())
    ev0 = exec_(cache0, 13, 12, 5 * SEC, 22 * SEC, b"/bin/x")
    assert ev0.parent is not None and ev0.parent.pid == 12  # the parent is not an ancestor
    assert ev0.ancestors == ()


def test_ancestors_stop_at_pid_1(tmp_path: Path) -> None:
    # pid 1 with a known parent of its own: the chain still ends at pid 1.
    cache, _ = new_cache(tmp_path)
    cache.bootstrap(
        [
            snap(99, 0, SEC // 2, b"/outer"),
            snap(1, 99, SEC, b"/sbin/init"),
            snap(10, 1, 2 * SEC, b"/bin/a"),
        ]
    )
    fork(cache, 20, 10, 5 * SEC)
    ev = exec_(cache, 20, 10, 5 * SEC, 6 * SEC, b"/bin/b")
    assert [a.pid for a in ev.ancestors] == [1]


def test_parent_of_child_of_pid_1_has_no_ancestors(
    cache_clock: tuple[ProcessCache, FakeClock],
) -> None:
    cache, _ = cache_clock
    fork(cache, 60, 1, 8 * SEC)
    ev = exec_(cache, 60, 1, 8 * SEC, 9 * SEC, b"/usr/sbin/cron")
    assert ev.parent is not None and ev.parent.pid == 1
    assert ev.ancestors == ()



def test_siblings_share_one_ancestor_chain_that_sees_an_ancestor_found_deleted(
    cache_clock: tuple[ProcessCache, FakeClock],
) -> None:
    # A loop's children have the same ancestors: one tuple for all of them
    # (the Enricher enriches a chain once per tuple), made again once an
    # image in the cache changes.
    cache, _ = cache_clock
    fork(cache, 201, 100, 10 * SEC)
    first = exec_(cache, 201, 100, 10 * SEC, 10 * SEC, b"/bin/true")
    fork(cache, 202, 100, 11 * SEC)
    second = exec_(cache, 202, 100, 11 * SEC, 11 * SEC, b"/bin/true")
    assert [a.pid for a in first.ancestors] == [50, 1]
    assert second.ancestors is first.ancestors
    sshd = task(50, 1, 2 * SEC, 12 * SEC)
    sshd.flags = TASK_EXE_DELETED
    cache.context(sshd)  # sshd's binary was unlinked
    fork(cache, 203, 100, 13 * SEC)
    third = exec_(cache, 203, 100, 13 * SEC, 13 * SEC, b"/bin/true")
    assert [a.pid for a in third.ancestors] == [50, 1]
    assert "deleted" in third.ancestors[0].flags
    assert "deleted" not in first.ancestors[0].flags


def test_fork_only_child_is_its_parents_image_as_of_the_fork(
    cache_clock: tuple[ProcessCache, FakeClock],
) -> None:
    # The child's image is built when first read, from the parent's image
    # at the fork: what the parent became since is not the child's.
    cache, _ = cache_clock
    exec_(cache, 300, 100, 10 * SEC, 10 * SEC, b"/tmp/y")
    fork(cache, 301, 300, 11 * SEC)
    t = task(300, 100, 10 * SEC, 12 * SEC)
    t.flags = TASK_EXE_DELETED
    assert "deleted" in cache.context(t).process.flags
    child = proc(cache, 301)
    assert child.binary == "/tmp/y"
    assert child.flags == ("fork",)
    assert child.parent_exec_id == proc(cache, 300).exec_id


# -- exit ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "signal", "core"),
    [
        (0, 0, None, False),
        (3 << 8, 3, None, False),
        (9, None, "SIGKILL", False),
        (15, None, "SIGTERM", False),
        (11 | 0x80, None, "SIGSEGV", True),
        (6 | 0x80, None, "SIGABRT", True),
    ],
)
def test_exit_carries_code_signal_and_core_dump(
    cache_clock: tuple[ProcessCache, FakeClock],
    status: int,
    code: int | None,
    signal: str | None,
    core: bool,
) -> None:
    cache, _ = cache_clock
    fork(cache, 200, 100, 10 * SEC)
    ex = exec_(cache, 200, 100, 10 * SEC, 11 * SEC, b"/bin/ls")
    ev = exit_(cache, 200, 100, 10 * SEC, 12 * SEC, status)
    assert ev.time == OFFSET + 12 * SEC
    assert ev.process == ex.process
    assert ev.parent == ex.parent
    assert ev.ancestors == ex.ancestors
    assert (ev.exit.code, ev.exit.signal, ev.exit.core_dumped) == (code, signal, core)
    assert cache.stats.unknown_pid == 0


def test_exit_of_unknown_pid_is_partial_and_counted(
    cache_clock: tuple[ProcessCache, FakeClock],
) -> None:
    cache, _ = cache_clock
    ev = exit_(cache, 777, 100, 5 * SEC, 50 * SEC, 1 << 8)
    assert cache.stats.unknown_pid == 1
    assert ev.process.flags == ("partial",)
    assert ev.process.binary == "comm"  # all the record knows: the comm
    assert ev.process.args == ()
    assert ev.process.exec_id == f"{NODE}:{5 * SEC}:777"
    assert ev.parent == proc(cache, 100)  # the ppid is known
    assert ev.exit.code == 1


def test_exit_of_unknown_pid_with_unknown_parent(tmp_path: Path) -> None:
    cache, _ = new_cache(tmp_path)
    ev = exit_(cache, 777, 555, 5 * SEC, 50 * SEC)
    assert ev.process.flags == ("partial",)
    assert ev.parent is None
    assert ev.ancestors == ()
    assert ev.process.parent_exec_id is None
    assert cache.stats.unknown_pid == 2  # the pid and its parent


def test_fork_from_unknown_parent_counts_the_parent_once(tmp_path: Path) -> None:
    cache, _ = new_cache(tmp_path)
    fork(cache, 400, 399, 5 * SEC)
    assert cache.stats.unknown_pid == 1
    child = proc(cache, 400)
    assert child.flags == ("partial",)
    assert child.parent_exec_id is None


def test_exit_from_a_thread_reports_that_tid(
    cache_clock: tuple[ProcessCache, FakeClock],
) -> None:
    cache, _ = cache_clock
    fork(cache, 200, 100, 10 * SEC)
    ex = exec_(cache, 200, 100, 10 * SEC, 11 * SEC, b"/usr/bin/java")
    ev = exit_(cache, 200, 100, 10 * SEC, 12 * SEC, tid=205)
    assert ev.process.pid == 200
    assert ev.process.tid == 205
    assert ev.process.exec_id == ex.process.exec_id
    assert proc(cache, 200).tid == 200  # the cached process is not rewritten


# -- pid reuse -------------------------------------------------------------


def test_pid_reuse_after_exit_is_a_new_process(
    cache_clock: tuple[ProcessCache, FakeClock],
) -> None:
    cache, _ = cache_clock
    fork(cache, 300, 100, 10 * SEC)
    first = exec_(cache, 300, 100, 10 * SEC, 11 * SEC, b"/bin/first")
    exit_(cache, 300, 100, 10 * SEC, 12 * SEC)
    fork(cache, 300, 50, 13 * SEC)  # the pid comes back, forked by sshd
    second = exec_(cache, 300, 50, 13 * SEC, 14 * SEC, b"/bin/second")
    assert second.process.exec_id != first.process.exec_id
    assert second.parent is not None and second.parent.pid == 50
    assert second.process.parent_exec_id == proc(cache, 50).exec_id
    assert proc(cache, 300) == second.process
    assert cache.stats.stale_pid == 0  # the exit was seen: nothing stale


def test_pid_reuse_with_missed_exit_does_not_merge(
    cache_clock: tuple[ProcessCache, FakeClock],
) -> None:
    cache, clock = cache_clock
    fork(cache, 300, 100, 10 * SEC)
    first = exec_(cache, 300, 100, 10 * SEC, 11 * SEC, b"/bin/first")
    # Exit and fork of the next holder of pid 300 were lost; its exec arrives.
    second = exec_(cache, 300, 50, 20 * SEC, 21 * SEC, b"/bin/second")
    assert cache.stats.stale_pid == 1
    assert second.process.exec_id != first.process.exec_id
    # Not "an exec in place of /bin/first": the parent comes from the ppid.
    assert second.parent is not None and second.parent.pid == 50
    assert proc(cache, 300) == second.process
    clock.now = 21 * SEC + GRACE
    cache.expire()
    assert proc(cache, 300) == second.process  # the stale entry's expiry does not take it

    # The new holder's exit matches it, not the stale one.
    ev = exit_(cache, 300, 50, 20 * SEC, 22 * SEC)
    assert ev.process == second.process


def test_exit_of_reused_pid_with_missed_fork_is_not_the_old_process(
    cache_clock: tuple[ProcessCache, FakeClock],
) -> None:
    cache, _ = cache_clock
    fork(cache, 300, 100, 10 * SEC)
    first = exec_(cache, 300, 100, 10 * SEC, 11 * SEC, b"/bin/first")
    ev = exit_(cache, 300, 100, 20 * SEC, 22 * SEC)  # a different start_boottime
    assert ev.process.exec_id != first.process.exec_id
    assert ev.process.flags == ("partial",)
    assert cache.stats.stale_pid == 1


def test_fork_over_a_live_entry_retires_it_as_stale(
    cache_clock: tuple[ProcessCache, FakeClock],
) -> None:
    cache, _ = cache_clock
    fork(cache, 300, 100, 10 * SEC)
    first = proc(cache, 300)
    fork(cache, 300, 50, 20 * SEC)
    second = proc(cache, 300)
    assert cache.stats.stale_pid == 1
    assert second.exec_id != first.exec_id
    assert second.parent_exec_id == proc(cache, 50).exec_id


# -- bootstrap -------------------------------------------------------------


def test_bootstrap_links_parents_and_marks_procfs(tmp_path: Path) -> None:
    cache, _ = new_cache(tmp_path)
    kthreadd = snap(2, 0, SEC, comm=b"kthreadd", kernel_thread=True, cwd=b"/")
    kworker = snap(3, 2, SEC + 1, comm=b"kworker/0:0", kernel_thread=True, cwd=b"/")
    # Given children first: linking must not depend on input order.
    n = cache.bootstrap([BASH, kworker, SSHD, INIT, kthreadd])
    assert n == 5 and len(cache) == 5
    assert cache.stats.size == 5

    init, sshd, bash = proc(cache, 1), proc(cache, 50), proc(cache, 100)
    assert init.parent_exec_id is None
    assert sshd.parent_exec_id == init.exec_id
    assert bash.parent_exec_id == sshd.exec_id
    assert bash.flags == ("procfs",)
    assert bash.binary == "/bin/bash"
    assert bash.args == ("-bash",)
    assert bash.exec_id == f"{NODE}:{3 * SEC}:100"
    assert bash.start_time == OFFSET + 3 * SEC

    kt = proc(cache, 2)
    assert kt.binary == "[kthreadd]"
    assert kt.flags == ("procfs", "kernel_thread")
    assert kt.args == ()
    kw = proc(cache, 3)
    assert kw.binary == "[kworker/0:0]"
    assert kw.parent_exec_id == kt.exec_id
    assert cache.stats.unknown_pid == 0


def test_bootstrap_links_same_tick_child_with_lower_pid(tmp_path: Path) -> None:
    # After pid wrap-around a child can have a lower pid than its parent,
    # and /proc start times are 10 ms ticks: both started in the same tick.
    cache, _ = new_cache(tmp_path)
    parent = snap(32000, 1, 5 * SEC, b"/bin/make")
    child = snap(300, 32000, 5 * SEC, b"/usr/bin/cc")
    grandchild = snap(299, 300, 5 * SEC, b"/usr/bin/as")
    cache.bootstrap([INIT, grandchild, child, parent])  # pid order, as /proc lists them
    assert proc(cache, 300).parent_exec_id == proc(cache, 32000).exec_id
    assert proc(cache, 299).parent_exec_id == proc(cache, 300).exec_id
    fork(cache, 301, 299, 6 * SEC)
    ev = exec_(cache, 301, 299, 6 * SEC, 7 * SEC, b"/usr/bin/ld")
    assert [a.pid for a in ev.ancestors] == [300, 32000, 1]


def test_bootstrap_does_not_link_to_a_parent_pid_reused_during_the_scan(tmp_path: Path) -> None:
    # pid 400 was the child's parent when the child was read; by the time
    # 400 was read it had exited and been reused by a younger process.
    cache, _ = new_cache(tmp_path)
    cache.bootstrap(
        [INIT, snap(300, 400, 5 * SEC, b"/bin/child"), snap(400, 1, 6 * SEC, b"/bin/q")]
    )
    assert proc(cache, 300).parent_exec_id is None
    assert proc(cache, 400).parent_exec_id == proc(cache, 1).exec_id


def test_bootstrap_survives_a_parent_cycle_from_a_racy_snapshot(tmp_path: Path) -> None:
    # pid reuse while /proc is read can make two entries name each other.
    cache, _ = new_cache(tmp_path)
    n = cache.bootstrap([snap(10, 11, SEC, b"/a"), snap(11, 10, SEC, b"/b")])
    assert n == 2
    assert {proc(cache, 10).binary, proc(cache, 11).binary} == {"/a", "/b"}


def test_kernel_record_seen_during_bootstrap_wins_over_snapshot(tmp_path: Path) -> None:
    cache, _ = new_cache(tmp_path)
    # The sensor is attached before /proc is read: this exec arrives first.
    fork(cache, 500, 1, 9 * SEC)
    ev = exec_(cache, 500, 1, 9 * SEC, 10 * SEC, b"/usr/bin/new")
    # The scan caught pid 500 before its exec.
    cache.bootstrap([INIT, snap(500, 1, 9 * SEC, b"/usr/bin/old")])
    assert proc(cache, 500) == ev.process
    assert proc(cache, 500).binary == "/usr/bin/new"
    assert "procfs" not in proc(cache, 500).flags
    assert proc(cache, 1).flags == ("procfs",)
    assert len(cache) == 2


# -- grace period and cap ------------------------------------------------


def test_exited_entry_found_within_grace_and_evicted_after(
    cache_clock: tuple[ProcessCache, FakeClock],
) -> None:
    cache, clock = cache_clock
    fork(cache, 200, 100, 10 * SEC)
    ex = exec_(cache, 200, 100, 10 * SEC, 11 * SEC, b"/bin/ls")
    exit_(cache, 200, 100, 10 * SEC, 12 * SEC)
    size_after_exit = len(cache)

    clock.now = 12 * SEC + GRACE - 1
    cache.expire()
    assert cache.get(200) == ex.process
    assert cache.stats.evicted_expired == 0

    clock.now = 12 * SEC + GRACE
    cache.expire()
    assert cache.get(200) is None
    assert cache.stats.evicted_expired == 1
    assert len(cache) == cache.stats.size == size_after_exit - 1
    assert cache.get(100) is not None  # live entries never expire


def test_late_exit_within_grace_still_matches_the_process(
    cache_clock: tuple[ProcessCache, FakeClock],
) -> None:
    cache, clock = cache_clock
    fork(cache, 200, 100, 10 * SEC)
    fork(cache, 201, 200, 10 * SEC + 1)
    exit_(cache, 200, 100, 10 * SEC, 11 * SEC)
    clock.now = 11 * SEC + GRACE // 2
    cache.expire()
    # The child exits after its parent did: its ancestry is intact.
    ev = exit_(cache, 201, 200, 10 * SEC + 1, 12 * SEC)
    assert ev.parent is not None and ev.parent.pid == 200
    assert [a.pid for a in ev.ancestors] == [100, 50, 1]
    assert cache.stats.unknown_pid == 0


def test_exec_away_image_is_not_counted_as_an_eviction(
    cache_clock: tuple[ProcessCache, FakeClock],
) -> None:
    cache, clock = cache_clock
    fork(cache, 200, 100, 10 * SEC)
    exec_(cache, 200, 100, 10 * SEC, 11 * SEC, b"/bin/sleep")
    clock.now = 11 * SEC + 2 * GRACE
    cache.expire()
    # Nothing left the index: the fork image was replaced, not evicted.
    assert cache.stats.evicted_expired == 0
    assert cache.stats.evicted_early == 0
    assert proc(cache, 200).binary == "/bin/sleep"


def test_cap_evicts_exited_entries_early_but_keeps_live_ancestry(tmp_path: Path) -> None:
    cache, _ = new_cache(tmp_path, max_entries=4)
    cache.bootstrap([INIT])
    fork(cache, 10, 1, 2 * SEC)
    p = exec_(cache, 10, 1, 2 * SEC, 3 * SEC, b"/bin/parent").process
    fork(cache, 11, 10, 4 * SEC)
    c = exec_(cache, 11, 10, 4 * SEC, 5 * SEC, b"/bin/child").process
    exit_(cache, 10, 1, 2 * SEC, 6 * SEC)  # the parent exits; the child lives on
    assert len(cache) == 3

    fork(cache, 20, 1, 7 * SEC)
    assert cache.stats.evicted_early == 0  # 4 entries: at the cap, not over it
    fork(cache, 21, 1, 8 * SEC)
    assert cache.stats.evicted_early == 1
    assert cache.stats.evicted_expired == 0
    assert cache.get(10) is None  # evicted before its grace period ended
    assert len(cache) == cache.stats.size == 4

    # The child's chain does not depend on the parent being in the index.
    ev = exit_(cache, 11, 10, 4 * SEC, 9 * SEC)
    assert ev.process == c
    assert ev.parent == p
    assert [a.pid for a in ev.ancestors] == [1]
    fork(cache, 12, 11, 9 * SEC - 1)  # a late fork record from the exited child
    assert proc(cache, 12).parent_exec_id == c.exec_id


def test_cap_never_evicts_live_entries(tmp_path: Path) -> None:
    cache, _ = new_cache(tmp_path, max_entries=3)
    cache.bootstrap([INIT])
    for pid in range(10, 16):
        fork(cache, pid, 1, pid * SEC)
    assert len(cache) == 7
    assert all(cache.get(pid) is not None for pid in range(10, 16))
    assert cache.stats.evicted_early == 0


# -- strings ---------------------------------------------------------------


def test_non_utf8_args_are_flagged_and_reversible(
    cache_clock: tuple[ProcessCache, FakeClock],
) -> None:
    cache, _ = cache_clock
    raw_args = (b"grep", b"caf\xe9", b"a\\b\xff", "\u00e9t\u00e9".encode())
    fork(cache, 200, 100, 10 * SEC)
    ev = exec_(cache, 200, 100, 10 * SEC, 11 * SEC, b"/bin/grep", raw_args)
    assert "non_utf8" in ev.process.flags
    assert ev.process.args[1] == "caf\\xe9"
    assert tuple(text.encode(a) for a in ev.process.args) == raw_args


def test_non_utf8_binary_or_cwd_is_flagged(
    cache_clock: tuple[ProcessCache, FakeClock],
) -> None:
    cache, _ = cache_clock
    ev = exec_(cache, 100, 50, BASH.start_boottime, 11 * SEC, b"/tmp/\x80x", (b"x",), b"/srv")
    assert ev.process.flags == ("non_utf8",)
    assert text.encode(ev.process.binary) == b"/tmp/\x80x"
    ev2 = exec_(cache, 100, 50, BASH.start_boottime, 12 * SEC, b"/bin/x", (b"x",), b"/d\xfe")
    assert ev2.process.flags == ("non_utf8",)
    assert text.encode(ev2.process.cwd) == b"/d\xfe"


def test_utf8_strings_are_not_flagged(cache_clock: tuple[ProcessCache, FakeClock]) -> None:
    cache, _ = cache_clock
    ev = exec_(
        cache,
        100,
        50,
        BASH.start_boottime,
        11 * SEC,
        "/opt/\u00e9".encode(),
        (b"a\\b",),
        "/h\u00f6me".encode(),
    )
    assert ev.process.flags == ()
    assert ev.process.binary == "/opt/\u00e9"
    assert ev.process.args == ("a\\b",)  # no doubling outside escaped strings


def test_truncation_flags(cache_clock: tuple[ProcessCache, FakeClock]) -> None:
    cache, _ = cache_clock
    ev = exec_(
        cache,
        100,
        50,
        BASH.start_boottime,
        11 * SEC,
        b"/bin/echo",
        (b"echo", b"aaa"),
        flags=EXEC_TRUNC_ARGS,
    )
    assert ev.process.flags == ("truncated_args",)
    ev2 = exec_(
        cache,
        100,
        50,
        BASH.start_boottime,
        12 * SEC,
        b"/bin/echo",
        (b"echo",),
        flags=EXEC_TRUNC_CWD,
    )
    assert ev2.process.flags == ("truncated_path",)


def test_fork_child_keeps_string_flags_of_its_parent(
    cache_clock: tuple[ProcessCache, FakeClock],
) -> None:
    cache, _ = cache_clock
    exec_(
        cache, 100, 50, BASH.start_boottime, 11 * SEC, b"/bin/\xff", (b"x",), flags=EXEC_TRUNC_ARGS
    )
    fork(cache, 200, 100, 12 * SEC)
    child = proc(cache, 200)
    # The child holds the same (escaped, cut) strings, so the same flags apply.
    assert child.flags == ("truncated_args", "non_utf8", "fork")
    assert text.encode(child.binary) == b"/bin/\xff"


# -- user names ------------------------------------------------------------


class FakePasswd:
    """Stands in for the NSS passwd database behind pwd.getpwuid()."""

    def __init__(self, names: dict[int, str]) -> None:
        self.names = names
        self.calls = 0

    def getpwuid(self, uid: int) -> pwd.struct_passwd:
        self.calls += 1
        if uid not in self.names:
            raise KeyError(f"getpwuid(): uid not found: {uid}")
        name = self.names[uid]
        return pwd.struct_passwd((name, "x", uid, uid, "", "/", "/bin/sh"))


def test_user_name_of_real_uid_and_unknown_uid(tmp_path: Path) -> None:
    users = UserNames(str(tmp_path / "passwd"))
    assert users.name(0) == pwd.getpwuid(0).pw_name
    unknown = next(u for u in range(2**31 - 2, 0, -1) if not _known_uid(u))
    assert users.name(unknown) is None


def _known_uid(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def test_user_names_are_cached_until_the_passwd_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_text("alice:x:1000:1000::/home/alice:/bin/sh\n")
    os.utime(passwd, ns=(1_000_000_000, 1_000_000_000))
    db = FakePasswd({1000: "alice"})
    monkeypatch.setattr("enrich.users.pwd", db)
    users = UserNames(str(passwd), check_interval=0)

    assert users.name(1000) == "alice"
    assert users.name(4321) is None
    db.names = {1000: "bob", 4321: "carol"}
    calls = db.calls
    assert users.name(1000) == "alice"  # unchanged file: cached, unknown too
    assert users.name(4321) is None
    assert db.calls == calls

    passwd.write_text("bob:x:1000:1000::/home/bob:/bin/sh\ncarol:x:4321:4321::/:/bin/sh\n")
    os.utime(passwd, ns=(2_000_000_000, 2_000_000_000))
    assert users.name(1000) == "bob"
    assert users.name(4321) == "carol"


def test_user_names_not_rechecked_within_the_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_text("")
    os.utime(passwd, ns=(1_000_000_000, 1_000_000_000))
    db = FakePasswd({1000: "alice"})
    monkeypatch.setattr("enrich.users.pwd", db)
    users = UserNames(str(passwd), check_interval=3600)
    assert users.name(1000) == "alice"
    db.names = {1000: "bob"}
    os.utime(passwd, ns=(2_000_000_000, 2_000_000_000))
    assert users.name(1000) == "alice"


def test_user_name_that_is_not_utf8_is_valid_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pwd decodes names with surrogateescape; a lone surrogate cannot be
    # written as JSON (orjson refuses it), so it must not reach events.
    raw = b"j\xf6rg"
    db = FakePasswd({1000: os.fsdecode(raw)})
    monkeypatch.setattr("enrich.users.pwd", db)
    users = UserNames(str(tmp_path / "passwd"), check_interval=0)
    name = users.name(1000)
    assert name is not None
    name.encode("utf-8")  # strict: raises on surrogates
    assert text.encode(name) == raw


# -- what exec records say about the binary itself ---------------------------------


def test_memfd_and_deleted_binaries_and_their_identity(
    cache_clock: tuple[ProcessCache, FakeClock],
) -> None:
    cache, _ = cache_clock
    rec = ExecRecord(
        task(200, 100, 10 * SEC),
        b"memfd:x",
        b"/",
        (b"x",),
        EXEC_MEMFD,
        NO_VERDICT,
        1,
        77,
        4026531841,
    )
    p = cache.on_exec(rec).process
    assert p.binary == "memfd:x" and p.flags == ("memfd",)
    assert (p.binary_dev, p.binary_ino, p.mnt_ns) == (1, 77, 4026531841)
    fork(cache, 201, 200, 11 * SEC)  # a fork shares the image: same file, same flags
    child = proc(cache, 201)
    assert (child.binary_dev, child.binary_ino, child.mnt_ns) == (1, 77, 4026531841)
    assert "memfd" in child.flags
    assert (
        "deleted"
        in exec_(cache, 202, 100, 12 * SEC, 12 * SEC, b"/tmp/x", flags=EXEC_DELETED).process.flags
    )


def test_a_binary_unlinked_after_the_exec_is_flagged_from_its_next_event_on(
    cache_clock: tuple[ProcessCache, FakeClock],
) -> None:
    cache, _ = cache_clock
    assert "deleted" not in exec_(cache, 300, 100, 10 * SEC, 10 * SEC, b"/tmp/y").process.flags
    t = task(300, 100, 10 * SEC, 11 * SEC)
    t.flags = TASK_EXE_DELETED
    assert "deleted" in cache.context(t).process.flags
    # at exit the kernel no longer knows (no mm), the cache still does
    assert "deleted" in exit_(cache, 300, 100, 10 * SEC, 12 * SEC).process.flags
    bootstrap = snap(400, 1, 1 * SEC, b"/tmp/z", (b"z",))
    cache.bootstrap([replace(bootstrap, binary_flags=("deleted",), binary_ino=5)])
    assert proc(cache, 400).flags == ("procfs", "deleted")
    assert proc(cache, 400).binary_ino == 5
