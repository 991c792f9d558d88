"""The /proc snapshot (enrich/procfs.py): this very process, and a fake /proc tree.

read_process() reads stat, cmdline, loginuid, cgroup, exe and cwd under
`root`, and uids/gids through psutil (from the real /proc), so the fake
trees use this process's pid.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from enrich import procfs
from enrich.procfs import cgroup2_mount, read_process

NS_PER_TICK = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
PF_KTHREAD = 0x00200000


# -- this process, from the real /proc --------------------------------------


def test_read_process_of_self_matches_the_os() -> None:
    me = read_process(os.getpid())
    assert me.pid == os.getpid()
    assert me.ppid == os.getppid()
    assert (me.uid, me.euid) == (os.getuid(), os.geteuid())
    assert (me.gid, me.egid) == (os.getgid(), os.getegid())
    assert me.cwd == os.fsencode(os.getcwd())
    assert me.binary == os.readlink(b"/proc/self/exe")
    assert me.binary == os.fsencode(os.path.realpath(sys.executable))
    assert me.comm == Path("/proc/self/comm").read_bytes().rstrip(b"\n")
    assert me.kernel_thread is False


def test_read_process_of_self_args_are_the_command_line() -> None:
    me = read_process(os.getpid())
    assert me.args == tuple(os.fsencode(a) for a in psutil.Process().cmdline())
    # The interpreter's own arguments end with the script's: sys.argv[1:].
    tail = tuple(os.fsencode(a) for a in sys.argv[1:])
    assert me.args[len(me.args) - len(tail) :] == tail
    assert len(me.args) >= len(sys.argv)


def test_read_process_of_self_start_time_is_boot_based_at_tick_resolution() -> None:
    me = read_process(os.getpid())
    assert me.start_boottime % NS_PER_TICK == 0
    assert 0 < me.start_boottime <= time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    # psutil: create_time = boot time + start ticks, in wall-clock seconds.
    since_boot = psutil.Process().create_time() - psutil.boot_time()
    assert abs(me.start_boottime / 1e9 - since_boot) < NS_PER_TICK / 1e9


def test_read_process_of_a_child_sees_its_parent_and_arguments() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "print(flush=True); import sys; sys.stdin.read()", "", "arg one"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        # Until the child has exec'd, /proc shows the forked copy of this
        # process (or nothing): wait for a sign of life from the new image.
        assert child.stdout is not None
        child.stdout.readline()
        p = read_process(child.pid)
        assert p.ppid == os.getpid()
        assert p.args[-2:] == (b"", b"arg one")  # an empty argument is kept
        assert p.binary == os.fsencode(os.path.realpath(sys.executable))
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()


def test_read_process_of_a_vanished_pid_raises_no_such_process() -> None:
    child = subprocess.Popen(["true"])
    pid = child.pid
    child.wait()  # reaped: the pid is gone
    with pytest.raises(psutil.NoSuchProcess):
        read_process(pid)


def test_scan_finds_this_process_once() -> None:
    found = [p for p in procfs.scan() if p.pid == os.getpid()]
    assert len(found) == 1
    assert found[0].ppid == os.getppid()


# -- a fake /proc tree --------------------------------------------------------


def stat_line(pid: int, comm: bytes, ppid: int, flags: int, start_ticks: int) -> bytes:
    # Fields 3.. of proc_pid_stat(5): state, ppid, pgrp, session, tty_nr,
    # tpgid, flags, minflt, cminflt, majflt, cmajflt, utime, stime, cutime,
    # cstime, priority, nice, num_threads, itrealvalue, starttime, vsize, rss.
    rest = [
        "S",
        ppid,
        pid,
        pid,
        0,
        -1,
        flags,
        0,
        0,
        0,
        0,
        1,
        2,
        0,
        0,
        20,
        0,
        1,
        0,
        start_ticks,
        123456,
        42,
    ]
    return b"%d (%s) " % (pid, comm) + " ".join(map(str, rest)).encode() + b"\n"


def fake_proc(
    root: Path,
    pid: int,
    comm: bytes,
    ppid: int = 77,
    flags: int = 0,
    start_ticks: int = 4242,
    cmdline: bytes = b"prog\0arg one\0",
    loginuid: bytes | None = b"1000",
    cgroup: bytes | None = b"0::/\n",
    exe: bytes | None = b"/usr/bin/prog",
    cwd: bytes | None = b"/srv",
) -> Path:
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "stat").write_bytes(stat_line(pid, comm, ppid, flags, start_ticks))
    (d / "cmdline").write_bytes(cmdline)
    if loginuid is not None:
        (d / "loginuid").write_bytes(loginuid)
    if cgroup is not None:
        (d / "cgroup").write_bytes(cgroup)
    if exe is not None:
        os.symlink(exe, os.fsencode(d / "exe"))
    if cwd is not None:
        os.symlink(cwd, os.fsencode(d / "cwd"))
    return d


@pytest.mark.parametrize(
    "comm",
    [b"a) (b", b"x) S 99 (y", b"(", b")", b"two  spaces", b"plain"],
)
def test_comm_with_parentheses_and_spaces_is_parsed(tmp_path: Path, comm: bytes) -> None:
    pid = os.getpid()
    fake_proc(tmp_path, pid, comm, ppid=77, start_ticks=4242)
    p = read_process(pid, root=tmp_path)
    assert p.comm == comm
    assert p.ppid == 77
    assert p.start_boottime == 4242 * NS_PER_TICK
    assert p.kernel_thread is False


def test_fake_process_fields(tmp_path: Path) -> None:
    pid = os.getpid()
    fake_proc(
        tmp_path,
        pid,
        b"prog",
        cmdline=b"prog\0arg one\0\xff\xfe\0",
        exe=b"/opt/\xe9/prog (deleted)",
        cwd=b"/home/u",
    )
    p = read_process(pid, root=tmp_path)
    assert p.args == (b"prog", b"arg one", b"\xff\xfe")
    assert p.binary == b"/opt/\xe9/prog (deleted)"
    assert p.cwd == b"/home/u"
    assert p.auid == 1000
    assert p.cgroup_id == 0  # no cgroup v2 mount given
    assert (p.uid, p.gid) == (os.getuid(), os.getgid())  # from the real process


def test_kernel_thread_has_flag_and_no_binary(tmp_path: Path) -> None:
    pid = os.getpid()
    fake_proc(
        tmp_path,
        pid,
        b"kworker/0:1",
        ppid=2,
        flags=PF_KTHREAD | 0x40,
        cmdline=b"",
        loginuid=b"4294967295",
        exe=None,
        cwd=b"/",
    )
    p = read_process(pid, root=tmp_path)
    assert p.kernel_thread is True
    assert p.binary == b""
    assert p.args == ()
    assert p.auid is None  # 4294967295: never set
    assert p.ppid == 2


def test_unreadable_details_are_left_empty(tmp_path: Path) -> None:
    pid = os.getpid()
    fake_proc(tmp_path, pid, b"p", loginuid=None, cgroup=None, exe=None, cwd=None)
    (tmp_path / str(pid) / "cmdline").unlink()
    p = read_process(pid, root=tmp_path, cg2=tmp_path)
    assert (p.binary, p.cwd, p.args, p.auid, p.cgroup_id) == (b"", b"", (), None, 0)
    assert p.comm == b"p"


def test_missing_stat_means_no_such_process(tmp_path: Path) -> None:
    with pytest.raises(psutil.NoSuchProcess):
        read_process(os.getpid(), root=tmp_path)


def test_cgroup_id_is_the_inode_of_the_v2_cgroup_directory(tmp_path: Path) -> None:
    pid = os.getpid()
    cg2 = tmp_path / "cgroup2"
    leaf = cg2 / "system.slice" / "x.service"
    leaf.mkdir(parents=True)
    fake_proc(
        tmp_path / "proc",
        pid,
        b"p",
        cgroup=b"12:pids:/system.slice/x.service\n1:name=systemd:/other\n0::/system.slice/x.service\n",
    )
    p = read_process(pid, root=tmp_path / "proc", cg2=cg2)
    assert p.cgroup_id == leaf.stat().st_ino
    assert p.cgroup_id != cg2.stat().st_ino


def test_cgroup_id_is_zero_for_a_cgroup_that_is_gone(tmp_path: Path) -> None:
    pid = os.getpid()
    fake_proc(tmp_path / "proc", pid, b"p", cgroup=b"0::/gone\n")
    (tmp_path / "cg").mkdir()
    assert read_process(pid, root=tmp_path / "proc", cg2=tmp_path / "cg").cgroup_id == 0


# -- cgroup2_mount ------------------------------------------------------------


def test_cgroup2_mount_on_a_hybrid_host(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "sysfs /sys sysfs rw,nosuid 0 0\n"
        "tmpfs /sys/fs/cgroup tmpfs ro,nosuid 0 0\n"
        "cgroup /sys/fs/cgroup/systemd cgroup rw,name=systemd 0 0\n"
        "cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nsdelegate 0 0\n"
        "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n"
    )
    assert cgroup2_mount(mounts) == Path("/sys/fs/cgroup/unified")


def test_cgroup2_mount_on_a_unified_host(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text("proc /proc proc rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n")
    assert cgroup2_mount(mounts) == Path("/sys/fs/cgroup")


def test_cgroup2_mount_absent(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    # A v1 hierarchy named like v2 is not a v2 mount; only the fs type counts.
    mounts.write_text("cgroup /sys/fs/cgroup2 cgroup rw,memory 0 0\nshort line\n\n")
    assert cgroup2_mount(mounts) is None
    assert cgroup2_mount(tmp_path / "no-such-file") is None
