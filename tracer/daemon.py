"""The daemon: kernel -> ring buffer -> decode -> enrich -> export fan-out.

One thread polls the ring buffer and runs decode and enrichment in
order (the process cache must see fork/exec/exit in kernel order); each
sink serializes and writes on its own thread, so a slow output never
holds the ring buffer back. The gRPC API is one more sink (export/hub.py)
with its own server threads (export/grpc_server.py).
"""

from __future__ import annotations

import collections
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import structlog

from enrich import ProcessCache, UserNames, procfs
from export import QueuedWriter, RotatingFile, Serializer, Sink
from export.grpc_server import GrpcConfig, GrpcServer
from export.hub import Hub
from tracer import decode, system
from tracer.clock import BootClock
from tracer.events import Event, LossCounts, Lost
from tracer.loader import ConfigError, KernelCounters, Sensor, check_ringbuf_size, process_sensor
from tracer.probe import probe
from tracer.status import CaptureState, DaemonStatus

_log = structlog.get_logger(component="daemon")

DEFAULT_BPF_DIR = Path(__file__).resolve().parent.parent / "build" / "bpf"


@dataclass(slots=True)
class Config:
    bpf_dir: Path = DEFAULT_BPF_DIR
    node: str = field(default_factory=socket.gethostname)
    ringbuf_size: int = 16 << 20
    process_hooks: str = "auto"  # auto | tp_btf | raw_tp
    export_file: Path | None = None  # None: stdout
    export_max_bytes: int = 100 << 20
    export_backups: int = 5
    queue_capacity: int = 65536
    cache_max: int = 65536
    exit_grace_s: float = 30.0
    ancestor_depth: int = 64
    lost_interval_s: float = 1.0
    poll_ms: int = 100
    grpc: GrpcConfig | None = field(default_factory=GrpcConfig)  # None: no API

    def validate(self) -> None:
        check_ringbuf_size(self.ringbuf_size)
        if self.process_hooks not in ("auto", "tp_btf", "raw_tp"):
            raise ConfigError(
                f"--process-hooks must be auto, tp_btf or raw_tp, not {self.process_hooks!r}"
            )
        for name in ("queue_capacity", "cache_max", "export_max_bytes"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name.replace('_', '-')} must be positive")
        if self.ancestor_depth < 0:
            raise ConfigError("ancestor-depth must be zero or more")
        g = self.grpc
        if g is not None:
            if g.listen is not None and g.tls is None:
                raise ConfigError(
                    f"--grpc-listen {g.listen} needs --tls-cert and --tls-key: "
                    "tracer does not serve events over plaintext TCP"
                )
            if g.listen is None and g.tls is not None:
                raise ConfigError("--tls-cert/--tls-key/--tls-client-ca need --grpc-listen")
            if g.listen is not None and not _host_port(g.listen):
                raise ConfigError(f"--grpc-listen wants HOST:PORT, not {g.listen!r}")
            if g.socket is None and g.listen is None:
                raise ConfigError("--no-grpc-socket leaves the API no listener: add --grpc-listen")
            if g.queue_capacity <= 0 or g.max_subscribers <= 0:
                raise ConfigError("grpc-queue-size and grpc-max-subscribers must be positive")


def _host_port(text: str) -> bool:
    host, sep, port = text.rpartition(":")
    return bool(sep and host and port.isdigit() and int(port) < 65536)


class Pipeline:
    """Decode and enrich one batch of records, then offer events to every sink."""

    def __init__(self, cache: ProcessCache, sinks: list[Sink]) -> None:
        self.cache = cache
        self.sinks = sinks
        self.malformed: collections.Counter[str] = collections.Counter()
        self.events: collections.Counter[str] = collections.Counter()

    def _emit(self, ev: Event) -> None:
        self.events[ev.type] += 1
        for sink in self.sinks:
            sink.offer(ev)

    def feed(self, batch: list[bytes]) -> None:
        cache = self.cache
        for raw in batch:
            try:
                rec = decode.decode(raw)
            except decode.WireError as exc:
                self.malformed["malformed"] += 1
                _log.warning("undecodable record dropped", error=str(exc), size=len(raw))
                continue
            if isinstance(rec, decode.ExecRecord):
                self._emit(cache.on_exec(rec))
            elif isinstance(rec, decode.ForkRecord):
                cache.on_fork(rec)
            else:
                self._emit(cache.on_exit(rec))


