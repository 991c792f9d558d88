"""Prometheus metrics, /healthz and /readyz on one HTTP port (--metrics-listen).

Nothing here runs per event: the collector reads, at scrape time, the
counters the daemon keeps anyway (events by type, the kernel's per-CPU
stats map, the outputs' queues and loss totals, the process and pod
caches, the policy hit map, the ring buffer's positions, the programs'
run stats). The exposition itself is prometheus_client's.

The server is the standard library's, single-threaded on its own thread:
one request at a time, each bounded by a socket timeout, so a slow or
stuck scraper delays only the next scraper, never capture. A scrape holds
the GIL for the time it takes to format a few hundred series (measured:
about a millisecond), and the capture thread gets it back within the
daemon's switch interval.
"""

from __future__ import annotations

import platform
import socket
import threading
import time
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry

from tracer import __version__
from tracer.config import parse_listen
from tracer.core.loader import KernelCounters
from tracer.status import CaptureState, alive, unready

_log = structlog.get_logger(component="metrics")

BPF_STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")
# Longest a client may take to send its request or read the answer.
_CLIENT_TIMEOUT_S = 5.0


class Collector:
    """Every tracer_* series, built from the daemon's state at each scrape."""

    def __init__(self, state: CaptureState) -> None:
        self._s = state

    def collect(self) -> Iterator[Metric]:
        sensor = self._s.sensor
        # One read of the kernel's per-CPU counters serves every family.
        counters = sensor.counters() if sensor is not None else None
        yield from self._info()
        yield from self._events(counters)
        yield from self._kernel(counters)
        yield from self._outputs()
        yield from self._caches()
        yield from self._policies()

    def _info(self) -> Iterator[Metric]:
        s = self._s
        yield InfoMetricFamily(
            "tracer",
            "The running daemon: version, kernel, node and the hooks it captures with",
            value={
                "version": __version__,
                "kernel": platform.release(),
                "node": s.node,
                "capture_mode": s.capture_mode,
                "process_hooks": s.process_hooks,
            },
        )
        yield GaugeMetricFamily(
            "tracer_start_time_seconds",
            "When the daemon started, seconds since the epoch",
            value=s.start_wall_ns / 1e9,
        )
        yield GaugeMetricFamily(
            "tracer_capture_last_turn_age_seconds",
            "Seconds since the capture loop last polled the ring buffer (every 10 ms when well)",
            value=time.monotonic() - s.last_poll,
        )
        yield GaugeMetricFamily(
            "tracer_ready", "1 when /readyz answers 200", value=0 if unready(s) else 1
        )

    def _events(self, counters: KernelCounters | None) -> Iterator[Metric]:
        s = self._s
        events = CounterMetricFamily("tracer_events", "Events reported, by type", labels=["type"])
        for kind, n in sorted(dict(s.events).items()):
            events.add_metric([kind], n)
        yield events
        lost = CounterMetricFamily(
            "tracer_lost_events",
            "Events lost, by where (kernel: the ring buffer was full; an output's name: its "
            "queue overflowed; grpc_subscribers: subscribers' queues) and kind; the counts "
            "`lost` events carry",
            labels=["source", "kind"],
        )
        if counters is not None:
            for kind, n in sorted(counters.dropped.items()):
                lost.add_metric(["kernel", kind], n)
        for out, counts in sorted(list(s.daemon_lost.items())):
            for kind, n in sorted(dict(counts).items()):
                lost.add_metric([out, kind], n)
        if s.hub is not None:
            for kind, n in sorted(dict(s.hub.subscriber_lost).items()):
                lost.add_metric(["grpc_subscribers", kind], n)
        yield lost

    def _kernel(self, k: KernelCounters | None) -> Iterator[Metric]:
        sensor = self._s.sensor
        size = GaugeMetricFamily(
            "tracer_ringbuf_size_bytes", "Size of the BPF ring buffer", value=self._s.ringbuf_size
        )
        yield size
        if sensor is None or k is None:
            return
        used = sensor.ring_used()
        yield GaugeMetricFamily(
            "tracer_ringbuf_used_bytes",
            "Bytes the programs wrote that the daemon has not read yet",
            value=used,
        )
        yield GaugeMetricFamily(
            "tracer_ringbuf_fill_ratio",
            "tracer_ringbuf_used_bytes / tracer_ringbuf_size_bytes",
            value=used / self._s.ringbuf_size,
        )
        for name, help_, data in (
            ("tracer_kernel_records", "Records the programs added to the ring buffer", k.emitted),
            (
                "tracer_policy_evaluations",
                "Opens and connects the programs evaluated against the policies",
                k.evaluated,
            ),
            (
                "tracer_policy_prefiltered",
                "Evaluated opens settled before their path was copied",
                k.prefiltered,
            ),
        ):
            fam = CounterMetricFamily(name, help_, labels=["kind"])
            for kind, n in sorted(data.items()):
                fam.add_metric([kind], n)
            yield fam
        stats_on = _bpf_stats_enabled()
        yield GaugeMetricFamily(
            "tracer_bpf_stats_enabled",
            "The sysctl kernel.bpf_stats_enabled (1: the kernel times every program run)",
            value=stats_on,
        )
        run_time = CounterMetricFamily(
            "tracer_bpf_program_run_time_seconds",
            "Time the kernel spent in each attached program while kernel.bpf_stats_enabled=1",
            labels=["program"],
        )
        runs = CounterMetricFamily(
            "tracer_bpf_program_runs",
            "Runs of each attached program counted while kernel.bpf_stats_enabled=1",
            labels=["program"],
        )
        for prog, st in sensor.run_stats().items():
            run_time.add_metric([prog], st.run_time_ns / 1e9)
            runs.add_metric([prog], st.run_cnt)
        yield run_time
        yield runs

    def _outputs(self) -> Iterator[Metric]:
        s = self._s
        depth = GaugeMetricFamily(
            "tracer_output_queue_events", "Events queued for an output", labels=["output"]
        )
        nbytes = GaugeMetricFamily(
            "tracer_output_queue_bytes",
            "Bytes of encoded lines queued for an output (0 for outputs queueing events)",
            labels=["output"],
        )
        cap = GaugeMetricFamily(
            "tracer_output_queue_capacity_events",
            "Events an output may fall behind before it loses its oldest",
            labels=["output"],
        )
        cap_bytes = GaugeMetricFamily(
            "tracer_output_queue_capacity_bytes",
            "Bytes an output may fall behind before it loses its oldest (0: no byte bound)",
            labels=["output"],
        )
        for out in s.outputs:
            backlog = getattr(out, "backlog", None)
            if backlog is None:
                continue
            depth.add_metric([out.name], backlog)
            nbytes.add_metric([out.name], getattr(out, "backlog_bytes", 0))
            events_cap, bytes_cap = getattr(out, "capacity", (0, 0))
            cap.add_metric([out.name], events_cap)
            cap_bytes.add_metric([out.name], bytes_cap)
        yield from (depth, nbytes, cap, cap_bytes)
        hub = s.hub
        yield GaugeMetricFamily(
            "tracer_grpc_subscribers",
            "Clients streaming GetEvents",
            value=hub.subscribers if hub is not None else 0,
        )
        if hub is not None:
            yield GaugeMetricFamily(
                "tracer_grpc_subscriber_queue_max_events",
                "Events queued for the subscriber furthest behind",
                value=hub.subscriber_backlog,
            )

    def _caches(self) -> Iterator[Metric]:
        s = self._s
        cache = s.cache
        if cache is not None:
            st = cache.stats
            yield GaugeMetricFamily(
                "tracer_process_cache_entries", "Processes in the cache", value=len(cache)
            )
            ev = CounterMetricFamily(
                "tracer_process_cache_evictions",
                "Exited processes dropped from the cache (expired: after the grace period; "
                "early: over --cache-size before it)",
                labels=["reason"],
            )
            ev.add_metric(["expired"], st.evicted_expired)
            ev.add_metric(["early"], st.evicted_early)
            yield ev
            miss = CounterMetricFamily(
                "tracer_process_cache_misses",
                "Records about a pid the cache did not know (unknown) or had to replace (reused)",
                labels=["reason"],
            )
            miss.add_metric(["unknown"], st.unknown_pid)
            miss.add_metric(["reused"], st.stale_pid)
            yield miss
        pods = s.pods
        yield GaugeMetricFamily(
            "tracer_pod_watch_configured", "1 when a cluster is configured", value=pods is not None
        )
        if pods is None:
            return
        yield GaugeMetricFamily(
            "tracer_pod_cache_entries", "This node's pods known", value=len(pods.pods)
        )
        yield GaugeMetricFamily(
            "tracer_pod_watch_connected",
            "1 when the pods were listed and the last call to the API server worked",
            value=pods.connected,
        )
        yield GaugeMetricFamily(
            "tracer_pod_watch_synced", "1 once the first pod list is in", value=pods.ready.is_set()
        )
        if pods.last_list is not None:
            yield GaugeMetricFamily(
                "tracer_pod_watch_last_relist_timestamp_seconds",
                "When the pods were last listed in full, seconds since the epoch",
                value=pods.last_list,
            )
        yield CounterMetricFamily(
            "tracer_pod_watch_relists",
            "Full pod lists (the first, one per expired watch)",
            value=pods.lists,
        )

    def _policies(self) -> Iterator[Metric]:
        store = self._s.policies
        hits = CounterMetricFamily(
            "tracer_policy_matches",
            "Events each rule of the policy set in force selected (since that set was applied)",
            labels=["policy", "rule", "action"],
        )
        kept = CounterMetricFamily(
            "tracer_policy_suppressed",
            "Of those, events the rule's throttle or aggregate did not post (counted in summaries)",
            labels=["policy", "rule", "action"],
        )
        if store is not None:
            for c in store.counts():
                labels = [c.rule.policy, str(c.rule.index), c.rule.action.label]
                hits.add_metric(labels, c.hits)
                kept.add_metric(labels, c.suppressed)
        yield hits
        yield kept
        w = self._s.workloads
        if w is not None:
            yield GaugeMetricFamily(
                "tracer_workload_map_cgroups",
                "cgroups in the kernel's map of workload verdicts",
                value=len(w),
            )
            yield CounterMetricFamily(
                "tracer_workload_map_full",
                "Times a cgroup found the workload map full (its processes match no rule "
                "with a workload selector)",
                value=w.full,
            )


