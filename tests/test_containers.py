"""Container ids, runtimes and pod uids from cgroup v2 paths: parsing, and the real daemon.

The daemon tests build kubelet-shaped cgroup hierarchies under the real
cgroup2 mount (/sys/fs/cgroup/unified on our hybrid hosts), move a
process in, and check its exec, file_open and connect events.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Daemon, Event, new_marker
from factories import one_rule
from kubelet_cgroups import SHAPES, KubeletCgroup

from enrich import CgroupInfo, CgroupResolver, cgroup2_mount, parse_path

pytestmark = pytest.mark.kernel

CID = "3f2a" + "0123456789abcdef" * 3 + "0123456789ab"
assert len(CID) == 64
UID = "6b2c0e7e-4a8f-4d59-9f0e-2b1f6e3c9a10"
UID_ = UID.replace("-", "_")
CID2 = "9e" * 32
UID2 = "0d1c2b3a-4f5e-4d6c-8b7a-695847362514"
UID2_ = UID2.replace("-", "_")
USER = "/user.slice/user-1000.slice/user@1000.service"

PARSE_CASES = {
    # systemd driver (containerd, CRI-O), every QoS class
    f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
    f"cri-containerd-{CID}.scope": CgroupInfo(CID, "containerd", UID),
    f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
    f"crio-{CID}.scope": CgroupInfo(CID, "cri-o", UID),
    f"/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope": CgroupInfo(
        CID, "containerd", UID
    ),
    # CRI-O's monitor process is not the container; the pod is still the pod
    f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
    f"crio-conmon-{CID}.scope": CgroupInfo(None, None, UID),
    # the pod's own slice (its pause process under some runtimes)
    f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice": CgroupInfo(
        None, None, UID
    ),
    # a cgroup the container made inside its own
    f"/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope/init.scope": (
        CgroupInfo(CID, "containerd", UID)
    ),
    # kind-style prefix
    f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
    f"kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope": CgroupInfo(
        CID, "containerd", UID
    ),
    # cgroupfs driver
    f"/kubepods/burstable/pod{UID}/{CID}": CgroupInfo(CID, "containerd", UID),
    f"/kubepods/pod{UID}/{CID}": CgroupInfo(CID, "containerd", UID),
    f"/kubepods/besteffort/pod{UID}/crio-{CID}": CgroupInfo(CID, "cri-o", UID),
    # Docker and Podman, no Kubernetes
    f"/system.slice/docker-{CID}.scope": CgroupInfo(CID, "docker", None),
    f"/docker/{CID}": CgroupInfo(CID, "docker", None),
    f"/machine.slice/libpod-{CID}.scope": CgroupInfo(CID, "podman", None),
    f"/machine.slice/libpod-{CID}.scope/container": CgroupInfo(CID, "podman", None),
    f"/machine.slice/libpod-conmon-{CID}.scope": None,
    # the host
    "/": None,
    "/user.slice/user-0.slice/session-3.scope": None,
    "/system.slice/containerd.service": None,
    # look-alikes that are not containers or pods
    f"/system.slice/{CID}": None,  # a bare id outside a pod or /docker
    f"/pod{UID}/{CID}": None,  # pod<uid> outside kubepods
    f"/docker/{CID[:63]}": None,  # id too short
    f"/system.slice/docker-{CID.upper()}.scope": None,  # ids are lowercase hex
    # Podman pods, and Podman's cgroupfs manager
    f"/machine.slice/machine-libpod_pod_{CID2}.slice/libpod-{CID}.scope": CgroupInfo(
        CID, "podman", None
    ),
    f"/libpod_parent/libpod-{CID}": CgroupInfo(CID, "podman", None),
    # Spoofs: kubelet's and the runtimes' names where only they put them,
    # made somewhere a user or a container can write.
    f"{USER}/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
    f"cri-containerd-{CID}.scope": None,  # a user's delegated subtree
    f"{USER}/app.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope": None,
    f"{USER}/kubepods/burstable/pod{UID}/{CID}": None,
    f"{USER}/docker-{CID}.scope": None,
    f"{USER}/user.slice/libpod-{CID}.scope": None,  # rootless Podman: the user's own
    f"/tracer-test-1/kubepods/pod{UID}/{CID}": None,  # not at the root
    f"/system.slice/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope": None,
    f"/user.slice/user-1000-kubepods.slice/user-1000-kubepods-pod{UID_}.slice": None,
    # a container naming cgroups inside its own after another pod or container
    f"/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope/kubepods.slice/"
    f"kubepods-pod{UID2_}.slice/cri-containerd-{CID2}.scope": CgroupInfo(CID, "containerd", UID),
    f"/kubepods/pod{UID}/{CID}/pod{UID2}/{CID2}": CgroupInfo(CID, "containerd", UID),
    f"/system.slice/docker-{CID}.scope/docker-{CID2}.scope": CgroupInfo(CID, "docker", None),
    f"/system.slice/docker-{CID}.scope/kubepods/pod{UID2}/{CID2}": CgroupInfo(
        CID, "docker", None
    ),
    # a pod's slice under another QoS class's than its name says
    f"/kubepods.slice/kubepods-besteffort.slice/kubepods-burstable-pod{UID_}.slice": None,
}


@pytest.mark.parametrize("path", list(PARSE_CASES))
def test_parse_path(path: str) -> None:
    assert parse_path(path) == PARSE_CASES[path]


MOUNTINFO_CASES = {
    "hybrid": (
        "25 1 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n"
        "26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,relatime shared:4 - cgroup2 cgroup2 rw\n"
        "27 25 0:25 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n",
        "/sys/fs/cgroup/unified",
    ),
    "unified": ("30 1 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n", "/sys/fs/cgroup"),
    "a container's bind of a sub-cgroup is not the root": (
        "30 1 0:26 /kubepods.slice /host/cg rw - cgroup2 cgroup2 rw\n"
        "31 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
        "/sys/fs/cgroup",
    ),
    "escaped mount point": (
        "30 1 0:26 / /mnt/c\\040g rw shared:1 master:2 - cgroup2 none rw\n",
        "/mnt/c g",
    ),
    "v1 only": ("27 25 0:25 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n", None),
}


@pytest.mark.parametrize("case", list(MOUNTINFO_CASES))
def test_cgroup2_mount(case: str, tmp_path: Path) -> None:
    text, want = MOUNTINFO_CASES[case]
    f = tmp_path / "mountinfo"
    f.write_text(text)
    assert cgroup2_mount(str(f)) == want


def test_this_hosts_cgroup2_mount_is_found() -> None:
    mount = cgroup2_mount()
    assert mount is not None
    assert os.path.exists(os.path.join(mount, "cgroup.procs"))


@pytest.mark.parametrize("shape", SHAPES)
def test_resolver_turns_a_real_cgroup_id_into_its_container(shape: str) -> None:
    cg = KubeletCgroup(shape)
    r = CgroupResolver()
    try:
        assert r.mount is not None
        assert r.path(cg.cgroup_id) == "/" + str(cg.leaf.relative_to(r.mount))
        want = CgroupInfo(cg.container_id, "containerd", cg.pod_uid)
        assert r.info(cg.cgroup_id) == want
        assert r.resolved == 1
        assert r.info(cg.cgroup_id) == want  # from the cache
        assert r.resolved == 1
        assert r.info(os.stat(cg.leaf.parent).st_ino) == CgroupInfo(None, None, cg.pod_uid)
        assert r.info(os.stat(r.mount).st_ino) is None  # the root: the host
    finally:
        cg.remove()
    gone = cg.cgroup_id if cg.leaf.exists() else None
    assert gone is None
    r.forget(os.stat(r.mount).st_ino)
    r.close()


def test_an_id_no_cgroup_has_is_none() -> None:
    cg = KubeletCgroup("systemd")
    cid = cg.cgroup_id
    cg.remove()
    r = CgroupResolver()
    assert r.info(cid) is None
    assert r.unresolved == 1
    r.close()


def test_the_cache_is_bounded() -> None:
    r = CgroupResolver(max_entries=4)
    for i in range(10):
        r.info(10**15 + i)  # ids no cgroup has
    assert r.resolved == 10
    r.info(10**15 + 9)  # still cached
    assert r.resolved == 10
    r.info(10**15)  # evicted: looked up again
    assert r.resolved == 11
    r.close()


# -- the real daemon -------------------------------------------------------------


class _Setup:
    def __init__(self, daemon: Daemon, port: int, secret: Path) -> None:
        self.daemon = daemon
        self.port = port
        self.secret = secret


@pytest.fixture(scope="module")
def cdaemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Setup]:
    tmp = tmp_path_factory.mktemp("containers")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    secret = tmp / f"secret-{new_marker()}"
    secret.write_text("x\n")
    pol = tmp / "policies"
    pol.mkdir()
    (pol / "open.yaml").write_text(
        one_rule("t-container-open", "file_open", f"{{path: [{secret}]}}")
    )
    (pol / "connect.yaml").write_text(
        one_rule("t-container-connect", "connect", f'{{daddr: ["127.0.0.1/32"], dport: [{port}]}}')
    )
    d = Daemon("--policy", str(pol))
    yield _Setup(d, port, secret)
    listener.close()
    assert d.stop() == 0, "".join(d.stderr)


def _in(marker: str) -> object:
    def pred(e: Event) -> bool:
        return marker in (e.get("process") or {}).get("args", [])

    return pred


def test_without_a_cluster_pod_metadata_is_off_with_one_info_log(cdaemon: _Setup) -> None:
    line = cdaemon.daemon.wait_log("pod metadata is off")
    assert "level='info'" in line or "info" in line
    assert sum("pod metadata is off" in x for x in cdaemon.daemon.stderr) == 1


@pytest.mark.parametrize("shape", SHAPES)
def test_exec_open_connect_in_a_container_carry_its_identity(cdaemon: _Setup, shape: str) -> None:
    d = cdaemon.daemon
    cg = KubeletCgroup(shape)
    marker = new_marker("ctr")
    try:
        proc = cg.run(
            'cat "$1" >/dev/null; bash -c "echo hi > /dev/tcp/127.0.0.1/$2" "$3"; /bin/true "$3"',
            str(cdaemon.secret),
            str(cdaemon.port),
            marker,
        )
        assert proc.wait(10) == 0
        want_container = {"id": cg.container_id, "runtime": "containerd"}
        want_pod = {"uid": cg.pod_uid, "labels": {}}

        def ours(kind: str) -> object:
            def pred(e: Event) -> bool:
                if e["type"] != kind:
                    return False
                p = e["process"]
                if kind == "file_open":
                    return bool(e["file_open"]["path"] == str(cdaemon.secret)) and (
                        p.get("container", {}).get("id") == cg.container_id
                    )
                # The outer bash exec'd before it was moved in: only what it runs
                # (the connecting bash, /bin/true) is in the container.
                if marker not in p["args"]:
                    return False
                return kind == "connect" or p["args"][0] != "bash"

            return pred

        ex = d.wait_for(ours("process_exec"))  # type: ignore[arg-type]
        op = d.wait_for(ours("file_open"))  # type: ignore[arg-type]
        co = d.wait_for(ours("connect"))  # type: ignore[arg-type]
        for ev in (ex, op, co):
            p = ev["process"]
            assert p["container"] == want_container, ev
            assert p["pod"] == want_pod, ev
            assert p["cgroup_id"] == str(cg.cgroup_id)
        assert co["connect"]["dport"] == cdaemon.port
        # The test runner itself is on the host: no container, no pod.
        host = [a for a in (ex["parent"], *ex["ancestors"]) if a["pid"] == os.getpid()]
        assert host and "container" not in host[0] and "pod" not in host[0]
    finally:
        cg.remove()


def test_host_processes_have_no_container(cdaemon: _Setup) -> None:
    import subprocess

    marker = new_marker("host")
    subprocess.run(["/bin/true", marker], check=True)
    ev = cdaemon.daemon.wait_for(_in(marker))  # type: ignore[arg-type]
    assert "container" not in ev["process"] and "pod" not in ev["process"]


def test_a_container_gone_before_its_records_are_read_is_still_named(cdaemon: _Setup) -> None:
    """The cgroup_mkdir record names the container: the daemon is stopped
    (SIGSTOP) while a container starts, runs, exits and has its cgroup
    removed, so when it reads the exec the kernel no longer knows the id."""
    d = cdaemon.daemon
    marker = new_marker("gone")
    d.proc.send_signal(signal.SIGSTOP)
    try:
        cg = KubeletCgroup("systemd")
        cid = cg.cgroup_id
        try:
            assert cg.run('/bin/true "$1"', marker).wait(10) == 0
        finally:
            cg.remove()
        assert not cg.leaf.exists()
    finally:
        d.proc.send_signal(signal.SIGCONT)
    ev = d.wait_for(
        lambda e: e["type"] == "process_exec" and e["process"]["args"] == ["/bin/true", marker]
    )
    assert ev["process"]["cgroup_id"] == str(cid)
    assert ev["process"]["container"] == {"id": cg.container_id, "runtime": "containerd"}
    assert ev["process"]["pod"] == {"uid": cg.pod_uid, "labels": {}}
