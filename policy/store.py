"""The policy set in force: load, validate, swap in, and name kernel verdicts."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

import structlog

from policy.compile import Compiled, compile_policies
from policy.kernel import PolicyMaps, RuleCount
from policy.model import PolicySet
from policy.parse import parse_documents, parse_files
from tracer.core.decode import ACTION_NAMES, Verdict
from tracer.core.events import PolicyMatch

_log = structlog.get_logger(component="policy")


class PolicyStore:
    """Owns the active set. Every apply is all-or-nothing.

    Policy ids are never reused across applies, so an event that was in
    flight during a swap is still named after the set that selected it.
    """

    def __init__(self, maps: PolicyMaps, lsm_active: bool) -> None:
        self._maps = maps
        self._lsm = lsm_active
        self._lock = threading.Lock()
        self._next_id = 1
        # (policy id, rule index) -> the match events of that rule carry, for
        # the set in force and the one before it (verdicts still in flight).
        self._rules: dict[tuple[int, int], PolicyMatch] = {}
        self._previous_first_id = 1
        self._matches: dict[int, tuple[Verdict, PolicyMatch]] = {}  # by id(verdict)
        self.sources: list[str] = []

    def _apply(self, ps: PolicySet, sources: list[str]) -> list[str]:
        with self._lock:
            compiled: Compiled = compile_policies(ps, self._lsm, self._next_id)
            self._maps.apply(compiled)  # raises with the old set still in force
            keep = self._previous_first_id
            self._rules = {k: m for k, m in self._rules.items() if k[0] >= keep}
            self._rules.update(_matches_of(compiled))
            self._previous_first_id = self._next_id
            self._next_id += max(1, len(ps.policies))
            self.sources = sources
        for w in compiled.warnings:
            _log.warning(w)
        _log.info(
            "policies applied",
            policies=[p.name for p in ps.policies],
            rules={k.label: len(t.rules) for k, t in compiled.kinds.items()},
        )
        return compiled.warnings

    def apply_paths(self, paths: Iterable[Path]) -> list[str]:
        """The daemon's policy paths (start-up, SIGHUP): files that others may write are refused."""
        paths = list(paths)
        return self._apply(parse_files(paths, strict=True), [str(p) for p in paths])

    def apply_texts(self, docs: list[tuple[str, str]]) -> list[str]:
        """(source name, YAML text) pairs, e.g. sent over the control socket."""
        return self._apply(parse_documents(docs), [s for s, _ in docs])

    def match(self, v: Verdict) -> PolicyMatch | None:
        # One PolicyMatch per verdict, made once: this runs for every
        # selected event. A policy id is never reused and its name never
        # changes, so a named match stays right. Keyed by identity (decode
        # hands out one Verdict per value): hashing the frozen dataclass is a
        # Python-level call, 0.2 us an event. The entry holds its Verdict,
        # so the id cannot be reused while cached.
        hit = self._matches.get(id(v))
        if hit is not None and hit[0] is v:
            return hit[1]
        action = ACTION_NAMES.get(v.action)
        if action is None:
            return None
        m = self._rules.get((v.policy_id, v.rule))
        if m is None:  # of a set two applies old, still in flight
            return PolicyMatch(f"#{v.policy_id}", v.rule, action)
        if len(self._matches) >= 4096:  # a bound, whatever the records say
            self._matches.clear()
        self._matches[id(v)] = (v, m)
        return m

    def counts(self) -> list[RuleCount]:
        return self._maps.counts()


def _matches_of(c: Compiled) -> dict[tuple[int, int], PolicyMatch]:
    """One PolicyMatch per rule, shared by every event the rule selects."""
    return {
        (r.policy_id, r.index): PolicyMatch(
            r.policy,
            r.index,
            r.action.label,
            r.severity.value,
            r.tags,
            r.message,
            r.mode.value,
        )
        for t in c.kinds.values()
        for r in t.rules
    }
