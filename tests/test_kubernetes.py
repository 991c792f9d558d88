"""deploy/kubernetes: rendered by kustomize, every object checked against the
Kubernetes schemas (kubernetes-validate, offline), and what the DaemonSet
relies on checked against the daemon itself."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from conftest import REPO
from test_metrics import metrics_daemon, scrape

from policy import compile_policies, parse_documents
from tracer import cli, config

KUSTOMIZE_DIR = REPO / "deploy" / "kubernetes"
# appArmorProfile in the security context came with 1.30.
K8S_VERSIONS = ("1.30", "1.33")
Obj = dict[str, Any]


@pytest.fixture(scope="module")
def rendered() -> list[Obj]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    out = subprocess.run(
        [kubectl, "kustomize", str(KUSTOMIZE_DIR)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(objs: list[Obj], kind: str) -> Obj:
    (obj,) = [o for o in objs if o["kind"] == kind]
    return obj


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_validates_against_the_schemas(rendered: list[Obj], version: str) -> None:
    kinds = sorted(o["kind"] for o in rendered)
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "DaemonSet",
        "Namespace",
        "Service",
        "ServiceAccount",
    ]
    for obj in rendered:
        # strict: an unknown or misspelt field is an error, not ignored.
        kubernetes_validate.validate(obj, version, strict=True)


def test_rbac_reads_pods_and_nothing_else(rendered: list[Obj]) -> None:
    role = by_kind(rendered, "ClusterRole")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
    ]
    binding = by_kind(rendered, "ClusterRoleBinding")
    ds = by_kind(rendered, "DaemonSet")
    sa = by_kind(rendered, "ServiceAccount")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "tracer"}
    ]
    assert ds["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]


def _container(rendered: list[Obj]) -> Obj:
    (c,) = by_kind(rendered, "DaemonSet")["spec"]["template"]["spec"]["containers"]
    return c


def test_daemonset_runs_the_daemon_as_the_cli_understands_it(rendered: list[Obj]) -> None:
    pod = by_kind(rendered, "DaemonSet")["spec"]["template"]["spec"]
    c = _container(rendered)
    args = cli._parser().parse_args(c["args"])  # exits on an unknown flag
    assert args.command == "run"
    cfg = config.from_args(args)
    assert cfg.metrics_listen is not None
    _, port = cfg.metrics_listen.rsplit(":", 1)
    assert c["ports"] == [{"name": "metrics", "containerPort": int(port), "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert pod["hostPID"] is True
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in c[
        "env"
    ]
    sc = c["securityContext"]
    assert sc["privileged"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert {"BPF", "PERFMON"} <= set(sc["capabilities"]["add"])
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    for path in ("/sys/kernel/btf", "/sys/fs/bpf", "/sys/fs/cgroup", "/sys/kernel/tracing"):
        assert path in mounts, path
    (policy_dir,) = cfg.policy_paths
    assert mounts[str(policy_dir)]["readOnly"] is True
    assert cfg.event_log is not None
    assert str(cfg.event_log.directory).startswith("/var/lib/tracer/")
    limits = c["resources"]["limits"]
    assert limits["memory"].endswith("Mi") and int(limits["memory"][:-2]) >= 160
    svc = by_kind(rendered, "Service")
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"


def test_the_configmap_is_the_policy_library_and_compiles(rendered: list[Obj]) -> None:
    cm = by_kind(rendered, "ConfigMap")
    library = {p.name: p.read_text() for p in (REPO / "policy" / "library").glob("*.yaml")}
    assert cm["data"] == library
    compile_policies(parse_documents(sorted(cm["data"].items())), lsm_active=False)


def _configmap_volume(root: Path, generation: str, files: dict[str, str]) -> None:
    """What kubelet's atomic writer does: the files in a fresh hidden
    directory, `..data` pointing at it (swapped with a rename), and each
    visible name a symlink through `..data`."""
    gen = root / f"..{generation}"
    gen.mkdir(mode=0o755)
    for name, text in files.items():
        (gen / name).write_text(text)
        os.chmod(gen / name, 0o444)
    tmp = root / "..data_tmp"
    tmp.symlink_to(gen.name)
    tmp.rename(root / "..data")
    for name in files:
        link = root / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")


def _rule(name: str, prefix: str) -> str:
    return (
        f"policies:\n  - name: {name}\n    rules:\n      - event: file_open\n"
        f"        match: {{path: {{prefix: [{prefix}]}}}}\n"
    )


def _policies_in_force(base: str) -> set[str]:
    return {dict(ls)["policy"] for (n, ls) in scrape(base) if n == "tracer_policy_matches_total"}


@pytest.mark.kernel
def test_a_configmap_update_is_applied_without_a_restart() -> None:
    with tempfile.TemporaryDirectory(prefix="tracer-cm-") as tmp:
        root = Path(tmp) / "policies"
        root.mkdir(mode=0o755)
        _configmap_volume(root, "gen1", {"p.yaml": _rule("cm-one", f"{tmp}/x/")})
        d, base = metrics_daemon("--policy", str(root))
        try:
            assert _policies_in_force(base) == {"cm-one"}
            _configmap_volume(root, "gen2", {"p.yaml": _rule("cm-two", f"{tmp}/x/")})
            deadline = time.monotonic() + 10
            while (got := _policies_in_force(base)) != {"cm-two"}:
                assert time.monotonic() < deadline, got
                time.sleep(0.2)
            d.wait_log("policies applied", timeout=1)
        finally:
            assert d.stop() == 0
