"""Reading event-log segments: listing, decompressing, splitting lines, parsing.

A log directory holds segments named `events-NNNNNNNN.jsonl.zst`: zstd
frames of JSON lines, the one being written included (and plain
`.jsonl` segments). Any other
JSON-lines file (an export file, a copy from another node) can be
read too. Bad input never stops a read: a torn last line, a truncated
compressed stream, a line that is not JSON, an event of a type this
tracer does not know (a newer schema) or with a field of the wrong JSON
type (a forged or damaged line) is reported as `file:line: problem` and
skipped; the rest is used.
"""

from __future__ import annotations

import calendar
import os
import re
import stat
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TextIO

import orjson
import zstandard

from tracer.core import safefile

JsonDict = dict[str, Any]

SEGMENT_RE = re.compile(r"^events-(\d{8})\.jsonl(\.zst)?$")
COMPRESSED_SUFFIX = ".zst"
KNOWN_TYPES = frozenset(
    {
        "process_exec",
        "process_exit",
        "file_open",
        "connect",
        "policy_summary",
        "privilege_change",
        "file_attr",
        "lost",
    }
)
_WARN_PER_FILE = 5  # then one summary line per file


def segment_name(seq: int, compressed: bool = False) -> str:
    return f"events-{seq:08d}.jsonl" + (COMPRESSED_SUFFIX if compressed else "")


@dataclass(slots=True, frozen=True)
class Segment:
    """One file of events; `seq` orders the segments of one directory."""

    path: Path
    seq: int = 0

    @property
    def compressed(self) -> bool:
        return self.path.suffix in _DECOMPRESSORS

    @property
    def plain_name(self) -> str:
        """The name without the compression suffix: the segment's name in its
        sidecar and the lookup database, compressed or not."""
        return self.path.stem if self.compressed else self.path.name

    @property
    def sidecar(self) -> Path:
        """Where the segment's index is (forensics/index.py)."""
        return self.path.with_name(self.plain_name.removesuffix(".jsonl") + ".idx")


class InputError(Exception):
    """A source that cannot be read at all (missing, not a log)."""


def list_segments(paths: list[Path]) -> list[Segment]:
    """Segments of directories (in sequence order) and files (as given).

    When a crash left both the original and the compressed copy of a
    segment, the original is read: it is complete by construction.
    """
    out: list[Segment] = []
    for p in paths:
        if p.is_dir():
            by_seq: dict[int, Path] = {}
            for child in p.iterdir():
                m = SEGMENT_RE.match(child.name)
                if m is None:
                    continue
                seq = int(m[1])
                if seq not in by_seq or not m[2]:
                    by_seq[seq] = child
            out += [Segment(by_seq[s], s) for s in sorted(by_seq)]
        elif p.exists():
            m = SEGMENT_RE.match(p.name)
            out.append(Segment(p, int(m[1]) if m else 0))
        else:
            raise InputError(f"{p}: no such file or directory")
    return out


@dataclass
class Problems:
    """Warnings about the input, printed as they are found, and counted.

    Any problem makes the result partial (see the exit codes in tracer/forensics_cli.py).
    """

    out: TextIO | None = field(default_factory=lambda: sys.stderr)
    count: int = 0
    _per_file: dict[str, int] = field(default_factory=dict)

    def warn(self, where: str, what: str, file_key: str | None = None) -> None:
        self.count += 1
        key = file_key or where
        n = self._per_file.get(key, 0) + 1
        self._per_file[key] = n
        if self.out is None:
            return
        if n <= _WARN_PER_FILE:
            print(f"tracer: warning: {where}: {what}", file=self.out)
        elif n == _WARN_PER_FILE + 1:
            print(f"tracer: warning: {key}: more problems, not shown one by one", file=self.out)

    def summary(self) -> None:
        if self.out is None:
            return
        for key, n in self._per_file.items():
            if n > _WARN_PER_FILE:
                print(f"tracer: warning: {key}: {n} lines skipped in all", file=self.out)


_CHUNK = 1 << 12  # compressed bytes: what corruption can take with it
# The largest segment the daemon writes (--event-log-segment-size is held
# below it) and so the most one segment's text may grow to when read, with
# room for the batch that crosses the size: a few KiB of zstd can expand to
# gigabytes, and a copied log is anyone's file.
SEGMENT_MAX_BYTES = 1 << 30
_TEXT_MAX = SEGMENT_MAX_BYTES + (64 << 20)


