"""Workload selectors: namespace, pod_labels, container and in_container.

Parsed with file:line errors, decided the same way by the dry run, and in
the kernel from the cgroup id through the map the daemon keeps from its pod
watch (tests/fake_apiserver.py, a real local API server) and its cgroups
(tests/kubelet_cgroups.py, real kubelet-shaped cgroups with real processes).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, Event, new_marker, tracer_cmd
from fake_apiserver import FakeApiServer, pod
from kubelet_cgroups import KubeletCgroup, new_container_id, new_uid

from policy import PolicyError, PolicySet, parse_text
from policy.evaluate import Evaluator
from policy.workload import HOST, WorkloadFacts, facts_of, matches
from tracer import control
from tracer.core.events import Container, Pod

TRUE = os.path.realpath(shutil.which("true") or "/bin/true")


def _rule(match: str, event: str = "file_open") -> str:
    return f"policies:\n  - name: t\n    rules:\n      - event: {event}\n        match: {match}\n"


# -- syntax ----------------------------------------------------------------------


def test_every_event_kind_takes_the_workload_selectors() -> None:
    for event in ("exec", "file_open", "connect"):
        (p,) = parse_text(
            _rule(
                '{namespace: [prod, web-1], not_container: [sidecar], '
                'pod_labels: ["app=web,tier in (front,edge)", "!legacy"], '
                "in_container: true}",
                event,
            ),
            "t.yaml",
        )
        s = p.rules[0].selectors
        assert s.namespace == ("prod", "web-1")
        assert s.not_container == ("sidecar",)
        assert len(s.pod_labels) == 2 and s.in_container is True
    (p,) = parse_text(_rule("{in_container: false, container: app}"), "t.yaml")
    assert p.rules[0].selectors.in_container is False
    assert p.rules[0].selectors.container == ("app",)


@pytest.mark.parametrize(
    ("match", "problem"),
    [
        ("{pod_label: [app=web]}", "unknown key 'pod_label'"),
        ('{pod_labels: ["app in (web"]}', "bad label selector 'app in (web'"),
        ('{pod_labels: ["=web"]}', "bad label selector '=web'"),
        ('{pod_labels: [""]}', "pod_labels is empty"),
        ("{namespace: [Prod]}", "namespace 'Prod': a Kubernetes name"),
        ("{namespace: [-x]}", "namespace '-x'"),
        ("{not_container: [app_1]}", "not_container 'app_1'"),
        ("{namespace: 7}", "namespace must be a string"),
        ("{in_container: maybe}", "in_container must be true or false"),
        ("{in_container: [true]}", "in_container must be true or false"),
        ("{namespace: []}", "namespace is empty"),
        ("{namespace: [" + ", ".join(f"n{i}" for i in range(257)) + "]}", "at most 256"),
    ],
)
def test_bad_workload_selectors_are_refused_with_file_and_line(match: str, problem: str) -> None:
    with pytest.raises(PolicyError) as e:
        parse_text(_rule(match), "w.yaml")
    assert str(e.value).startswith("w.yaml:5: "), e.value
    assert problem in str(e.value)


# -- semantics (one function for the kernel's map and the dry run) --------------

_WEB = facts_of(
    Container("c" * 64, "containerd", name="app"),
    Pod("u1", namespace="prod", name="web-1", labels={"app": "web", "tier": "front"}),
)
_NO_METADATA = facts_of(Container("c" * 64, "containerd"), Pod("u1"))


@pytest.mark.parametrize(
    ("match", "facts", "want"),
    [
        ("{namespace: [prod]}", _WEB, True),
        ("{namespace: [dev]}", _WEB, False),
        ("{namespace: [prod]}", HOST, False),  # a process in no pod: no pod selector
        ("{not_namespace: [dev]}", HOST, False),  # nor its negation
        ("{not_namespace: [dev]}", _WEB, True),
        ("{not_namespace: [prod]}", _WEB, False),
        ('{pod_labels: ["app=web,tier!=back"]}', _WEB, True),
        ('{pod_labels: ["app=db", "tier in (front)"]}', _WEB, True),  # any of the list
        ('{pod_labels: ["app=db"]}', _WEB, False),
        ('{not_pod_labels: ["app=web"]}', _WEB, False),
        ('{pod_labels: ["!app"]}', _NO_METADATA, False),  # labels unknown, not empty
        ("{namespace: [prod]}", _NO_METADATA, False),
        ("{container: [app]}", _WEB, True),
        ("{container: [app]}", _NO_METADATA, False),
        ("{not_container: [app]}", _WEB, False),
        ("{in_container: true}", _NO_METADATA, True),
        ("{in_container: true}", HOST, False),
        ("{in_container: false}", HOST, True),
        ("{in_container: false}", _WEB, False),
        ("{in_container: true, namespace: [prod], container: [app]}", _WEB, True),
    ],
)
def test_workload_semantics(match: str, facts: WorkloadFacts, want: bool) -> None:
    (p,) = parse_text(_rule(match), "t.yaml")
    assert matches(p.rules[0].selectors, facts) is want


def _event(process: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "file_open",
        "process": {"binary": "/usr/bin/cat", "uid": 0, **process},
        "file_open": {"path": "/etc/x", "flags": ["O_RDONLY"]},
    }


@pytest.mark.parametrize(
    ("process", "want"),
    [
        (
            {
                "container": {"id": "c" * 64, "runtime": "containerd", "name": "app"},
                "pod": {"uid": "u", "namespace": "prod", "labels": {"app": "web"}},
            },
            "in-prod",
        ),
        ({"container": {"id": "c" * 64, "runtime": "docker"}}, "inside"),
        ({"pod": {"uid": "u", "labels": {}}}, "inside"),  # no metadata: not in prod
        ({}, "host"),
    ],
)
def test_the_dry_run_reads_the_events_own_container_and_pod(
    process: dict[str, Any], want: str
) -> None:
    policies = PolicySet(
        parse_text(
            textwrap.dedent("""
            policies:
              - name: in-prod
                rules:
                  - {event: file_open, match: {namespace: [prod], pod_labels: ["app=web"],
                     container: [app]}}
              - name: inside
                rules:
                  - {event: file_open, match: {in_container: true}}
              - name: host
                rules:
                  - {event: file_open, match: {in_container: false}}
            """),
            "t.yaml",
        )
    )
    v = Evaluator(policies).verdict(_event(process))
    assert v is not None and v.policy.name == want


# -- in the kernel ------------------------------------------------------------------

NS = "workload-prod"


class _Cluster:
    def __init__(self, tmp: Path, mode: str) -> None:
        self.node = f"wn-{uuid.uuid4().hex[:8]}"
        self.server = FakeApiServer()
        self.dir = tmp / "files"
        self.dir.mkdir()
        for name in ("ns", "labels", "ctr", "where", "notns"):
            (self.dir / name).write_text("x\n")
        self.victim = tmp / "victim"
        shutil.copy(TRUE, self.victim)
        self.web_uid, self.web_cid = new_uid(), new_container_id()
        self.db_uid, self.db_cid = new_uid(), new_container_id()
        self.server.put(self.web_pod({"app": "web", "tier": "front"}))
        self.server.put(self.db_pod({"app": "db"}))
        self.web = KubeletCgroup("systemd", pod_uid=self.web_uid, container_id=self.web_cid)
        self.db = KubeletCgroup("cgroupfs", pod_uid=self.db_uid, container_id=self.db_cid)
        self.kubeconfig = self.server.kubeconfig(tmp / "kubeconfig")
        self.policy = tmp / "workload.yaml"
        d = self.dir
        self.policy.write_text(
            textwrap.dedent(f"""
            policies:
              - name: t-ns
                rules:
                  - {{event: file_open, match: {{path: ["{d}/ns"], namespace: [{NS}]}}}}
              - name: t-labels
                rules:
                  - {{event: file_open, match: {{path: ["{d}/labels"],
                     pod_labels: ["app=web,tier in (front)"]}}}}
              - name: t-container
                rules:
                  - {{event: file_open, match: {{path: ["{d}/ctr"], container: [app]}}}}
              - name: t-host
                rules:
                  - {{event: file_open, match: {{path: ["{d}/where"], in_container: false}}}}
              - name: t-inside
                rules:
                  - {{event: file_open, match: {{path: ["{d}/where"], in_container: true}}}}
              - name: t-not-ns
                rules:
                  - {{event: file_open, match: {{path: ["{d}/notns"], not_namespace: [{NS}]}}}}
              - name: t-kill
                rules:
                  - {{event: exec, match: {{binary: ["{self.victim}"], namespace: [{NS}]}},
                     action: sigkill}}
            """)
        )
        self.ctl = tmp / "control.sock"
        try:
            self.daemon = Daemon(
                "--capture-mode", mode,
                "--kubeconfig", str(self.kubeconfig), "--node-name", self.node,
                "--policy", str(self.policy), "--control-socket", str(self.ctl),
            )
        except BaseException:
            self._remove()
            raise

    def settle(self, d: Daemon, timeout: float = 10.0) -> None:
        """Until d's events name the web pod's namespace; then one more
        poll of the ring buffer, in which the map follows the pods."""
        deadline = time.monotonic() + timeout
        while True:
            args = ["/bin/true", _in(self.web, '/bin/true "$1"')]
            ev = d.wait_for(
                lambda e, a=args: e["type"] == "process_exec" and e["process"]["args"] == a
            )
            if ev["process"].get("pod", {}).get("namespace") == NS:
                d.sync()
                return
            assert time.monotonic() < deadline, "the daemon never listed the pods"
            time.sleep(0.1)

    def web_pod(self, labels: dict[str, str]) -> dict[str, Any]:
        return pod(self.web_uid, "web-1", self.node, namespace=NS, labels=labels,
                   containers=[("app", "nginx:1", self.web_cid)])

    def db_pod(self, labels: dict[str, str]) -> dict[str, Any]:
        return pod(self.db_uid, "db-1", self.node, namespace="workload-dev", labels=labels,
                   containers=[("db", "postgres:17", self.db_cid)])

    def _remove(self) -> None:
        self.web.remove()
        self.db.remove()
        self.server.close()

    def close(self) -> None:
        rc = self.daemon.stop()
        self._remove()
        assert rc == 0, "".join(self.daemon.stderr)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, mode: str) -> Iterator[_Cluster]:
    c = _Cluster(tmp_path_factory.mktemp("workload"), mode)
    try:
        c.settle(c.daemon)
        yield c
    finally:
        c.close()


_OPEN_ALL = 'for f in ns labels ctr where notns; do cat "$1/$f" >/dev/null; done'


def _selected(d: Daemon, marker: str) -> set[tuple[str, str]]:
    """(file name, policy) of the opens marker's processes made that a rule selected."""
    d.sync()

    def ours(e: Event) -> bool:
        chain = [e["process"], e.get("parent") or {}]
        return e["type"] == "file_open" and any(marker in p.get("args", []) for p in chain)

    return {(Path(e["file_open"]["path"]).name, e["policy"]["name"]) for e in d.matching(ours)}


