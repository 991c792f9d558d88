"""The event-log writer and readers on synthetic events: rotation, retention, bad input.

Events are built as the daemon builds them (tracer.core.events) and written
by the real sink and the real Serializer; the commands run as a user
runs them. No kernel needed.
"""

from __future__ import annotations

import io
import itertools
import json
import subprocess
import time
from pathlib import Path

import pytest
import zstandard
from conftest import tracer_cmd
from factories import log_process

from export import LineFanout, QueuedWriter, RotatingFile, eventlog
from export.eventlog import EventLog, EventLogConfig
from export.jsonl import Serializer
from forensics import log
from forensics.index import HAS_EXEC, HAS_EXIT, PROCFS, scan
from forensics.log import Problems, list_segments
from forensics.log import events as read_events
from tracer.core.events import (
    Event,
    ExitStatus,
    FileInfo,
    FileOpen,
    ProcessExec,
    ProcessExit,
)

T0 = 1_790_000_000_000_000_000  # 2026-09-21, ns


def _chain() -> list[ProcessExec | ProcessExit | FileOpen]:
    """init (from /proc) -> bash -> cat, which reads a file; then exits."""
    init = log_process(1, None, "/sbin/init", T0 - 10**12, ("procfs",))
    bash = log_process(100, init, "/usr/bin/bash", T0)
    cat = log_process(101, bash, "/usr/bin/cat", T0 + 1000)
    fi = FileInfo("/etc/shadow", ("O_RDONLY",), 0, 3, None, "tp", False, True)
    return [
        ProcessExec(time=T0, node="n1", process=bash, parent=init, ancestors=()),
        ProcessExec(time=T0 + 1000, node="n1", process=cat, parent=bash, ancestors=(init,)),
        FileOpen(
            time=T0 + 2000,
            node="n1",
            process=cat,
            parent=bash,
            ancestors=(init,),
            file=fi,
            policy=None,
        ),
        ProcessExit(
            time=T0 + 3000,
            node="n1",
            process=cat,
            parent=bash,
            ancestors=(init,),
            exit=ExitStatus(0, None),
        ),
    ]


def _many(n: int) -> list[ProcessExec]:
    init = log_process(1, None, "/sbin/init", T0 - 10**12, ("procfs",))
    return [
        ProcessExec(
            time=T0 + i * 1000,
            node="n1",
            process=log_process(1000 + i, init, "/usr/bin/true", T0 + i * 1000),
            parent=init,
            ancestors=(),
        )
        for i in range(n)
    ]


def _write(log: Path, evs: list, **cfg: float) -> None:  # type: ignore[type-arg]
    sink = EventLog(EventLogConfig(directory=log, **cfg))  # type: ignore[arg-type]
    for ev in evs:
        sink.offer(ev)
    sink.close()


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(tracer_cmd(*args), capture_output=True, text=True, timeout=60)


def test_segments_rotate_compress_and_index(tmp_path: Path) -> None:
    log = tmp_path / "ev"
    _write(log, _many(300), segment_bytes=4000, flush_interval_s=0.05)
    names = sorted(p.name for p in log.iterdir() if not p.name.startswith("."))
    assert not [n for n in names if n.endswith(".jsonl")], names  # all closed, compressed
    packed = [n for n in names if n.endswith(".jsonl.zst")]
    assert len(packed) > 5 and len([n for n in names if n.endswith(".idx")]) == len(packed)
    problems = Problems(out=None)
    got = [ev for seg in list_segments([log]) for _, ev in read_events(seg, problems)]
    assert problems.count == 0
    assert [e["process"]["pid"] for e in got] == [1000 + i for i in range(300)]
    sidecars = [json.loads((log / n).read_bytes()) for n in names if n.endswith(".idx")]
    assert sum(s["events"] for s in sidecars) == 300
    # Lines are exactly the JSON-lines output.
    ser = Serializer()
    first = zstandard.decompress((log / packed[0]).read_bytes()).splitlines(keepends=True)[0]
    assert first == ser.line(_many(1)[0])


