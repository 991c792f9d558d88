"""--metrics-listen: Prometheus metrics, /healthz and /readyz of the real daemon.

Scraped with a real HTTP client (urllib) and parsed with prometheus_client's
own parser, so what is checked is what Prometheus would ingest.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import BPF_DIR, Daemon, is_exec, new_marker, tracer_cmd
from fake_apiserver import FakeApiServer, kubeconfig
from grpc_helpers import Subscription, wait_subscribers
from prometheus_client.parser import text_string_to_metric_families

from export.proto_gen import tracer_v1_pb2 as pb
from tracer.core import bpf
from tracer.core.loader import capture_sensor
from tracer.core.probe import probe
from tracer.metrics import MetricsServer
from tracer.status import STALLED_AFTER_S, CaptureState

pytestmark = pytest.mark.kernel

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metrics_daemon(*args: str) -> tuple[Daemon, str]:
    d = Daemon("--metrics-listen", "127.0.0.1:0", *args)
    line = d.wait_log("metrics and health served")
    m = re.search(r"address='([^']+)'", line)
    assert m, line
    return d, f"http://{m.group(1)}"


def get(url: str) -> tuple[int, str, str]:
    """Status, content type and body (errors included)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


def scrape(base: str) -> Samples:
    status, ctype, body = get(base + "/metrics")
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4"), (status, ctype)
    out: Samples = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum over every series of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def names(samples: Samples) -> set[str]:
    return {n for n, _ in samples}


@pytest.fixture(scope="module")
def policy_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="tracer-metrics-") as tmp:
        root = Path(tmp)
        (root / "files").mkdir()
        yield root


def _policy(name: str, prefix: str) -> str:
    return (
        f"policies:\n  - name: {name}\n    rules:\n      - event: file_open\n"
        f"        match: {{path: {{prefix: [{prefix}]}}}}\n        action: post\n"
    )


@pytest.fixture(scope="module")
def served(policy_dir: Path) -> Iterator[tuple[Daemon, str, Path]]:
    pdir = policy_dir / "policies"
    pdir.mkdir(mode=0o700)
    (pdir / "p.yaml").write_text(_policy("t-metrics", f"{policy_dir}/files/"))
    d, base = metrics_daemon("--policy", str(pdir), "--ringbuf-size", "8M")
    yield d, base, pdir
    assert d.stop() == 0, "".join(d.stderr)


def test_every_family_is_served_with_the_daemons_facts(
    served: tuple[Daemon, str, Path],
) -> None:
    d, base, _ = served
    d.sync()
    s = scrape(base)
    expected = {
        "tracer_info",
        "tracer_start_time_seconds",
        "tracer_events_total",
        "tracer_ringbuf_size_bytes",
        "tracer_ringbuf_used_bytes",
        "tracer_ringbuf_fill_ratio",
        "tracer_kernel_records_total",
        "tracer_bpf_stats_enabled",
        "tracer_bpf_program_run_time_seconds_total",
        "tracer_bpf_program_runs_total",
        "tracer_output_queue_events",
        "tracer_output_queue_bytes",
        "tracer_grpc_subscribers",
        "tracer_process_cache_entries",
        "tracer_process_cache_evictions_total",
        "tracer_pod_watch_configured",
        "tracer_policy_matches_total",
        "tracer_workload_map_cgroups",
        "tracer_workload_map_full_total",
        "tracer_process_resident_memory_bytes",
        "tracer_ready",
    }
    assert expected <= names(s), expected - names(s)
    info = next(ls for (n, ls) in s if n == "tracer_info")
    assert dict(info)["capture_mode"] == "tracepoint"
    assert dict(info)["kernel"] == os.uname().release
    assert value(s, "tracer_ringbuf_size_bytes") == 8 << 20
    assert 0 <= value(s, "tracer_ringbuf_used_bytes") <= 8 << 20
    assert value(s, "tracer_ready") == 1
    assert value(s, "tracer_pod_watch_configured") == 0
    assert value(s, "tracer_workload_map_cgroups") >= 1  # the host's cgroups at least
    # Every process on the machine is in the cache, found in /proc at start.
    assert value(s, "tracer_process_cache_entries") >= 10
    assert abs(value(s, "tracer_start_time_seconds") - time.time()) < 600
    progs = {dict(ls)["program"] for (n, ls) in s if n == "tracer_bpf_program_runs_total"}
    assert {"tr_exec_btf", "tr_fork_btf", "tr_exit_btf", "tr_open_exit"} <= progs
    assert value(s, "tracer_output_queue_capacity_events", output="stdout") == 65536


