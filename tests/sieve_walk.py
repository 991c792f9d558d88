"""The kernel's walk over the path sieve (bpf_probes/policy.bpf.h tr_sieve), restated.

tests/test_sieve.py holds the tables policy/sieve.py builds to it on many
paths without a kernel; tests/test_policy_events.py asks it which rules
the kernel's table admits for a path it counts turned-away opens of.
"""

from __future__ import annotations

from policy import sieve as sv


def _at(s: sv.Sieve, key: int) -> int:
    return s.slots.get(sv.slot(key), 0)


def kernel_admits(s: sv.Sieve, path: bytes) -> int:
    """The rules the kernel's sieve admits for an absolute canonical path."""
    comps = path[1:].split(b"/")
    leaf, n = comps[-1], len(comps)
    admit = _at(s, sv._mix(sv._LEAF, sv.name_hash(leaf)))
    admit |= _at(s, sv._mix(sv._LEAF, sv._PART | leaf[-1]))
    if len(leaf) >= 2:
        admit |= _at(s, sv._mix(sv._LEAF, sv._END2 | leaf[-2] << 8 | leaf[-1]))
    h, alive = sv._ROOT, -1
    for k in range(sv.DEPTH):
        if k >= n:
            return admit
        admit |= _at(s, sv._mix(h, sv._ALL)) | _at(s, sv._mix(h, sv._PART | comps[k][0]))
        h = sv._mix(h, sv.name_hash(comps[k]))
        alive &= _at(s, h)
        if not alive:
            return admit
    return admit | alive if n > sv.DEPTH else admit
