"""Kernel boot-based timestamps to wall-clock time, and as RFC 3339 text."""

from __future__ import annotations

import time

# RFC 3339 UTC, exact to the nanosecond: 2026-11-26T11:49:43.123456789Z,
# with the fewest fractional digits (0, 3, 6, 9) that are exact, as
# protobuf's JSON writes a Timestamp. In C (rfc3339.h): it is made for every
# event; tests/rfc3339_ref.py is the Python model the tests hold it to.
from tracer.core._clock import rfc3339 as rfc3339


class BootClock:
    """Converts bpf_ktime_get_boot_ns() values to wall-clock ns.

    The offset is measured once, as the tightest of a few back-to-back
    readings of both clocks; a later NTP step is not followed, which keeps
    the order of events and the gaps between them exact.
    """

    def __init__(self) -> None:
        best: tuple[int, int] | None = None
        for _ in range(5):
            b0 = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
            rt = time.clock_gettime_ns(time.CLOCK_REALTIME)
            b1 = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
            if best is None or b1 - b0 < best[0]:
                best = (b1 - b0, rt - (b0 + b1) // 2)
        assert best is not None
        self.offset_ns = best[1]

    def wall(self, boot_ns: int) -> int:
        return boot_ns + self.offset_ns

    def now_boot(self) -> int:
        return time.clock_gettime_ns(time.CLOCK_BOOTTIME)
