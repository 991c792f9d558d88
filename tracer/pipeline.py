"""decode -> enrich -> fan-out, for one batch of ring-buffer records at a time."""

from __future__ import annotations

import collections
from typing import Protocol

import structlog

from enrich import ProcessCache
from export import Sink
from tracer.core import build, decode
from tracer.core.events import Event, PolicyMatch
from tracer.workloads import WorkloadSync

_log = structlog.get_logger(component="pipeline")


_CHUNK = 256  # records decoded between two hand-offs to the sinks


class Verdicts(Protocol):
    """Names the policy rule behind a kernel verdict (policy.PolicyStore)."""

    def match(self, v: decode.Verdict) -> PolicyMatch | None: ...


class _NoPolicies:
    def match(self, v: decode.Verdict) -> PolicyMatch | None:
        return None


class Pipeline:
    """Decode and enrich records in kernel order, then offer events to every sink."""

    def __init__(
        self, cache: ProcessCache, sinks: list[Sink], verdicts: Verdicts | None = None
    ) -> None:
        self.cache = cache
        self.sinks = sinks
        self.verdicts: Verdicts = verdicts or _NoPolicies()
        self.workloads: WorkloadSync | None = None  # set once the capture object is loaded
        self.malformed: collections.Counter[str] = collections.Counter()
        self.events: collections.Counter[str] = collections.Counter()
        self.ignored = 0

    def feed(self, batch: list[bytes]) -> None:
        """Turn ring-buffer records into events, handed to the sinks a chunk at a time.

        A backlog drains in batches of up to 16,384 records (RingBuffer).
        Offered at once, one would fill the output queues before their
        threads had a turn; a chunk is ~2 ms of work, which the writers
        take on while the next one is decoded, so outputs keep pace.
        """
        if self.workloads is not None:
            self.workloads.poll()  # pods changed since the last batch: decide again
        for i in range(0, len(batch), _CHUNK):
            self._feed(batch[i : i + _CHUNK])

    def _feed(self, batch: list[bytes]) -> None:
        cache = self.cache
        node = cache.node
        match = self.verdicts.match
        workloads = self.workloads
        out: list[Event] = []
        emit = out.append
        for raw in batch:
            try:
                rec = decode.decode(raw)
            except decode.WireError as exc:
                self.malformed["malformed"] += 1
                _log.warning("undecodable record dropped", error=str(exc), size=len(raw))
                continue
            # Opens and connects first: they are most of what is posted.
            if isinstance(rec, decode.FileOpenRecord):
                emit(build.file_open(rec, cache.context(rec.task), node, match(rec.verdict)))
            elif isinstance(rec, decode.ConnectRecord):
                emit(build.connect(rec, cache.context(rec.task), node, match(rec.verdict)))
            elif isinstance(rec, decode.ExecRecord):
                ctx = cache.on_exec(rec)  # always: the cache needs every exec
                if workloads is not None:
                    workloads.on_exec(rec.task.cgroup_id)
                action = rec.verdict.action
                if action == decode.ACTION_IGNORE:
                    self.ignored += 1
                    continue
                policy = match(rec.verdict) if action != decode.ACTION_NONE else None
                emit(build.process_exec(ctx, node, policy))
            elif isinstance(rec, decode.ForkRecord):
                cache.on_fork(rec)
            elif isinstance(rec, decode.ExitRecord):
                emit(build.process_exit(rec, cache.on_exit(rec), node))
            elif isinstance(rec, decode.SummaryRecord):
                ctx = cache.context(rec.task)
                emit(build.policy_summary(rec, ctx, node, match(rec.verdict)))
            elif isinstance(rec, decode.PrivRecord):
                ctx = cache.context(rec.task)
                emit(build.privilege_change(rec, ctx, node, match(rec.verdict)))
            elif isinstance(rec, decode.FileAttrRecord):
                emit(build.file_attr(rec, cache.context(rec.task), node, match(rec.verdict)))
            else:
                cache.on_cgroup(rec)
                if workloads is not None:
                    workloads.on_cgroup(rec)
        if out:
            self.events.update(ev.type for ev in out)
            for sink in self.sinks:
                sink.offer_many(out)
