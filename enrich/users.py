"""uid -> user name from the host's passwd database."""

from __future__ import annotations

import os
import pwd
import time

from tracer.core import text

PASSWD = "/etc/passwd"


class UserNames:
    """Cached getpwuid(); the cache is dropped when /etc/passwd changes.

    The file's mtime is checked at most once a second, so a burst of
    events costs one dict lookup each.
    """

    def __init__(self, passwd: str = PASSWD, check_interval: float = 1.0) -> None:
        self._passwd = passwd
        self._interval = check_interval
        self._names: dict[int, str | None] = {}
        self._mtime = self._stat()
        self._checked = time.monotonic()

    def _stat(self) -> int:
        try:
            return os.stat(self._passwd).st_mtime_ns
        except OSError:
            return 0

    def name(self, uid: int) -> str | None:
        now = time.monotonic()
        if now - self._checked >= self._interval:
            self._checked = now
            mtime = self._stat()
            if mtime != self._mtime:
                self._mtime = mtime
                self._names.clear()
        try:
            return self._names[uid]
        except KeyError:
            pass
        try:
            # pwd decodes with surrogateescape, which JSON cannot carry.
            found: str | None = text.decode(os.fsencode(pwd.getpwuid(uid).pw_name))[0]
        except KeyError:
            found = None
        self._names[uid] = found
        return found
