"""systemd's notify protocol (sd_notify(3)): one datagram per message to $NOTIFY_SOCKET.

Under a `Type=notify` unit systemd waits for READY=1 before it considers
the service started, and with `WatchdogSec=` restarts it when WATCHDOG=1
stops arriving. Without $NOTIFY_SOCKET (not under systemd) every call
does nothing.
"""

from __future__ import annotations

import os
import socket

import structlog

_log = structlog.get_logger(component="sdnotify")


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._addr = _address(env.get("NOTIFY_SOCKET", ""))
        self._sock: socket.socket | None = None
        if self._addr is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.watchdog_s = _watchdog_interval(env)
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *fields: str) -> None:
        """Send `KEY=value` fields as one message; a failure is logged once, never raised."""
        sock, addr = self._sock, self._addr
        if sock is None or addr is None:
            return
        try:
            sock.sendto("\n".join(fields).encode(), addr)
        except OSError as exc:
            if not self._failed:
                _log.warning("sd_notify failed", socket=addr, error=str(exc))
                self._failed = True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _address(value: str) -> str | None:
    """A path, or an abstract socket name written with a leading @."""
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # unset, or a vsock address, which we do not speak


def _watchdog_interval(env: os._Environ[str] | dict[str, str]) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec, as sd_watchdog_enabled(3)
    advises), or None when no watchdog is asked of this process."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None  # meant for another process (e.g. our parent)
    return int(usec) / 2e6
