"""Events as JSON lines: the schema, and a writer that never blocks capture.

The schema is the README's "Event schema" section; field names follow
tracer.events. Times are RFC 3339 UTC with nanoseconds; 64-bit counters
that may exceed 2**53 (cgroup ids) are decimal strings, as in the
protobuf JSON mapping, so JavaScript-based consumers read them exactly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from tracer.clock import rfc3339
from tracer.events import Connect, Event, FileOpen, Lost, PolicyMatch, Process, ProcessExit

JsonDict = dict[str, Any]


class _ProcessDicts:
    """The dict of a Process, built once per Process object.

    Parents and ancestors recur in every event of their descendants, so
    this turns most of the per-event serialization into lookups.
    """

    def __init__(self, limit: int = 16384) -> None:
        self._cache: dict[str, tuple[Process, JsonDict]] = {}
        self._limit = limit

    def get(self, p: Process) -> JsonDict:
        hit = self._cache.get(p.exec_id)
        if hit is not None and hit[0] is p:
            return hit[1]
        d = process_dict(p)
        if len(self._cache) >= self._limit:
            self._cache.clear()
        self._cache[p.exec_id] = (p, d)
        return d


def process_dict(p: Process) -> JsonDict:
    return {
        "exec_id": p.exec_id,
        "pid": p.pid,
        "tid": p.tid,
        "uid": p.uid,
        "euid": p.euid,
        "gid": p.gid,
        "egid": p.egid,
        "auid": p.auid,
        "user": p.user,
        "binary": p.binary,
        "args": list(p.args),
        "cwd": p.cwd,
        "start_time": rfc3339(p.start_time),
        "parent_exec_id": p.parent_exec_id,
        "flags": list(p.flags),
        "cgroup_id": str(p.cgroup_id),
    }


def _policy(p: PolicyMatch | None) -> JsonDict | None:
    if p is None:
        return None
    return {"name": p.name, "rule": p.rule, "action": p.action}


class Serializer:
    """Event -> one JSON line (bytes, newline included)."""

    def __init__(self) -> None:
        self._procs = _ProcessDicts()

    def to_dict(self, ev: Event) -> JsonDict:
        if isinstance(ev, Lost):
            return {
                "type": ev.type,
                "time": rfc3339(ev.time),
                "node": ev.node,
                "lost": {"kernel": ev.kernel, "daemon": ev.daemon},
            }
        get = self._procs.get
        d: JsonDict = {
            "type": ev.type,
            "time": rfc3339(ev.time),
            "node": ev.node,
            "process": get(ev.process),
            "parent": get(ev.parent) if ev.parent is not None else None,
            "ancestors": [get(a) for a in ev.ancestors],
        }
        if isinstance(ev, ProcessExit):
            d["exit"] = {
                "code": ev.exit.code,
                "signal": ev.exit.signal,
                "core_dumped": ev.exit.core_dumped,
            }
            return d
        if isinstance(ev, FileOpen):
            f = ev.file
            d["file"] = {
                "path": f.path,
                "flags": list(f.flags),
                "mode": f.mode,
                "result": f.result,
                "error": f.error,
                "hook": f.hook,
                "truncated": f.truncated,
                "resolved": f.resolved,
                "non_utf8": f.non_utf8,
            }
        elif isinstance(ev, Connect):
            c = ev.connect
            d["connect"] = {
                "family": c.family,
                "protocol": c.protocol,
                "sock_type": c.sock_type,
                "daddr": c.daddr,
                "dport": c.dport,
                "saddr": c.saddr,
                "sport": c.sport,
                "unix_path": c.unix_path,
                "result": c.result,
                "error": c.error,
                "hook": c.hook,
            }
        d["policy"] = _policy(ev.policy)
        return d

    def line(self, ev: Event) -> bytes:
        return orjson.dumps(self.to_dict(ev), option=orjson.OPT_APPEND_NEWLINE)


class RotatingFile:
    """Appends whole lines to `path`; past max_bytes, path -> path.1 -> path.2 ...

    Rotation happens between writes, so a line is never split across
    files. `backups` old files are kept.
    """

    def __init__(self, path: Path, max_bytes: int, backups: int = 5) -> None:
        if max_bytes <= 0:
            raise ValueError(f"export file size limit must be positive, got {max_bytes}")
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f: BinaryIO = open(path, "ab")
        self._size = self._f.tell()

    def _rotate(self) -> None:
        self._f.close()
        for i in range(self.backups - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{i}")
            if src.exists():
                os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.backups > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._f = open(self.path, "ab")
        self._size = 0

    def write(self, data: bytes) -> None:
        if self._size and self._size + len(data) > self.max_bytes:
            self._rotate()
        self._f.write(data)
        self._size += len(data)

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()