def test_a_backlog_is_written_in_frames_of_bounded_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A writer that fell behind takes its whole queue at once; the frames it
    # makes of it stay small (memory), and all of them read back in order.
    monkeypatch.setattr(eventlog, "_FRAME_BYTES", 4096)
    log = tmp_path / "ev"
    evs = _many(300)
    sink = EventLog(EventLogConfig(directory=log))
    sink.offer_many(evs)
    sink.close()
    (seg,) = list_segments([log])
    data, sizes = seg.path.read_bytes(), []
    while data:
        d = zstandard.ZstdDecompressor().decompressobj()
        sizes.append(len(d.decompress(data)))
        data = d.unused_data
    longest = max(len(Serializer().line(e)) for e in evs)
    total = sum(len(Serializer().line(e)) for e in evs)
    assert sum(sizes) == total and len(sizes) >= total // (4096 + longest)
    assert max(sizes) < 4096 + longest
    got = [ev["process"]["pid"] for _, ev in read_events(seg, Problems(out=None))]
    assert got == [1000 + i for i in range(300)]


def test_the_index_has_ancestors_named_only_by_descendants(tmp_path: Path) -> None:
    # init has no events of its own: only bash's and cat's name it.
    log = tmp_path / "ev"
    _write(log, _chain())
    (seg,) = list_segments([log])
    sidecar = json.loads(seg.sidecar.read_bytes())
    rows = sidecar["processes"]
    assert sorted(r[0] for r in rows.values()) == [1, 100, 101]
    init = rows[f"n1:{T0 - 10**12}:1"]
    assert init[1] is None and init[2] == "/sbin/init" and init[8] == PROCFS
    assert init[4] == init[5] == T0  # seen when bash, its first descendant, was
    assert rows[f"n1:{T0 + 1000}:101"][8] == HAS_EXEC | HAS_EXIT
    assert sidecar["events"] == 4  # an ancestor's row is not an event
    # A segment without its sidecar is scanned into the same index.
    assert json.loads(scan(seg, Problems(out=None)).sidecar(seg.plain_name)) \
        == sidecar
    # And `tracer tree` selects it by pid, with its descendants under it.
    r = _run("tree", "--from", str(log), "-o", "json", "--pid", "1")
    assert r.returncode == 0, r.stderr
    (root,) = json.loads(r.stdout)["roots"]
    assert root["process"]["binary"] == "/sbin/init"
    assert [c["process"]["pid"] for c in root["children"]] == [100]


def test_the_open_segment_is_flushed_on_time_and_readable_by_tracer_events(tmp_path: Path) -> None:
    log = tmp_path / "ev"
    sink = EventLog(EventLogConfig(directory=log, flush_interval_s=0.2))
    try:
        sink.offer(_many(1)[0])
        seg = log / "events-00000001.jsonl.zst"
        deadline = time.monotonic() + 5
        while seg.stat().st_size == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert seg.stat().st_size > 0  # no further event was needed to flush it
        r = _run("events", "--from", str(seg), "-o", "compact")
        assert r.returncode == 0 and "/usr/bin/true arg1000" in r.stdout, r
        with pytest.raises(RuntimeError, match="in use by another tracer"):
            EventLog(EventLogConfig(directory=log))
    finally:
        sink.close()


def test_retention_deletes_the_oldest_segments_first(tmp_path: Path) -> None:
    log = tmp_path / "ev"
    _write(log, _many(600), segment_bytes=4000, max_bytes=6000, flush_interval_s=0.05)
    packed = sorted(log.glob("events-*.jsonl.zst"))
    total = sum(p.stat().st_size for p in packed)
    assert total <= 6000 and packed, [p.name for p in packed]
    assert packed[0].name != "events-00000001.jsonl.zst"
    assert not (log / "events-00000001.idx").exists()
    r = _run("replay", "--from", str(log))
    assert r.returncode == 0
    pids = [json.loads(x)["process"]["pid"] for x in r.stdout.splitlines()]
    assert pids and pids[-1] == 1599 and pids == sorted(pids)


def test_a_segment_left_by_a_crash_is_indexed_and_compressed_at_start(tmp_path: Path) -> None:
    log = tmp_path / "ev"
    log.mkdir()
    ser = Serializer()
    (log / "events-00000007.jsonl").write_bytes(
        b"".join(ser.line(e) for e in _chain()) + b'{"type":"process_ex'
    )
    EventLog(EventLogConfig(directory=log)).close()
    assert (log / "events-00000007.jsonl.zst").exists() and (log / "events-00000007.idx").exists()
    assert not (log / "events-00000008.jsonl").exists()  # a run that wrote nothing leaves nothing
    r = _run("tree", "--from", str(log), "--pid", "101")
    assert r.returncode == 3, r  # the torn line is still there, and still skipped
    assert "events-00000007.jsonl.zst:5: last line is torn" in r.stderr
    assert "/usr/bin/cat arg101" in r.stdout and "/etc/shadow" in r.stdout


