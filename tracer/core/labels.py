"""Kubernetes label selectors (`app=web,tier!=db,env in (a,b),!legacy`).

One parser for every place that takes them: the API's `labels` filters
(export/filters.py) and the policies' `pod_labels` selector (policy/).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_NAME = r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_KEY = rf"(?:[a-z0-9](?:[-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_NAME}"
_VALUE = rf"(?:{_NAME})?"
_EXISTS = re.compile(rf"\s*(!?)\s*({_KEY})\s*")
_EQUALS = re.compile(rf"\s*({_KEY})\s*(==|=|!=)\s*({_VALUE})\s*")
_SET = re.compile(rf"\s*({_KEY})\s+(in|notin)\s*\(([^()]*)\)\s*")
_SET_VALUE = re.compile(rf"\s*({_VALUE})\s*")


@dataclass(slots=True, frozen=True)
class Requirement:
    key: str
    op: str  # exists, !exists, in, notin (= and != are in/notin of one value)
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        # Kubernetes semantics: != and notin also match when the key is absent.
        v = labels.get(self.key)
        if self.op == "exists":
            return v is not None
        if self.op == "!exists":
            return v is None
        if self.op == "in":
            return v is not None and v in self.values
        return v is None or v not in self.values


LabelSelector = tuple[Requirement, ...]


def selects(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """Every requirement holds (the empty selector selects everything)."""
    return all(r.matches(labels) for r in selector)


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside parentheses: `a in (x,y),b` -> [`a in (x,y)`, `b`]."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def parse_selector(text: str) -> LabelSelector:
    """A Kubernetes label selector (`app=web,tier!=db,env in (a,b),!legacy`).

    The empty selector matches everything. Raises ValueError on bad syntax.
    """
    if not text.strip():
        return ()
    reqs = []
    for part in _split_top_level(text):
        if m := _EXISTS.fullmatch(part):
            reqs.append(Requirement(m[2], "!exists" if m[1] else "exists"))
        elif m := _EQUALS.fullmatch(part):
            reqs.append(Requirement(m[1], "notin" if m[2] == "!=" else "in", frozenset([m[3]])))
        elif m := _SET.fullmatch(part):
            values = []
            for v in m[3].split(","):
                vm = _SET_VALUE.fullmatch(v)
                if vm is None:
                    raise ValueError(f"bad value {v.strip()!r} in {part.strip()!r}")
                values.append(vm[1])
            reqs.append(Requirement(m[1], m[2], frozenset(values)))
        else:
            raise ValueError(
                f"cannot parse {part.strip()!r}: expected key, !key, key=value, "
                "key!=value, key in (v1,v2) or key notin (v1,v2)"
            )
    return tuple(reqs)