def test_events_by_type_count_what_the_outputs_receive(
    served: tuple[Daemon, str, Path],
) -> None:
    d, base, _ = served
    marker = new_marker("count")
    for _ in range(20):
        subprocess.run(["/bin/true", marker], check=True)
    d.sync()
    before = len(d.matching(lambda e: e["type"] == "process_exec"))
    s = scrape(base)
    d.sync()
    after = len(d.matching(lambda e: e["type"] == "process_exec"))
    # Counted as they are handed to the outputs: at least every line read
    # before the scrape, at most every line read once a later sync is in.
    assert before <= value(s, "tracer_events_total", type="process_exec") <= after
    assert len(d.matching(is_exec(marker))) == 20


def test_policy_matches_by_policy_rule_and_action(
    served: tuple[Daemon, str, Path], policy_dir: Path
) -> None:
    d, base, _ = served
    before = value(
        scrape(base), "tracer_policy_matches_total", policy="t-metrics", rule="0", action="post"
    )
    for i in range(7):
        (policy_dir / "files" / f"f{i}").write_text("x")
    d.sync()
    s = scrape(base)
    got = value(s, "tracer_policy_matches_total", policy="t-metrics", rule="0", action="post")
    assert got - before == 7


def test_grpc_subscribers_are_counted(served: tuple[Daemon, str, Path]) -> None:
    d, base, _ = served
    with grpc.insecure_channel(d.address) as ch:
        sub = Subscription(ch, pb.GetEventsRequest())
        try:
            wait_subscribers(ch, 1)
            assert value(scrape(base), "tracer_grpc_subscribers") == 1
        finally:
            sub.call.cancel()
        wait_subscribers(ch, 0)
    assert value(scrape(base), "tracer_grpc_subscribers") == 0


def test_healthz_readyz_and_unknown_paths(served: tuple[Daemon, str, Path]) -> None:
    _, base, _ = served
    assert get(base + "/healthz")[::2] == (200, "ok\n")
    assert get(base + "/readyz")[::2] == (200, "ready\n")
    assert get(base + "/nope")[0] == 404
    # OpenMetrics when the scraper asks for it (Prometheus does).
    req = urllib.request.Request(
        base + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        assert r.read().decode().endswith("# EOF\n")


def test_a_changed_policy_file_is_applied_and_a_bad_one_keeps_the_old_set(
    served: tuple[Daemon, str, Path], policy_dir: Path
) -> None:
    """A ConfigMap update: the file changes under the daemon, with no signal."""
    d, base, pdir = served
    new = pdir / "p.yaml.new"
    new.write_text(_policy("t-metrics-2", f"{policy_dir}/files/"))
    new.rename(pdir / "p.yaml")  # atomic, a new inode: as kubelet swaps ..data
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pols = {
            dict(ls).get("policy") for (n, ls) in scrape(base) if n == "tracer_policy_matches_total"
        }
        if pols == {"t-metrics-2"}:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"policy not reloaded: {pols}")
    (pdir / "p.yaml").write_text("policies: [\n")  # invalid YAML
    d.wait_log("policy reload refused", timeout=10)
    (policy_dir / "files" / "after-bad").write_text("x")
    d.sync()
    s = scrape(base)
    assert (
        value(s, "tracer_policy_matches_total", policy="t-metrics-2", rule="0", action="post") == 1
    )
    (pdir / "p.yaml").write_text(_policy("t-metrics", f"{policy_dir}/files/"))


def test_losses_by_source_match_the_lost_events() -> None:
    """Kernel drops (a 16 KiB ring while the daemon is stopped) and an
    output's drops (a 4-event queue fed a whole ring at once) are counted
    exactly as the `lost` events report them."""
    d, base = metrics_daemon("--ringbuf-size", "16384", "--queue-size", "4")
    try:
        os.kill(d.proc.pid, signal.SIGSTOP)
        try:
            for _ in range(300):
                subprocess.run(["/bin/true", "burst"], check=True)
        finally:
            os.kill(d.proc.pid, signal.SIGCONT)
        d.wait_for(lambda e: e["type"] == "lost", timeout=10)
        deadline = time.monotonic() + 15
        while True:
            s = scrape(base)
            lost = d.matching(lambda e: e["type"] == "lost")
            kernel = sum(sum(e["lost"]["kernel"].values()) for e in lost)
            daemon = sum(sum(e["lost"]["daemon"].values()) for e in lost)
            got = (
                total(s, "tracer_lost_events_total", source="kernel"),
                total(s, "tracer_lost_events_total", source="stdout"),
            )
            # Reports go out once a second: equal once the last one is out.
            if got == (kernel, daemon) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert kernel > 0 and daemon > 0, (kernel, daemon)
        assert got == (kernel, daemon)
        assert total(s, "tracer_lost_events_total", source="kernel", kind="process_exec") > 0
    finally:
        assert d.stop() == 0


