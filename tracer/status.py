"""What GetHealth and GetInfo answer: the daemon's state, read from gRPC threads.

Everything here is read without locks from counters the pipeline thread
updates; a copy of a dict is one atomic step under the GIL, and an answer a
few events out of date is still a true answer.
"""

from __future__ import annotations

import collections
import platform
import time
from dataclasses import dataclass, field

from enrich import PodWatcher, ProcessCache
from export import Sink
from export.hub import Hub
from export.proto_gen import tracer_v1_pb2 as pb
from policy import PolicyStore, WorkloadMap
from tracer import __version__
from tracer.core.loader import Sensor

# The capture loop returns from each poll within its poll timeout (10 ms);
# this much longer without a poll means it is stuck.
STALLED_AFTER_S = 5.0


@dataclass(slots=True)
class CaptureState:
    """Set by the daemon as it starts and runs; read by DaemonStatus."""

    node: str
    process_hooks: str
    capture_mode: str
    ringbuf_size: int
    hub: Hub | None
    start_wall_ns: int = field(default_factory=time.time_ns)
    start_mono: float = field(default_factory=time.monotonic)
    sensor: Sensor | None = None
    last_poll: float = field(default_factory=time.monotonic)  # monotonic s
    stopping: bool = False
    events: collections.Counter[str] = field(default_factory=collections.Counter)
    # Totals of events dropped in user space, by output name, then kind.
    daemon_lost: dict[str, collections.Counter[str]] = field(default_factory=dict)
    # What /metrics and /readyz read besides the above (tracer/metrics.py).
    outputs: list[Sink] = field(default_factory=list)  # each writer on its own
    cache: ProcessCache | None = None
    pods: PodWatcher | None = None  # None: no cluster configured
    policies: PolicyStore | None = None
    workloads: WorkloadMap | None = None  # the kernel's cgroup -> workload verdicts
    capturing: bool = False  # the capture loop has started


def alive(s: CaptureState) -> bool:
    """Starting up, or the capture loop turned within STALLED_AFTER_S (it
    turns every poll, 10 ms). Loading and verifying the programs takes
    seconds on a busy node: a liveness probe that counted it as a stall
    would restart the daemon before it ever captured (/readyz says it is
    not capturing yet)."""
    return not s.capturing or time.monotonic() - s.last_poll <= STALLED_AFTER_S


def unready(s: CaptureState) -> list[str]:
    """Why the daemon is not ready to report events; empty when it is.

    Ready: every program attached and the loop capturing, every output open,
    and the node's pods listed once when a cluster is configured (before
    that, events would lack their pod).
    """
    problems = []
    if s.stopping:
        problems.append("stopping")
    if s.sensor is None or not s.capturing:
        problems.append("programs not attached yet")
    for out in s.outputs:
        if out.error is not None:
            problems.append(f"output {out.name} failed: {out.error}")
    if s.pods is not None and not s.pods.ready.is_set():
        problems.append("pod watch not synced yet (no pod list from the API server)")
    if not alive(s):
        problems.append(f"capture loop stalled (no turn in {STALLED_AFTER_S:.0f} s)")
    return problems


def _subscribers(s: CaptureState) -> int:
    return s.hub.subscribers if s.hub is not None else 0


class DaemonStatus:
    def __init__(self, state: CaptureState) -> None:
        self._state = state

    def health(self) -> pb.GetHealthResponse:
        s = self._state
        now = time.monotonic()
        since_poll = now - s.last_poll
        if s.stopping:
            status = pb.GetHealthResponse.STATUS_STOPPING
        elif not alive(s):
            status = pb.GetHealthResponse.STATUS_STALLED
        else:
            status = pb.GetHealthResponse.STATUS_SERVING
        resp = pb.GetHealthResponse(status=status, subscribers=_subscribers(s))
        resp.since_last_poll.FromNanoseconds(int(since_poll * 1e9))
        resp.uptime.FromNanoseconds(int((now - s.start_mono) * 1e9))
        return resp

    def info(self) -> pb.GetInfoResponse:
        s = self._state
        resp = pb.GetInfoResponse(
            version=__version__,
            kernel=platform.release(),
            node=s.node,
            process_hooks=s.process_hooks,
            capture_mode=s.capture_mode,
            ringbuf_size=s.ringbuf_size,
            events=dict(s.events),
            subscribers=_subscribers(s),
        )
        resp.start_time.FromNanoseconds(s.start_wall_ns)
        if s.sensor is not None:
            counters = s.sensor.counters()
            resp.kernel_emitted.update(counters.emitted)
            resp.kernel_lost.update(
                {k: n + counters.limited.get(k, 0) for k, n in counters.dropped.items()}
            )
            resp.kernel_limited.update(counters.limited)
        for output, counts in list(s.daemon_lost.items()):
            resp.daemon_lost[output].by_kind.update(dict(counts))
        grpc_lost = dict(s.hub.subscriber_lost) if s.hub is not None else {}
        if grpc_lost:
            resp.daemon_lost["grpc_subscribers"].by_kind.update(grpc_lost)
        return resp
