"""Snapshot of the processes that already run when the daemon starts.

Processes come and go while /proc is read: one that vanishes midway is
skipped, one whose details cannot be read keeps what could be.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_NS_PER_TICK = 1_000_000_000 // _CLK_TCK
AUID_UNSET = 0xFFFFFFFF
_PF_KTHREAD = 0x00200000


@dataclass(slots=True, frozen=True)
class ProcfsProcess:
    pid: int
    ppid: int
    start_boottime: int  # boot-based ns, at clock-tick resolution
    uid: int
    euid: int
    gid: int
    egid: int
    auid: int | None
    comm: bytes
    cgroup_id: int  # cgroup v2 id, 0 when unknown
    binary: bytes  # b"" for kernel threads
    args: tuple[bytes, ...]
    cwd: bytes
    kernel_thread: bool
    # The executable's st_dev and inode, and the mount namespace's inode
    # number; None when unreadable (kernel threads, a process gone midway).
    binary_dev: int | None = None
    binary_ino: int | None = None
    mnt_ns: int | None = None
    # "memfd" (binary is then memfd:NAME, as the kernel names it) or
    # "deleted" (unlinked since the exec), as exec events flag them.
    binary_flags: tuple[str, ...] = ()


def _stat_fields(proc: Path) -> tuple[bytes, int, int, int]:
    """(comm, ppid, flags, starttime in ticks) from /proc/PID/stat.

    comm may itself contain spaces and parentheses: split at the last ')'.
    """
    raw = (proc / "stat").read_bytes()
    lpar, rpar = raw.index(b"("), raw.rindex(b")")
    rest = raw[rpar + 2 :].split()
    # rest[0] is field 3 (state): ppid is field 4, flags 9, starttime 22.
    return raw[lpar + 1 : rpar], int(rest[1]), int(rest[6]), int(rest[19])


def cgroup2_mount(mounts: Path = Path("/proc/self/mounts")) -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup/unified on hybrid hosts)."""
    try:
        for line in mounts.read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and parts[2] == "cgroup2":
                return Path(parts[1])
    except OSError:
        pass
    return None


def _cgroup_id(proc: Path, cg2: Path | None) -> int:
    """The v2 cgroup id, as bpf_get_current_cgroup_id() gives it: the directory's inode."""
    if cg2 is None:
        return 0
    try:
        for line in (proc / "cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return os.stat(cg2 / line[3:].lstrip("/")).st_ino
    except (OSError, ValueError):
        pass
    return 0


_DELETED = b" (deleted)"


def _memfd_dev() -> int | None:
    """st_dev of the kernel's internal shmem mount, where memfds live."""
    try:
        fd = os.memfd_create("tracer-probe", os.MFD_CLOEXEC)
    except (OSError, AttributeError):
        return None
    try:
        return os.fstat(fd).st_dev
    finally:
        os.close(fd)


_MEMFD_DEV = _memfd_dev()


def _exe(proc: Path) -> tuple[bytes, int | None, int | None, tuple[str, ...]]:
    """(path, st_dev, inode, flags) of the process's executable.

    /proc shows an unlinked file as "PATH (deleted)" and a memfd as
    "/memfd:NAME (deleted)"; exec events name the first PATH with the
    `deleted` flag and the second memfd:NAME with the `memfd` flag.
    """
    link = _read_link(proc / "exe")
    try:
        st = os.stat(proc / "exe")
    except OSError:
        return link, None, None, ()
    if not link.endswith(_DELETED):
        return link, st.st_dev, st.st_ino, ()
    bare = link[: -len(_DELETED)]
    if st.st_dev == _MEMFD_DEV and bare.startswith(b"/memfd:") and b"/" not in bare[1:]:
        return bare[1:], st.st_dev, st.st_ino, ("memfd",)
    try:
        named = os.stat(link)  # a file really named "x (deleted)"
        if (named.st_dev, named.st_ino) == (st.st_dev, st.st_ino):
            return link, st.st_dev, st.st_ino, ()
    except OSError:
        pass
    return bare, st.st_dev, st.st_ino, ("deleted",)


def _mnt_ns(proc: Path) -> int | None:
    try:
        return os.stat(proc / "ns" / "mnt").st_ino
    except OSError:
        return None


def _read_link(path: Path) -> bytes:
    try:
        return os.readlink(os.fsencode(path))
    except OSError:
        return b""


def read_process(pid: int, root: Path = Path("/proc"), cg2: Path | None = None) -> ProcfsProcess:
    """One process; raises psutil.NoSuchProcess when it is gone."""
    proc = root / str(pid)
    try:
        comm, ppid, pflags, start = _stat_fields(proc)
        status = psutil.Process(pid)
        uids, gids = status.uids(), status.gids()
    except (FileNotFoundError, ProcessLookupError, psutil.NoSuchProcess) as exc:
        raise psutil.NoSuchProcess(pid) from exc
    try:
        cmdline = (proc / "cmdline").read_bytes()
    except OSError:
        cmdline = b""
    try:
        auid_raw: int | None = int((proc / "loginuid").read_text())
    except (OSError, ValueError):
        auid_raw = None
    auid = None if auid_raw in (None, AUID_UNSET) else auid_raw
    exe, dev, ino, exe_flags = _exe(proc)
    args = tuple(cmdline.rstrip(b"\0").split(b"\0")) if cmdline else ()
    return ProcfsProcess(
        pid=pid,
        ppid=ppid,
        start_boottime=start * _NS_PER_TICK,
        uid=uids.real,
        euid=uids.effective,
        gid=gids.real,
        egid=gids.effective,
        auid=auid,
        comm=comm,
        cgroup_id=_cgroup_id(proc, cg2),
        binary=exe,
        args=args,
        cwd=_read_link(proc / "cwd"),
        kernel_thread=bool(pflags & _PF_KTHREAD),
        binary_dev=dev,
        binary_ino=ino,
        mnt_ns=_mnt_ns(proc),
        binary_flags=exe_flags,
    )


def scan(root: Path = Path("/proc")) -> Iterator[ProcfsProcess]:
    """Every process in /proc, in no particular order; vanished ones skipped."""
    cg2 = cgroup2_mount()
    for pid in psutil.pids():
        try:
            yield read_process(pid, root, cg2)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
