"""Keeps the kernel's workload map (policy/workload_map.py) in step with the enrichment.

Which pod and container a cgroup is (enrich/containers.py) becomes the
facts the policies' workload selectors are decided on, written per cgroup
into the map the kernel reads. Sources: a walk of the cgroup tree at start
(the cgroups older than the daemon), each cgroup_mkdir and cgroup_rmdir
record, an exec in a cgroup the map lacks (its mkdir record lost, or the
map was full), and every new pod snapshot (a pod added, relabelled,
deleted, or its containers named by their status).

Pipeline thread only, as the Enricher it asks.
"""

from __future__ import annotations

from collections.abc import Mapping

from enrich import CgroupResolver, Enricher, PodMeta
from policy.workload import facts_of
from policy.workload_map import WorkloadMap
from tracer.core import decode


class WorkloadSync:
    def __init__(self, enricher: Enricher, cgroups: CgroupResolver, wmap: WorkloadMap) -> None:
        self._enricher = enricher
        self._cgroups = cgroups
        self._map = wmap
        self._snap: Mapping[str, PodMeta] | None = None

    def start(self) -> int:
        """Put every cgroup that exists now; how many were found. The walk
        stops at twice the map's capacity: what is beyond would not fit."""
        self._snap = snap = self._enricher.snapshot
        n = 0
        for cgroup_id, _ in self._cgroups.scan(2 * self._map.capacity):
            self._put(cgroup_id, snap)
            n += 1
        return n

    def _put(self, cgroup_id: int, snap: Mapping[str, PodMeta] | None = None) -> None:
        self._map.put(cgroup_id, facts_of(*self._enricher.identity(cgroup_id, snap)))

    def on_cgroup(self, rec: decode.CgroupRecord) -> None:
        """After the process cache has learned the record's path."""
        if rec.op == decode.CGROUP_RMDIR:
            self._map.remove(rec.id)
        else:
            self._put(rec.id)

    def on_exec(self, cgroup_id: int) -> None:
        if not self._map.known(cgroup_id):
            self._put(cgroup_id)

    def poll(self) -> None:
        """Decide every known cgroup again when the pod snapshot changed."""
        snap = self._enricher.snapshot
        if snap is self._snap:
            return
        self._snap = snap
        for cgroup_id in self._map.cgroups():
            self._put(cgroup_id, snap)
