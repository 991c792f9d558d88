"""Pod metadata: the real kubernetes client against a real local API server.

tests/fake_apiserver.py serves list and watch of pods over HTTP on
127.0.0.1 with the API's JSON; these tests run tracer's PodWatcher on it
in-process (state, workloads, 410 Gone, dropped connections), then the
real daemon (events carry pod and container metadata; bad input is
logged once and events keep flowing).
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from conftest import Daemon, Event, new_marker, tracer_cmd
from factories import closed_port
from fake_apiserver import FakeApiServer, kubeconfig, owned, pod
from grpc_helpers import Subscription, wait_subscribers
from kubelet_cgroups import KubeletCgroup, new_container_id, new_uid

from enrich import PodWatcher
from enrich.kube import api_client
from export.proto_gen import tracer_v1_pb2 as pb

pytestmark = pytest.mark.kernel


def _until(cond: Callable[[], bool], timeout: float = 1.0) -> float:
    """Seconds until cond() held; fails after timeout."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"not within {timeout}s")
        time.sleep(0.01)
    return time.monotonic() - t0


@pytest.fixture
def server() -> Iterator[FakeApiServer]:
    s = FakeApiServer()
    yield s
    s.close()


def _watcher(server: FakeApiServer, tmp_path: Path, node: str = "n1", **kw: float) -> PodWatcher:
    client = api_client(server.kubeconfig(tmp_path / "kubeconfig"))
    assert client is not None
    w = PodWatcher(client, node, backoff=(0.05, 0.5), **kw)  # type: ignore[arg-type]
    w.start()
    assert w.ready.wait(5), "first list did not arrive"
    return w


def test_list_selects_this_nodes_pods_and_resolves_workloads(
    server: FakeApiServer, tmp_path: Path
) -> None:
    c1, c2 = new_container_id(), new_container_id()
    server.add_object(owned("ReplicaSet", "web-5d8f9c7b6", "shop", ("Deployment", "web")))
    server.add_object(owned("Job", "backup-2900", "ops", ("CronJob", "backup")))
    server.add_object(owned("Job", "once", "ops", None))
    pods = {
        "deploy": pod(
            new_uid(),
            "web-5d8f9c7b6-x1",
            "n1",
            labels={"app": "web"},
            owner=("ReplicaSet", "web-5d8f9c7b6"),
            containers=[("app", "nginx:1.27", c1), ("sidecar", "envoy:1.30", c2)],
        ),
        # no such ReplicaSet (404): the pod-template-hash naming rule
        "rs-gone": pod(
            new_uid(),
            "api-7c9d8-q",
            "n1",
            labels={"pod-template-hash": "7c9d8"},
            owner=("ReplicaSet", "api-7c9d8"),
        ),
        "sts": pod(new_uid(), "db-0", "n1", owner=("StatefulSet", "db")),
        "ds": pod(new_uid(), "agent-z", "n1", owner=("DaemonSet", "agent")),
        "cron": pod(
            new_uid(), "backup-2900-b", "n1", namespace="ops", owner=("Job", "backup-2900")
        ),
        "job": pod(new_uid(), "once-c", "n1", namespace="ops", owner=("Job", "once")),
        "bare": pod(new_uid(), "debug", "n1"),
        "unknown owner": pod(new_uid(), "odd", "n1", owner=("FooController", "foo")),
        "other node": pod(new_uid(), "elsewhere", "n2"),
    }
    for p in pods.values():
        server.put(p)
    w = _watcher(server, tmp_path)
    try:
        got = {
            k: (
                w.pods[p["metadata"]["uid"]].pod.workload,
                w.pods[p["metadata"]["uid"]].pod.workload_kind,
            )
            for k, p in pods.items()
            if k != "other node"
        }
        assert got == {
            "deploy": ("web", "Deployment"),
            "rs-gone": ("api", "Deployment"),
            "sts": ("db", "StatefulSet"),
            "ds": ("agent", "DaemonSet"),
            "cron": ("backup", "CronJob"),
            "job": ("once", "Job"),
            "bare": ("debug", "Pod"),
            "unknown owner": ("foo", "FooController"),
        }
        assert pods["other node"]["metadata"]["uid"] not in w.pods
        assert server.count("LIST n1") == 1  # the field selector names this node
        meta = w.pods[pods["deploy"]["metadata"]["uid"]]
        assert meta.pod.namespace == "shop" and meta.pod.labels == {"app": "web"}
        assert meta.containers == {c1: ("app", "nginx:1.27"), c2: ("sidecar", "envoy:1.30")}
        # one GET per ReplicaSet or Job, none for kinds that need no lookup
        assert server.count("GET ReplicaSet shop/web-5d8f9c7b6") == 1
        assert server.count("GET Job ops/backup-2900") == 1
        assert server.count("GET StatefulSet") == 0
    finally:
        w.stop()


