#!/usr/bin/env python3
"""Container/pod enrichment: cost per event on cache hits, and memory of the pod cache.

Targets (issue 5): <= 5 microseconds per event on cache hits; the pod
cache with 500 pods adds < 20 MB.

What runs is the daemon's own code: enrich.Enricher.view() (what every
event's process, parent and ancestors go through) on a real kubelet-shaped
cgroup made under the cgroup2 mount, with a real PodWatcher (the
kubernetes client) that listed 500 pods from tests/fake_apiserver.py,
which serves them over HTTP on 127.0.0.1 from a child process (so that
its own copies are not counted in our memory).

    .venv/bin/python bench/enrich_cost.py [--pods 500] [--events 200000]

Run as root (it makes cgroups).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _common import print_header, require_root
from fake_apiserver import kubeconfig
from kubelet_cgroups import KubeletCgroup
from test_export import mkproc

from enrich import CgroupResolver, Enricher, PodWatcher
from enrich.kube import api_client
from tracer.core.events import Process

NODE = "bench-node"

# The child: a fake API server with N pods of realistic size on NODE
# (6 labels, 2 containers, owned by one of N/10 Deployments' ReplicaSets).
_SERVER = """
import sys, uuid, time
from fake_apiserver import FakeApiServer, owned, pod
n, cid, uid = int(sys.argv[1]), sys.argv[2], sys.argv[3]
s = FakeApiServer()
for d in range(max(1, n // 10)):
    s.add_object(owned("ReplicaSet", f"svc{d}-6d4b8c9f7", "prod", ("Deployment", f"svc{d}")))
for i in range(n):
    d = i % max(1, n // 10)
    u = uid if i == 0 else str(uuid.uuid4())
    cid = cid if i == 0 else uuid.uuid4().hex * 2
    c = [("app", f"registry.example.com/team/svc{d}:1.{i}", cid),
         ("istio-proxy", "docker.io/istio/proxyv2:1.22.3", uuid.uuid4().hex * 2)]
    labels = {"app": f"svc{d}", "tier": "backend", "env": "prod", "team": "payments",
              "version": f"1.{i}", "pod-template-hash": "6d4b8c9f7"}
    s.put(pod(u, f"svc{d}-6d4b8c9f7-{uuid.uuid4().hex[:5]}", sys.argv[4], namespace="prod",
              labels=labels, owner=("ReplicaSet", f"svc{d}-6d4b8c9f7"), containers=c))
print(s.port, flush=True)
sys.stdin.read()
"""


def _server(pods: int, cg: KubeletCgroup) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(pods), cg.container_id, cg.pod_uid, NODE],
        cwd=Path(__file__).resolve().parent.parent / "tests",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _per_call_ns(fn: object, args: tuple[object, ...], n: int, rounds: int = 5) -> list[float]:
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn(*args)  # type: ignore[operator]
        out.append((time.perf_counter_ns() - t0) / n)
    return out


def _line(label: str, ns: list[float]) -> None:
    print(
        f"  {label:<58} median {statistics.median(ns) / 1000:6.3f} us  "
        f"min {min(ns) / 1000:6.3f}  max {max(ns) / 1000:6.3f}  (per event, {len(ns)} rounds)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pods", type=int, default=500)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--ancestors", type=int, default=6, help="ancestors beyond the parent")
    args = ap.parse_args()
    require_root()
    print_header("enrichment cost")

    cg = KubeletCgroup("systemd")
    servers = [_server(0, cg), _server(args.pods, cg)]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfgs = [
                kubeconfig(Path(tmp) / f"k{i}", f"http://127.0.0.1:{port}")
                for i, (_, port) in enumerate(servers)
            ]
            gc.collect()
            rss0 = _rss_kb()
            # One-time cost of the client: imports, and the schemas it builds
            # on the first call of each API method. Measured on an empty node.
            warm = PodWatcher(api_client(cfgs[0]), NODE)
            warm.start()
            assert warm.ready.wait(60), "pods not listed"
            warm.stop()
            gc.collect()
            rss1 = _rss_kb()
            # The pod cache: a second watcher, on the node with the pods.
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            watcher = PodWatcher(api_client(cfgs[1]), NODE)
            watcher.start()
            assert watcher.ready.wait(120), "pods not listed"
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - base
            tracemalloc.stop()
            rss2 = _rss_kb()
        print(
            f"kubernetes client, once per daemon (import + first list/watch, no pods): "
            f"RSS +{(rss1 - rss0) / 1024:.1f} MB"
        )
        print(
            f"pod cache: {len(watcher.pods)} pods (6 labels and 2 containers each, "
            f"{max(1, args.pods // 10)} ReplicaSets)"
        )
        print(
            f"  Python heap held by the watcher (tracemalloc): {held / 1e6:.2f} MB "
            f"= {held / max(1, len(watcher.pods)) / 1e3:.2f} kB per pod  (target < 20 MB)"
        )
        print(f"  RSS growth: {(rss2 - rss1) / 1024:.2f} MB")

        cgroups = CgroupResolver()
        enricher = Enricher(cgroups, watcher)
        root = os.stat(cgroups.mount or "/").st_ino

        def proc(pid: int, parent: Process | None, cgroup_id: int) -> Process:
            return mkproc(pid, parent, cgroup_id=cgroup_id)

        # systemd <- containerd <- shim <- ... (host) <- app parent <- app (container)
        chain: list[Process] = []
        prev = None
        for i in range(args.ancestors):
            prev = proc(100 + i, prev, root)
            chain.append(prev)
        parent = proc(900, prev, cg.cgroup_id)
        child = proc(901, parent, cg.cgroup_id)
        ancestors = tuple(reversed(chain))
        host_parent = proc(950, prev, root)
        host = proc(951, host_parent, root)

        first = enricher.view(child, parent, ancestors)[0]
        assert first.pod is not None and first.pod.workload == "svc0", first.pod
        assert first.container is not None and first.container.name == "app", first.container
        n = args.events
        print(
            f"per event: Enricher.view(process, parent, {args.ancestors} ancestors), "
            f"{n:,} events a round"
        )
        _line(
            "container process in a pod, cache hit",
            _per_call_ns(enricher.view, (child, parent, ancestors), n),
        )
        _line(
            "host process, cache hit",
            _per_call_ns(enricher.view, (host, host_parent, ancestors), n),
        )

        # Worst case: the watcher published a new snapshot before every event
        # (a pod of this node changed in between): everything is looked up again.
        snaps = [dict(watcher.pods) for _ in range(2)]

        class Flip:
            i = 0

            @property
            def pods(self) -> object:
                self.i ^= 1
                return snaps[self.i]

        churn = Enricher(cgroups, Flip())  # type: ignore[arg-type]
        churn.view(child, parent, ancestors)
        _line(
            "container process, new snapshot before every event",
            _per_call_ns(churn.view, (child, parent, ancestors), n // 10),
        )
        t0 = time.perf_counter_ns()
        misses = 2000
        for _ in range(misses):
            cgroups.forget(cg.cgroup_id)
            cgroups.info(cg.cgroup_id)
        print(
            f"  cgroup id -> path -> container (open_by_handle_at + readlink + parse), a miss: "
            f"{(time.perf_counter_ns() - t0) / misses / 1000:.2f} us"
        )
        print(f"loadavg after: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
        watcher.stop()
        cgroups.close()
    finally:
        for proc, _ in servers:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(10)
        cg.remove()


if __name__ == "__main__":
    main()
