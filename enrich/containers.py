"""Container and pod of each process, attached at event time.

The process cache keeps plain Process values; every event's process,
parent and ancestors pass through Enricher.view, which returns them with
`container` and `pod` set. Pod metadata may arrive after a process was
cached (a pod the watch sees late), so the lookup is redone whenever the
watcher publishes a new snapshot, and otherwise memoized: on a cache hit
an event costs a few dict lookups and identity checks (bench/enrich_cost.py).
The memo also keeps the enriched Process objects stable, which the JSON
and protobuf encoders rely on to serialize each process once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import structlog

from enrich.cgroups import CgroupResolver
from enrich.kube import PodMeta, PodWatcher, api_client
from tracer.core.events import Container, Pod, Process

_log = structlog.get_logger(component="enrich")

_NO_PODS: Mapping[str, PodMeta] = {}


class PodSource(Protocol):
    """Where pod metadata comes from: `pods` is an immutable snapshot, replaced on change."""

    @property
    def pods(self) -> Mapping[str, PodMeta]: ...


class _NoCluster:
    pods: Mapping[str, PodMeta] = _NO_PODS


View = tuple[Process, Process | None, tuple[Process, ...]]


class Enricher:
    """Process -> the same Process with container and pod. Pipeline thread only."""

    def __init__(
        self,
        cgroups: CgroupResolver,
        pods: PodSource | None = None,
        memo_limit: int = 65536,
    ) -> None:
        self._cgroups = cgroups
        self._pods: PodSource = pods if pods is not None else _NoCluster()
        self._limit = memo_limit
        # exec_id -> (plain Process, snapshot it was enriched with, enriched Process)
        self._memo: dict[str, tuple[Process, Mapping[str, PodMeta], Process]] = {}
        # id(ancestors tuple) -> (that tuple, snapshot, enriched tuple)
        self._chains: dict[
            int, tuple[tuple[Process, ...], Mapping[str, PodMeta], tuple[Process, ...]]
        ] = {}
        # cgroup id -> (snapshot, container, pod): one pair of objects per cgroup
        self._by_cgroup: dict[int, tuple[Mapping[str, PodMeta], Container | None, Pod | None]] = {}
        # (process, parent, ancestors, snapshot, their view): the last view made
        self._last: tuple[Process, Process | None, tuple[Process, ...], object, View] | None = None

    @property
    def snapshot(self) -> Mapping[str, PodMeta]:
        """The pod snapshot in force: a new object after every change."""
        return self._pods.pods

    def identity(
        self, cgroup_id: int, snap: Mapping[str, PodMeta] | None = None
    ) -> tuple[Container | None, Pod | None]:
        """The container and pod of a cgroup (None, None on the host)."""
        if snap is None:
            snap = self._pods.pods
        hit = self._by_cgroup.get(cgroup_id)
        if hit is not None and hit[0] is snap:
            return hit[1], hit[2]
        info = self._cgroups.info(cgroup_id)
        container = pod = None
        if info is not None:
            meta = snap.get(info.pod_uid) if info.pod_uid is not None else None
            if info.pod_uid is not None:
                pod = meta.pod if meta is not None else Pod(uid=info.pod_uid)
            if info.container_id is not None and info.runtime is not None:
                named = meta.containers.get(info.container_id) if meta is not None else None
                container = Container(
                    id=info.container_id,
                    runtime=info.runtime,
                    name=named[0] if named else None,
                    image=named[1] if named else None,
                )
            # Same values as before under a new snapshot: keep the old objects,
            # so that processes enriched earlier stay identical.
            if hit is not None and hit[1] == container and hit[2] == pod:
                container, pod = hit[1], hit[2]
        if len(self._by_cgroup) >= self._limit:
            self._by_cgroup.clear()
        self._by_cgroup[cgroup_id] = (snap, container, pod)
        return container, pod

    def process(self, p: Process, snap: Mapping[str, PodMeta] | None = None) -> Process:
        if snap is None:
            snap = self._pods.pods
        hit = self._memo.get(p.exec_id)
        if hit is not None and hit[0] is p and hit[1] is snap:
            return hit[2]
        container, pod = self.identity(p.cgroup_id, snap)
        if (
            hit is not None
            and hit[0] is p
            and hit[2].container is container
            and (hit[2].pod is pod)
        ):
            out = hit[2]
        elif container is None and pod is None:
            out = p
        else:
            out = replace(p, container=container, pod=pod)
        if len(self._memo) >= self._limit:
            self._memo.clear()
        self._memo[p.exec_id] = (p, snap, out)
        return out

    def on_cgroup(self, cgroup_id: int, path: str) -> None:
        """A cgroup made or removed (a kernel record): remember what its path says."""
        self._cgroups.learn(cgroup_id, path)

    def view(
        self, process: Process, parent: Process | None, ancestors: tuple[Process, ...]
    ) -> View:
        """An event's process, parent and ancestors, enriched."""
        snap = self._pods.pods
        last = self._last
        # A burst of one process's opens or connects: the view of the event before.
        if (
            last is not None
            and last[0] is process
            and last[1] is parent
            and last[2] is ancestors
            and last[3] is snap
        ):
            return last[4]
        one = self.process
        chain = self._chains.get(id(ancestors))
        if chain is not None and chain[0] is ancestors and chain[1] is snap:
            enriched = chain[2]
        else:
            enriched = tuple([one(a, snap) for a in ancestors])
            if len(self._chains) >= self._limit:
                self._chains.clear()
            # The tuple itself is held, so its id cannot be reused while cached.
            self._chains[id(ancestors)] = (ancestors, snap, enriched)
        view = (one(process, snap), one(parent, snap) if parent is not None else None, enriched)
        self._last = (process, parent, ancestors, snap, view)
        return view


class Enrichment:
    """The cgroup resolver and, with a cluster configured, the pod watcher."""

    def __init__(self, node: str, kubeconfig: Path | None) -> None:
        self.cgroups = CgroupResolver()
        self.watcher: PodWatcher | None = None
        try:
            client = api_client(kubeconfig)
        except Exception as exc:  # noqa: BLE001 - the client's config errors have no common base
            _log.warning(
                "Kubernetes config unusable: pod metadata is off",
                kubeconfig=str(kubeconfig),
                error=str(exc)[:300],
            )
            client = None
        else:
            if client is None:
                _log.info(
                    "no Kubernetes config (no --kubeconfig, not in a cluster): "
                    "pod metadata is off; container ids from cgroups still work"
                )
        if client is not None:
            self.watcher = PodWatcher(client, node)
            self.watcher.start()
        self.enricher = Enricher(self.cgroups, self.watcher)

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        self.cgroups.close()