class _StatsOn:
    """Kernel run-time stats for as long as the fd is open (BPF_ENABLE_STATS):
    unlike the sysctl, it cannot be left on by a failed test."""

    def __enter__(self) -> None:
        lib = bpf.lib()
        lib.bpf_enable_stats.restype = ctypes.c_int
        lib.bpf_enable_stats.argtypes = [ctypes.c_int]
        self.fd = lib.bpf_enable_stats(0)  # BPF_STATS_RUN_TIME
        assert self.fd >= 0, f"BPF_ENABLE_STATS failed: {self.fd}"

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def test_program_run_time_and_count_while_kernel_stats_are_on(
    served: tuple[Daemon, str, Path],
) -> None:
    d, base, _ = served
    with _StatsOn():
        before = scrape(base)
        for _ in range(10):
            subprocess.run(["/bin/true", "stats"], check=True)
        d.sync()
        after = scrape(base)
    for name in ("tracer_bpf_program_runs_total", "tracer_bpf_program_run_time_seconds_total"):
        delta = value(after, name, program="tr_exec_btf") - value(
            before, name, program="tr_exec_btf"
        )
        assert delta > 0, name
    runs = value(after, "tracer_bpf_program_runs_total", program="tr_exec_btf") - value(
        before, "tracer_bpf_program_runs_total", program="tr_exec_btf"
    )
    assert runs >= 11  # our execs and the sync's


def test_pod_watch_state_and_readiness_follow_the_api_server(tmp_path: Path) -> None:
    """Not ready while no pod list came in; ready, connected and counted once it did."""
    closed = tmp_path / "closed"
    with socket_closed_port() as port:
        kubeconfig(closed, f"http://127.0.0.1:{port}")
    d, base = metrics_daemon("--kubeconfig", str(closed), "--node-name", "nowhere")
    try:
        status, _, body = get(base + "/readyz")
        assert status == 503 and "pod watch not synced" in body, body
        assert get(base + "/healthz")[0] == 200  # alive all the same
        s = scrape(base)
        assert value(s, "tracer_pod_watch_configured") == 1
        assert value(s, "tracer_pod_watch_connected") == 0
        assert value(s, "tracer_ready") == 0
    finally:
        assert d.stop() == 0
    server = FakeApiServer()
    try:
        from fake_apiserver import pod

        node = new_marker("node")
        server.put(pod(new_marker("uid"), "p1", node))
        d, base = metrics_daemon(
            "--kubeconfig", str(server.kubeconfig(tmp_path / "kc")), "--node-name", node
        )
        try:
            deadline = time.monotonic() + 10
            while get(base + "/readyz")[0] != 200:
                assert time.monotonic() < deadline, get(base + "/readyz")
                time.sleep(0.1)
            s = scrape(base)
            assert value(s, "tracer_pod_cache_entries") == 1
            assert value(s, "tracer_pod_watch_connected") == 1
            assert value(s, "tracer_pod_watch_relists_total") == 1
            assert (
                abs(value(s, "tracer_pod_watch_last_relist_timestamp_seconds") - time.time()) < 60
            )
        finally:
            assert d.stop() == 0
    finally:
        server.close()


class socket_closed_port:
    def __enter__(self) -> int:
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port: int = s.getsockname()[1]
        s.close()
        return self.port

    def __exit__(self, *exc: object) -> None:
        pass


def test_healthz_fails_when_the_capture_loop_stalls() -> None:
    """The HTTP thread answers on its own; it reports the loop's last turn,
    and a start-up longer than a stall is alive: only not ready."""
    state = CaptureState("n", "tp_btf", "tracepoint", 4096, None)
    server = MetricsServer("127.0.0.1:0", state)
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        state.last_poll = time.monotonic() - STALLED_AFTER_S - 1  # programs still loading
        assert get(base + "/healthz")[0] == 200
        status, _, body = get(base + "/readyz")
        assert status == 503 and "not attached" in body
        state.capturing = True
        status, _, body = get(base + "/healthz")
        assert status == 503 and "stalled" in body
        status, _, body = get(base + "/readyz")
        assert status == 503 and "stalled" in body
    finally:
        server.close()


def test_ring_fill_is_read_from_the_kernels_positions() -> None:
    """Records the reader has not consumed show as used bytes; consuming frees them."""
    report = probe(BPF_DIR)
    with capture_sensor(BPF_DIR, report.process_hooks, "tracepoint", 1 << 20) as sensor:
        sensor.ringbuf.consume()
        for _ in range(5):
            subprocess.run(["/bin/true", "fill"], check=True)
        used = sensor.ring_used()
        assert used > 0
        sensor.ringbuf.consume()
        # Whatever else ran in between is small next to what was consumed.
        assert sensor.ring_used() < used


def test_a_bad_listen_address_is_refused_at_start() -> None:
    r = subprocess.run(
        tracer_cmd("run", "--metrics-listen", "nope"), capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2
    assert "--metrics-listen wants HOST:PORT" in r.stderr
