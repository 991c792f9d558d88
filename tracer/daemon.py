"""The daemon: kernel -> ring buffer -> decode -> enrich -> export fan-out.

One thread polls the ring buffer and runs decode and enrichment in
order (the process cache must see fork/exec/exit in kernel order); each
sink serializes and writes on its own thread, so a slow output never
holds the ring buffer back. The gRPC API is one more sink (export/hub.py)
with its own server threads (export/grpc_server.py).
"""

from __future__ import annotations

import collections
import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from enrich import Enrichment, ProcessCache, RedactError, UserNames, procfs, redactor
from export import (
    EncodedSink,
    Fanout,
    LineFanout,
    PairFanout,
    QueuedWriter,
    RotatingFile,
    Serializer,
    Sink,
    StreamLines,
    line_encoder,
)
from export.eventlog import EventLog
from export.hub import Hub
from policy import Fingerprint, PolicyError, PolicyMaps, PolicyStore, fingerprint
from tracer import __version__, control, heap
from tracer.config import Config
from tracer.core import system
from tracer.core.clock import BootClock
from tracer.core.events import LossCounts, Lost
from tracer.core.loader import (
    USER_MEMORY_LIMITS,
    CaptureModeUnavailable,
    ConfigError,
    KernelCounters,
    Sensor,
    capture_sensor,
    choose_capture_mode,
)
from tracer.core.probe import probe
from tracer.pipeline import Pipeline
from tracer.sdnotify import Notifier
from tracer.status import CaptureState, DaemonStatus, unready
from tracer.workloads import WorkloadSync

if TYPE_CHECKING:
    from export.grpc_server import GrpcServer
    from tracer.metrics import MetricsServer

_log = structlog.get_logger(component="daemon")
# How often freed C heap goes back to the kernel after start-up: often
# enough that a burst's garbage does not stay resident for long, rarely
# enough that the pages are not faulted back in under a steady load.
_TRIM_INTERVAL_S = 30.0
# How long a thread waits for the GIL before it makes the holder give it up
# (Python's default is 5 ms). The capture thread always wants the GIL; each
# output writer needs it back after every write or compression, and waiting
# a default turn each time lets a writer fall behind under a storm, its
# queue growing the heap (BENCHMARKS.md, "a GIL switch interval").
_SWITCH_INTERVAL_S = 0.001
# How long the final drain at stop may take.
_STOP_DRAIN_S = 5.0
# How often the kernel reports the counts of throttle windows that ended
# (tr_throttle_flush): a summary comes at most this long after its window.
_THROTTLE_FLUSH_S = 0.25

class _Counted(Protocol):
    """What the loss reporter reads from the sensor (tracer.core.loader.Sensor)."""

    def counters(self) -> KernelCounters: ...


def _outputs(sinks: list[Sink]) -> list[Sink]:
    """Every output on its own: the writers behind a Fanout lose events separately."""
    out: list[Sink] = []
    for sink in sinks:
        out.extend(sink.sinks if isinstance(sink, Fanout) else [sink])
    return out


class _Reloader:
    """Runs SIGHUP's policy reload on a thread of its own.

    Reading, parsing and compiling take as long as the files make them
    take; on the capture thread that would be time without capture, and an
    unexpected error would end the capture loop. The capture loop only
    asks; requests during a reload make one more.
    """

    def __init__(self, reload: Callable[[], None]) -> None:
        self._reload = reload
        self._wanted = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="policy-reload", daemon=True)
        self._thread.start()

    def request(self) -> None:
        self._wanted.set()

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            if self._stopping:
                return
            self._wanted.clear()
            try:
                self._reload()
            except Exception as exc:  # noqa: BLE001 -- the thread outlives any one reload
                _log.error(
                    "policy reload failed; the previous policies stay in force",
                    error=f"{type(exc).__name__}: {exc}",
                )

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        self._wanted.set()
        self._thread.join(timeout)