def test_watch_add_modify_delete_and_the_grace_period(
    server: FakeApiServer, tmp_path: Path
) -> None:
    w = _watcher(server, tmp_path, deleted_grace_s=0.5)
    try:
        assert dict(w.pods) == {}
        p = pod(new_uid(), "late", "n1", labels={"v": "1"})
        uid = p["metadata"]["uid"]
        server.put(p)
        _until(lambda: uid in w.pods)
        before = w.pods
        p["metadata"]["labels"] = {"v": "2"}
        server.put(p)
        _until(lambda: w.pods[uid].pod.labels == {"v": "2"})
        assert before[uid].pod.labels == {"v": "1"}  # a published snapshot never changes
        server.delete(uid)
        time.sleep(0.2)
        assert uid in w.pods  # deleted, still in its grace period
        # Expiry runs with the next watch event: any event will do.
        server.put(pod(new_uid(), "tick", "n1"))
        time.sleep(0.4)
        server.put(pod(new_uid(), "tick2", "n1"))
        _until(lambda: uid not in w.pods)
    finally:
        w.stop()


def test_410_gone_in_a_watch_relists(server: FakeApiServer, tmp_path: Path) -> None:
    w = _watcher(server, tmp_path)
    try:
        _until(lambda: server.count("WATCH") == 1)
        server.expire_watches()
        _until(lambda: server.count("LIST") == 2)
        p = pod(new_uid(), "after-gone", "n1")
        _until(lambda: server.count("WATCH") == 2)
        server.put(p)
        _until(lambda: p["metadata"]["uid"] in w.pods)
        assert w.lists == 2
    finally:
        w.stop()


def test_a_dropped_connection_resumes_from_the_last_resource_version(
    server: FakeApiServer, tmp_path: Path
) -> None:
    w = _watcher(server, tmp_path)
    try:
        _until(lambda: server.count("WATCH") == 1)
        p1 = pod(new_uid(), "one", "n1")
        server.put(p1)
        _until(lambda: p1["metadata"]["uid"] in w.pods)
        last_rv = p1["metadata"]["resourceVersion"]
        server.drop_watches()
        _until(lambda: server.count("WATCH") == 2)
        assert server.requests[-1] == f"WATCH {last_rv}"
        assert server.count("LIST") == 1  # no relist needed
        p2 = pod(new_uid(), "two", "n1")
        server.put(p2)
        _until(lambda: p2["metadata"]["uid"] in w.pods)
    finally:
        w.stop()


def test_malformed_pods_are_skipped_and_the_rest_flows(
    server: FakeApiServer, tmp_path: Path
) -> None:
    w = _watcher(server, tmp_path)
    try:
        _until(lambda: server.count("WATCH") == 1)
        bad_uid = new_uid()
        for broken in (
            {"metadata": {"uid": bad_uid, "name": "b", "namespace": "x", "labels": ["a"]}},
            {"metadata": {"name": "no-uid", "namespace": "x"}},
            "not an object",
            {
                "metadata": {"uid": new_uid(), "name": "b", "namespace": "x"},
                "status": {"containerStatuses": [{"containerID": "containerd://abc"}]},
            },  # no name
        ):
            server.raw_event({"type": "ADDED", "object": broken})
        good = pod(new_uid(), "good", "n1")
        server.put(good)
        _until(lambda: good["metadata"]["uid"] in w.pods)
        assert bad_uid not in w.pods and len(w.pods) == 1
    finally:
        w.stop()


# -- the real daemon -------------------------------------------------------------


