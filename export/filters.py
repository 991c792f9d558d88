"""Which events a subscriber gets: the filters of a GetEventsRequest.

An event passes when it matches any allow filter (or there is none) and no
deny filter. Inside one filter every field that is set must match; a list
field matches when any entry does. Loss reports are not filtered: a
filtered stream must still say when it is incomplete.

Filters read a few fields, gathered in Facts. The daemon gathers them from
Event objects (facts_of_event), `tracer events --from FILE` from JSON lines
(facts_of_dict), so one matcher serves both; tests hold the two equal.

Regexes are RE2 (through pyre2): matching takes linear time whatever the
pattern, so a client cannot stall the daemon with a pathological one
(Python's `re` backtracks, even on `.*a.*b` over an 8 KiB argv, and holds
the GIL while it does). Every RE2 call releases the GIL, though, and with
the daemon's other threads busy, getting it back costs ~20 us (measured in
bench/grpc_stream.py), far more than the match. So results are cached:
the same pattern (one compiled object, shared by all subscribers that use
it) on the same short text (binaries, pod names, common command lines)
is looked up, not matched again.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import re2  # pyre2

from export.proto_gen import tracer_v1_pb2 as pb
from tracer.core.events import EVENT_TYPES, Event, Lost

# Filters select process events; `lost` always passes.
KINDS = tuple(t for t in EVENT_TYPES if t != Lost.type)
MAX_PATTERN = 4096  # bytes of one regex or selector: requests are not unbounded work

# pyre2 would quietly fall back to Python's backtracking `re` for what RE2
# cannot do (backreferences, lookaround): refuse those patterns instead.
re2.set_fallback_notification(re2.FALLBACK_EXCEPTION)

_NO_LABELS: Mapping[str, str] = {}


class FilterError(ValueError):
    """An invalid filter; `field` names it as in the request: allow[0].binary_regex[1]."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class Facts(NamedTuple):
    """What filters look at in an event."""

    kind: str
    binary: str
    args: str  # argv[1:] joined by single spaces
    pid: int
    namespace: str | None = None  # pod namespace; None outside pods
    pod: str | None = None
    labels: Mapping[str, str] = _NO_LABELS
    container_id: str | None = None


def facts_of_event(ev: Event) -> Facts:
    """Facts of a daemon event (not a Lost: those are never filtered)."""
    assert not isinstance(ev, Lost)
    p = ev.process
    pod, container = p.pod, p.container
    if pod is None and container is None:
        return Facts(ev.type, p.binary, " ".join(p.args[1:]), p.pid)
    return Facts(
        ev.type,
        p.binary,
        " ".join(p.args[1:]),
        p.pid,
        namespace=pod.namespace if pod is not None else None,
        pod=pod.name if pod is not None else None,
        labels=pod.labels if pod is not None else _NO_LABELS,
        container_id=container.id if container is not None else None,
    )


def facts_of_dict(ev: Mapping[str, Any]) -> Facts:
    """Facts of an event in its JSON form (a parsed JSON line)."""
    p = ev.get("process") or {}
    pod = p.get("pod") or {}
    container = p.get("container") or {}
    return Facts(
        kind=ev.get("type", ""),
        binary=p.get("binary", ""),
        args=" ".join(p.get("args", [])[1:]),
        pid=p.get("pid", 0),
        namespace=pod.get("namespace"),
        pod=pod.get("name"),
        labels=pod.get("labels") or _NO_LABELS,
        container_id=container.get("id"),
    )


# -- Kubernetes label selectors ------------------------------------------------

_NAME = r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_KEY = rf"(?:[a-z0-9](?:[-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_NAME}"
_VALUE = rf"(?:{_NAME})?"
_EXISTS = re.compile(rf"\s*(!?)\s*({_KEY})\s*")
_EQUALS = re.compile(rf"\s*({_KEY})\s*(==|=|!=)\s*({_VALUE})\s*")
_SET = re.compile(rf"\s*({_KEY})\s+(in|notin)\s*\(([^()]*)\)\s*")
_SET_VALUE = re.compile(rf"\s*({_VALUE})\s*")


@dataclass(slots=True, frozen=True)
class _Requirement:
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


def parse_selector(text: str) -> tuple[_Requirement, ...]:
    """A Kubernetes label selector (`app=web,tier!=db,env in (a,b),!legacy`).

    The empty selector matches everything. Raises ValueError on bad syntax.
    """
    if not text.strip():
        return ()
    reqs = []
    for part in _split_top_level(text):
        if m := _EXISTS.fullmatch(part):
            reqs.append(_Requirement(m[2], "!exists" if m[1] else "exists"))
        elif m := _EQUALS.fullmatch(part):
            reqs.append(_Requirement(m[1], "notin" if m[2] == "!=" else "in", frozenset([m[3]])))
        elif m := _SET.fullmatch(part):
            values = []
            for v in m[3].split(","):
                vm = _SET_VALUE.fullmatch(v)
                if vm is None:
                    raise ValueError(f"bad value {v.strip()!r} in {part.strip()!r}")
                values.append(vm[1])
            reqs.append(_Requirement(m[1], m[2], frozenset(values)))
        else:
            raise ValueError(
                f"cannot parse {part.strip()!r}: expected key, !key, key=value, "
                "key!=value, key in (v1,v2) or key notin (v1,v2)"
            )
    return tuple(reqs)


