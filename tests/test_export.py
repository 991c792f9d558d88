"""Export: the JSON lines schema (export/jsonl.py) and the queued writer (export/sink.py)."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from factories import (
    BASH,
    INIT,
    LS,
    PROCESS_KEYS,
    RFC3339,
    SSHD,
    T0,
    FailingOutput,
    GatedOutput,
    ListOutput,
    ev_at,
    exec_ev,
    exit_ev,
    mkproc,
)

from export.jsonl import RotatingFile, Serializer, process_dict
from export.sink import PairFanout, QueuedWriter
from tracer.core import text
from tracer.core.events import Event, ExitStatus, Lost, ProcessExec, ProcessExit


def parse(line: bytes) -> dict[str, Any]:
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    out: dict[str, Any] = json.loads(line)
    return out


# -- Serializer --------------------------------------------------------------


def test_exec_event_schema() -> None:
    d = parse(Serializer().line(exec_ev()))
    assert set(d) == {"type", "time", "node", "process", "parent", "ancestors", "process_exec"}
    assert "policy" not in d  # no rule selected it
    assert d["type"] == "process_exec"
    assert d["process_exec"] == {}
    assert d["time"] == "2023-11-14T22:13:20.123456789Z"
    assert d["node"] == "n1"
    p = d["process"]
    assert set(p) == PROCESS_KEYS
    assert p == {
        "exec_id": "n1:200000:200",
        "pid": 200,
        "tid": 200,
        "uid": 1000,
        "euid": 0,
        "gid": 1001,
        "egid": 1002,
        "auid": 1000,
        "user": "alice",
        "binary": "/bin/ls",
        "args": ["ls", "-l"],
        "cwd": "/home/alice",
        "start_time": "2023-11-14T22:13:15.123456789Z",
        "parent_exec_id": BASH.exec_id,
        "flags": [],
        "cgroup_id": str((1 << 63) + 3),
    }
    assert d["parent"]["exec_id"] == BASH.exec_id
    assert set(d["parent"]) == PROCESS_KEYS
    assert [a["exec_id"] for a in d["ancestors"]] == [SSHD.exec_id, INIT.exec_id]
    # Unknown values are absent, never null (protobuf's JSON mapping).
    assert set(d["ancestors"][1]) == PROCESS_KEYS - {"auid", "parent_exec_id"}
    assert d["ancestors"][1]["flags"] == ["procfs"]
    assert d["ancestors"][1]["uid"] == 0  # zero values are present


def test_exit_event_schema() -> None:
    d = parse(Serializer().line(exit_ev()))
    assert d["type"] == "process_exit"
    assert set(d) == {"type", "time", "node", "process", "parent", "ancestors", "process_exit"}
    assert d["process_exit"] == {"signal": "SIGSEGV", "core_dumped": True}

    ok = ProcessExit(
        time=T0,
        node="n1",
        process=LS,
        parent=None,
        ancestors=(),
        exit=ExitStatus(code=0, signal=None),
    )
    d2 = parse(Serializer().line(ok))
    assert d2["process_exit"] == {"code": 0, "core_dumped": False}
    assert "parent" not in d2
    assert d2["ancestors"] == []


@pytest.mark.parametrize(
    ("ns", "want"),
    [
        (0, "1970-01-01T00:00:00Z"),
        (1, "1970-01-01T00:00:00.000000001Z"),
        (T0, "2023-11-14T22:13:20.123456789Z"),
        (1_700_000_000_000_000_000, "2023-11-14T22:13:20Z"),
        (1_700_000_000_120_000_000, "2023-11-14T22:13:20.120Z"),
        (1_700_000_000_000_001_000, "2023-11-14T22:13:20.000001Z"),
        (1_700_000_000_100_000_010, "2023-11-14T22:13:20.100000010Z"),
        (1_700_000_000_099_999_999, "2023-11-14T22:13:20.099999999Z"),
    ],
)
def test_times_are_rfc3339_utc_exact_to_the_nanosecond(ns: int, want: str) -> None:
    d = parse(Serializer().line(exec_ev(mkproc(7, start_time=ns), time=ns)))
    assert d["time"] == want
    assert d["process"]["start_time"] == want
    assert RFC3339.match(d["time"])


def test_lost_event_schema() -> None:
    lost = Lost(time=T0, node="n1", kernel={"process_exec": 3}, daemon={"malformed": 1})
    d = parse(Serializer().line(lost))
    assert d == {
        "type": "lost",
        "time": "2023-11-14T22:13:20.123456789Z",
        "node": "n1",
        "ancestors": [],
        "lost": {"kernel": {"process_exec": 3}, "daemon": {"malformed": 1}},
    }
    empty = parse(Serializer().line(Lost(time=T0, node="n1")))
    assert empty["lost"] == {"kernel": {}, "daemon": {}}


def test_escaped_strings_survive_a_json_round_trip() -> None:
    raw_args = (b"a\\b\xff", b"line1\nline2", b"\x1b[31m\xc3", b'quote"\x80')
    raw_bin = b"/tmp/\xfe\\x41"
    args = tuple(text.decode(a)[0] for a in raw_args)
    binary = text.decode(raw_bin)[0]
    p = mkproc(9, binary=binary, args=args, flags=("non_utf8",))
    line = Serializer().line(exec_ev(p))
    d = parse(line)  # one line, however many newlines the args hold
    assert "non_utf8" in d["process"]["flags"]
    assert tuple(text.encode(a) for a in d["process"]["args"]) == raw_args
    assert text.encode(d["process"]["binary"]) == raw_bin


def test_process_dict_is_rebuilt_for_a_new_process_object_with_the_same_exec_id() -> None:
    # An exit from a thread carries a copy of the process with another tid.
    s = Serializer()
    assert parse(s.line(exec_ev(LS)))["process"]["tid"] == 200
    thread_exit = exit_ev(mkproc(200, BASH, binary="/bin/ls", args=("ls", "-l"), tid=205))
    assert parse(s.line(thread_exit))["process"]["tid"] == 205
    assert parse(s.line(exec_ev(LS)))["process"]["tid"] == 200


def test_the_process_side_is_rebuilt_when_parent_ancestry_or_node_change() -> None:
    # A process outlives its parent: the same process object is then shown
    # under its new parent (and a shorter ancestry).
    s = Serializer()
    first = parse(s.line(exec_ev(LS)))
    assert [first["parent"]["pid"], *(a["pid"] for a in first["ancestors"])] == [100, 50, 1]
    orphan = ProcessExec(time=T0, node="n1", process=LS, parent=INIT, ancestors=())
    d = parse(s.line(orphan))
    assert d["parent"]["pid"] == 1 and d["ancestors"] == []
    assert parse(s.line(ProcessExec(T0, "n2", LS, None, ())))["node"] == "n2"
    assert "parent" not in parse(s.line(ProcessExec(T0, "n2", LS, None, ())))
    assert parse(s.line(exec_ev(LS))) == first


def test_process_dict_matches_serializer_output() -> None:
    d = parse(Serializer().line(exec_ev()))
    assert d["process"] == json.loads(json.dumps(process_dict(LS)))


# -- RotatingFile --------------------------------------------------------------


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True) if path.exists() else []


def test_rotating_file_rotates_whole_lines_and_keeps_backups(tmp_path: Path) -> None:
    path = tmp_path / "out" / "events.jsonl"  # the directory is created
    f = RotatingFile(path, max_bytes=100, backups=2)
    written = [f"{i:02d}".encode() + b"x" * 26 + b"\n" for i in range(10)]  # 29 bytes each
    assert all(len(w) == 29 for w in written)
    f.write_lines(written[:4])  # one batch crosses the limit: rotated inside it
    f.write_lines(written[4:])
    f.close()

    b1, b2, b3 = (path.with_name(f"events.jsonl.{i}") for i in (1, 2, 3))
    assert not b3.exists()  # only `backups` old files are kept
    files = [b2, b1, path]
    for p in files:
        size = p.stat().st_size
        assert 0 < size <= 100
        assert p.read_bytes().endswith(b"\n")
        assert all(line in written for line in lines_of(p))  # no split lines
    # Three 29-byte lines fit in 100; the fourth would not.
    assert lines_of(path) == written[9:]
    assert lines_of(b1) == written[6:9]
    assert lines_of(b2) == written[3:6]


def test_rotating_file_puts_an_oversized_line_in_a_file_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    f = RotatingFile(path, max_bytes=10, backups=3)
    big = b"B" * 25 + b"\n"
    f.write_lines([b"a\n", big, b"c\n"])
    f.close()
    assert lines_of(path.with_name("e.jsonl.2")) == [b"a\n"]
    assert lines_of(path.with_name("e.jsonl.1")) == [big]
    assert lines_of(path) == [b"c\n"]


def test_rotating_file_does_not_rotate_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    f = RotatingFile(path, max_bytes=10, backups=3)
    f.write_lines([b"B" * 25 + b"\n"])  # too big, but there is nothing to rotate away
    f.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.jsonl"]
    assert path.read_bytes() == b"B" * 25 + b"\n"


def test_rotating_file_counts_what_the_file_already_holds(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_bytes(b"x" * 90 + b"\n")
    os.chmod(path, 0o600)
    f = RotatingFile(path, max_bytes=100, backups=1)
    f.write_lines([b"y" * 20 + b"\n"])
    f.close()
    assert path.with_name("e.jsonl.1").read_bytes() == b"x" * 90 + b"\n"
    assert path.read_bytes() == b"y" * 20 + b"\n"


def test_rotating_file_without_backups_keeps_only_the_current_file(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    f = RotatingFile(path, max_bytes=4, backups=0)
    f.write_lines([b"aaa\n", b"bbb\n", b"ccc\n"])
    f.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.jsonl"]
    assert path.read_bytes() == b"ccc\n"


def test_rotating_file_rejects_a_non_positive_limit(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="positive"):
        RotatingFile(tmp_path / "e.jsonl", max_bytes=0)


def test_export_files_are_created_for_root_only(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    f = RotatingFile(path, max_bytes=100, backups=1)
    f.write_lines([b"x" * 60 + b"\n"] * 3)  # rotates
    f.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.with_name("e.jsonl.1").stat().st_mode) == 0o600


def test_a_device_is_written_and_never_rotated(tmp_path: Path) -> None:
    # `--export-file /dev/null` once renamed the machine's /dev/null to
    # /dev/null.1 and wrote a regular file in its place. Our own null
    # device here, so that a regression cannot do that again.
    null = tmp_path / "null"
    os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    f = RotatingFile(null, max_bytes=100, backups=2)
    for _ in range(5):
        f.write_lines([b"x" * 60 + b"\n"] * 3)
    f.close()
    assert stat.S_ISCHR(null.stat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null"]


def test_a_fifo_gets_every_line_and_is_never_rotated(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo, 0o600)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    f = RotatingFile(fifo, max_bytes=100)
    lines = [f"line {i}\n".encode() for i in range(200)]
    for i in range(0, 200, 7):
        f.write_lines(lines[i : i + 7])
    f.close()
    reader.join(10)
    assert got == [b"".join(lines)]
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


# -- QueuedWriter --------------------------------------------------------------


def stamps(lines: list[bytes]) -> list[tuple[str, str]]:
    return [(d["type"], d["time"]) for d in map(parse, lines)]


def stamp(ev: Event) -> tuple[str, str]:
    d = parse(Serializer().line(ev))
    return d["type"], d["time"]


def test_full_queue_drops_oldest_counts_by_type_and_admits_lost() -> None:
    out = GatedOutput()
    capacity, extra = 5, 3
    w = QueuedWriter("gated", out, Serializer().line, capacity=capacity)
    try:
        first = ev_at(0)
        w.offer(first)
        assert out.entered.wait(timeout=10), "writer thread never picked up the first event"
        # The writer holds `first` and is stuck in write(); the queue is empty.
        queued = [ev_at(i) for i in range(1, 1 + capacity + extra)]
        for ev in queued:
            w.offer(ev)
        # The 3 oldest queued (1, 2, 3: exit, exec, exit) were dropped.
        assert w.take_dropped() == {"process_exit": 2, "process_exec": 1}
        assert w.take_dropped() == {}  # taking resets

        lost = Lost(time=T0 + 100, node="n1", daemon={"process_exit": 2, "process_exec": 1})
        w.offer(lost)  # full, but a Lost always gets in
        assert w.take_dropped() == {}
        assert w.error is None
    finally:
        out.gate.set()
        w.close()
    assert w.error is None
    want = [first, *queued[extra:], lost]
    assert stamps(out.written) == [stamp(ev) for ev in want]
    assert out.flushes >= 1


def test_close_writes_everything_queued_in_order_then_calls_on_close() -> None:
    out = ListOutput()
    w = QueuedWriter("list", out, Serializer().line, capacity=1000, on_close=out.close)
    evs = [ev_at(i) for i in range(200)]
    for ev in evs:
        w.offer(ev)
    w.close()
    assert stamps(out.written) == [stamp(ev) for ev in evs]
    assert out.closed_with == out.written  # on_close ran after the last write
    assert out.flushes >= 1
    assert w.take_dropped() == {}
    assert w.error is None


def test_failing_output_sets_error_and_counts_the_batch_as_dropped() -> None:
    out = FailingOutput()
    closed: list[bool] = []
    w = QueuedWriter(
        "broken", out, Serializer().line, capacity=100, on_close=lambda: closed.append(True)
    )
    for i in range(6):
        w.offer(ev_at(i))
    w.close()  # returns: the writer thread ended on the error
    assert isinstance(w.error, OSError)
    assert w.error.errno == 28
    assert out.attempts == 1  # it stops at the first failure
    # Every event that did not get out is counted, by type.
    assert w.take_dropped() == {"process_exec": 3, "process_exit": 3}
    assert closed == [True]


def test_events_offered_after_the_output_failed_are_counted_as_dropped() -> None:
    out = FailingOutput()
    w = QueuedWriter("broken", out, Serializer().line, capacity=100)
    w.offer(ev_at(0))
    for _ in range(10_000):  # until the writer thread has failed (10 s at most)
        if w.error is not None:
            break
        time.sleep(0.001)
    assert w.error is not None
    for i in range(1, 6):
        w.offer(ev_at(i))
    w.offer(Lost(time=T0, node="n1", daemon={"process_exec": 1}))
    w.close()
    assert isinstance(w.error, OSError)
    assert w.take_dropped() == {"process_exec": 3, "process_exit": 3, "lost": 1}


def test_encode_failure_is_reported_like_an_output_failure() -> None:
    out = ListOutput()

    def encode(ev: Event) -> bytes:
        raise TypeError("cannot serialize")

    w = QueuedWriter("bad-encode", out, encode, capacity=10)
    w.offer(ev_at(0))
    w.close()
    assert isinstance(w.error, TypeError)
    assert w.take_dropped() == {"process_exec": 1}
    assert out.written == []


def test_a_pair_fanout_writes_each_group_its_own_line_of_every_event() -> None:
    """--ancestors brief with the event log: the output gets the brief line, the log
    the full one, both made from one pass over the event (Serializer.lines)."""
    brief, full = Serializer("brief"), Serializer()
    outs = ListOutput(), ListOutput()
    writers = [QueuedWriter(f"w{i}", out, full.line, capacity=10) for i, out in enumerate(outs)]
    fan = PairFanout(lambda ev: brief.lines(ev, full), [writers[0]], [writers[1]])
    evs: list[Event] = [exit_ev(), exec_ev(), Lost(time=T0, node="n1")]
    fan.offer_many(evs)
    fan.close()
    assert outs[0].written == [Serializer("brief").line(ev) for ev in evs]
    assert outs[1].written == [Serializer().line(ev) for ev in evs]
    assert outs[0].written[0] != outs[1].written[0]


def test_a_pair_fanout_that_cannot_encode_stops_both_groups() -> None:
    outs = ListOutput(), ListOutput()
    writers = [QueuedWriter(f"w{i}", o, Serializer().line, capacity=10) for i, o in enumerate(outs)]

    def encode(ev: Event) -> tuple[bytes, bytes]:
        raise TypeError("cannot serialize")

    fan = PairFanout(encode, [writers[0]], [writers[1]])
    fan.offer_many([ev_at(0)])
    fan.close()
    assert isinstance(fan.error, TypeError)
    assert fan.take_dropped() == {"process_exec": 2}
    assert outs[0].written == outs[1].written == []
