"""Files a root process opens: never through a link, never one others made or could change.

A root process that follows a symlink, or adopts a file someone else
created in its place, writes where that someone chose (an
`authorized_keys`, a `.bashrc`) or shows them what it writes. So every
file here is opened with O_NOFOLLOW, checked through the descriptor it
was opened with (fstat: no window between check and use), and created
only with O_EXCL and mode 0600. A directory that others could change is
refused as well: whoever can rename its entries can put anything there
between two opens (as sshd's StrictModes reasons).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path

# Opening a FIFO for reading waits for a writer; O_NONBLOCK returns at once,
# so that a check can refuse it instead of hanging.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
CREATE_FLAGS = os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeFile(OSError):
    """A file or directory that a root process must not use; the message says why and what to do."""


def changed_by(st: os.stat_result) -> str | None:
    """Who other than root can write this file or directory, in words; None when nobody."""
    if st.st_uid != 0:
        return f"its owner, uid {st.st_uid}"
    if st.st_mode & stat.S_IWGRP and st.st_gid != 0:
        return f"its group, gid {st.st_gid}"
    if st.st_mode & stat.S_IWOTH:
        return "everyone"
    return None


def shared_directory(dirs: Iterable[Path]) -> str | None:
    """The first of `dirs` (and its parents up to /) that a user other than root
    could change, as `directory D can be changed by WHO (mode M)`; None when all are root's.

    A root-owned sticky directory (/tmp) is root's enough: others cannot
    rename or delete what is not theirs. A symlink on the way must be
    root's: in a sticky directory its owner can point it elsewhere.
    """
    seen: set[Path] = set()
    for d in dirs:
        absolute = Path(os.path.abspath(d))
        for part in (absolute, *absolute.parents):
            if part in seen:
                continue
            seen.add(part)
            lst = part.lstat()
            if stat.S_ISLNK(lst.st_mode) and lst.st_uid != 0:
                return f"symlink {part} is owned by uid {lst.st_uid}, who can point it anywhere"
            st = part.stat()
            if st.st_mode & stat.S_ISVTX and st.st_uid == 0:
                continue
            who = changed_by(st)
            if who is not None:
                return (
                    f"directory {part} can be changed by {who} "
                    f"(mode {stat.S_IMODE(st.st_mode):04o})"
                )
    return None


def kind(mode: int) -> str:
    """A file type in words, for errors."""
    for test, name in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "a special file"


def is_link_error(exc: OSError) -> bool:
    """What open(O_NOFOLLOW) raises for a symlink (ELOOP; EMLINK on some BSDs)."""
    return exc.errno in (errno.ELOOP, errno.EMLINK)


def open_private_dir(path: Path) -> int:
    """A directory of root's own (created 0700 if missing), as an O_DIRECTORY fd.

    A symlink, or a directory another user owns, is refused: it, or what a
    user put in it, would decide where root writes. Group and other
    access is taken away (fchmod 0700), since the files in it name
    processes and hold their command lines.
    """
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if is_link_error(exc) or exc.errno == errno.ENOTDIR:
            what = kind(os.lstat(path).st_mode)
            raise UnsafeFile(
                f"{path} is {what}, not a directory: give the path of a directory of root's"
            ) from None
        raise
    try:
        st = os.fstat(fd)
        if st.st_uid != 0:
            raise UnsafeFile(
                f"{path} is owned by uid {st.st_uid}, not root: whoever owns it decides what "
                "this daemon writes there; remove it or `chown root` it"
            )
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.fchmod(fd, 0o700)
    except BaseException:
        os.close(fd)
        raise
    return fd


def create(name: str, dir_fd: int, flags: int = os.O_WRONLY) -> int:
    """A new file of root's only (0600), never through a link or over an existing file."""
    return os.open(name, flags | CREATE_FLAGS, 0o600, dir_fd=dir_fd)
