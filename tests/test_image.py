"""The OCI image (deploy/image/build.sh) run as the DaemonSet runs it.

Slow the first time (debootstrap, minutes); afterwards the rootfs is cached
under /var/cache/tracer-image and an image built from the same sources is
reused. Runs when podman, runc and debootstrap are installed (`make test`
installs them) and the image can be built: a cached rootfs, or a Debian
mirror that answers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, new_marker
from test_metrics import scrape, value

BUILD = REPO / "deploy" / "image" / "build.sh"
CONF = REPO / "deploy" / "image" / "containers.conf"
TAG = "localhost/tracer:test"
CACHE = Path(os.environ.get("TRACER_IMAGE_CACHE", "/var/cache/tracer-image"))
MIRROR = "http://deb.debian.org/debian/dists/bookworm/Release"
# The DaemonSet's capabilities (deploy/kubernetes/daemonset.yaml).
CAPS = ["BPF", "PERFMON", "SYS_ADMIN", "SYS_RESOURCE", "SYS_PTRACE", "DAC_READ_SEARCH"]

# The first build runs debootstrap: minutes, past the suite's default timeout.
pytestmark = [pytest.mark.image, pytest.mark.kernel, pytest.mark.timeout(1800)]


def _buildable() -> str | None:
    """Why the image cannot be built here, or None."""
    if os.geteuid() != 0:
        return "building and running the image needs root"
    missing = [t for t in ("podman", "runc", "debootstrap") if shutil.which(t) is None]
    if missing:
        return f"not installed: {', '.join(missing)} (make image-deps)"
    if any(CACHE.glob("rootfs-*/.complete")):
        return None
    try:
        urllib.request.urlopen(MIRROR, timeout=10).close()
    except OSError as exc:
        return f"no cached rootfs and the Debian mirror does not answer: {exc}"
    return None


def _env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONF)}


@pytest.fixture(scope="module")
def image() -> dict[str, Any]:
    why = _buildable()
    if why is not None:
        pytest.skip(why)
    t0 = time.monotonic()
    r = subprocess.run(
        [str(BUILD), TAG], capture_output=True, text=True, timeout=1800, env=_env(), cwd=REPO
    )
    assert r.returncode == 0, r.stderr[-4000:]
    image_id, size, tarball = r.stdout.split()
    return {
        "id": image_id,
        "size": int(size),
        "tarball": Path(tarball),
        "seconds": time.monotonic() - t0,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Container:
    """`podman run` of the image with the DaemonSet's mounts, its JSON lines read live."""

    def __init__(self, privileged: bool, events_dir: Path, port: int) -> None:
        self.name = f"tracer-test-{uuid.uuid4().hex[:8]}"
        security = (
            ["--privileged"]
            if privileged
            else ["--cap-drop=all", *(f"--cap-add={c}" for c in CAPS)]
        )
        mounts = [
            "/sys/kernel/btf:/sys/kernel/btf:ro",
            "/sys/fs/bpf:/sys/fs/bpf",
            "/sys/kernel/tracing:/sys/kernel/tracing",
            "/sys/kernel/security:/sys/kernel/security:ro",
            "/sys/fs/cgroup:/sys/fs/cgroup:ro",
            f"{REPO / 'deploy' / 'kubernetes' / 'policies'}:/etc/tracer/policies:ro",
            f"{events_dir}:/var/lib/tracer",
        ]
        self.proc = subprocess.Popen(
            [
                "podman", "run", "--rm", "-i", "--name", self.name,
                "--pid=host", "--network=host", "--read-only",
                "--tmpfs=/run/tracer:mode=0700", "--tmpfs=/tmp",
                *security,
                *(f"--volume={m}" for m in mounts),
                "--env=NODE_NAME=image-test",
                TAG, "run",
                "--policy=/etc/tracer/policies",
                f"--metrics-listen=127.0.0.1:{port}",
                "--event-log-dir=/var/lib/tracer/events",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_env(),
        )  # fmt: skip
        self.events: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self._cond = threading.Condition()
        for target in (self._out, self._err):
            threading.Thread(target=target, daemon=True).start()

    def _out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.events.append(json.loads(line))
                self._cond.notify_all()

    def _err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.stderr.append(line.decode("utf-8", "replace"))
                self._cond.notify_all()

    def wait_log(self, needle: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.stderr:
                    if needle in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError(f"no {needle!r}:\n" + "".join(self.stderr[-30:]))
                self._cond.wait(min(left, 0.2))

    def wait_exec(self, marker: str, timeout: float = 15) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for ev in self.events:
                    if ev["type"] == "process_exec" and marker in ev["process"]["args"]:
                        return ev
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no exec of {marker}:\n" + "".join(self.stderr[-30:]))
                self._cond.wait(min(left, 0.2))

    def stop(self) -> int:
        subprocess.run(
            ["podman", "stop", "--time", "20", self.name],
            capture_output=True, env=_env(), timeout=60,
        )  # fmt: skip
        try:
            return self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


@pytest.fixture(params=["privileged", "capabilities"])
def container(
    request: pytest.FixtureRequest, image: dict[str, Any], tmp_path: Path
) -> Iterator[Container]:
    events_dir = tmp_path / "var-lib-tracer"
    events_dir.mkdir(mode=0o700)
    port = _free_port()
    c = Container(request.param == "privileged", events_dir, port)
    c.port = port  # type: ignore[attr-defined]
    c.events_dir = events_dir  # type: ignore[attr-defined]
    try:
        c.wait_log("event='ready'", timeout=120)
        yield c
    finally:
        rc = c.stop()
    assert rc == 0, "".join(c.stderr[-30:])


def test_the_image_is_small_and_has_no_compiler(image: dict[str, Any]) -> None:
    print(
        f"image {image['id'][:12]}: {image['size'] / 1e6:.0f} MB, built in {image['seconds']:.0f} s"
    )
    assert image["size"] < 320e6  # 279 MB when measured: python3 and the venv, mostly
    names = subprocess.run(
        ["tar", "-tf", str(image["tarball"])], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert "./opt/tracer/bpf/tracer.bpf.o" in names
    assert not [n for n in names if re.search(r"/(cc|gcc|clang|cc1)(-[0-9.]+)?$", n)]


def test_the_kubernetes_client_imports_in_the_image(image: dict[str, Any]) -> None:
    """The build trims the client's asyncio half: what the pod watch uses must remain."""
    code = "import kubernetes.client, kubernetes.watch, kubernetes.config; import enrich.kube"
    r = subprocess.run(
        ["podman", "run", "--rm", "--network=none", "--entrypoint=/opt/tracer/venv/bin/python",
         TAG, "-c", code],
        capture_output=True, text=True, timeout=120, env=_env(),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr


def test_a_host_process_is_reported_with_its_host_ancestry(container: Container) -> None:
    marker = new_marker("image")
    p = subprocess.Popen(["/bin/true", marker])
    p.wait()
    ev = container.wait_exec(marker)
    assert ev["node"] == "image-test"
    assert ev["process"]["pid"] == p.pid  # the host's pid, not a namespace's
    assert ev["process"]["binary"] == os.path.realpath("/bin/true")
    assert ev["parent"]["pid"] == os.getpid()
    chain = [ev["parent"], *ev["ancestors"]]
    assert chain[-1]["pid"] == 1
    ppids = [int(Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()[1])]
    assert ev["ancestors"][0]["pid"] == ppids[0]  # our own parent, as the host sees it
    base = f"http://127.0.0.1:{container.port}"  # type: ignore[attr-defined]
    s = scrape(base)
    assert value(s, "tracer_events_total", type="process_exec") >= 1
    assert value(s, "tracer_ready") == 1
    with urllib.request.urlopen(base + "/readyz", timeout=10) as r:
        assert r.status == 200
    # The event log landed on the host path, private to root.
    events = container.events_dir / "events"  # type: ignore[attr-defined]
    assert events.is_dir() and events.stat().st_mode & 0o777 == 0o700
