"""Each output is told what it lost, not what the outputs beside it lost."""

from __future__ import annotations

import collections
import json

from factories import T0, GatedOutput, ListOutput, ev_at, exec_ev

from enrich import ProcessCache, UserNames
from export import LineFanout, QueuedWriter, Serializer
from tracer.core.clock import BootClock
from tracer.core.loader import KernelCounters
from tracer.daemon import _LossReporter
from tracer.pipeline import Pipeline


class _Kernel:
    """The sensor's counters, as the reporter reads them (drops by kind, cumulative)."""

    def __init__(self) -> None:
        self.dropped: dict[str, int] = {}

    def counters(self) -> KernelCounters:
        return KernelCounters(emitted={}, dropped=dict(self.dropped), evaluated={}, prefiltered={})


def _lost(lines: list[bytes]) -> list[dict[str, dict[str, int]]]:
    return [d["lost"] for d in map(json.loads, lines) if d["type"] == "lost"]


def test_a_writer_behind_a_fanout_reports_only_its_own_drops() -> None:
    ser = Serializer()
    fast, slow = ListOutput(), GatedOutput()
    file = QueuedWriter("file", fast, ser.line)
    log = QueuedWriter("eventlog", slow, ser.line, capacity=4)
    fanout = LineFanout(ser.line, [file, log])
    clock = BootClock()
    pipeline = Pipeline(ProcessCache("n1", clock, UserNames()), [fanout])
    kernel = _Kernel()
    by_output: dict[str, collections.Counter[str]] = {}
    reporter = _LossReporter(kernel, pipeline, clock, "n1", by_output)
    try:
        fanout.offer(ev_at(0))
        assert slow.entered.wait(10)  # the log's writer is stuck on event 0
        fanout.offer_many([ev_at(i) for i in range(1, 11)])  # 4 fit its queue: 6 drop
        kernel.dropped = {"file_open": 2}
        reporter.report()
    finally:
        slow.gate.set()
        fanout.close()
    # Both are told of the kernel's loss; only the log of its own drops.
    assert _lost(fast.written) == [{"kernel": {"file_open": 2}, "daemon": {}}]
    drops = {"process_exec": 3, "process_exit": 3}
    assert _lost(slow.written) == [{"kernel": {"file_open": 2}, "daemon": drops}]
    assert by_output == {"file": {}, "eventlog": drops}
    assert len(fast.written) == 12  # 11 events and the lost line


def test_an_output_behind_holds_its_byte_bound_of_lines_and_counts_the_rest() -> None:
    ser = Serializer()
    evs = [exec_ev(time=T0 + i) for i in range(21)]  # lines of one length
    size = len(ser.line(evs[0]))
    fast, slow = ListOutput(), GatedOutput()
    file = QueuedWriter("file", fast, ser.line)
    log = QueuedWriter("eventlog", slow, ser.line, capacity=65536, max_bytes=5 * size)
    fanout = LineFanout(ser.line, [file, log])
    try:
        fanout.offer(evs[0])
        assert slow.entered.wait(10)  # the log's writer is stuck on event 0
        fanout.offer_many(evs[1:])  # 5 lines' worth fit: 15 drop
        assert log.take_dropped() == {"process_exec": 15}
    finally:
        slow.gate.set()
        fanout.close()
    assert slow.written == [ser.line(evs[i]) for i in (0, 16, 17, 18, 19, 20)]
    assert len(fast.written) == 21 and file.take_dropped() == {}