class _Decompressor(Protocol):
    """What zlib's and zstandard's streaming decompressors have in common."""

    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: memoryview, /) -> bytes: ...

    def flush(self) -> bytes: ...


def _decompress(
    data: bytes,
    name: str,
    problems: Problems,
    new: Callable[[], _Decompressor],
    error: type[Exception],
) -> bytes:
    """The decompressed bytes of one or more concatenated frames; of a
    damaged stream, what precedes the damage.

    Fed in chunks so that corruption loses only what follows it.
    """
    out: list[bytes] = []
    size = 0
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        d = new()
        while pos < len(view) and not d.eof:
            chunk = view[pos : pos + _CHUNK]
            try:
                out.append(d.decompress(chunk))
            except error as exc:
                problems.warn(name, f"compressed data is corrupt ({exc}); the rest is lost")
                return b"".join(out)
            size += len(out[-1])
            if size > _TEXT_MAX:
                problems.warn(
                    name,
                    f"expands past {_TEXT_MAX >> 20} MiB, more than any segment the daemon "
                    "writes (a decompression bomb?); the rest is skipped",
                )
                return b"".join(out)
            pos += len(chunk)  # the last chunk is short: unused_data counts back from its end
        if not d.eof:
            out.append(d.flush())
            problems.warn(name, "compressed data ends early (a truncated copy?); the rest is lost")
            break
        pos -= len(d.unused_data)  # the next frame, if any
    return b"".join(out)


_DECOMPRESSORS: dict[str, tuple[Callable[[], _Decompressor], type[Exception]]] = {
    ".zst": (lambda: zstandard.ZstdDecompressor().decompressobj(), zstandard.ZstdError),
}


