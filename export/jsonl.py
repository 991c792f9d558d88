"""Events as JSON lines: the schema, and a writer that never blocks capture.

The schema is the README's "Event schema" section and export/tracer_v1.proto:
a line is exactly protobuf's JSON mapping of the Event message with proto
field names, fields without presence always printed and unset fields with
presence omitted (never null). Hence: times are RFC 3339 UTC with 0, 3, 6 or
9 fractional digits; 64-bit integers (cgroup ids) are decimal strings, so
JavaScript-based consumers read them exactly; the details of an event are
under the key named by its type. tests/test_grpc_schema.py holds the two
encodings equal. This module builds the dicts directly and dumps them with
orjson: protobuf's json_format is several times slower, and this is the hot
path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from export._writev import writev_all
from tracer.clock import rfc3339
from tracer.events import (
    Connect,
    Container,
    Event,
    FileOpen,
    Lost,
    Pod,
    PolicyMatch,
    Process,
    ProcessExit,
)

JsonDict = dict[str, Any]


class _ProcessJson:
    """The serialized JSON of a Process, made once per Process object.

    Parents and ancestors recur in every event of their descendants, so
    orjson embeds these bytes (a Fragment) instead of serializing the same
    dicts again in every line; bytes are also a third of a dict's memory.
    The ancestry of a busy process is joined once into one Fragment for
    the whole list; only a few hundred are kept (a deep one is several
    KB), which covers the processes in a burst.
    """

    def __init__(self, limit: int = 16384, chains: int = 256) -> None:
        self._cache: dict[str, tuple[Process, bytes, orjson.Fragment]] = {}
        self._chains: dict[int, tuple[tuple[Process, ...], orjson.Fragment]] = {}
        self._limit = limit
        self._chain_limit = chains

    def _entry(self, p: Process) -> tuple[Process, bytes, orjson.Fragment]:
        hit = self._cache.get(p.exec_id)
        if hit is not None and hit[0] is p:
            return hit
        # orjson's result keeps its 4 KiB working buffer; a copy of the
        # bytes is ~300 bytes. Without it 5,000 processes cost 35 MiB more.
        data = memoryview(orjson.dumps(process_dict(p))).tobytes()
        if len(self._cache) >= self._limit:
            self._cache.clear()
        hit = self._cache[p.exec_id] = (p, data, orjson.Fragment(data))
        return hit

    def get(self, p: Process) -> orjson.Fragment:
        return self._entry(p)[2]

    def chain(self, ancestors: tuple[Process, ...]) -> orjson.Fragment:
        hit = self._chains.get(id(ancestors))
        if hit is not None and hit[0] is ancestors:
            return hit[1]
        entry = self._entry
        frag = orjson.Fragment(b"[" + b",".join([entry(a)[1] for a in ancestors]) + b"]")
        if len(self._chains) >= self._chain_limit:
            self._chains.clear()
        # The tuple is held, so its id cannot be reused while it is cached.
        self._chains[id(ancestors)] = (ancestors, frag)
        return frag


def process_dict(p: Process) -> JsonDict:
    d: JsonDict = {
        "exec_id": p.exec_id,
        "pid": p.pid,
        "tid": p.tid,
        "uid": p.uid,
        "euid": p.euid,
        "gid": p.gid,
        "egid": p.egid,
    }
    # Unknown values are absent, not null: protobuf's JSON has no null for them.
    if p.auid is not None:
        d["auid"] = p.auid
    if p.user is not None:
        d["user"] = p.user
    d["binary"] = p.binary
    d["args"] = list(p.args)
    d["cwd"] = p.cwd
    d["start_time"] = rfc3339(p.start_time)
    if p.parent_exec_id is not None:
        d["parent_exec_id"] = p.parent_exec_id
    d["flags"] = list(p.flags)
    d["cgroup_id"] = str(p.cgroup_id)
    if p.container is not None:
        d["container"] = container_dict(p.container)
    if p.pod is not None:
        d["pod"] = pod_dict(p.pod)
    return d


def _known(d: JsonDict, obj: object, names: tuple[str, ...]) -> None:
    """d[name] = obj.name for each name whose value is known (not None)."""
    for name in names:
        value = getattr(obj, name)
        if value is not None:
            d[name] = value


def container_dict(c: Container) -> JsonDict:
    d: JsonDict = {"id": c.id, "runtime": c.runtime}
    _known(d, c, ("name", "image"))
    return d


def pod_dict(pod: Pod) -> JsonDict:
    d: JsonDict = {}
    _known(d, pod, ("namespace", "name"))
    d["uid"] = pod.uid
    d["labels"] = dict(pod.labels)
    _known(d, pod, ("workload", "workload_kind"))
    return d


def exit_dict(ev: ProcessExit) -> JsonDict:
    d: JsonDict = {}
    if ev.exit.code is not None:
        d["code"] = ev.exit.code
    if ev.exit.signal is not None:
        d["signal"] = ev.exit.signal
    d["core_dumped"] = ev.exit.core_dumped
    return d


class Serializer:
    """Event -> one JSON line (bytes, newline included)."""

    def __init__(self) -> None:
        self._procs = _ProcessJson()
        self._policies: dict[PolicyMatch, orjson.Fragment] = {}

    def _policy(self, m: PolicyMatch) -> orjson.Fragment:
        # Few rules, many events: PolicyStore hands out one PolicyMatch per
        # rule, so its JSON is made once.
        frag = self._policies.get(m)
        if frag is None:
            if len(self._policies) >= 4096:
                self._policies.clear()
            body = {"name": m.name, "rule": m.rule, "action": m.action}
            frag = self._policies[m] = orjson.Fragment(orjson.dumps(body))
        return frag

    def _dict(self, ev: Event) -> JsonDict:
        if isinstance(ev, Lost):
            # A lost event is about no process; `ancestors` is an empty list
            # because repeated fields are always printed.
            return {
                "type": ev.type,
                "time": rfc3339(ev.time),
                "node": ev.node,
                "ancestors": [],
                "lost": {"kernel": ev.kernel, "daemon": ev.daemon},
            }
        get = self._procs.get
        d: JsonDict = {
            "type": ev.type,
            "time": rfc3339(ev.time),
            "node": ev.node,
            "process": get(ev.process),
        }
        if ev.parent is not None:
            d["parent"] = get(ev.parent)
        d["ancestors"] = self._procs.chain(ev.ancestors)
        if isinstance(ev, ProcessExit):
            d["process_exit"] = exit_dict(ev)
            return d
        if isinstance(ev, FileOpen):
            f = ev.file
            fd: JsonDict = {
                "path": f.path,
                "flags": f.flags,  # orjson writes a tuple as an array
                "mode": f.mode,
                "result": f.result,
            }
            if f.error is not None:
                fd["error"] = f.error
            fd["hook"] = f.hook
            fd["truncated"] = f.truncated
            fd["resolved"] = f.resolved
            fd["non_utf8"] = f.non_utf8
            d["file_open"] = fd
        elif isinstance(ev, Connect):
            c = ev.connect
            cd: JsonDict = {"family": c.family}
            if c.protocol is not None:
                cd["protocol"] = c.protocol
            cd["sock_type"] = c.sock_type
            for name in ("daddr", "dport", "saddr", "sport", "unix_path"):
                value = getattr(c, name)
                if value is not None:
                    cd[name] = value
            cd["result"] = c.result
            if c.error is not None:
                cd["error"] = c.error
            cd["hook"] = c.hook
            d["connect"] = cd
        else:
            d["process_exec"] = {}
        if ev.policy is not None:
            d["policy"] = self._policy(ev.policy)
        return d

    def line(self, ev: Event) -> bytes:
        # Copied down to size (see _ProcessJson): lines wait in output
        # queues, up to --queue-size of them when an output falls behind.
        return memoryview(orjson.dumps(self._dict(ev), option=orjson.OPT_APPEND_NEWLINE)).tobytes()


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
        self._f = self._open()
        self._size = self._f.tell()

    def _open(self) -> BinaryIO:
        # Unbuffered: a batch goes to the kernel in one writev (_writev.py).
        return open(self.path, "ab", buffering=0)

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
        self._f = self._open()
        self._size = 0

    def write_lines(self, lines: list[bytes]) -> None:
        """Append whole lines; a rotation falls between two lines, never inside one."""
        start, size = 0, self._size
        for i, line in enumerate(lines):
            if size and size + len(line) > self.max_bytes:
                writev_all(self._f.fileno(), lines[start:i])
                self._rotate()
                start, size = i, 0
            size += len(line)
        writev_all(self._f.fileno(), lines[start:])
        self._size = size

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()