def _segment(tmp_path: Path, body: bytes, name: str = "events-00000001.jsonl") -> Path:
    d = tmp_path / "copied"
    d.mkdir(exist_ok=True)
    (d / name).write_bytes(body)
    return d


def _lines() -> list[bytes]:
    ser = Serializer()
    return [ser.line(e) for e in _chain()]


def test_torn_last_line_is_skipped_with_a_warning(tmp_path: Path) -> None:
    lines = _lines()
    d = _segment(tmp_path, b"".join(lines[:3]) + lines[3][:40])
    r = _run("replay", "--from", str(d))
    assert r.returncode == 3
    assert "events-00000001.jsonl:4: last line is torn" in r.stderr
    assert len(r.stdout.splitlines()) == 3


def test_not_json_and_newer_schema_lines_are_skipped_by_line(tmp_path: Path) -> None:
    lines = _lines()
    newer = json.loads(lines[2])
    newer["type"] = "process_ptrace"
    body = lines[0] + b"garbage {\n" + json.dumps(newer).encode() + b"\n" + b"".join(lines[1:])
    d = _segment(tmp_path, body)
    r = _run("tree", "--from", str(d), "--binary", "cat$")
    assert r.returncode == 3, r
    assert "events-00000001.jsonl:2: not JSON" in r.stderr
    assert "events-00000001.jsonl:3: event type 'process_ptrace' is not known" in r.stderr
    assert "newer schema" in r.stderr
    assert "open /etc/shadow" in r.stdout  # the rest is there


def _forged(line: bytes, path: tuple[str | int, ...], value: object) -> bytes:
    ev = json.loads(line)
    node = ev
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return json.dumps(ev).encode() + b"\n"


def test_lines_with_fields_of_the_wrong_type_are_skipped_and_the_field_named(
    tmp_path: Path,
) -> None:
    # Valid JSON of the wrong shape (a forged or damaged log): every reader
    # names the line and the field, and goes on; none stops with a traceback.
    # (Five: the readers show five problems a file, then a count.)
    lines = _lines()
    opened = next(x for x in lines if b'"file_open"' in x)
    forged = {
        "process.pid is a string, not a number": _forged(opened, ("process", "pid"), "7"),
        "process.args[1] is a number, not a string": _forged(opened, ("process", "args"), ["a", 1]),
        "ancestors[0].binary is a number, not a string":
            _forged(opened, ("ancestors", 0, "binary"), 5),
        "policy is a list, not an object": _forged(opened, ("policy",), []),
        "process.pod.labels['\\x1b[2J'] is a number, not a string":
            _forged(opened, ("process", "pod"), {"labels": {"\x1b[2J": 1}}),
    }
    body = b"".join(lines) + b"".join(forged.values())
    d = _segment(tmp_path, body)
    first = len(lines) + 1
    for args, rc in (
        (["replay", "-o", "compact", "--from", str(d)], 3),
        (["replay", "-o", "compact", "--type", "file_open", "--from", str(d)], 3),
        (["tree", "--binary", "cat$", "--from", str(d)], 3),
        (["events", "-o", "compact", "--from", str(d / "events-00000001.jsonl")], 1),
    ):
        r = _run(*args)
        assert r.returncode == rc and "Traceback" not in r.stderr, (args, r.stderr)
        for n, problem in enumerate(forged, first):
            assert f"events-00000001.jsonl:{n}: " in r.stderr and problem in r.stderr, (
                args, problem, r.stderr)
        assert "\x1b" not in r.stderr
        assert "/etc/shadow" in r.stdout, args  # the good lines are all there


def _zstd(b: bytes) -> bytes:
    return zstandard.ZstdCompressor(write_checksum=True).compress(b)