def _in(cg: KubeletCgroup, script: str, *args: str) -> str:
    marker = new_marker("wl")
    assert cg.run(script, *args, marker).wait(10) == 0
    return marker


def _on_host(script: str, *args: str) -> str:
    marker = new_marker("wl")
    subprocess.run(["bash", "-c", script, "bash", *args, marker], check=True)
    return marker


@pytest.mark.kernel
def test_rules_select_by_namespace_labels_container_and_place(cluster: _Cluster) -> None:
    d, files = cluster.daemon, str(cluster.dir)
    web = _in(cluster.web, _OPEN_ALL, files)
    db = _in(cluster.db, _OPEN_ALL, files)
    host = _on_host(_OPEN_ALL, files)
    assert _selected(d, web) == {
        ("ns", "t-ns"), ("labels", "t-labels"), ("ctr", "t-container"), ("where", "t-inside"),
    }
    assert _selected(d, db) == {("where", "t-inside"), ("notns", "t-not-ns")}
    # The host is in no pod: not even not_namespace selects it.
    assert _selected(d, host) == {("where", "t-host")}


@pytest.mark.kernel
def test_sigkill_acts_only_in_the_matching_namespace(cluster: _Cluster) -> None:
    victim = str(cluster.victim)
    killed = cluster.web.run('"$1"; exit $?', victim).wait(10)
    assert killed in (-signal.SIGKILL, 128 + signal.SIGKILL)
    assert cluster.db.run('"$1"; exit $?', victim).wait(10) == 0
    assert subprocess.run([victim]).returncode == 0
    ev = cluster.daemon.wait_for(
        lambda e: e["type"] == "process_exec" and e["process"]["binary"] == victim
        and e.get("policy", {}).get("name") == "t-kill"
    )
    assert ev["process"]["pod"]["namespace"] == NS
    assert ev["policy"]["action"] == "sigkill"