def _bpf_stats_enabled() -> int:
    try:
        return int(BPF_STATS_SYSCTL.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = _CLIENT_TIMEOUT_S
    protocol_version = "HTTP/1.0"  # one request per connection: none can linger

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        srv = self.server
        if path == "/metrics":
            encode, content_type = choose_encoder(self.headers.get("Accept", ""))
            try:
                body = encode(srv.registry)
            except Exception as exc:  # noqa: BLE001 - a scrape must not take the server down
                _log.warning("metrics collection failed", error=str(exc)[:300])
                self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, f"collection failed: {exc}\n")
                return
            self._reply(HTTPStatus.OK, body, content_type)
        elif path == "/healthz":
            if alive(srv.state):
                self._reply(HTTPStatus.OK, "ok\n")
            else:
                self._reply(HTTPStatus.SERVICE_UNAVAILABLE, "capture loop stalled\n")
        elif path == "/readyz":
            problems = unready(srv.state)
            if problems:
                self._reply(HTTPStatus.SERVICE_UNAVAILABLE, "".join(f"{p}\n" for p in problems))
            else:
                self._reply(HTTPStatus.OK, "ready\n")
        else:
            self._reply(HTTPStatus.NOT_FOUND, "not found: try /metrics, /healthz or /readyz\n")

    def _reply(
        self, status: HTTPStatus, body: bytes | str, content_type: str = "text/plain; charset=utf-8"
    ) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a request per scrape: not worth a log line


class _Server(HTTPServer):
    allow_reuse_address = True
    request_queue_size = 16

    def __init__(self, addr: tuple[str, int], state: CaptureState) -> None:
        self.address_family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        self.state = state
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(Collector(state))
        # RSS, CPU seconds, open fds of the daemon (from /proc/self, at scrape).
        self.registry.register(ProcessCollector(namespace="tracer", registry=None))
        super().__init__(addr, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        _log.debug("metrics request failed", client=str(client_address))


class MetricsServer:
    """/metrics, /healthz, /readyz on HOST:PORT, served from one thread."""

    def __init__(self, listen: str, state: CaptureState) -> None:
        host, port = parse_listen(listen)
        self._server = _Server((host, port), state)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.5},
            name="metrics-http",
            daemon=True,
        )

    def start(self) -> None:
        self._thread.start()
        host, port = str(self._server.server_address[0]), self._server.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        _log.info("metrics and health served", address=f"{shown}:{port}")

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(2.0)
        self._server.server_close()
