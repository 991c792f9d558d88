"""The daemon: kernel -> ring buffer -> decode -> enrich -> export fan-out.

One thread polls the ring buffer and runs decode and enrichment in
order (the process cache must see fork/exec/exit in kernel order); each
sink serializes and writes on its own thread, so a slow output never
holds the ring buffer back.
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
from tracer import decode, system
from tracer.clock import BootClock
from tracer.events import Event, Lost
from tracer.loader import ConfigError, KernelCounters, Sensor, check_ringbuf_size, process_sensor
from tracer.probe import probe

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

    def __init__(self, sensor: Sensor, pipeline: Pipeline, clock: BootClock, node: str) -> None:
        self._sensor = sensor
        self._pipeline = pipeline
        self._clock = clock
        self._node = node
        self._seen_kernel: dict[str, int] = {}
        self.total_kernel: collections.Counter[str] = collections.Counter()
        self.total_daemon: collections.Counter[str] = collections.Counter()

    def _kernel_delta(self, counters: KernelCounters) -> dict[str, int]:
        delta = {}
        for kind, n in counters.dropped.items():
            d = n - self._seen_kernel.get(kind, 0)
            if d:
                delta[kind] = d
            self._seen_kernel[kind] = n
        return delta

    def report(self) -> None:
        kernel = self._kernel_delta(self._sensor.counters())
        self.total_kernel.update(kernel)
        shared = dict(self._pipeline.malformed)
        self._pipeline.malformed.clear()
        now = self._clock.wall(self._clock.now_boot())
        for sink in self._pipeline.sinks:
            daemon = collections.Counter(shared)
            daemon.update(sink.take_dropped())
            self.total_daemon.update(daemon)
            if kernel or daemon:
                sink.offer(Lost(time=now, node=self._node, kernel=kernel, daemon=dict(daemon)))


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
        pipeline = Pipeline(cache, sinks)
        try:
            with process_sensor(cfg.bpf_dir, variant, cfg.ringbuf_size) as sensor:
                # Attached first, then /proc: a process that starts in between
                # is in the ring buffer, and its records win over the snapshot.
                n = cache.bootstrap(procfs.scan())
                _log.info(
                    "ready",
                    startup_ms=round((time.perf_counter() - t0) * 1000, 1),
                    procfs_processes=n,
                    node=cfg.node,
                )
                losses = _LossReporter(sensor, pipeline, clock, cfg.node)
                status = self._loop(sensor, pipeline, losses)
                pipeline.feed(sensor.ringbuf.consume())
                losses.report()
        finally:
            for sink in sinks:
                sink.close()
        _log.info(
            "stopped",
            events=dict(pipeline.events),
            lost_kernel=dict(losses.total_kernel),
            lost_daemon=dict(losses.total_daemon),
            cache=cache.stats,
        )
        return status

    def _loop(self, sensor: Sensor, pipeline: Pipeline, losses: _LossReporter) -> int:
        interval = self.config.lost_interval_s
        next_report = time.monotonic() + interval
        while not self._stop:
            pipeline.feed(sensor.ringbuf.poll(self.config.poll_ms))
            now = time.monotonic()
            if now >= next_report:
                next_report = now + interval
                losses.report()
                pipeline.cache.expire()
                for sink in pipeline.sinks:
                    if sink.error is not None:
                        _log.error("output failed, stopping", sink=sink.name, error=str(sink.error))
                        return 1
        return 0
