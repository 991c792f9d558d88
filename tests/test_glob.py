"""Path globs (policy/glob.py, the kernel's algorithm in Python) against a regex reference."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy.glob import head, match, problem


def _reference(pattern: str) -> re.Pattern[str]:
    """The documented meaning, as a regex: * and ? within a component, ** across."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]*/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out), re.DOTALL)


_PART = st.sampled_from(["a", "b", "ab", "*", "?", "a*", "*b", "a*b", "**", ".x"])
_PATTERNS = st.lists(_PART, min_size=1, max_size=5).map(lambda ps: "/" + "/".join(ps))
_PATHS = st.lists(st.sampled_from(["a", "b", "ab", "ba", "aab", ".x", "x"]), max_size=6).map(
    lambda ps: "/" + "/".join(ps)
)


@settings(max_examples=1000, deadline=None)
@given(_PATTERNS, _PATHS)
def test_the_kernels_algorithm_means_what_the_documentation_says(pattern: str, path: str) -> None:
    if problem(pattern) is not None:
        return
    assert match(pattern.encode(), path.encode()) == bool(_reference(pattern).fullmatch(path))


@pytest.mark.parametrize(
    ("pattern", "path", "want"),
    [
        ("/home/*/.ssh/id_*", "/home/alice/.ssh/id_rsa", True),
        ("/home/*/.ssh/id_*", "/home/a/b/.ssh/id_rsa", False),
        ("/root/.ssh/**", "/root/.ssh/x/y", True),
        ("/root/.ssh/**", "/root/.ssh", False),
        ("/etc/cron*/**", "/etc/cron.d/job", True),
        ("/etc/cron*/**", "/etc/crontab", False),
        ("/a/**/b", "/a/b", True),
        ("/a/**/b", "/a/xb", False),
    ],
)
def test_examples(pattern: str, path: str, want: bool) -> None:
    assert match(pattern.encode(), path.encode()) is want


def test_heads_and_problems() -> None:
    assert head("/home/*/.ssh/id_*") == "/home/"
    assert head("/etc/cron*/**") == "/etc/"
    assert problem("home/*") == "a glob must be an absolute path"
    assert problem("/a**b/c") is not None
    assert problem("/plain/path") == "no * or ?: use exact or prefix"
    assert problem("/" + "a" * 200 + "*") is not None
