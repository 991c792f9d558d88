"""Kernel boot-based timestamps to wall-clock time."""

from __future__ import annotations

import functools
import time


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


def rfc3339(ns: int) -> str:
    """UTC, exact to the nanosecond: 2026-11-26T11:49:43.123456789Z.

    The fraction has 0, 3, 6 or 9 digits, the fewest that are exact, as in
    protobuf's JSON mapping of Timestamp: a JSON line and the JSON of the
    same event from the gRPC API are then equal as strings, not just as
    instants.
    """
    secs, frac = divmod(ns, 1_000_000_000)
    base = _second(secs)
    if frac == 0:
        return base + "Z"
    if frac % 1_000_000 == 0:
        return f"{base}.{frac // 1_000_000:03d}Z"
    if frac % 1_000 == 0:
        return f"{base}.{frac // 1_000:06d}Z"
    if frac >= 100_000_000:  # nine digits already: a format spec costs 150 ns more
        return f"{base}.{frac}Z"
    return f"{base}.{frac:09d}Z"


@functools.lru_cache(maxsize=64)
def _second(secs: int) -> str:
    # Events arrive in bursts within the same second, and formatting the
    # second is most of a timestamp's cost.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