def test_truncated_and_corrupt_compressed_segments_give_what_precedes_the_damage(
    tmp_path: Path,
) -> None:
    ser = Serializer()
    lines = [ser.line(e) for e in _many(8000)]
    # Frames as the daemon writes them, one per batch: large
    # ones, and small ones of which several end within one read chunk.
    cuts = [0, 3000, 7990, *range(7991, 8001)]
    packed = b"".join(_zstd(b"".join(lines[a:b])) for a, b in itertools.pairwise(cuts))
    name = "events-00000001.jsonl.zst"
    d0 = _segment(tmp_path, packed, name)
    r = _run("replay", "--from", str(d0))
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 8000, r.stderr
    (d0 / name).unlink()
    d = _segment(tmp_path, packed[: len(packed) * 2 // 3], name)
    r = _run("replay", "--from", str(d))
    assert r.returncode == 3
    assert "compressed data ends early" in r.stderr
    n = len(r.stdout.splitlines())
    assert 0 < n < 8000
    bad = bytearray(packed)
    bad[len(bad) // 2 : len(bad) // 2 + 64] = b"\xff" * 64
    d2 = tmp_path / "corrupt"
    d2.mkdir()
    (d2 / name).write_bytes(bytes(bad))
    r = _run("replay", "--from", str(d2))
    assert r.returncode == 3 and f"{name}: compressed data is corrupt" in r.stderr, r.stderr
    assert 0 < len(r.stdout.splitlines()) < 8000


def test_a_decompression_bomb_is_cut_at_the_largest_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real bound is a gigabyte; a mebibyte shows the same cut faster.
    monkeypatch.setattr(log, "_TEXT_MAX", 1 << 20)
    line = Serializer().line(_many(1)[0])
    c = zstandard.ZstdCompressor().compressobj()
    packed = b"".join(c.compress(line * 1000) for _ in range(1000)) + c.flush()
    assert len(packed) < 1 << 20 and len(line) * 1_000_000 > 512 << 20
    path = tmp_path / "events-00000001.jsonl.zst"
    path.write_bytes(packed)
    out = io.StringIO()
    text = log.read_bytes(list_segments([path])[0], Problems(out=out))
    # Cut after the compressed chunk that crossed the bound; one chunk of
    # this stream expands to tens of MiB.
    assert len(text) < 128 << 20
    assert text and text.endswith(b"\n")
    assert "a decompression bomb?" in out.getvalue()


def test_a_segment_size_the_reader_would_cut_is_refused(tmp_path: Path) -> None:
    r = _run("run", "--event-log-dir", str(tmp_path / "log"), "--event-log-segment-size", "2G")
    assert r.returncode == 2
    assert "segment-size must be at most 1024 MiB" in r.stderr, r.stderr


def test_partial_processes_are_shown_and_marked(tmp_path: Path) -> None:
    ser = Serializer()
    chain = _chain()
    d = _segment(tmp_path, b"".join(ser.line(e) for e in chain[1:]))  # bash's exec is gone
    r = _run("tree", "--from", str(d), "--pid", "101", "-o", "json")
    assert r.returncode == 0, r.stderr
    root = json.loads(r.stdout)["roots"][0]
    assert root["process"]["pid"] == 1 and root["partial"]
    assert "started before the daemon" in root["partial_reasons"][0]
    bash = root["children"][0]
    assert bash["process"]["pid"] == 100 and bash["partial"]
    assert any("known only from its descendants" in x for x in bash["partial_reasons"])
    cat = bash["children"][0]
    assert not cat["partial"] and cat["exit"]["code"] == 0 and cat["selected"]
    assert [e["file_open"]["path"] for e in cat["events"]] == ["/etc/shadow"]


def test_exit_codes_for_no_match_bad_usage_and_missing_input(tmp_path: Path) -> None:
    d = _segment(tmp_path, b"".join(_lines()))
    r = _run("tree", "--from", str(d), "--pid", "424242")
    assert r.returncode == 4 and "no process in the log matches" in r.stderr
    r = _run("tree", "--from", str(d), "--pid", "101", "--at", "yesterday")
    assert r.returncode == 2 and "--at: not a time" in r.stderr
    r = _run("tree", "--from", str(d))
    assert r.returncode == 2 and "say which process" in r.stderr
    r = _run("tree", "--from", str(tmp_path / "nope"), "--pid", "1")
    assert r.returncode == 1 and "no such file or directory" in r.stderr
    r = _run("tree", "--from", str(d), "--pid", "101", "--at", "2026-09-21T00:00:00Z")
    assert r.returncode == 4  # cat had not started yet
    r = _run("tree", "--from", str(d), "--pid", "101", "-o", "text")
    assert r.returncode == 0 and "* /usr/bin/cat arg101" in r.stdout


def test_line_fanout_encodes_each_event_once_for_the_output_and_the_log(tmp_path: Path) -> None:
    ser = Serializer()
    calls: list[int] = []

    def encode(ev: Event) -> bytes:
        calls.append(id(ev))
        return ser.line(ev)

    out = tmp_path / "out.jsonl"
    f = RotatingFile(out, 1 << 30)
    log = EventLog(EventLogConfig(directory=tmp_path / "ev"), encode=encode)
    fan = LineFanout(encode, [log, QueuedWriter("file", f, encode, on_close=f.close)])
    evs = _many(300)
    fan.offer_many(evs[:100])
    for ev in evs[100:]:
        fan.offer(ev)
    fan.close()
    assert len(calls) == 300  # once per event, for both
    want = [ser.line(e) for e in evs]
    assert out.read_bytes().splitlines(keepends=True) == want
    problems = Problems(out=None)
    logged = [
        ev for seg in list_segments([tmp_path / "ev"]) for _, ev in read_events(seg, problems)
    ]
    assert [e["process"]["pid"] for e in logged] == [e.process.pid for e in evs]
    assert fan.error is None and fan.take_dropped() == {}


def test_line_fanout_encode_failure_stops_both_outputs_counted(tmp_path: Path) -> None:
    def encode(ev: Event) -> bytes:
        raise TypeError("cannot serialize")

    f = RotatingFile(tmp_path / "out.jsonl", 1 << 30)
    log = EventLog(EventLogConfig(directory=tmp_path / "ev"), encode=encode)
    fan = LineFanout(encode, [log, QueuedWriter("file", f, encode, on_close=f.close)])
    fan.offer_many(_many(3))
    fan.offer_many(_many(2))  # after the failure: counted, not written
    fan.close()
    assert isinstance(fan.error, TypeError)
    assert fan.take_dropped() == {"process_exec": 10}  # 5 events, lost by each output
    assert (tmp_path / "out.jsonl").read_bytes() == b""


def test_replay_merges_nodes_in_time_order_filters_and_paces(tmp_path: Path) -> None:
    ser = Serializer()
    evs = _many(6)  # 1 us apart
    a = tmp_path / "node-a"
    b = tmp_path / "node-b"
    for d, part in ((a, evs[0::2]), (b, evs[1::2])):
        d.mkdir()
        (d / "events-00000001.jsonl").write_bytes(b"".join(ser.line(e) for e in part))
    r = _run("replay", "--from", str(a), "--from", str(b))
    assert r.returncode == 0, r.stderr
    assert [json.loads(x)["process"]["pid"] for x in r.stdout.splitlines()] == list(
        range(1000, 1006)
    )
    r = _run("replay", "--from", str(a), "--from", str(b), "--pid", "1003", "-o", "compact")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 1 and "/usr/bin/true" in r.stdout
    r = _run("replay", "--from", str(a), "--binary", "([")
    assert r.returncode == 2 and "--binary" in r.stderr
    # Pacing: two events 0.4 s apart, replayed at real time, are 0.4 s apart.
    slow = tmp_path / "slow"
    slow.mkdir()
    late = _many(1)[0]
    late2 = ProcessExec(
        time=late.time + 400_000_000,
        node="n1",
        process=late.process,
        parent=late.parent,
        ancestors=(),
    )
    (slow / "events-00000001.jsonl").write_bytes(ser.line(late) + ser.line(late2))
    p = subprocess.Popen(
        tracer_cmd("replay", "--from", str(slow), "--speed", "1"), stdout=subprocess.PIPE
    )
    assert p.stdout is not None
    p.stdout.readline()
    t0 = time.monotonic()
    p.stdout.readline()
    assert time.monotonic() - t0 >= 0.35  # a sleep never ends early
    assert p.wait(30) == 0


def test_replay_puts_a_segment_in_time_order(tmp_path: Path) -> None:
    """The kernel's order across CPUs can be a little off: each segment is sorted."""
    ser = Serializer()
    evs = _many(5)
    log = tmp_path / "log"
    log.mkdir()
    shuffled = [evs[i] for i in (2, 0, 4, 1, 3)]
    (log / "events-00000001.jsonl").write_bytes(b"".join(ser.line(e) for e in shuffled))
    r = _run("replay", "--from", str(log))
    assert r.returncode == 0, r.stderr
    got = [json.loads(x)["process"]["pid"] for x in r.stdout.splitlines()]
    assert got == [e.process.pid for e in evs]


def test_tree_selects_by_pod_when_events_carry_one(tmp_path: Path) -> None:
    lines = []
    for raw in _lines():
        ev = json.loads(raw)
        if ev["process"]["pid"] == 101:
            ev["process"]["pod"] = {"namespace": "shop", "name": "cart-7d9f"}
        lines.append(json.dumps(ev).encode() + b"\n")
    d = _segment(tmp_path, b"".join(lines))
    r = _run("tree", "--from", str(d), "--pod", "shop/cart-7d9f", "-o", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["selected"] == [json.loads(lines[1])["process"]["exec_id"]]
    assert _run("tree", "--from", str(d), "--pod", "shop/other").returncode == 4
    assert _run("tree", "--from", str(d), "--pod", "nopod").returncode == 2
