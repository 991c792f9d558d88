"""Kubelet-shaped cgroup v2 hierarchies for tests, made for real under the cgroup2 mount.

They are made where kubelet makes them, at the cgroup2 root (the daemon
counts no other place: a delegated subtree could wear any name). Each
has a pod uid and container id of its own, so tests running at the same
time (and a real kubelet, were there one) share at most the kubepods and
QoS directories, which are made when missing and removed only when empty.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
import uuid
from pathlib import Path

from enrich import cgroup2_mount

SHAPES = ("systemd", "cgroupfs")


def new_uid() -> str:
    return str(uuid.uuid4())


def new_container_id() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex


class KubeletCgroup:
    """kubepods/<qos>/pod<uid>/<container> in the systemd or cgroupfs driver's naming."""

    def __init__(self, shape: str, pod_uid: str | None = None, container_id: str | None = None):
        mount = cgroup2_mount()
        if mount is None:
            raise RuntimeError("no cgroup2 mount on this host")
        self.pod_uid = pod_uid or new_uid()
        self.container_id = container_id or new_container_id()
        self.root = Path(mount)
        if shape == "systemd":
            u = self.pod_uid.replace("-", "_")
            shared = ["kubepods.slice", "kubepods-burstable.slice"]
            own = [f"kubepods-burstable-pod{u}.slice", f"cri-containerd-{self.container_id}.scope"]
        else:
            shared = ["kubepods", "burstable"]
            own = [f"pod{self.pod_uid}", self.container_id]
        self.shared: list[Path] = []
        d = self.root
        for part in shared:
            d = d / part
            self.shared.append(d)
        self.dirs: list[Path] = []
        for _ in range(50):  # another test may remove an empty shared parent meanwhile
            try:
                for parent in self.shared:
                    parent.mkdir(exist_ok=True)
                (self.shared[-1] / own[0]).mkdir()
                break
            except FileNotFoundError:
                time.sleep(0.05)
        d = self.shared[-1] / own[0]
        self.dirs.append(d)
        for part in own[1:]:
            d = d / part
            d.mkdir()
            self.dirs.append(d)
        self.leaf = d
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def cgroup_id(self) -> int:
        return os.stat(self.leaf).st_ino

    def run(self, script: str, *args: str) -> subprocess.Popen[bytes]:
        """Start `bash -c script args...` inside the leaf cgroup: it is moved
        in before it runs anything (it waits for a line on stdin first)."""
        proc = subprocess.Popen(
            ["bash", "-c", f"read -r _; {script}", "bash", *args],
            stdin=subprocess.PIPE,
        )
        (self.leaf / "cgroup.procs").write_text(f"{proc.pid}\n")
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.close()
        self.procs.append(proc)
        return proc

    def remove(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)
        _remove(self.dirs)
        for d in reversed(self.shared):
            with contextlib.suppress(OSError):  # in use by another test: theirs to remove
                d.rmdir()


def _remove(dirs: list[Path]) -> None:
    """rmdir each, deepest first."""
    for d in reversed(dirs):
        # A just-exited process can keep its cgroup busy for a moment.
        for _ in range(50):
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                    raise
                time.sleep(0.1)