def _labels_selected(cluster: _Cluster, want: bool, timeout: float = 10.0) -> None:
    """Open `labels` in the db pod until the rule's verdict is `want`: the map
    follows the pod watch, a poll of the ring buffer after the change."""
    deadline = time.monotonic() + timeout
    while True:
        m = _in(cluster.db, 'cat "$1/labels" >/dev/null', str(cluster.dir))
        if (("labels", "t-labels") in _selected(cluster.daemon, m)) is want:
            return
        assert time.monotonic() < deadline, f"the labels rule never became {want}"
        time.sleep(0.1)


@pytest.mark.kernel
def test_a_relabelled_pod_is_decided_again(cluster: _Cluster) -> None:
    _labels_selected(cluster, False)
    cluster.server.put(cluster.db_pod({"app": "web", "tier": "front"}))
    _labels_selected(cluster, True)
    cluster.server.put(cluster.db_pod({"app": "db"}))
    _labels_selected(cluster, False)


@pytest.mark.kernel
def test_a_cgroup_the_daemon_has_not_read_about_matches_no_workload_rule(
    cluster: _Cluster,
) -> None:
    """The daemon is stopped (SIGSTOP) while a container cgroup is made and
    its process opens a file: the kernel has no entry for the cgroup, so
    neither in_container rule selects the open, while a known container's
    open at the same moment is selected. Once the daemon has read the
    cgroup's mkdir record, the same open is selected."""
    d, files = cluster.daemon, str(cluster.dir)
    script = 'cat "$1/where" >/dev/null'
    d.proc.send_signal(signal.SIGSTOP)
    fresh = KubeletCgroup("systemd")
    try:
        try:
            early = _in(fresh, script, files)
            known = _in(cluster.web, script, files)
        finally:
            d.proc.send_signal(signal.SIGCONT)
        assert _selected(d, known) == {("where", "t-inside")}
        assert _selected(d, early) == set()
        assert _selected(d, _in(fresh, script, files)) == {("where", "t-inside")}
    finally:
        fresh.remove()