class _LossReporter:
    """Turns counter deltas into one Lost event per output, when there is loss.

    Each output is told what it lost itself, plus what every output lost
    (the kernel's drops, undecodable records): the JSON file must not
    report events that only the event log's queue dropped.
    """

    def __init__(
        self,
        sensor: _Counted,
        pipeline: Pipeline,
        clock: BootClock,
        node: str,
        by_sink: dict[str, collections.Counter[str]],
    ) -> None:
        self._sensor = sensor
        self._pipeline = pipeline
        self._clock = clock
        self._node = node
        self._seen_kernel: dict[str, int] = {}
        # Counts waiting to be reported (a count over 32 bits waits a round).
        self._kernel = LossCounts()
        self._outputs = _outputs(pipeline.sinks)
        self._daemon = {out.name: LossCounts() for out in self._outputs}
        self.total_kernel: collections.Counter[str] = collections.Counter()
        self.total_daemon: collections.Counter[str] = collections.Counter()
        self.by_sink = by_sink

    def _kernel_delta(self, counters: KernelCounters) -> dict[str, int]:
        """Records lost in the kernel since the last call: the ring was full,
        or their uid was over its budget (--uid-budget)."""
        delta = {}
        for kind, n in counters.dropped.items():
            n += counters.limited.get(kind, 0)
            d = n - self._seen_kernel.get(kind, 0)
            if d:
                delta[kind] = d
            self._seen_kernel[kind] = n
        return delta

    def report(self) -> None:
        self._kernel.add(self._kernel_delta(self._sensor.counters()))
        kernel = self._kernel.take()
        self.total_kernel.update(kernel)
        shared = dict(self._pipeline.malformed)
        self._pipeline.malformed.clear()
        now = self._clock.wall(self._clock.now_boot())
        for out in self._outputs:
            pending = self._daemon[out.name]
            pending.add(shared)
            pending.add(out.take_dropped())
            daemon = pending.take()
            self.total_daemon.update(daemon)
            self.by_sink.setdefault(out.name, collections.Counter()).update(daemon)
            if kernel or daemon:
                out.offer(Lost(time=now, node=self._node, kernel=kernel, daemon=daemon))


