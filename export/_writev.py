"""Write many lines with writev(2): the kernel gathers them, without the GIL.

Joining a batch into one bytes object copies every line under the GIL
(256 lines of a deep ancestry are over a megabyte), which stalls the
capture thread for as long; writev copies in the kernel, with the GIL
released.
"""

from __future__ import annotations

import os

_IOV_MAX = os.sysconf("SC_IOV_MAX")  # os.writev refuses longer lists


def writev_all(fd: int, lines: list[bytes]) -> None:
    """Write every byte of `lines` to fd, in order, resuming after a short write."""
    i = 0
    while i < len(lines):
        chunk = lines[i : i + _IOV_MAX]
        n = os.writev(fd, chunk)
        total = sum(map(len, chunk))
        while n < total:
            # Short (a signal, a full disk that partly accepted): drop what
            # went out and write the rest of this chunk again.
            for j, line in enumerate(chunk):
                if n < len(line):
                    chunk = [line[n:], *chunk[j + 1 :]]
                    break
                n -= len(line)
            total = sum(map(len, chunk))
            n = os.writev(fd, chunk)
        i += _IOV_MAX