@pytest.mark.kernel
def test_the_workload_map_counts_cgroups_and_refusals(cluster: _Cluster) -> None:
    stats = control.request(cluster.ctl, {"op": "stats"})["workload_map"]
    assert stats["capacity"] == 16384
    assert stats["cgroups"] >= 3 and stats["full"] == 0  # the host's, web's, db's


@pytest.mark.kernel
def test_a_full_map_is_counted_and_its_overflow_matches_nothing(tmp_path: Path) -> None:
    """One entry: the walk fills it with the root cgroup; every other cgroup
    is refused, counted and logged, and its processes match no workload rule."""
    ctl = tmp_path / "control.sock"
    pol = tmp_path / "p.yaml"
    target = tmp_path / "where"
    target.write_text("x\n")
    pol.write_text(_rule(f'{{path: ["{target}"], in_container: true}}'))
    d = Daemon("--workload-cgroups", "1", "--policy", str(pol), "--control-socket", str(ctl))
    cg = KubeletCgroup("systemd")
    try:
        marker = _in(cg, 'cat "$1" >/dev/null', str(target))
        assert _selected(d, marker) == set()
        d.wait_log("the workload map is full")
        stats = control.request(ctl, {"op": "stats"})["workload_map"]
        assert stats["capacity"] == 1 and stats["cgroups"] == 1 and stats["full"] >= 2
    finally:
        cg.remove()
        assert d.stop() == 0, "".join(d.stderr)


