"""Enricher: container and pod attached at event time, on real cgroups and a real pod watch."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from factories import BASH, mkproc
from fake_apiserver import FakeApiServer, pod
from kubelet_cgroups import KubeletCgroup

from enrich import CgroupResolver, Enricher, PodWatcher
from enrich.kube import api_client
from tracer.core.events import Container, Pod

pytestmark = pytest.mark.kernel


@pytest.fixture
def cg() -> Iterator[KubeletCgroup]:
    c = KubeletCgroup("systemd")
    yield c
    c.remove()


@pytest.fixture
def watcher(tmp_path: Path) -> Iterator[tuple[FakeApiServer, PodWatcher]]:
    server = FakeApiServer()
    client = api_client(server.kubeconfig(tmp_path / "kubeconfig"))
    w = PodWatcher(client, "n1", backoff=(0.05, 0.5))
    w.start()
    assert w.ready.wait(5)
    yield server, w
    w.stop()
    server.close()


def test_processes_get_their_container_and_pod_and_keep_them(
    cg: KubeletCgroup, watcher: tuple[FakeApiServer, PodWatcher]
) -> None:
    server, w = watcher
    cgroups = CgroupResolver()
    enricher = Enricher(cgroups, w)
    root = os.stat(cgroups.mount or "/").st_ino
    host = mkproc(10, BASH, cgroup_id=root)
    inside = mkproc(11, BASH, cgroup_id=cg.cgroup_id)

    assert enricher.process(host) is host  # the host: unchanged, not copied
    first = enricher.process(inside)
    assert first.container == Container(id=cg.container_id, runtime="containerd")
    assert first.pod == Pod(uid=cg.pod_uid)
    assert enricher.process(inside) is first  # memoized: encoders reuse its bytes

    # An unrelated pod changes the snapshot; this process's values do not change.
    server.put(pod("0" * 8 + "-0000-0000-0000-" + "0" * 12, "other", "n1"))
    deadline = time.monotonic() + 1
    while len(w.pods) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert enricher.process(inside) is first
    # An event's view (a burst of one process's events reuses the last one).
    assert enricher.view(inside, None, ())[0] is first

    server.put(
        pod(
            cg.pod_uid,
            "web-1",
            "n1",
            labels={"app": "web"},
            containers=[("app", "nginx:1.27", cg.container_id)],
        )
    )
    deadline = time.monotonic() + 1
    while enricher.process(inside).pod == first.pod:
        assert time.monotonic() < deadline, "pod metadata not attached within a second"
        time.sleep(0.01)
    later = enricher.process(inside)
    assert later.pod is not None and later.pod.name == "web-1"
    assert enricher.view(inside, None, ())[0] is later  # the new snapshot, not the last view
    assert later.pod.labels == {"app": "web"} and later.pod.workload_kind == "Pod"
    assert later.container == Container(cg.container_id, "containerd", "app", "nginx:1.27")
    assert first.pod == Pod(uid=cg.pod_uid)  # what was handed out earlier never changes
    cgroups.close()


def test_view_enriches_the_whole_chain_once(cg: KubeletCgroup) -> None:
    cgroups = CgroupResolver()
    enricher = Enricher(cgroups)
    parent = mkproc(20, BASH, cgroup_id=cg.cgroup_id)
    child = mkproc(21, parent, cgroup_id=cg.cgroup_id)
    chain = (BASH,)
    p1, par1, anc1 = enricher.view(child, parent, chain)
    assert p1.container is not None and par1 is not None and par1.container is not None
    assert p1.container is par1.container  # one object per cgroup
    assert anc1 == (BASH,) and anc1[0] is BASH
    p2, par2, anc2 = enricher.view(child, parent, chain)
    assert p2 is p1 and par2 is par1 and anc2 is anc1
    assert cgroups.resolved == 2  # the container's cgroup and BASH's (an id no cgroup has)
    cgroups.close()