def read_regular(path: Path) -> bytes:
    """The bytes of a regular file, never read through a link.

    A log comes from a copy anyone could have made: a FIFO in it would hang
    the reader, a device (/dev/zero) grow it until it is killed, and a link
    read whatever file its maker chose. Checked on the descriptor that is read.
    """
    try:
        fd = os.open(path, safefile.READ_FLAGS)
    except OSError as exc:
        if safefile.is_link_error(exc):
            raise safefile.UnsafeFile("a symbolic link, not a regular file") from None
        raise
    with open(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise safefile.UnsafeFile(f"{safefile.kind(mode)}, not a regular file")
        return f.read()


def read_bytes(seg: Segment, problems: Problems) -> bytes:
    """A segment's text, without a torn last line (warned)."""
    name = str(seg.path)
    try:
        data = read_regular(seg.path)
    except OSError as exc:
        problems.warn(name, f"cannot read: {exc.strerror or exc}; skipped")
        return b""
    if seg.compressed:
        data = _decompress(data, name, problems, *_DECOMPRESSORS[seg.path.suffix])
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        line_no = data.count(b"\n", 0, cut) + 1
        problems.warn(
            f"{name}:{line_no}",
            f"last line is torn ({len(data) - cut} bytes without an end: a crash mid-write); "
            "skipped",
        )
        data = data[:cut]
    return data


class _Map:
    """A JSON object with any keys, each value of one shape (labels, loss counts)."""

    __slots__ = ("value",)

    def __init__(self, value: _Shape) -> None:
        self.value = value


_Shape = type | dict[str, Any] | list[Any] | _Map
_POD: _Shape = {
    "namespace": str, "name": str, "uid": str, "labels": _Map(str), "workload": str,
    "workload_kind": str,
}
_PROCESS: _Shape = {
    "exec_id": str, "pid": int, "tid": int, "uid": int, "euid": int, "gid": int, "egid": int,
    "auid": int, "user": str, "binary": str, "args": [str], "cwd": str, "start_time": str,
    "parent_exec_id": str, "flags": [str], "cgroup_id": str,
    "binary_dev": int, "binary_ino": str, "mnt_ns": int,
    "container": {"id": str, "runtime": str, "name": str, "image": str}, "pod": _POD,
}
_CRED: dict[str, _Shape] = {
    **{k: int for k in ("uid", "euid", "suid", "fsuid", "gid", "egid", "sgid", "fsgid")},
    **{k: [str] for k in ("cap_inheritable", "cap_permitted", "cap_effective", "cap_ambient")},
}
# The JSON-lines schema (export/tracer_v1.proto's JSON form) as far as
# readers use it. A field may be absent (a partial line, an older
# version); present, it has this type, or the line is skipped and the
# field named: a forged or damaged line must not stop a reader midway.
_EVENT: dict[str, _Shape] = {
    "type": str, "time": str, "node": str,
    "process": _PROCESS, "parent": _PROCESS, "ancestors": [_PROCESS],
    "lineage": {"ancestors": [{"exec_id": str, "pid": int, "binary": str}]},
    "process_exec": {},
    "process_exit": {"code": int, "signal": str, "core_dumped": bool},
    "file_open": {
        "path": str, "flags": [str], "mode": int, "result": int, "error": str, "hook": str,
        "truncated": bool, "resolved": bool, "non_utf8": bool, "op": str, "source": str,
        "user_memory": bool,
    },
    "connect": {
        "family": str, "protocol": str, "sock_type": str, "daddr": str, "dport": int,
        "saddr": str, "sport": int, "unix_path": str, "result": int, "error": str, "hook": str,
        "via": str, "user_memory": bool,
    },
    "policy_summary": {
        "event": str, "count": str, "first": str, "window_start": str, "interval_ms": int,
        "limit": int, "by": str, "aggregate": bool, "cgroup_id": str,
    },
    "privilege_change": {
        "op": str, "old": _CRED, "new": _CRED, "changed": [str], "to_root": bool, "hook": str,
    },
    "file_attr": {
        "op": str, "call": str, "path": str, "mode": int, "uid": int, "gid": int,
        "file_mode": int, "hook": str, "truncated": bool, "resolved": bool, "non_utf8": bool,
        "world_writable_dir": bool,
    },
    "lost": {"kernel": _Map(int), "daemon": _Map(int)},
    "policy": {"name": str, "rule": int, "action": str},
}
_JSON_NAMES = {str: "a string", int: "a number", bool: "true or false", dict: "an object",
               list: "a list", float: "a number", type(None): "null"}


def _what(value: object) -> str:
    return _JSON_NAMES.get(type(value), type(value).__name__)


class _Misfit(Exception):
    """A value of the wrong type; `path` is filled in on the way out, so
    that a line that fits (nearly all) builds no field names."""

    def __init__(self, value: object, want: str) -> None:
        super().__init__(f"is {_what(value)}, not {want}")
        self.path: list[str] = []

    def where(self) -> str:
        return "".join(reversed(self.path)).lstrip(".")


def _fit(value: object, shape: _Shape) -> None:
    """Raise _Misfit where `value` departs from `shape`."""
    if isinstance(shape, type):
        if type(value) is not shape:  # bool is an int to Python, not to JSON
            raise _Misfit(value, _JSON_NAMES[shape])
    elif isinstance(shape, list):
        if type(value) is not list:
            raise _Misfit(value, "a list")
        item = shape[0]
        if isinstance(item, type) and all(type(x) is item for x in value):
            return
        for i, x in enumerate(value):
            try:
                _fit(x, item)
            except _Misfit as exc:
                exc.path.append(f"[{i}]")
                raise
    elif type(value) is not dict:
        raise _Misfit(value, "an object")
    elif isinstance(shape, _Map):
        for k, v in value.items():
            try:
                _fit(v, shape.value)
            except _Misfit as exc:
                # Any key: shown as a Python literal, so no byte of it reaches a terminal raw.
                exc.path.append(f"[{k[:64]!r}]")
                raise
    else:
        _fit_fields(value, shape)


def _fit_fields(value: dict[str, Any], fields: dict[str, _Shape]) -> None:
    # A line holds seven or so processes of ~17 fields, nearly all scalars:
    # a scalar of the right type costs one lookup and one comparison here.
    for k, v in value.items():
        shape = fields.get(k)
        if shape is None or type(v) is shape:
            continue
        try:
            _fit(v, shape)
        except _Misfit as exc:
            exc.path.append(f".{k}")
            raise


def parse_line(line: bytes, where: str, problems: Problems, file_key: str) -> JsonDict | None:
    """The event of one line, or None (warned) when it is not one this tracer reads."""
    try:
        ev = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        problems.warn(where, f"not JSON ({exc}); skipped", file_key)
        return None
    if not isinstance(ev, dict) or not isinstance(ev.get("type"), str):
        problems.warn(where, "not an event (no type); skipped", file_key)
        return None
    kind = ev["type"]
    if kind not in KNOWN_TYPES:
        problems.warn(
            where,
            f"event type {kind[:64]!r} is not known to this tracer (a newer schema?); skipped",
            file_key,
        )
        return None
    if not isinstance(ev.get("time"), str) or parse_time(ev["time"]) is None:
        problems.warn(where, "no valid time; skipped", file_key)
        return None
    if kind != "lost":
        p = ev.get("process")
        if not isinstance(p, dict) or not isinstance(p.get("exec_id"), str):
            problems.warn(where, "event without a process exec_id; skipped", file_key)
            return None
    if (bad := schema_problem(ev)) is not None:
        problems.warn(where, f"{bad}; skipped", file_key)
        return None
    return ev


def schema_problem(ev: JsonDict) -> str | None:
    """The first field of a parsed line whose JSON type is not the schema's, as
    `process.args[2] is a number, not a string`; None when they all fit."""
    try:
        _fit_fields(ev, _EVENT)
    except _Misfit as exc:
        return f"{exc.where()} {exc}"
    return None


def _readable(seg: Segment, problems: Problems) -> Iterator[tuple[int, bytes, JsonDict]]:
    """(time ns, line, event) of every readable line, in file order."""
    name = str(seg.path)
    data = read_bytes(seg, problems)
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        ev = parse_line(line, f"{name}:{n}", problems, name)
        if ev is not None:
            t = parse_time(ev["time"])
            assert t is not None
            yield t, line, ev


def events(seg: Segment, problems: Problems) -> Iterator[tuple[int, JsonDict]]:
    """(time ns, event) of every readable line, in file order."""
    for t, _, ev in _readable(seg, problems):
        yield t, ev


def event_lines(seg: Segment, problems: Problems) -> Iterator[tuple[int, bytes]]:
    """(time ns, line) of every readable line, in file order: for a reader that
    holds a segment's worth at once, as a parsed event takes several times its line."""
    for t, line, _ in _readable(seg, problems):
        yield t, line


_EXEC_ID = b'"exec_id":"'


def first_exec_id(line: bytes) -> bytes | None:
    """The `process.exec_id` of a line, without parsing the JSON when it can.

    The daemon's serializer writes `process` right after type, time and
    node, with no whitespace, so its exec_id is the first one. A line of
    another layout (pretty-printed, re-serialized by another tool) is
    parsed; one without any exec_id (a loss report) is not.
    """
    i = line.find(_EXEC_ID)
    if i >= 0:
        i += len(_EXEC_ID)
        j = line.find(b'"', i)
        if j > 0 and line[j - 1] != 0x5C:  # no backslash: the bytes are the value
            return line[i:j]
    elif b'"exec_id"' not in line:
        return None
    try:
        ev = orjson.loads(line)
        exec_id = ev["process"]["exec_id"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return exec_id.encode() if isinstance(exec_id, str) else None


_secs_cache: dict[str, int] = {}


def parse_time(text: str) -> int | None:
    """ns since the epoch of an RFC 3339 UTC time as the daemon writes it; None if invalid."""
    if len(text) < 20 or text[-1] != "Z" or text[10] != "T":
        return None
    base = text[:19]
    secs = _secs_cache.get(base)
    if secs is None:
        try:
            secs = calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S"))
        except ValueError:
            return None
        if len(_secs_cache) > 100_000:
            _secs_cache.clear()
        _secs_cache[base] = secs
    frac = text[19:-1]
    if not frac:
        return secs * 1_000_000_000
    if frac[0] != "." or not frac[1:].isdigit() or len(frac) > 10:
        return None
    return secs * 1_000_000_000 + int(frac[1:].ljust(9, "0"))


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_when(text: str, now_ns: int | None = None) -> int:
    """A user's time: RFC 3339 (`2026-11-26T14:00:00Z`, `...14:00:00.5+01:00`), or ago (`15m`).

    Raises ValueError naming the accepted forms.
    """
    t = text.strip()
    if t and t[-1] in _UNITS and t[:-1].replace(".", "", 1).isdigit():
        now = time.time_ns() if now_ns is None else now_ns
        return now - int(float(t[:-1]) * _UNITS[t[-1]] * 1e9)
    ns = parse_time(t)
    if ns is not None:
        return ns
    try:
        dt = datetime.fromisoformat(t)
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (RFC 3339 like 2026-11-26T14:00:00Z, or an age like 15m, 2h)"
        ) from None
    if dt.tzinfo is None:
        raise ValueError(f"time {text!r} has no time zone (add Z for UTC)")
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000