@pytest.mark.kernel
def test_the_dry_run_agrees_with_the_kernel_on_workload_rules(
    cluster: _Cluster, tmp_path: Path
) -> None:
    """A recording daemon posts every open under a directory; another runs the
    workload rules live. Replayed on the recording, the rules select exactly
    what the live kernel selected, from the web pod, the db pod and the host."""
    watched = tmp_path / "w"
    watched.mkdir()
    for name in ("a", "b", "c"):
        (watched / name).write_text("x\n")
    record = tmp_path / "record.yaml"
    record.write_text(_rule(f'{{path: {{prefix: ["{watched}/"]}}}}'))
    under_test = tmp_path / "test.yaml"
    under_test.write_text(
        textwrap.dedent(f"""
        policies:
          - name: t-replay
            rules:
              - {{event: file_open, match: {{path: ["{watched}/a"], namespace: [{NS}],
                 container: [app]}}}}
              - {{event: file_open, match: {{path: ["{watched}/b"],
                 pod_labels: ["app in (db)"]}}}}
              - {{event: file_open, match: {{path: {{prefix: ["{watched}/"]}},
                 in_container: false}}}}
              - {{event: file_open, match: {{path: ["{watched}/c"], not_namespace: [{NS}]}}}}
        """)
    )
    log = tmp_path / "log"
    kube = ("--kubeconfig", str(cluster.kubeconfig), "--node-name", cluster.node)
    recorder = Daemon(*kube, "--policy", str(record), "--event-log-dir", str(log))
    live = Daemon(*kube, "--policy", str(under_test))
    script = 'for f in a b c; do cat "$1/$f" >/dev/null; done'
    try:
        for d in (recorder, live):
            cluster.settle(d)
        markers = [
            _in(cluster.web, script, str(watched)),
            _in(cluster.db, script, str(watched)),
            _on_host(script, str(watched)),
        ]
        for d in (recorder, live):
            d.sync()
    finally:
        assert live.stop() == 0, "".join(live.stderr)
        assert recorder.stop() == 0, "".join(recorder.stderr)

    def key(e: Event) -> tuple[str, int] | None:
        chain = [e["process"], e.get("parent") or {}]
        for i, m in enumerate(markers):
            if any(m in p.get("args", []) for p in chain):
                return Path(e["file_open"]["path"]).name, i
        return None

    selected = {
        k: e["policy"]["rule"]
        for e in live.matching(lambda e: e["type"] == "file_open")
        if (k := key(e)) is not None
    }
    assert selected == {
        ("a", 0): 0, ("b", 1): 1, ("c", 1): 3, ("a", 2): 2, ("b", 2): 2, ("c", 2): 2,
    }
    r = subprocess.run(
        tracer_cmd("policy", "test", str(under_test), "--from", str(log), "--json",
                   "--examples", "1000"),
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    replayed = {
        k: rule["rule"]
        for rule in json.loads(r.stdout)["rules"]
        for e in rule["examples"]
        if (k := key(e)) is not None
    }
    assert replayed == selected