# -- compiled filters --------------------------------------------------------


Search = Callable[[str], bool]  # whether the regex matches anywhere in the text

CACHED_TEXT = 256  # longer texts (long command lines) are matched, not cached


@functools.lru_cache(maxsize=1024)
def _compile(pattern: str) -> Search:
    """One compiled object per pattern, so subscribers share cached results."""
    search: Search = re2.compile(pattern).contains
    return search


@functools.lru_cache(maxsize=16384)
def _cached_search(search: Search, text: str) -> bool:
    return search(text)


def _regexes(field: str, patterns: Sequence[str]) -> tuple[Search, ...]:
    out = []
    for i, pattern in enumerate(patterns):
        if len(pattern.encode()) > MAX_PATTERN:
            raise FilterError(f"{field}[{i}]", f"longer than {MAX_PATTERN} bytes")
        try:
            out.append(_compile(pattern))
        except re2.error as exc:
            raise FilterError(f"{field}[{i}]", f"invalid RE2 regex {pattern!r}: {exc}") from None
    return tuple(out)


def _any_search(regexes: tuple[Search, ...], text: str | None) -> bool:
    if text is None:
        return False
    if len(text) <= CACHED_TEXT:
        return any(_cached_search(search, text) for search in regexes)
    return any(search(text) for search in regexes)


@dataclass(slots=True, frozen=True)
class _Filter:
    kinds: frozenset[str]
    binary: tuple[Search, ...]
    args: tuple[Search, ...]
    pids: frozenset[int]
    namespaces: frozenset[str]
    pods: tuple[Search, ...]
    selectors: tuple[tuple[_Requirement, ...], ...]
    containers: tuple[str, ...]

    @classmethod
    def compile(cls, f: pb.Filter, where: str) -> _Filter:
        for i, kind in enumerate(f.event_types):
            if kind not in KINDS:
                raise FilterError(
                    f"{where}.event_types[{i}]",
                    f"unknown event type {kind!r}: use one of {', '.join(KINDS)}",
                )
        selectors = []
        for i, text in enumerate(f.labels):
            if len(text.encode()) > MAX_PATTERN:
                raise FilterError(f"{where}.labels[{i}]", f"longer than {MAX_PATTERN} bytes")
            try:
                selectors.append(parse_selector(text))
            except ValueError as exc:
                raise FilterError(
                    f"{where}.labels[{i}]", f"invalid label selector: {exc}"
                ) from None
        for i, cid in enumerate(f.container_id):
            if not cid:
                raise FilterError(f"{where}.container_id[{i}]", "empty container id")
        return cls(
            kinds=frozenset(f.event_types),
            binary=_regexes(f"{where}.binary_regex", f.binary_regex),
            args=_regexes(f"{where}.args_regex", f.args_regex),
            pids=frozenset(f.pid),
            namespaces=frozenset(f.namespace),
            pods=_regexes(f"{where}.pod_regex", f.pod_regex),
            selectors=tuple(selectors),
            containers=tuple(f.container_id),
        )

    def matches(self, e: Facts) -> bool:
        # Cheapest tests first: most events fail on kind or pid.
        if self.kinds and e.kind not in self.kinds:
            return False
        if self.pids and e.pid not in self.pids:
            return False
        if self.namespaces and e.namespace not in self.namespaces:
            return False
        if self.containers and not (
            e.container_id is not None and e.container_id.startswith(self.containers)
        ):
            return False
        if self.binary and not _any_search(self.binary, e.binary):
            return False
        if self.args and not _any_search(self.args, e.args):
            return False
        if self.pods and not _any_search(self.pods, e.pod):
            return False
        return not self.selectors or any(
            all(r.matches(e.labels) for r in sel) for sel in self.selectors
        )


class EventFilter:
    """The allow and deny filters of one request, compiled once."""

    def __init__(self, allow: Sequence[_Filter] = (), deny: Sequence[_Filter] = ()) -> None:
        self._allow = tuple(allow)
        self._deny = tuple(deny)

    @classmethod
    def from_request(cls, req: pb.GetEventsRequest) -> EventFilter:
        """Raises FilterError naming the first invalid field."""
        return cls(
            [_Filter.compile(f, f"allow[{i}]") for i, f in enumerate(req.allow)],
            [_Filter.compile(f, f"deny[{i}]") for i, f in enumerate(req.deny)],
        )

    @property
    def passes_everything(self) -> bool:
        return not self._allow and not self._deny

    def matches(self, facts: Facts) -> bool:
        if self._allow and not any(f.matches(facts) for f in self._allow):
            return False
        return not any(f.matches(facts) for f in self._deny)
