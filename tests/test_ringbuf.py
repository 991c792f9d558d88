"""The ring-buffer reader on the real capture object: bounded batches, waiting, order."""

from __future__ import annotations

import mmap
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BPF_DIR, new_marker

from policy import PolicyStore
from policy.kernel import PolicyMaps
from tracer.core import _ringsink, decode
from tracer.core.loader import Sensor, capture_sensor

pytestmark = pytest.mark.kernel


@pytest.fixture
def sensor() -> Iterator[Sensor]:
    with capture_sensor(BPF_DIR, "tp_btf", "tracepoint", 1 << 22) as s:
        yield s


def _marked_execs(batch: list[bytes], marker: str) -> list[int]:
    """The numbers N of the `/bin/true MARKER N` execs in a batch, in order."""
    out = []
    for raw in batch:
        rec = decode.decode(raw)
        if (
            isinstance(rec, decode.ExecRecord)
            and len(rec.args) == 3
            and rec.args[1] == marker.encode()
        ):
            out.append(int(rec.args[2]))
    return out


def test_a_backlog_is_taken_in_bounded_batches_in_kernel_order(sensor: Sensor) -> None:
    rb = sensor.ringbuf
    while len(rb.consume()) == rb.batch_max:  # whatever ran before us
        pass
    rb.batch_max = 7
    marker = new_marker("rb")
    for i in range(40):  # an exec, a fork and an exit each, at least
        subprocess.run(["/bin/true", marker, str(i)], check=True)
    sizes, seen = [], []
    while True:
        batch = rb.consume()
        sizes.append(len(batch))
        seen += _marked_execs(batch, marker)
        if len(batch) < rb.batch_max:
            break
    assert max(sizes) == 7 and len(sizes) >= 120 // 7
    assert seen == list(range(40))


def test_poll_takes_waiting_records_without_sleeping_its_timeout(sensor: Sensor) -> None:
    """Our records are added without a wake-up (tr_wakeup); poll must not sleep
    on a ring that already holds some."""
    rb = sensor.ringbuf
    while len(rb.consume()) == rb.batch_max:
        pass
    marker = new_marker("rbpoll")
    subprocess.run(["/bin/true", marker, "0"], check=True)
    t0 = time.monotonic()
    got = _marked_execs(rb.poll(20_000), marker)
    assert got == [0]
    assert time.monotonic() - t0 < 10  # a 20 s timeout not slept out


def test_a_selected_record_never_overtakes_its_process_exec(sensor: Sensor, tmp_path: Path) -> None:
    """Selected records have their own ring, drained first; while the bulk
    ring holds a backlog, one waits until the exec of its process (and
    everything before it) has been taken, so ancestry is never partial."""
    target = tmp_path / new_marker("sel")
    target.write_text("x")
    PolicyStore(PolicyMaps(sensor.obj), lsm_active=False).apply_texts(
        [("t.yaml", f"policies:\n  - name: t-sel\n    rules:\n      - event: file_open\n"
                    f'        match: {{path: ["{target}"]}}\n')]
    )  # fmt: skip
    rb = sensor.ringbuf
    while len(rb.consume()) >= rb.batch_max:
        pass
    rb.batch_max = 7
    marker = new_marker("backlog")
    for i in range(40):  # a bulk backlog of 120+ records
        subprocess.run(["/bin/true", marker, str(i)], check=True)
    cat = subprocess.Popen(["cat", str(target)], stdout=subprocess.PIPE)
    assert cat.communicate()[0] == b"x"
    order: list[str] = []
    while True:
        batch = rb.consume()
        for raw in batch:
            rec = decode.decode(raw)
            if isinstance(rec, decode.ExecRecord) and rec.task.pid == cat.pid:
                order.append("exec")
            elif isinstance(rec, decode.FileOpenRecord) and rec.task.pid == cat.pid:
                order.append("open")
        if len(batch) < rb.batch_max and "open" in order:
            break
    assert order == ["exec", "open"]


def _bpf_map_mappings() -> list[tuple[int, int]]:
    """(length, Rss bytes) of each BPF map mapped into this process."""
    out: list[tuple[int, int]] = []
    length = None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        first = line.split(None, 1)[0] if line else ""
        if "-" in first and not first.endswith(":"):
            lo, hi = (int(x, 16) for x in first.split("-"))
            length = hi - lo if "anon_inode:bpf-map" in line else None
        elif length is not None and line.startswith("Rss:"):
            out.append((length, int(line.split()[1]) * 1024))
    return out


def test_each_rings_data_is_mapped_once() -> None:
    """libbpf maps a ring's data twice, and every page of both is resident:
    VmRSS counted the ring twice. Our reader maps it once."""
    size, selected = 1 << 21, 1 << 23  # no mapping of ours is either, or twice either
    with capture_sensor(BPF_DIR, "tp_btf", "tracepoint", size, selected_ringbuf_size=selected):
        maps = _bpf_map_mappings()
    page = mmap.PAGESIZE
    for ring in (size, selected):
        assert (page + ring, page + ring) in maps  # the producer's page and the data, resident
        assert not [m for m in maps if m[0] == page + 2 * ring]  # libbpf's layout


def _pad(i: int) -> str:
    return "x" * (i * 13 % 997)


def test_kernel_records_that_wrap_come_out_whole() -> None:
    """A small ring, execs with arguments of every length: many records
    straddle the end of the data and are copied in two pieces."""
    size = 1 << 15
    with capture_sensor(BPF_DIR, "tp_btf", "tracepoint", size) as sensor:
        m = sensor.obj.map("tr_events")
        ring = _ringsink.Ring(m.fd, m.max_entries)
        consumer = mmap.mmap(m.fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ)
        try:
            batch: list[bytes] = []
            ring.consume(batch)
            pos = struct.unpack_from("<Q", consumer, 0)[0]
            marker = new_marker("wrap")
            seen: list[int] = []
            straddled = 0
            for i in range(300):
                subprocess.run(["/bin/true", marker, str(i), _pad(i)], check=True)
                batch = []
                ring.consume(batch)
                for raw in batch:
                    start = (pos + 8) % size
                    straddled += start + len(raw) > size
                    pos += (len(raw) + 8 + 7) & ~7
                    rec = decode.decode(raw)
                    if isinstance(rec, decode.ExecRecord) and rec.args[1:2] == (marker.encode(),):
                        assert rec.args[3] == _pad(int(rec.args[2])).encode()
                        seen.append(int(rec.args[2]))
                # every record was counted: none was discarded or skipped
                assert pos == struct.unpack_from("<Q", consumer, 0)[0]
        finally:
            consumer.close()
            ring.close()
    assert seen == list(range(300))
    assert pos > 4 * size and straddled >= 4
