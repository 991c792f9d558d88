"""Host preconditions: privileges, BTF, pseudo file systems, memlock."""

from __future__ import annotations

import ctypes
import os
import platform
import resource
from pathlib import Path

import structlog

from tracer.core import _libbpf
from tracer.core.probe import BTF_PATH

_log = structlog.get_logger(component="system")

# (mount point, fs type): what libbpf and the probes read.
PSEUDO_FS = (
    (Path("/sys/fs/bpf"), "bpf"),
    (Path("/sys/kernel/tracing"), "tracefs"),
    (Path("/sys/kernel/security"), "securityfs"),
)


class PreflightError(RuntimeError):
    """The host cannot run the daemon; the message says why and what to do."""


def require_root() -> None:
    if os.geteuid() != 0:
        raise PreflightError(
            "tracer must run as root (it loads BPF programs: CAP_BPF, CAP_PERFMON and "
            "CAP_SYS_ADMIN); run it with sudo"
        )


def require_btf() -> None:
    if not BTF_PATH.exists():
        raise PreflightError(
            f"{BTF_PATH} is missing: this kernel was built without BTF "
            "(CONFIG_DEBUG_INFO_BTF=y), which CO-RE programs need"
        )


def _mounted(path: Path, fstype: str) -> bool:
    want = str(path)
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 2 and parts[1] == want and parts[2] == fstype:
                return True
    return False


def ensure_mounts() -> None:
    libc = _libbpf.load_libc()
    for path, fstype in PSEUDO_FS:
        if _mounted(path, fstype):
            continue
        if not path.is_dir():
            _log.warning("mount point missing, skipped", path=str(path), fs=fstype)
            continue
        if libc.mount(fstype.encode(), str(path).encode(), fstype.encode(), 0, None) != 0:
            err = ctypes.get_errno()
            raise PreflightError(
                f"cannot mount {fstype} on {path}: {os.strerror(err)}; "
                f"mount it by hand: mount -t {fstype} none {path}"
            )
        _log.info("mounted", path=str(path), fs=fstype)


def raise_memlock() -> None:
    """Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it there.

    Later kernels charge the memory cgroup instead, and a container may
    forbid raising the limit, so they are left alone.
    """
    major, minor = (int(x) for x in platform.release().split(".")[:2])
    if (major, minor) >= (5, 11):
        return
    try:
        resource.setrlimit(
            resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
        )
    except (ValueError, OSError) as exc:
        _log.warning("could not raise RLIMIT_MEMLOCK", error=str(exc))


def preflight() -> None:
    require_root()
    require_btf()
    ensure_mounts()
    raise_memlock()