class _Cluster:
    def __init__(
        self,
        server: FakeApiServer,
        daemon: Daemon,
        node: str,
        web: KubeletCgroup,
        web_uid: str,
        app_cid: str,
    ) -> None:
        self.server, self.daemon, self.node = server, daemon, node
        self.web, self.web_uid, self.app_cid = web, web_uid, app_cid


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Cluster]:
    tmp = tmp_path_factory.mktemp("kube")
    node = f"kn-{uuid.uuid4().hex[:8]}"
    server = FakeApiServer()
    uid, cid = new_uid(), new_container_id()
    server.add_object(owned("ReplicaSet", "web-5d8f9c7b6", "shop", ("Deployment", "web")))
    server.put(
        pod(
            uid,
            "web-5d8f9c7b6-x1",
            node,
            labels={"app": "web", "tier": "front"},
            owner=("ReplicaSet", "web-5d8f9c7b6"),
            containers=[("app", "nginx:1.27", cid)],
        )
    )
    web = KubeletCgroup("systemd", pod_uid=uid, container_id=cid)
    d = Daemon("--kubeconfig", str(server.kubeconfig(tmp / "kubeconfig")), "--node-name", node)
    yield _Cluster(server, d, node, web, uid, cid)
    rc = d.stop()
    web.remove()
    server.close()
    assert rc == 0, "".join(d.stderr)


def _exec_of(marker: str) -> Callable[[Event], bool]:
    return lambda e: (
        e["type"] == "process_exec"
        and marker in e["process"]["args"]
        and e["process"]["args"][0] == "/bin/true"
    )


def test_events_carry_pod_workload_and_container(cluster: _Cluster) -> None:
    marker = new_marker("kube")
    cluster.web.run('/bin/true "$1"', marker).wait(10)
    ev = cluster.daemon.wait_for(_exec_of(marker))
    p = ev["process"]
    assert p["pod"] == {
        "namespace": "shop",
        "name": "web-5d8f9c7b6-x1",
        "uid": cluster.web_uid,
        "labels": {"app": "web", "tier": "front"},
        "workload": "web",
        "workload_kind": "Deployment",
    }
    assert p["container"] == {
        "id": cluster.app_cid,
        "runtime": "containerd",
        "name": "app",
        "image": "nginx:1.27",
    }
    assert ev["node"] == cluster.node


def test_a_pod_added_after_start_up_shows_within_a_second(cluster: _Cluster) -> None:
    uid, cid = new_uid(), new_container_id()
    cg = KubeletCgroup("cgroupfs", pod_uid=uid, container_id=cid)
    try:
        # A process of the pod that starts before the API has the pod...
        early = new_marker("early")
        cg.run('/bin/bash -c "sleep 1.5; true" "$1"', early)
        early_args = ["/bin/bash", "-c", "sleep 1.5; true", early]
        ev = cluster.daemon.wait_for(
            lambda e: e["type"] == "process_exec" and e["process"]["args"] == early_args
        )
        assert ev["process"]["pod"] == {"uid": uid, "labels": {}}
        assert ev["process"]["container"] == {"id": cid, "runtime": "containerd"}
        cluster.server.put(
            pod(
                uid,
                "late-pod",
                cluster.node,
                namespace="batch",
                labels={"app": "late"},
                containers=[("main", "busybox:1", cid)],
            )
        )
        time.sleep(1.0)
        # ...and one that starts a second after it was added.
        marker = new_marker("late")
        cg.run('/bin/true "$1"', marker).wait(10)
        ev = cluster.daemon.wait_for(_exec_of(marker))
        want = {
            "namespace": "batch",
            "name": "late-pod",
            "uid": uid,
            "labels": {"app": "late"},
            "workload": "late-pod",
            "workload_kind": "Pod",
        }
        assert ev["process"]["pod"] == want
        assert ev["process"]["container"]["name"] == "main"
        # The early process, cached before the pod was known, exits with it.
        ex = cluster.daemon.wait_for(
            lambda e: e["type"] == "process_exit" and e["process"]["args"] == early_args, timeout=5
        )
        assert ex["process"]["pod"] == want
        # Deleted: its processes keep the metadata for the grace period.
        cluster.server.delete(uid)
        time.sleep(0.3)
        marker = new_marker("deleted")
        cg.run('/bin/true "$1"', marker).wait(10)
        ev = cluster.daemon.wait_for(_exec_of(marker))
        assert ev["process"]["pod"] == want
    finally:
        cg.remove()


