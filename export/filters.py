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

RE2 bounds time, not memory: `(?:\\pL{532})`, 12 bytes, compiles to a ~4 MiB
program, and a large program whose DFA cache overflows falls back to a
slow NFA. So each pattern compiles under an RE2 memory budget (REGEX_MEM:
its program and its DFA caches), larger ones are refused, and what a
request and all requests together may hold compiled is capped
(MAX_PATTERNS, SUBSCRIBER_REGEX_MEM, TOTAL_REGEX_MEM). A compiled pattern
is shared by the filters that use it and freed when the last is released.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import re2  # pyre2

from export.proto_gen import tracer_v1_pb2 as pb
from tracer.core.events import EVENT_TYPES, Event, Lost
from tracer.core.labels import LabelSelector, parse_selector, selects

# Filters select process events; `lost` always passes.
KINDS = tuple(t for t in EVENT_TYPES if t != Lost.type)
MAX_PATTERN = 4096  # bytes of one regex or selector: requests are not unbounded work
# Entries of one request's list fields that cost per event (regexes, label
# selectors, container ids), all filters together.
MAX_PATTERNS = 64
MAX_FILTERS = 32  # allow and deny filters of one request
# RE2's max_mem for one pattern: its compiled program and DFA caches. The
# largest program it admits (e.g. `(?:\\pL{60})x`) searches 32 KiB of text in
# about 0.5 s; `(?:\\pL{532})` is refused.
REGEX_MEM = 1 << 20
# Patterns whose program fits this smaller budget are charged it instead.
_SMALL_REGEX_MEM = 256 << 10
# What the distinct patterns of one request, and of all subscribers
# together, may hold compiled (each charged its budget).
SUBSCRIBER_REGEX_MEM = 16 << 20
TOTAL_REGEX_MEM = 64 << 20

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


class FilterBudgetExhausted(Exception):
    """The compiled patterns of all subscribers would exceed TOTAL_REGEX_MEM."""


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


# -- compiled filters --------------------------------------------------------


CACHED_TEXT = 256  # longer texts (long command lines) are matched, not cached
_CACHED_RESULTS = 4096  # per pattern; the cache is emptied when full


class _Regex:
    """One compiled pattern, shared by every filter that uses it, with its cache of results."""

    __slots__ = ("_contains", "_results", "mem", "pattern", "refs")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.refs = 0
        # pyre2's own compile() caches 100 patterns by text, whatever their
        # max_mem: _compile() does not, so the budget holds and a released
        # pattern is freed.
        try:
            self._contains: Callable[[str], bool] = re2._compile(
                pattern, 0, _SMALL_REGEX_MEM
            ).contains
            self.mem = _SMALL_REGEX_MEM
        except re2.error:
            self._contains = re2._compile(pattern, 0, REGEX_MEM).contains
            self.mem = REGEX_MEM
        # Owned by the pattern, so freed with it. Read and written by
        # several subscribers' threads: single dict operations, atomic.
        self._results: dict[str, bool] = {}

    def search(self, text: str) -> bool:
        """Whether the pattern matches anywhere in text."""
        if len(text) > CACHED_TEXT:
            return self._contains(text)
        hit = self._results.get(text)
        if hit is None:
            hit = self._contains(text)
            if len(self._results) >= _CACHED_RESULTS:
                self._results.clear()
            self._results[text] = hit
        return hit


