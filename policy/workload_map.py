"""The kernel's cgroup -> workload verdicts (tr_workload in bpf_probes/workload.bpf.h).

Every cgroup the daemon knows of, the host's as well as the containers',
has an entry: per policy generation and event kind, the bits of the rules
whose workload selectors (policy/workload.py) its processes satisfy. The
daemon puts a cgroup's facts here when it learns them (a walk of the
cgroup tree at start, then each cgroup_mkdir record) and again when its
pod changes; a new policy set is decided for every known cgroup before it
goes live (PolicyMaps.apply calls set_generation before the switch).

A cgroup without an entry satisfies no workload selector. The map holds
`capacity` cgroups (--workload-cgroups); a cgroup that finds it full is
counted in `full`, logged once, and its processes match no rule that has
a workload selector until an entry frees up and the cgroup is seen again.
"""

from __future__ import annotations

import contextlib
import errno
import struct
import threading

import structlog

from policy.model import Kind, Selectors
from policy.workload import WorkloadFacts, matches
from tracer.core import bpf

_log = structlog.get_logger(component="policy")

GENS = 2  # TR_GENS
KINDS = len(Kind)
_KEY = struct.Struct("<Q")
_SLOT = struct.Struct("<I")
_RULES = struct.Struct("<Q")
VALUE = struct.Struct(f"<{GENS * KINDS}Q")  # struct tr_workload

WorkloadRules = dict[Kind, list[tuple[int, Selectors]]]  # Compiled.workload


class WorkloadMap:
    """tr_workload and tr_workload_rules of one loaded capture object. Thread-safe."""

    def __init__(self, obj: bpf.BpfObject) -> None:
        self._map = obj.map("tr_workload")
        self._rules_map = obj.map("tr_workload_rules")
        self.capacity = self._map.max_entries
        self._lock = threading.Lock()
        self._rules: list[WorkloadRules] = [{}, {}]  # per generation
        self._facts: dict[int, WorkloadFacts] = {}  # the cgroups with an entry
        self.full = 0  # cgroups that found the map full
        self._warned = False

    def __len__(self) -> int:
        return len(self._facts)

    def known(self, cgroup_id: int) -> bool:
        return cgroup_id in self._facts

    def cgroups(self) -> list[int]:
        with self._lock:
            return list(self._facts)

    def _value(self, facts: WorkloadFacts) -> bytes:
        return VALUE.pack(
            *(
                sum(bit for bit, sel in self._rules[gen].get(kind, ()) if matches(sel, facts))
                for gen in range(GENS)
                for kind in Kind
            )
        )

    def set_generation(self, gen: int, rules: WorkloadRules) -> None:
        """Decide `rules` (a set about to go live in generation `gen`) for every known cgroup."""
        with self._lock:
            self._rules[gen] = rules
            memo: dict[int, bytes] = {}  # by id(facts): most cgroups share HOST's
            for cgroup_id, facts in self._facts.items():
                value = memo.get(id(facts))
                if value is None:
                    value = memo[id(facts)] = self._value(facts)
                self._map.update(_KEY.pack(cgroup_id), value)
            for kind in Kind:
                constrained = sum(bit for bit, _ in rules.get(kind, ()))
                self._rules_map.update(
                    _SLOT.pack(gen * KINDS + kind.index), _RULES.pack(constrained)
                )

    def put(self, cgroup_id: int, facts: WorkloadFacts) -> None:
        """A cgroup learned, or its pod or container changed."""
        with self._lock:
            old = self._facts.get(cgroup_id)
            if old is not None and (old is facts or old == facts):
                return
            if old is None and len(self._facts) >= self.capacity:
                self._full(cgroup_id)
                return
            try:
                self._map.update(_KEY.pack(cgroup_id), self._value(facts))
            except bpf.LibbpfError as exc:
                if exc.errno != errno.E2BIG:
                    raise
                self._full(cgroup_id)
                return
            self._facts[cgroup_id] = facts

    def _full(self, cgroup_id: int) -> None:
        self.full += 1
        if not self._warned:
            self._warned = True
            _log.warning(
                "the workload map is full: processes of cgroups that do not fit match no "
                "rule with a workload selector (raise --workload-cgroups)",
                capacity=self.capacity,
                cgroup_id=cgroup_id,
            )

    def remove(self, cgroup_id: int) -> None:
        """A cgroup removed: its processes are gone (rmdir needs an empty cgroup)."""
        with self._lock:
            if self._facts.pop(cgroup_id, None) is not None:
                with contextlib.suppress(FileNotFoundError):
                    self._map.delete(_KEY.pack(cgroup_id))
