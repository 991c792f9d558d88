"""The Python model of tracer.core.clock.rfc3339 (C, tracer/core/rfc3339.h),
which the tests hold the C to: what the daemon computed before it was C."""

from __future__ import annotations

import time


def rfc3339(ns: int) -> str:
    """UTC, exact to the nanosecond, with 0, 3, 6 or 9 fractional digits:
    the fewest that are exact, as protobuf's JSON mapping of Timestamp."""
    secs, frac = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    if frac == 0:
        return base + "Z"
    if frac % 1_000_000 == 0:
        return f"{base}.{frac // 1_000_000:03d}Z"
    if frac % 1_000 == 0:
        return f"{base}.{frac // 1_000:06d}Z"
    return f"{base}.{frac:09d}Z"