class _LossReporter:
    """Turns counter deltas into one Lost event per sink, when there is loss."""

    def __init__(
        self,
        sensor: Sensor,
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
        self._daemon = {sink.name: LossCounts() for sink in pipeline.sinks}
        self.total_kernel: collections.Counter[str] = collections.Counter()
        self.total_daemon: collections.Counter[str] = collections.Counter()
        self.by_sink = by_sink

    def _kernel_delta(self, counters: KernelCounters) -> dict[str, int]:
        delta = {}
        for kind, n in counters.dropped.items():
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
        for sink in self._pipeline.sinks:
            pending = self._daemon[sink.name]
            pending.add(shared)
            pending.add(sink.take_dropped())
            daemon = pending.take()
            self.total_daemon.update(daemon)
            self.by_sink.setdefault(sink.name, collections.Counter()).update(daemon)
            if kernel or daemon:
                sink.offer(Lost(time=now, node=self._node, kernel=kernel, daemon=daemon))


class Daemon:
    def __init__(self, config: Config) -> None:
        config.validate()
        self.config = config
        self._stop = False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        _log.info("stopping", signal=signal.Signals(signum).name)
        self._stop = True

    def stop(self) -> None:
        self._stop = True

    def _sinks(self, serializer: Serializer) -> list[Sink]:
        cfg = self.config
        if cfg.export_file is not None:
            f = RotatingFile(cfg.export_file, cfg.export_max_bytes, cfg.export_backups)
            return [QueuedWriter("file", f, serializer.line, cfg.queue_capacity, on_close=f.close)]
        return [QueuedWriter("stdout", sys.stdout.buffer, serializer.line, cfg.queue_capacity)]

    def run(self) -> int:
        cfg = self.config
        t0 = time.perf_counter()
        system.preflight()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        report = probe(cfg.bpf_dir)
        variant = cfg.process_hooks if cfg.process_hooks != "auto" else report.process_hooks
        if variant == "none":
            raise system.PreflightError(
                "this kernel can attach neither tp_btf nor raw_tp programs; "
                "run `tracer probe` for details"
            )
        _log.info(
            "capture mode chosen",
            process_hooks=variant,
            capture_mode=report.capture_mode,
            kernel=report.kernel,
            probe_ms=round(report.seconds * 1000, 1),
        )
        clock = BootClock()
        cache = ProcessCache(
            cfg.node,
            clock,
            UserNames(),
            max_entries=cfg.cache_max,
            exit_grace_ns=int(cfg.exit_grace_s * 1e9),
            ancestor_depth=cfg.ancestor_depth,
        )
        serializer = Serializer()
        sinks = self._sinks(serializer)
        hub = None
        server = None
        if cfg.grpc is not None:
            hub = Hub(
                cfg.node,
                lambda: clock.wall(clock.now_boot()),
                capacity=cfg.queue_capacity,
                subscriber_capacity=cfg.grpc.queue_capacity,
                max_subscribers=cfg.grpc.max_subscribers,
            )
            sinks.append(hub)
        pipeline = Pipeline(cache, sinks)
        self._state = CaptureState(
            node=cfg.node,
            process_hooks=variant,
            capture_mode=report.capture_mode,
            ringbuf_size=cfg.ringbuf_size,
            hub=hub,
            events=pipeline.events,
        )
        losses: _LossReporter | None = None
        try:
            if hub is not None:
                assert cfg.grpc is not None
                # Bound before any BPF is loaded: a socket in use fails fast.
                server = GrpcServer(cfg.grpc, hub, DaemonStatus(self._state))
            with process_sensor(cfg.bpf_dir, variant, cfg.ringbuf_size) as sensor:
                # Attached first, then /proc: a process that starts in between
                # is in the ring buffer, and its records win over the snapshot.
                n = cache.bootstrap(procfs.scan())
                losses = _LossReporter(sensor, pipeline, clock, cfg.node, self._state.daemon_lost)
                self._state.sensor = sensor
                if server is not None:
                    server.start()
                _log.info(
                    "ready",
                    startup_ms=round((time.perf_counter() - t0) * 1000, 1),
                    procfs_processes=n,
                    node=cfg.node,
                )
                status = self._loop(sensor, pipeline, losses)
                self._state.stopping = True
                if server is not None:
                    server.stopping()
                pipeline.feed(sensor.ringbuf.consume())
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

    def _loop(self, sensor: Sensor, pipeline: Pipeline, losses: _LossReporter) -> int:
        interval = self.config.lost_interval_s
        next_report = time.monotonic() + interval
        state = self._state
        while not self._stop:
            pipeline.feed(sensor.ringbuf.poll(self.config.poll_ms))
            now = time.monotonic()
            state.last_poll = now  # GetHealth: the loop is alive
            if now >= next_report:
                next_report = now + interval
                losses.report()
                pipeline.cache.expire()
                for sink in pipeline.sinks:
                    if sink.error is not None:
                        _log.error("output failed, stopping", sink=sink.name, error=str(sink.error))
                        return 1
        return 0