class Daemon:
    def __init__(self, config: Config) -> None:
        config.validate()
        self.config = config
        try:
            self._redactor = redactor(config.redact_rules, config.redact)
        except RedactError as exc:
            raise ConfigError(str(exc)) from None
        self._stop = False
        self._stop_signal: int | None = None
        self._reload = False
        self._reloader: _Reloader | None = None
        self._policies: PolicyStore | None = None
        self._sensor: Sensor | None = None
        self._policy_files: Fingerprint = ()
        self._notifier = Notifier()

    # Signal handlers only set flags. Logging here could deadlock: the
    # handler runs between two bytecodes of the main thread, possibly while
    # it holds the log writer's lock in the middle of a line.
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop_signal = signum
        self._stop = True

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self._reload = True

    def _reload_policies(self) -> None:
        """SIGHUP or a changed policy file (on the reload thread): re-read the policy
        paths; on any error the old set stays."""
        if self._policies is None or not self.config.policy_paths:
            _log.info("reload: no policy paths to reload")
            return
        self._policy_files = fingerprint(self.config.policy_paths)
        try:
            self._policies.apply_paths(self.config.policy_paths)
        except (PolicyError, OSError) as exc:
            _log.error("policy reload refused; the previous policies stay in force", error=str(exc))

    def apply_policy_texts(self, docs: list[tuple[str, str]]) -> list[str]:
        """A new policy set from (name, YAML) documents, for the control socket
        and the API (PolicyControl); PolicyError with the old set in force."""
        store = self._policies
        assert store is not None  # both start after the store exists
        return store.apply_texts(docs)

    def _control(self, req: dict[str, Any]) -> dict[str, Any]:
        store = self._policies
        assert store is not None
        op = req.get("op")
        if op == "policy_list":
            return {
                "ok": True,
                "sources": store.sources,
                "rules": [
                    {
                        "policy": c.rule.policy,
                        "rule": c.rule.index,
                        "event": c.rule.kind.label,
                        "action": c.rule.action.label,
                        "mode": c.rule.mode.value,
                        "severity": c.rule.severity.value,
                        "source": f"{c.rule.source}:{c.rule.line}",
                        "description": c.rule.description,
                        "hits": c.hits,
                        "suppressed": c.suppressed,
                    }
                    for c in store.counts()
                ],
            }
        if op == "event_log":
            log = self.config.event_log
            if log is None:
                return {"ok": False, "error": "this daemon runs without an event log"}
            return {"ok": True, "directory": str(log.directory.resolve())}
        if op == "stats":
            assert self._sensor is not None
            k = self._sensor.counters()
            return {
                "ok": True,
                "kernel": {
                    "emitted": k.emitted,
                    "dropped": k.dropped,
                    "evaluated": k.evaluated,
                    "prefiltered": k.prefiltered,
                    "limited": k.limited,
                },
                "throttle": k.throttle,
                "workload_map": self._workload_stats(),
            }
        if op == "policy_apply":
            docs = req.get("documents")
            if not isinstance(docs, list) or not all(
                isinstance(d, list) and len(d) == 2 and all(isinstance(x, str) for x in d)
                for d in docs
            ):
                return {"ok": False, "error": "documents must be a list of [name, yaml] pairs"}
            clear = req.get("clear") is True
            if clear == bool(docs):
                return {
                    "ok": False,
                    "error": "clear takes no documents"
                    if clear
                    else "no policy documents (to remove every policy, send clear)",
                }
            try:
                warnings = self.apply_policy_texts([(d[0], d[1]) for d in docs])
            except PolicyError as exc:
                return {"ok": False, "error": str(exc)}
            return {"ok": True, "warnings": warnings}
        return {"ok": False, "error": f"unknown op {op!r}"}

    def _workload_stats(self) -> dict[str, int]:
        w = self._state.workloads
        if w is None:
            return {}
        return {"cgroups": len(w), "capacity": w.capacity, "full": w.full}

    def stop(self) -> None:
        self._stop = True

    def _sinks(self) -> list[Sink]:
        """The JSON output and the event log: one encoding of each event serves both,
        unless the output has another format or leaves ancestors out (the log is
        always native, with full ancestors for `tracer tree`)."""
        cfg = self.config
        serializer = Serializer()  # the log's
        # A format is another encoding for the JSON output alone; fewer
        # ancestors another line made with the log's (PairFanout).
        native = Serializer(cfg.ancestors) if cfg.ancestors != "full" else serializer
        encode = native.line if cfg.format == "native" else line_encoder(cfg.format, __version__)
        writers: list[EncodedSink] = []
        # The export file first: one refused stops the start before the log has begun.
        if cfg.export_file is not None:
            f = RotatingFile(cfg.export_file, cfg.export_max_bytes, cfg.export_backups)
            out = QueuedWriter(
                "file",
                f,
                encode,
                cfg.queue_capacity,
                on_close=f.close,
                max_bytes=cfg.queue_max_bytes,
            )
        else:
            stdout = StreamLines(sys.stdout.buffer)
            out = QueuedWriter(
                "stdout",
                stdout,
                encode,
                cfg.queue_capacity,
                max_bytes=cfg.queue_max_bytes,
            )
        if cfg.event_log is not None:
            writers.append(
                EventLog(
                    cfg.event_log,
                    cfg.queue_capacity,
                    serializer.line,
                    max_bytes=cfg.queue_max_bytes,
                )
            )
        if not writers:
            return [out]
        if cfg.format != "native":
            return [LineFanout(serializer.line, writers), out]
        if native is serializer:
            return [LineFanout(serializer.line, [*writers, out])]
        return [PairFanout(lambda ev: native.lines(ev, serializer), [out], writers)]

    def run(self) -> int:
        cfg = self.config
        t0 = time.perf_counter()
        system.preflight()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_hup)
        report = probe(cfg.bpf_dir)
        variant = cfg.process_hooks if cfg.process_hooks != "auto" else report.process_hooks
        if variant == "none":
            raise system.PreflightError(
                "this kernel can attach neither tp_btf nor raw_tp programs; "
                "run `tracer probe` for details"
            )
        try:
            mode = choose_capture_mode(
                report.capture_modes(), cfg.capture_mode, cfg.exclude_capture_modes
            )
        except CaptureModeUnavailable as exc:
            raise system.PreflightError(str(exc)) from None
        _log.info(
            "capture mode chosen",
            process_hooks=variant,
            capture_mode=mode,
            best_supported=report.capture_mode,
            kernel=report.kernel,
            probe_ms=round(report.seconds * 1000, 1),
        )
        _log.warning(
            "this capture mode reads some values from the process's memory after the "
            "kernel used its own copy: a racing thread can change them (events say "
            "user_memory: true)",
            capture_mode=mode,
            values=USER_MEMORY_LIMITS[mode],
        )
        clock = BootClock()
        enrichment = Enrichment(cfg.node, cfg.kubeconfig)
        cache = ProcessCache(
            cfg.node,
            clock,
            UserNames(),
            max_entries=cfg.cache_max,
            exit_grace_ns=int(cfg.exit_grace_s * 1e9),
            ancestor_depth=cfg.ancestor_depth,
            enricher=enrichment.enricher,
            redactor=self._redactor,
        )
        sinks = self._sinks()
        hub = None
        server: GrpcServer | None = None
        if cfg.grpc is not None:
            hub = Hub(
                cfg.node,
                lambda: clock.wall(clock.now_boot()),
                capacity=cfg.queue_capacity,
                subscriber_capacity=cfg.grpc.queue_capacity,
                subscriber_bytes=cfg.grpc.queue_bytes,
                # Each listener bounds its own; the hub only backs them up.
                max_subscribers=cfg.grpc.max_subscribers * cfg.grpc.listeners,
                ancestors=cfg.ancestors,
            )
            sinks.append(hub)
        pipeline = Pipeline(cache, sinks)
        self._state = CaptureState(
            node=cfg.node,
            process_hooks=variant,
            capture_mode=mode,
            ringbuf_size=cfg.ringbuf_size,
            hub=hub,
            events=pipeline.events,
        )
        self._state.outputs = _outputs(pipeline.sinks)
        self._state.cache = cache
        self._state.pods = enrichment.watcher
        losses: _LossReporter | None = None
        ctl: control.ControlServer | None = None
        metrics: MetricsServer | None = None
        try:
            if cfg.metrics_listen is not None:
                # Imported only when asked for: http.server and
                # prometheus_client are a tenth of a default start-up.
                from tracer.metrics import MetricsServer

                # Bound before any BPF is loaded: a port in use fails fast.
                # Served from now on: /healthz and /readyz answer during start-up.
                metrics = MetricsServer(cfg.metrics_listen, self._state)
                metrics.start()
            if hub is not None:
                assert cfg.grpc is not None
                # Imported only when served: grpc's core library alone is
                # ~13 MiB of resident code (BENCHMARKS.md, "RSS").
                from export.grpc_server import GrpcServer

                # Bound before any BPF is loaded: a socket in use fails fast.
                server = GrpcServer(cfg.grpc, hub, DaemonStatus(self._state), self)
            # Scrapes stop before the sensor (its maps and programs) is freed.
            scrapes = contextlib.closing(metrics) if metrics else contextlib.nullcontext()
            with (
                capture_sensor(
                    cfg.bpf_dir, variant, mode, cfg.ringbuf_size, cfg.uid_budget,
                    cfg.selected_ringbuf_size, cfg.throttle_keys, cfg.workload_cgroups,
                ) as sensor,
                scrapes,
            ):
                self._sensor = sensor
                if sensor.gaps:
                    _log.warning(
                        "this capture mode cannot see every open and connect",
                        capture_mode=mode,
                        gaps=sensor.gaps,
                    )
                maps = PolicyMaps(sensor.obj)
                # The cgroups older than the daemon; mkdir records bring the rest.
                workloads = WorkloadSync(enrichment.enricher, enrichment.cgroups, maps.workloads)
                cgroups = workloads.start()
                pipeline.workloads = workloads
                self._state.workloads = maps.workloads
                self._policies = store = PolicyStore(maps, lsm_active=mode == "lsm")
                pipeline.verdicts = store
                self._state.policies = store
                if cfg.policy_paths:
                    self._policy_files = fingerprint(cfg.policy_paths)
                    store.apply_paths(cfg.policy_paths)
                self._reloader = _Reloader(self._reload_policies)
                # Attached first, then /proc: a process that starts in between
                # is in the ring buffer, and its records win over the snapshot.
                snapshot = list(procfs.scan())
                for p in snapshot:
                    if p.binary:
                        maps.set_binary(p.pid, p.binary)
                n = cache.bootstrap(snapshot)
                ctl = control.ControlServer(cfg.control_socket, self._control)
                losses = _LossReporter(sensor, pipeline, clock, cfg.node, self._state.daemon_lost)
                self._state.sensor = sensor
                if server is not None:
                    server.start()
                heap.trim()  # what loading and the /proc scan freed: ~11 MB
                heap.settle()
                sys.setswitchinterval(_SWITCH_INTERVAL_S)
                _log.info(
                    "ready",
                    startup_ms=round((time.perf_counter() - t0) * 1000, 1),
                    procfs_processes=n,
                    cgroups=cgroups,
                    node=cfg.node,
                )
                self._state.last_poll = time.monotonic()
                self._state.capturing = True
                status = self._loop(sensor, pipeline, losses)
                self._state.stopping = True
                self._notifier.notify("STOPPING=1", "STATUS=stopping: draining the outputs")
                if server is not None:
                    server.stopping()
                self._drain(sensor, pipeline)
                self._flush_throttle(sensor, pipeline)
                losses.report()
                # Outputs drain before the server stops, so subscribers get
                # every event up to the end; then nothing reads the sensor.
                self._close(sinks)
                sinks = []
                if server is not None:
                    server.stop()
                    server = None
                self._state.sensor = None
        finally:
            if self._reloader is not None:
                self._reloader.stop()
            if metrics is not None:
                metrics.close()
            self._notifier.close()
            enrichment.close()
            if ctl is not None:
                ctl.close()
            self._close(sinks)
            if server is not None:
                server.stop(grace=0)
        assert losses is not None
        _log.info(
            "stopped",
            events=dict(pipeline.events),
            lost_kernel=dict(losses.total_kernel),
            lost_daemon=dict(losses.total_daemon),
            lost_grpc_subscribers=dict(hub.subscriber_lost) if hub is not None else {},
            cache=cache.stats,
        )
        return status

    @staticmethod
    def _close(sinks: list[Sink]) -> None:
        for sink in sinks:
            sink.close()

    @classmethod
    def _flush_throttle(cls, sensor: Sensor, pipeline: Pipeline) -> None:
        """Every count still kept in the kernel, windows open or not, as summaries:
        what is suppressed then and not reported was lost to the table's eviction."""
        sensor.flush_throttle(everything=True)
        cls._drain(sensor, pipeline)
        t = sensor.counters().throttle
        lost = t.get("suppressed", 0) - t.get("reported", 0)
        if lost:
            _log.warning(
                "throttled events not reported: their keys were evicted from the "
                "throttle table before their counts were",
                events=lost,
                **t,
            )

    @staticmethod
    def _drain(sensor: Sensor, pipeline: Pipeline) -> None:
        """What the ring holds at stop, a batch at a time. A storm that outruns
        us could keep the daemon from ever stopping, so this gives up after
        _STOP_DRAIN_S and says so."""
        deadline = time.monotonic() + _STOP_DRAIN_S
        while True:
            batch = sensor.ringbuf.consume()
            pipeline.feed(batch)
            if len(batch) < sensor.ringbuf.batch_max:
                return
            if time.monotonic() >= deadline:
                _log.warning(
                    "stopped with records still in the ring buffer: they are not reported",
                    drained_s=_STOP_DRAIN_S,
                )
                return

    def _loop(self, sensor: Sensor, pipeline: Pipeline, losses: _LossReporter) -> int:
        interval = self.config.lost_interval_s
        next_report = time.monotonic() + interval
        next_trim = time.monotonic() + _TRIM_INTERVAL_S
        next_flush = time.monotonic() + _THROTTLE_FLUSH_S
        state = self._state
        notifier = self._notifier
        notified_ready = not notifier.enabled
        watchdog_s = notifier.watchdog_s
        next_watchdog = time.monotonic()
        while not self._stop:
            pipeline.feed(sensor.ringbuf.poll(self.config.poll_ms))
            if self._reload:
                self._reload = False
                assert self._reloader is not None
                self._reloader.request()
            now = time.monotonic()
            state.last_poll = now  # GetHealth, /healthz: the loop is alive
            if now >= next_flush:
                next_flush = now + _THROTTLE_FLUSH_S
                sensor.flush_throttle()
            if watchdog_s is not None and now >= next_watchdog:
                next_watchdog = now + watchdog_s
                notifier.notify("WATCHDOG=1")
            if not notified_ready and not unready(state):
                notified_ready = True
                notifier.notify("READY=1", "STATUS=capturing")
            if now >= next_report:
                next_report = now + interval
                if self.config.policy_paths:
                    files = fingerprint(self.config.policy_paths)
                    if files != self._policy_files:
                        # Once per change: the reload thread reads what is there then.
                        self._policy_files = files
                        _log.info("policy files changed: reloading")
                        assert self._reloader is not None
                        self._reloader.request()
                losses.report()
                pipeline.cache.expire()
                if now >= next_trim:
                    next_trim = now + _TRIM_INTERVAL_S
                    heap.trim()
                for sink in pipeline.sinks:
                    if sink.error is not None:
                        _log.error("output failed, stopping", sink=sink.name, error=str(sink.error))
                        return 1
        if self._stop_signal is not None:
            _log.info("stopping", signal=signal.Signals(self._stop_signal).name)
        return 0
