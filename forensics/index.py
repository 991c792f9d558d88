"""The event log's index: which processes each segment holds, in a sidecar file.

Every segment gets `events-NNNNNNNN.idx` when it is closed: its time span,
its event count and one row per process that has events in it or is
an ancestor of one (pid, parent, binary, start, first and last event,
pod). The writer builds it with one dict update per event and writes it
once per segment. A segment
without a valid sidecar (the one being written, one a crash left, a
copied file) is scanned instead: the index only makes reading faster,
never decides what exists.

Sidecars travel with their segment (written, compressed, expired and
copied together, they cannot disagree); forensics/store.py gathers them
into one SQLite lookup per directory, so that a query does not load them
all.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from forensics.log import JsonDict, Problems, Segment, events, parse_time, read_regular

FORMAT = 2  # 2: rows for ancestors named only by descendants' events

# Row bits.
HAS_EXEC = 1
HAS_EXIT = 2
PROCFS = 4
FORK = 8

# A row: [pid, parent_exec_id, binary, start_ns, first_ns, last_ns, namespace, pod, bits]
Row = list[Any]
# What an event says of one process:
# (exec_id, pid, parent_exec_id, binary, start_ns, flags, namespace, pod)
Fields = tuple[str, int, str | None, str, int, Iterable[str], str | None, str | None]


class IndexBuilder:
    """Collects the rows of one segment as its events go by (one dict update each).

    A segment has a row for each process with events in it, and for each
    ancestor its events name. A process that ran before the daemon and did
    nothing since (a shell, a service) has no events of its own; its row
    lets `tracer tree` select it, walk up through it, and join it to its
    image from before a daemon restart.
    """

    __slots__ = ("events", "first_ns", "last_ns", "rows")

    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}
        self.events = 0
        self.first_ns = 0
        self.last_ns = 0

    def note(self, t: int, bit: int, fields: Fields, lineage: Iterable[Fields] = ()) -> Row:
        """The process's row, updated (the caller may move its last time itself).

        `lineage` (parent first, then ancestors) is read only when the
        process is new to the segment, and only up to the first ancestor
        already known: that one's own ancestors were noted with it.
        """
        rows = self.rows
        row = rows.get(fields[0])
        if row is None:
            row = rows[fields[0]] = _new_row(t, bit, fields)
            for a in lineage:
                if a[0] in rows:
                    break
                rows[a[0]] = _new_row(t, 0, a)
        else:
            if t > row[5]:
                row[5] = t
            elif t < row[4]:
                row[4] = t
            if bit:
                row[8] |= bit
        self.note_time(t)
        return row

    def note_time(self, t: int) -> None:
        self.events += 1
        if not self.first_ns or t < self.first_ns:
            self.first_ns = t
        if t > self.last_ns:
            self.last_ns = t

    def note_dict(self, t: int, ev: JsonDict) -> None:
        p = ev.get("process")
        if not isinstance(p, dict):  # a loss report
            self.note_time(t)
            return
        kind = ev.get("type")
        bit = HAS_EXEC if kind == "process_exec" else HAS_EXIT if kind == "process_exit" else 0
        chain = [ev.get("parent"), *(ev.get("ancestors") or ())]
        lineage = (_dict_fields(a) for a in chain if isinstance(a, dict))
        self.note(t, bit, _dict_fields(p), lineage)

    def sidecar(self, segment_name: str) -> bytes:
        return orjson.dumps(
            {
                "format": FORMAT,
                "segment": segment_name,
                "events": self.events,
                "first_ns": self.first_ns,
                "last_ns": self.last_ns,
                "processes": self.rows,
            }
        )


def _new_row(t: int, bit: int, fields: Fields) -> Row:
    _, pid, parent, binary, start_ns, flags, namespace, pod = fields
    bits = bit
    for f in flags:
        if f == "procfs":
            bits |= PROCFS
        elif f == "fork":
            bits |= FORK
    return [pid, parent, binary, start_ns, t, t, namespace, pod, bits]


def _dict_fields(p: JsonDict) -> Fields:
    pod = p.get("pod") or {}
    start = p.get("start_time")
    return (
        str(p.get("exec_id")),
        int(p.get("pid") or 0),
        p.get("parent_exec_id"),
        str(p.get("binary", "")),
        (parse_time(start) or 0) if isinstance(start, str) else 0,
        p.get("flags") or (),
        pod.get("namespace"),
        pod.get("name"),
    )


def write_sidecar(path: Path, data: bytes) -> None:
    """Atomically: a reader sees the whole sidecar or none."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)  # a crash's: made anew, never adopted or followed
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with open(os.open(tmp, flags, 0o600), "wb") as f:
        f.write(data)
        f.flush()
        os.fdatasync(f.fileno())
    os.replace(tmp, path)


def scan(seg: Segment, problems: Problems) -> IndexBuilder:
    b = IndexBuilder()
    for t, ev in events(seg, problems):
        b.note_dict(t, ev)
    return b


def load_sidecar(seg: Segment, problems: Problems) -> dict[str, Any] | None:
    try:
        raw = read_regular(seg.sidecar)
    except FileNotFoundError:
        return None
    except OSError as exc:
        problems.warn(str(seg.sidecar), f"cannot read the index ({exc.strerror or exc}); scanning")
        return None
    try:
        data = orjson.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        fmt = data.get("format")
        if fmt != FORMAT:
            problems.warn(
                str(seg.sidecar),
                f"index format {fmt!r} is not {FORMAT} (another tracer version); scanning",
            )
            return None
        expected = seg.plain_name
        if data.get("segment") != expected or not isinstance(data.get("processes"), dict):
            raise ValueError(f"not the index of {expected}")
        return data
    except (orjson.JSONDecodeError, ValueError) as exc:
        problems.warn(str(seg.sidecar), f"index unreadable ({exc}); scanning the segment")
        return None


def segment_span(seg: Segment) -> tuple[int, int] | None:
    """(first, last) event time of a segment, from its sidecar; None when unknown."""
    data = load_sidecar(seg, Problems(out=None))
    if data is None or not data.get("events"):
        return None
    return int(data["first_ns"]), int(data["last_ns"])
