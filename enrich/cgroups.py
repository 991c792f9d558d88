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
from collections.abc import Iterator
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
_UID = "[0-9a-fA-F]{8}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{12}"
_BARE_ID = re.compile(_HEX64)
# Container cgroups of the systemd driver: <runtime prefix>-<64 hex>.scope.
# The 64-hex id is what keeps out `crio-conmon-<id>.scope` and
# `libpod-conmon-<id>.scope` (the runtime monitor, not the container).
_SCOPES = (
    (re.compile(rf"cri-containerd-({_HEX64})\.scope"), "containerd"),
    (re.compile(rf"crio-({_HEX64})\.scope"), "cri-o"),
    (re.compile(rf"docker-({_HEX64})\.scope"), "docker"),
)
_CRIO_DIR = re.compile(rf"crio-({_HEX64})")  # CRI-O under the cgroupfs driver
_LIBPOD = re.compile(rf"libpod-({_HEX64})(?:\.scope)?")
_PODMAN_POD_SLICE = re.compile(r"machine-libpod_pod_[0-9a-f]{64}\.slice")
_QOS = ("besteffort", "burstable")


def parse_path(path: str) -> CgroupInfo | None:
    """Container id, runtime and pod uid named by a cgroup v2 path; None on the host.

    Only the layouts that kubelet and the runtimes make, where they make
    them, count: from the cgroup2 root, which only root can write to.
    Anyone with a delegated subtree (a user's systemd instance, a
    container with its own cgroup namespace) can make directories with
    any names below it, so a pod or container name anywhere else is not
    one: it would lend the subtree another pod's identity, labels and
    namespace. Cgroups below the container's own (systemd in a container:
    `.../cri-containerd-<id>.scope/init.scope`) belong to that container,
    whatever their names.
    """
    parts = [p for p in path.split("/") if p]
    return _kube_systemd(parts) or _kube_cgroupfs(parts) or _runtime_only(parts)


def _kube_systemd(parts: list[str]) -> CgroupInfo | None:
    """kubelet's systemd driver: /kubepods.slice/[kubepods-<qos>.slice/]
    kubepods[-<qos>]-pod<uid>.slice/<runtime>-<id>.scope. With
    --cgroup-root /X (kind: /kubelet) the same under /X.slice/X-kubepods.slice,
    as systemd nests slices."""
    if parts[:1] == ["kubepods.slice"]:
        base, i = "kubepods", 1
    elif (
        len(parts) > 1
        and parts[0].endswith(".slice")
        and "-" not in parts[0]
        and parts[1] == parts[0][: -len(".slice")] + "-kubepods.slice"
    ):
        base, i = parts[1][: -len(".slice")], 2
    else:
        return None
    if i < len(parts) and parts[i] in (f"{base}-{q}.slice" for q in _QOS):
        base = parts[i][: -len(".slice")]
        i += 1
    if i >= len(parts):
        return None
    m = re.fullmatch(rf"{re.escape(base)}-pod({_UID})\.slice", parts[i])
    if m is None:
        return None
    uid = m.group(1).replace("_", "-").lower()
    if i + 1 < len(parts):
        for pattern, runtime in _SCOPES:
            c = pattern.fullmatch(parts[i + 1])
            if c is not None:
                return CgroupInfo(c.group(1), runtime, uid)
    return CgroupInfo(None, None, uid)


def _kube_cgroupfs(parts: list[str]) -> CgroupInfo | None:
    """kubelet's cgroupfs driver: /kubepods/[<qos>/]pod<uid>/<id> (containerd)
    or .../crio-<id> (CRI-O)."""
    if parts[:1] != ["kubepods"]:
        return None
    i = 2 if len(parts) > 1 and parts[1] in _QOS else 1
    if i >= len(parts):
        return None
    m = re.fullmatch(rf"pod({_UID})", parts[i])
    if m is None:
        return None
    uid = m.group(1).lower()
    if i + 1 < len(parts):
        leaf = parts[i + 1]
        if _BARE_ID.fullmatch(leaf):
            return CgroupInfo(leaf, "containerd", uid)
        c = _CRIO_DIR.fullmatch(leaf)
        if c is not None:
            return CgroupInfo(c.group(1), "cri-o", uid)
    return CgroupInfo(None, None, uid)


def _runtime_only(parts: list[str]) -> CgroupInfo | None:
    """Docker and rootful Podman without Kubernetes: /system.slice/docker-<id>.scope,
    /docker/<id> (cgroupfs), /machine.slice/[machine-libpod_pod_<id>.slice/]
    libpod-<id>.scope, /libpod_parent/libpod-<id> (cgroupfs)."""
    if len(parts) < 2:
        return None
    top, leaf = parts[0], parts[1]
    if top == "system.slice":
        m = _SCOPES[2][0].fullmatch(leaf)
        return CgroupInfo(m.group(1), "docker", None) if m else None
    if top == "docker":
        return CgroupInfo(leaf, "docker", None) if _BARE_ID.fullmatch(leaf) else None
    if top in ("machine.slice", "libpod_parent"):
        if top == "machine.slice" and _PODMAN_POD_SLICE.fullmatch(leaf) and len(parts) > 2:
            leaf = parts[2]
        m = _LIBPOD.fullmatch(leaf)
        return CgroupInfo(m.group(1), "podman", None) if m else None
    return None


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

    def scan(self, limit: int) -> Iterator[tuple[int, str]]:
        """(id, path) of each cgroup that exists now, at most `limit`, learned as
        they are found: the cgroups older than the daemon, which no
        cgroup_mkdir record will name. One getdents per cgroup, no stat."""
        if self._libc is None or self.mount is None:
            return
        try:
            root = os.stat(self.mount).st_ino
        except OSError:
            return
        self.learn(root, "/")
        yield root, "/"
        todo, n = [("", self.mount)], 1
        while todo and n < limit:
            rel, full = todo.pop()
            try:
                entries = list(os.scandir(full))
            except OSError:  # removed meanwhile
                continue
            for e in entries:
                if n >= limit:
                    return
                if not e.is_dir(follow_symlinks=False):
                    continue
                path, cgroup_id = f"{rel}/{e.name}", e.inode()  # a kernfs inode is the cgroup id
                self.learn(cgroup_id, path)
                n += 1
                yield cgroup_id, path
                todo.append((path, e.path))

    def forget(self, cgroup_id: int) -> None:
        self._cache.pop(cgroup_id, None)

    def close(self) -> None:
        if self._mount_fd >= 0:
            os.close(self._mount_fd)
            self._mount_fd = -1
        self._libc = None
