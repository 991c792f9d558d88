"""cgroup v2 id -> container id, runtime and pod uid.

The BPF programs record each task's cgroup v2 id, which is the inode
number of the cgroup's directory on the cgroup2 mount. One id is turned
into its path without walking the tree: open_by_handle_at() with a kernfs
file handle made of the id (what systemd does), then readlink of the new
fd. The path is parsed once by pure functions; the result is cached per
id (ids are not reused while the kernel runs, so an answer never goes
stale; the cache is bounded because cgroups come and go).
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import struct
from dataclasses import dataclass

import structlog

_log = structlog.get_logger(component="cgroups")

MOUNTINFO = "/proc/self/mountinfo"

# include/linux/exportfs.h: FILEID_KERNFS, a handle of one u64 (the kernfs node id).
_FILEID_KERNFS = 0xFE
_HANDLE = struct.Struct("=IiQ")  # struct file_handle {handle_bytes, handle_type, f_handle[8]}
# Errors that no other id would avoid: no CAP_DAC_READ_SEARCH, a kernel or
# filesystem without kernfs handles. Anything else (ESTALE: no such cgroup
# any more) is about the one id.
_NEVER_WORKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EBADF, errno.EINVAL})


@dataclass(slots=True, frozen=True)
class CgroupInfo:
    """What a cgroup path says about the processes in it."""

    container_id: str | None
    runtime: str | None  # containerd, cri-o, docker, podman; None without a container
    pod_uid: str | None


_HEX64 = "[0-9a-f]{64}"
# Leaf names of container cgroups, systemd driver first. The 64-hex id
# requirement is what keeps out `crio-conmon-<id>.scope` and
# `libpod-conmon-<id>.scope` (the runtime monitor, not the container).
_CONTAINER_NAMES = (
    (re.compile(rf"cri-containerd-({_HEX64})\.scope"), "containerd"),
    (re.compile(rf"crio-({_HEX64})(?:\.scope)?"), "cri-o"),
    (re.compile(rf"docker-({_HEX64})\.scope"), "docker"),
    (re.compile(rf"libpod-({_HEX64})(?:\.scope)?"), "podman"),
)
_BARE_ID = re.compile(_HEX64)
_UID = "[0-9a-fA-F]{8}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{12}"
# systemd driver: kubepods-burstable-pod<uid>.slice, uid with _ for -
# (kind and some distributions put a prefix before `kubepods`).
_POD_SLICE = re.compile(rf"(?:.*-)?kubepods(?:-besteffort|-burstable)?-pod({_UID})\.slice")
# cgroupfs driver: /kubepods/<qos>/pod<uid> or /kubepods/pod<uid> (guaranteed).
_POD_DIR = re.compile(rf"pod({_UID})")


def parse_path(path: str) -> CgroupInfo | None:
    """Container id, runtime and pod uid named by a cgroup v2 path; None on the host.

    The deepest container name wins, so a cgroup a container made inside
    its own (systemd in a container: `.../cri-containerd-<id>.scope/init.scope`)
    still belongs to it. A bare 64-hex directory counts as a container
    under a pod (containerd's cgroupfs layout: CRI-O and Docker prefix
    theirs) and directly under /docker (Docker with cgroupfs).
    """
    parts = [p for p in path.split("/") if p]
    container_id = runtime = pod_uid = None
    in_kubepods = False
    for i, part in enumerate(parts):
        m = _POD_SLICE.fullmatch(part)
        if m is not None:
            pod_uid = m.group(1).replace("_", "-").lower()
            continue
        if part == "kubepods" or part.endswith("kubepods.slice"):
            in_kubepods = True
            continue
        if in_kubepods:
            m = _POD_DIR.fullmatch(part)
            if m is not None:
                pod_uid = m.group(1).lower()
                continue
        for pattern, name in _CONTAINER_NAMES:
            m = pattern.fullmatch(part)
            if m is not None:
                container_id, runtime = m.group(1), name
                break
        else:
            if _BARE_ID.fullmatch(part):
                if pod_uid is not None:
                    container_id, runtime = part, "containerd"
                elif i > 0 and parts[i - 1] == "docker":
                    container_id, runtime = part, "docker"
    if container_id is None and pod_uid is None:
        return None
    return CgroupInfo(container_id, runtime, pod_uid)


def cgroup2_mount(mountinfo: str = MOUNTINFO) -> str | None:
    """Where cgroup2 is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts)."""
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.readlines()
    except OSError:
        return None
    found: list[str] = []
    for line in lines:
        # id parent major:minor root mountpoint options [optional...] - fstype source super
        head, sep, tail = line.partition(" - ")
        fields = head.split()
        if sep and tail.split()[:1] == ["cgroup2"] and len(fields) >= 5 and fields[3] == "/":
            # mountinfo escapes space, tab, newline and backslash as octal.
            found.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4]))
    # The shortest is the host's own (a container runtime may mount more).
    return min(found, key=len) if found else None


class _Libc:
    """open_by_handle_at(2) through ctypes: Python has no wrapper."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._call = libc.open_by_handle_at
        self._call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self._call.restype = ctypes.c_int

    def open_by_id(self, mount_fd: int, cgroup_id: int) -> int:
        handle = _HANDLE.pack(8, _FILEID_KERNFS, cgroup_id)
        fd: int = self._call(mount_fd, handle, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return fd


class CgroupResolver:
    """cgroup id -> CgroupInfo (None on the host), one syscall pair per new id.

    Not thread-safe: the pipeline thread owns it.
    """

    def __init__(self, mount: str | None = None, max_entries: int = 16384) -> None:
        self.mount = mount if mount is not None else cgroup2_mount()
        self._max = max_entries
        self._cache: dict[int, CgroupInfo | None] = {}
        self._mount_fd = -1
        self._libc: _Libc | None = None
        self.resolved = 0  # ids looked up in the kernel (cache misses)
        self.unresolved = 0  # ids the kernel no longer knew (the cgroup is gone)
        self.learned = 0  # ids known from cgroup_mkdir/rmdir records
        if self.mount is None:
            _log.info("no cgroup2 mount found: container ids are off")
            return
        try:
            self._mount_fd = os.open(self.mount, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self._libc = _Libc()
        except (OSError, AttributeError) as exc:
            _log.warning(
                "cannot open the cgroup2 mount: container ids are off",
                mount=self.mount,
                error=str(exc),
            )

    def path(self, cgroup_id: int) -> str | None:
        """The cgroup's path below the cgroup2 mount ("/" for the root); None if gone."""
        if self._libc is None or self.mount is None:
            return None
        try:
            fd = self._libc.open_by_id(self._mount_fd, cgroup_id)
        except OSError as exc:
            if exc.errno in _NEVER_WORKS:
                self._give_up(exc)
            return None
        try:
            full = os.readlink(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        rel = full[len(self.mount) :] if full.startswith(self.mount) else full
        return rel or "/"

    def _give_up(self, exc: OSError) -> None:
        # EPERM (no CAP_DAC_READ_SEARCH), EOPNOTSUPP (a kernel without kernfs
        # handles): no id will resolve, so stop trying, and say so once.
        _log.warning(
            "cgroup ids cannot be resolved: container ids are off", mount=self.mount, error=str(exc)
        )
        self.close()

    def info(self, cgroup_id: int) -> CgroupInfo | None:
        try:
            return self._cache[cgroup_id]
        except KeyError:
            pass
        self.resolved += 1
        path = self.path(cgroup_id)
        if path is None:
            self.unresolved += 1
            found = None
        else:
            found = parse_path(path)
        self._put(cgroup_id, found)
        return found

    def _put(self, cgroup_id: int, info: CgroupInfo | None) -> None:
        if len(self._cache) >= self._max:
            # Oldest first: dicts keep insertion order.
            del self._cache[next(iter(self._cache))]
        self._cache[cgroup_id] = info

    def learn(self, cgroup_id: int, path: str) -> None:
        """A cgroup the kernel reported (made or removed) with its path.

        Removed cgroups are learned too: records of their processes may
        still be queued, and after the rmdir the kernel no longer knows the
        id. Both go through the bounded cache like lookups.
        """
        if cgroup_id not in self._cache:
            self._put(cgroup_id, parse_path(path))
            self.learned += 1

    def forget(self, cgroup_id: int) -> None:
        self._cache.pop(cgroup_id, None)

    def close(self) -> None:
        if self._mount_fd >= 0:
            os.close(self._mount_fd)
            self._mount_fd = -1
        self._libc = None
