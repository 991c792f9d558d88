"""Whether the root daemon may put its unix socket at a path the user gave.

Binding over a path means removing what is there first. As root that
could delete any file or steal another daemon's socket, so only two
cases are free: nothing there, or a socket nobody listens on (left by a
daemon that did not stop cleanly).
"""

from __future__ import annotations

import socket
import stat
from pathlib import Path


def takeover_problem(path: Path, flag: str) -> str | None:
    """Why a socket must not be bound at `path` (named by its option `flag`); None if it may."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    if not stat.S_ISSOCK(st.st_mode):
        return f"{flag} {path} exists and is not a socket; refusing to replace it"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return None  # a leftover: nobody listens
    return (
        f"another process listens on {path}: is another tracer running? "
        f"Stop it, or give this one another {flag}"
    )


def identity(path: Path) -> tuple[int, int]:
    """(device, inode) of the socket just bound: removed at exit only if still ours."""
    st = path.lstat()
    return st.st_dev, st.st_ino


def remove_if_ours(path: Path, ident: tuple[int, int]) -> None:
    """Remove our socket, not one a successor bound at the same path since."""
    try:
        if identity(path) == ident:
            path.unlink()
    except FileNotFoundError:
        pass
