"""Noticing that the policy files changed, without inotify: compare their stat.

A Kubernetes ConfigMap volume swaps a `..data` symlink to a new directory,
so the files' names stay and what they resolve to changes (device and
inode); an edit in place changes the size or the modification time. The
daemon compares fingerprints every second and re-reads on a difference.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

Fingerprint = tuple[tuple[str, int, int, int, int], ...]


def _files(p: Path) -> list[Path]:
    if p.is_dir():
        return sorted([*p.glob("*.yaml"), *p.glob("*.yml")])
    return [p]


def fingerprint(paths: Iterable[Path]) -> Fingerprint:
    """Name, device, inode, size and mtime of every policy file the paths
    name (the target's, through symlinks); a file that cannot be stat'ed
    counts as gone."""
    out = []
    for p in paths:
        for f in _files(p):
            try:
                st = os.stat(f)
            except OSError:
                out.append((str(f), -1, -1, -1, -1))
                continue
            out.append((str(f), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)
