"""Path globs as the kernel matches them (bpf_probes/policy.bpf.h tr_glob_step).

`*` matches any run of characters within one path component (not `/`),
`?` one such character, and `**` as a whole component any number of
components, none included: `/root/.ssh/**` matches everything below
/root/.ssh, `/etc/**/cron*` matches /etc/cron.d and /etc/a/b/crontab.
Every other character matches itself. The kernel runs the same two-level
backtracking (the last `*` within a component, the last `**` across
components), which is linear in the path for each backtrack point, and
gives up past GLOB_STEPS steps: a path that takes longer is no match.
"""

from __future__ import annotations

GLOB_LEN = 127  # bytes of a pattern the kernel holds (TR_GLOB_LEN - 1)
GLOB_STEPS = 8192  # TR_GLOB_STEPS
GLOB_CHARS = frozenset("*?")


def head(pattern: str) -> str:
    """The literal directory part before the first wildcard: every match starts with it."""
    first = min((i for i, ch in enumerate(pattern) if ch in GLOB_CHARS), default=len(pattern))
    return pattern[: pattern.rfind("/", 0, first) + 1]


def problem(pattern: str) -> str | None:
    """Why the kernel cannot take this pattern, or None."""
    raw = pattern.encode()
    if not pattern.startswith("/"):
        return "a glob must be an absolute path"
    if len(raw) > GLOB_LEN:
        return f"a glob is at most {GLOB_LEN} bytes"
    for part in pattern.split("/"):
        if "**" in part and part != "**":
            return f"** must be a whole path component, not part of {part!r}"
    if not GLOB_CHARS & set(pattern):
        return "no * or ?: use exact or prefix"
    return None


def match(pattern: bytes, path: bytes) -> bool:
    """The kernel's answer for `path` (bytes as the kernel has them)."""
    pi = gi = 0
    star_g = star_p = dstar_g = dstar_p = -1
    plen, glen = len(path), len(pattern)
    for _ in range(GLOB_STEPS):
        if gi + 1 < glen and pattern[gi] == 0x2A and pattern[gi + 1] == 0x2A:  # **
            gi += 2
            if gi < glen and pattern[gi] == 0x2F:
                gi += 1  # `**/` may match nothing, the slash included
            if gi >= glen:
                return True  # a trailing ** matches whatever is left
            dstar_g, dstar_p, star_g = gi, pi, -1
            continue
        if gi < glen and pattern[gi] == 0x2A:  # *
            gi += 1
            star_g, star_p = gi, pi
            continue
        if pi < plen and gi < glen and (
            pattern[gi] == path[pi] or (pattern[gi] == 0x3F and path[pi] != 0x2F)
        ):
            pi += 1
            gi += 1
            continue
        if pi == plen and gi == glen:
            return True
        if star_g >= 0 and star_p < plen and path[star_p] != 0x2F:
            star_p += 1
            pi, gi = star_p, star_g
            continue
        if dstar_g >= 0 and dstar_p < plen:
            # To the next component, a byte a step: ** takes whole components.
            dstar_p += 1
            if path[dstar_p - 1] == 0x2F:
                pi, gi, star_g = dstar_p, dstar_g, -1
            continue
        return False
    return False