class _Registry:
    """The compiled patterns in use, counted against TOTAL_REGEX_MEM."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.mem = 0
        self._lock = threading.Lock()
        self._by_pattern: dict[str, _Regex] = {}

    def acquire(self, pattern: str) -> _Regex:
        """The pattern compiled (raises re2.error), counted as one more use."""
        with self._lock:
            rx = self._by_pattern.get(pattern)
            if rx is not None:
                rx.refs += 1
                return rx
        # Compiled outside the lock: it can take tens of ms.
        new = _Regex(pattern)
        with self._lock:
            rx = self._by_pattern.get(pattern)
            if rx is None:
                if self.mem + new.mem > self.limit:
                    raise FilterBudgetExhausted(
                        f"the compiled filters of all subscribers would exceed "
                        f"{self.limit >> 20} MiB: try again when some have left"
                    )
                rx = self._by_pattern[pattern] = new
                self.mem += new.mem
            rx.refs += 1
            return rx

    def release(self, regexes: Sequence[_Regex]) -> None:
        with self._lock:
            for rx in regexes:
                rx.refs -= 1
                if rx.refs == 0 and self._by_pattern.get(rx.pattern) is rx:
                    del self._by_pattern[rx.pattern]
                    self.mem -= rx.mem


REGISTRY = _Registry(TOTAL_REGEX_MEM)


class _Compiler:
    """Compiles the patterns of one request, within its budgets; release() undoes it."""

    def __init__(self) -> None:
        self.regexes: list[_Regex] = []  # one entry per acquire, released as many times
        self._distinct: dict[str, int] = {}
        self.patterns = 0

    def count(self, field: str, n: int) -> None:
        self.patterns += n
        if self.patterns > MAX_PATTERNS:
            raise FilterError(
                field,
                f"more than {MAX_PATTERNS} regexes, label selectors and container ids "
                "in one request",
            )

    def regexes_of(self, field: str, patterns: Sequence[str]) -> tuple[_Regex, ...]:
        self.count(field, len(patterns))
        out = []
        for i, pattern in enumerate(patterns):
            where = f"{field}[{i}]"
            if len(pattern.encode()) > MAX_PATTERN:
                raise FilterError(where, f"longer than {MAX_PATTERN} bytes")
            try:
                rx = REGISTRY.acquire(pattern)
            except re2.error as exc:
                problem = str(exc)
                if "too large" in problem:
                    problem = f"pattern too large: RE2 compiles it past {REGEX_MEM >> 10} KiB"
                raise FilterError(where, f"invalid RE2 regex {pattern!r}: {problem}") from None
            self.regexes.append(rx)
            if pattern not in self._distinct:
                self._distinct[pattern] = rx.mem
                if sum(self._distinct.values()) > SUBSCRIBER_REGEX_MEM:
                    raise FilterError(
                        where,
                        f"the request's regexes compile past {SUBSCRIBER_REGEX_MEM >> 20} MiB "
                        f"(each charged {_SMALL_REGEX_MEM >> 10} KiB, or "
                        f"{REGEX_MEM >> 10} KiB if larger)",
                    )
            out.append(rx)
        return tuple(out)


def _any_search(regexes: tuple[_Regex, ...], text: str | None) -> bool:
    if text is None:
        return False
    return any(rx.search(text) for rx in regexes)


@dataclass(slots=True, frozen=True)
class _Filter:
    kinds: frozenset[str]
    binary: tuple[_Regex, ...]
    args: tuple[_Regex, ...]
    pids: frozenset[int]
    namespaces: frozenset[str]
    pods: tuple[_Regex, ...]
    selectors: tuple[LabelSelector, ...]
    containers: tuple[str, ...]

    @classmethod
    def compile(cls, f: pb.Filter, where: str, c: _Compiler) -> _Filter:
        for i, kind in enumerate(f.event_types):
            if kind not in KINDS:
                raise FilterError(
                    f"{where}.event_types[{i}]",
                    f"unknown event type {kind!r}: use one of {', '.join(KINDS)}",
                )
        selectors = []
        c.count(f"{where}.labels", len(f.labels))
        for i, text in enumerate(f.labels):
            if len(text.encode()) > MAX_PATTERN:
                raise FilterError(f"{where}.labels[{i}]", f"longer than {MAX_PATTERN} bytes")
            try:
                selectors.append(parse_selector(text))
            except ValueError as exc:
                raise FilterError(
                    f"{where}.labels[{i}]", f"invalid label selector: {exc}"
                ) from None
        c.count(f"{where}.container_id", len(f.container_id))
        for i, cid in enumerate(f.container_id):
            if not cid:
                raise FilterError(f"{where}.container_id[{i}]", "empty container id")
        return cls(
            kinds=frozenset(f.event_types),
            binary=c.regexes_of(f"{where}.binary_regex", f.binary_regex),
            args=c.regexes_of(f"{where}.args_regex", f.args_regex),
            pids=frozenset(f.pid),
            namespaces=frozenset(f.namespace),
            pods=c.regexes_of(f"{where}.pod_regex", f.pod_regex),
            selectors=tuple(selectors),
            containers=tuple(f.container_id),
        )

    @property
    def costly(self) -> bool:
        return bool(self.binary or self.args or self.pods or self.selectors or self.containers)

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
        return not self.selectors or any(selects(sel, e.labels) for sel in self.selectors)


class EventFilter:
    """The allow and deny filters of one request, compiled once.

    One made by from_request() holds compiled patterns counted against
    TOTAL_REGEX_MEM until release().
    """

    def __init__(
        self,
        allow: Sequence[_Filter] = (),
        deny: Sequence[_Filter] = (),
        regexes: Sequence[_Regex] = (),
    ) -> None:
        self._allow = tuple(allow)
        self._deny = tuple(deny)
        self._regexes: Sequence[_Regex] = regexes
        self._released = threading.Lock()

    @classmethod
    def from_request(cls, req: pb.GetEventsRequest) -> EventFilter:
        """Raises FilterError naming the first invalid field (or the limit it is over),
        FilterBudgetExhausted when all subscribers' patterns together would be."""
        if len(req.allow) + len(req.deny) > MAX_FILTERS:
            raise FilterError("allow", f"more than {MAX_FILTERS} allow and deny filters")
        c = _Compiler()
        try:
            allow = [_Filter.compile(f, f"allow[{i}]", c) for i, f in enumerate(req.allow)]
            deny = [_Filter.compile(f, f"deny[{i}]", c) for i, f in enumerate(req.deny)]
        except BaseException:
            REGISTRY.release(c.regexes)
            raise
        return cls(allow, deny, c.regexes)

    def release(self) -> None:
        """Give back the compiled patterns (once; later calls do nothing)."""
        if self._released.acquire(blocking=False):
            REGISTRY.release(self._regexes)

    @property
    def passes_everything(self) -> bool:
        return not self._allow and not self._deny

    @property
    def costly(self) -> bool:
        """Whether matching may take long (regexes, label selectors, container prefixes),
        rather than only set lookups."""
        return any(f.costly for f in (*self._allow, *self._deny))

    @property
    def kinds(self) -> frozenset[str] | None:
        """The only event types that can pass, or None for any."""
        if not self._allow or any(not f.kinds for f in self._allow):
            return None
        return frozenset().union(*(f.kinds for f in self._allow))

    def matches(self, facts: Facts) -> bool:
        if self._allow and not any(f.matches(facts) for f in self._allow):
            return False
        return not any(f.matches(facts) for f in self._deny)