def test_bad_input_is_logged_once_and_events_keep_flowing(cluster: _Cluster) -> None:
    s, d = cluster.server, cluster.daemon
    bad_uid = new_uid()
    broken = {
        "metadata": {"uid": bad_uid, "name": "bad", "namespace": "x", "labels": [1]},
        "spec": {"nodeName": cluster.node},
    }
    for kind in ("ADDED", "MODIFIED", "MODIFIED"):
        s.raw_event({"type": kind, "object": broken})
    odd_uids = [new_uid(), new_uid()]
    for i, u in enumerate(odd_uids):
        s.put(pod(u, f"odd-{i}", cluster.node, owner=("FooController", "foo")))
    cg = KubeletCgroup("systemd", pod_uid=odd_uids[1])
    try:
        marker = new_marker("odd")
        cg.run('/bin/true "$1"', marker).wait(10)
        # Within a second of being added, so it may take a retry of the exec.
        deadline = time.monotonic() + 5
        while True:
            ev = d.wait_for(_exec_of(marker))
            if ev["process"]["pod"].get("name") or time.monotonic() > deadline:
                break
            marker = new_marker("odd")
            cg.run('/bin/true "$1"', marker).wait(10)
        assert ev["process"]["pod"]["workload"] == "foo"
        assert ev["process"]["pod"]["workload_kind"] == "FooController"
    finally:
        cg.remove()
    d.sync()
    log = "".join(d.stderr)
    assert log.count("malformed pod object ignored") == 1, log
    assert "metadata.labels: expected an object, got list" in log
    assert log.count("unknown pod owner kind") == 1, log
    assert d.proc.poll() is None


def test_a_kubeconfig_pointing_nowhere_degrades_to_cgroup_ids(tmp_path: Path) -> None:
    cfg = tmp_path / "kubeconfig"
    kubeconfig(cfg, f"http://127.0.0.1:{closed_port()}")
    d = Daemon("--kubeconfig", str(cfg), "--node-name", "nowhere")
    cg = KubeletCgroup("systemd")
    try:
        d.wait_log("pod watch failed")
        time.sleep(2.0)  # several retries with backoff
        marker = new_marker("nowhere")
        cg.run('/bin/true "$1"', marker).wait(10)
        ev = d.wait_for(_exec_of(marker))
        assert ev["process"]["container"] == {"id": cg.container_id, "runtime": "containerd"}
        assert ev["process"]["pod"] == {"uid": cg.pod_uid, "labels": {}}
        assert "".join(d.stderr).count("pod watch failed") == 1
    finally:
        cg.remove()
        assert d.stop() == 0


def test_a_missing_kubeconfig_file_is_refused_at_start(tmp_path: Path) -> None:
    r = subprocess.run(
        tracer_cmd("run", "--kubeconfig", str(tmp_path / "nope")),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert f"--kubeconfig {tmp_path / 'nope'} is not a file" in r.stderr


def test_an_unusable_kubeconfig_is_logged_and_events_flow(tmp_path: Path) -> None:
    cfg = tmp_path / "kubeconfig"
    cfg.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\n")  # no context
    d = Daemon("--kubeconfig", str(cfg))
    try:
        line = d.wait_log("Kubernetes config unusable")
        assert "level='warning'" in line
        marker = new_marker("unusable")
        subprocess.run(["/bin/true", marker], check=True)
        d.wait_for(_exec_of(marker))
    finally:
        assert d.stop() == 0


def test_api_pod_filters_select_enriched_events_and_both_encodings_agree(
    cluster: _Cluster,
) -> None:
    d = cluster.daemon
    with grpc.insecure_channel(d.address) as channel:
        sub = Subscription(
            channel,
            pb.GetEventsRequest(
                allow=[
                    pb.Filter(
                        event_types=["process_exec"],
                        namespace=["shop"],
                        labels=["app=web,tier in (front)"],
                        container_id=[cluster.app_cid[:12]],
                    )
                ]
            ),
        )
        wait_subscribers(channel, 1)
        host, inside = new_marker("host"), new_marker("inside")
        subprocess.run(["/bin/true", host], check=True)
        cluster.web.run('/bin/true "$1"', inside).wait(10)
        got = sub.wait_for(_exec_of(inside))
        d.sync()
        line = d.wait_for(_exec_of(inside))
        assert got == line  # the gRPC message's JSON mapping is the JSON line
        assert got["process"]["pod"]["name"] == "web-5d8f9c7b6-x1"
        time.sleep(0.3)
        assert not [e for e in sub.snapshot() if host in e["process"]["args"]]
        sub.cancel()
