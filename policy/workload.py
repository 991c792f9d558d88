"""Workload selectors: the pod and container a process runs in, or the host.

The kernel cannot read a pod's namespace or labels, so these selectors are
decided here, once per cgroup, and the verdicts written into a map the
kernel's rule check reads by the task's cgroup id (policy/workload_map.py,
bpf_probes/workload.bpf.h). `tracer policy test` decides with the same
function on the `container` and `pod` a recorded event carries
(policy/evaluate.py), so the dry run and the kernel agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from policy.model import Selectors
from tracer.core.events import Container, Pod
from tracer.core.labels import LabelSelector, selects


@dataclass(slots=True, frozen=True)
class WorkloadFacts:
    """Where a process runs, as the selectors see it (None: the value is not known)."""

    in_container: bool  # in a container's or a pod's cgroup
    namespace: str | None  # needs the pod's metadata from the API server
    labels: Mapping[str, str] | None  # likewise: None, not {}, without it
    container: str | None  # the container's name, from its pod's status


HOST = WorkloadFacts(False, None, None, None)


def facts_of(container: Container | None, pod: Pod | None) -> WorkloadFacts:
    """The facts of a cgroup as the enrichment names it (enrich/containers.py)."""
    if container is None and pod is None:
        return HOST
    known = pod is not None and pod.namespace is not None
    return WorkloadFacts(
        True,
        pod.namespace if pod is not None else None,
        pod.labels if known and pod is not None else None,
        container.name if container is not None else None,
    )


def facts_of_json(process: Mapping[str, Any]) -> WorkloadFacts:
    """The facts of a process of a recorded event (its JSON form)."""
    container, pod = process.get("container"), process.get("pod")
    if not isinstance(container, Mapping) and not isinstance(pod, Mapping):
        return HOST
    ns = pod.get("namespace") if isinstance(pod, Mapping) else None
    labels = pod.get("labels") if isinstance(pod, Mapping) else None
    name = container.get("name") if isinstance(container, Mapping) else None
    return WorkloadFacts(
        True,
        ns if isinstance(ns, str) else None,
        labels if isinstance(ns, str) and isinstance(labels, Mapping) else None,
        name if isinstance(name, str) else None,
    )


def constrains(s: Selectors) -> bool:
    """Whether the rule says anything about where the process runs."""
    return bool(
        s.namespace
        or s.not_namespace
        or s.pod_labels
        or s.not_pod_labels
        or s.container
        or s.not_container
        or s.in_container is not None
    )


def _names(pos: tuple[str, ...], neg: tuple[str, ...], value: str | None) -> bool:
    if not pos and not neg:
        return True
    if value is None:  # a selector on a value the process lacks never matches
        return False
    return (not pos or value in pos) and value not in neg


def _labels(
    pos: tuple[LabelSelector, ...], neg: tuple[LabelSelector, ...], labels: Mapping[str, str] | None
) -> bool:
    if not pos and not neg:
        return True
    if labels is None:
        return False
    return (not pos or any(selects(s, labels) for s in pos)) and not any(
        selects(s, labels) for s in neg
    )


def matches(s: Selectors, f: WorkloadFacts) -> bool:
    """Every workload selector of the rule holds for a process with these facts."""
    return (
        (s.in_container is None or s.in_container == f.in_container)
        and _names(s.namespace, s.not_namespace, f.namespace)
        and _names(s.container, s.not_container, f.container)
        and _labels(s.pod_labels, s.not_pod_labels, f.labels)
    )
