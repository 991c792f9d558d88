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

import errno
import math
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import structlog

from export._jsonline import Shape
from export._writev import writev_all
from tracer.core import safefile
from tracer.core.clock import rfc3339
from tracer.core.events import (
    Connect,
    Container,
    Credentials,
    Event,
    FileAttr,
    FileOpen,
    Lost,
    Pod,
    PolicyMatch,
    PolicySummary,
    PrivilegeChange,
    Process,
    ProcessEvent,
    ProcessEventKind,
    ProcessExit,
)

JsonDict = dict[str, Any]
_log = structlog.get_logger(component="export")


# Bytes each cache of serialized processes may hold before it starts over.
CACHE_BYTES = 16 << 20

# --ancestors: what an event says of the ancestors beyond its parent. Full
# records are most of a line (every ancestor's command line, in every event
# of its descendants); brief names each by exec_id, pid and binary, under
# `lineage`; none leaves them out.
ANCESTORS = ("full", "brief", "none")


def check_ancestors(value: str) -> str:
    if value not in ANCESTORS:
        raise ValueError(f"ancestors: {value!r} is not one of {', '.join(ANCESTORS)}")
    return value


class _ProcessJson:
    """The serialized JSON of the processes of events, made once per object.

    Parents and ancestors recur in every event of their descendants, so
    each Process is serialized once and its bytes are embedded in every
    line that names it; bytes are also a third of a dict's memory. The
    whole process side of an event (process, parent, ancestry) is joined
    once per busy process: a burst of its opens or connects then costs one
    lookup each. Only a few hundred of those are kept (a deep ancestry is
    several KB), which covers the processes of a burst.
    """

    def __init__(self, ancestors: str = "full", limit: int = 16384, contexts: int = 256) -> None:
        self._ancestors = check_ancestors(ancestors)
        self._cache: dict[str, tuple[Process, bytes]] = {}
        self._brief: dict[str, tuple[Process, bytes]] = {}
        self._contexts: dict[int, tuple[ProcessEvent, bytes]] = {}
        self._limit = limit
        self._context_limit = contexts
        # Bounded in bytes too: a user can give a process megabytes of
        # arguments and a deep ancestry (a 4 MiB context each).
        self._cache_bytes = 0
        self._context_bytes = 0

    def get(self, p: Process) -> bytes:
        return self._memo(self._cache, p, process_dict)

    def brief(self, p: Process) -> bytes:
        """The process as a `lineage` ancestor: exec_id, pid, binary."""
        return self._memo(self._brief, p, ancestor_dict)

    def _memo(
        self,
        cache: dict[str, tuple[Process, bytes]],
        p: Process,
        as_dict: Callable[[Process], JsonDict],
    ) -> bytes:
        hit = cache.get(p.exec_id)
        if hit is not None and hit[0] is p:
            return hit[1]
        # orjson's result keeps its 4 KiB working buffer; a copy of the
        # bytes is ~300 bytes. Without it 5,000 processes cost 35 MiB more.
        data = memoryview(orjson.dumps(as_dict(p))).tobytes()
        if len(cache) >= self._limit or self._cache_bytes + len(data) > CACHE_BYTES:
            self._cache.clear()
            self._brief.clear()
            self._cache_bytes = 0
        cache[p.exec_id] = (p, data)
        self._cache_bytes += len(data)
        return data

    def context(self, ev: ProcessEvent) -> bytes:
        """`,"node":…,"process":…,"parent":…,"ancestors":[…]` of an event."""
        hit = self._contexts.get(id(ev.process))
        if hit is not None:
            seen = hit[0]
            if (
                seen.process is ev.process
                and seen.parent is ev.parent
                and seen.ancestors is ev.ancestors
                and seen.node == ev.node
            ):
                return hit[1]
        get = self.get
        parts = [b',"node":', orjson.dumps(ev.node), b',"process":', get(ev.process)]
        if ev.parent is not None:
            parts += (b',"parent":', get(ev.parent))
        if self._ancestors == "full":
            parts += (b',"ancestors":[', b",".join([get(a) for a in ev.ancestors]), b"]")
        elif self._ancestors == "brief":
            brief = self.brief
            parts += (
                b',"ancestors":[],"lineage":{"ancestors":[',
                b",".join([brief(a) for a in ev.ancestors]),
                b"]}",
            )
        else:
            parts.append(b',"ancestors":[]')
        data = b"".join(parts)
        if (
            len(self._contexts) >= self._context_limit
            or self._context_bytes + len(data) > CACHE_BYTES
        ):
            self._contexts.clear()
            self._context_bytes = 0
        self._context_bytes += len(data)
        # The event holds its process, so the id cannot be reused while cached.
        self._contexts[id(ev.process)] = (ev, data)
        return data


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
    if p.binary_dev is not None:
        d["binary_dev"] = p.binary_dev
    if p.binary_ino is not None:
        d["binary_ino"] = str(p.binary_ino)  # uint64: a string in protobuf's JSON
    if p.mnt_ns is not None:
        d["mnt_ns"] = p.mnt_ns
    if p.container is not None:
        d["container"] = container_dict(p.container)
    if p.pod is not None:
        d["pod"] = pod_dict(p.pod)
    return d


def ancestor_dict(p: Process) -> JsonDict:
    """A process as --ancestors brief names it (the Ancestor message)."""
    return {"exec_id": p.exec_id, "pid": p.pid, "binary": p.binary}


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


# The details of the most frequent events, in schema order: (field, left
# out when None). One list for both encodings of them: details_dict, and
# the C line (export/_jsonline.c) the Serializer writes.
FILE_FIELDS: tuple[tuple[str, bool], ...] = (
    ("path", False),
    ("flags", False),
    ("mode", False),
    ("result", False),
    ("error", True),
    ("hook", False),
    ("truncated", False),
    ("resolved", False),
    ("non_utf8", False),
    ("op", False),
    ("source", True),
    ("user_memory", False),
)
CONNECT_FIELDS: tuple[tuple[str, bool], ...] = (
    ("family", False),
    ("protocol", True),
    ("sock_type", False),
    ("daddr", True),
    ("dport", True),
    ("saddr", True),
    ("sport", True),
    ("unix_path", True),
    ("result", False),
    ("error", True),
    ("hook", False),
    ("via", False),
    ("user_memory", False),
)


def fields_dict(obj: object, fields: tuple[tuple[str, bool], ...]) -> JsonDict:
    d: JsonDict = {}
    for name, optional in fields:
        value = getattr(obj, name)
        if value is not None or not optional:
            d[name] = value
    return d


def details_dict(ev: ProcessEvent) -> JsonDict:
    """What the event says beyond its process: the object under its type's key."""
    if isinstance(ev, ProcessExit):
        return exit_dict(ev)
    if isinstance(ev, FileOpen):
        return fields_dict(ev.file, FILE_FIELDS)
    if isinstance(ev, Connect):
        return fields_dict(ev.connect, CONNECT_FIELDS)
    if isinstance(ev, PolicySummary):
        return summary_dict(ev)
    if isinstance(ev, PrivilegeChange):
        return privilege_dict(ev)
    if isinstance(ev, FileAttr):
        return file_attr_dict(ev)
    return {}  # process_exec: everything is in `process`


def summary_dict(ev: PolicySummary) -> JsonDict:
    s = ev.summary
    return {
        "event": s.event,
        "count": str(s.count),  # uint64: a string in protobuf's JSON
        "first": rfc3339(s.first),
        "window_start": rfc3339(s.window_start),
        "interval_ms": s.interval_ms,
        "limit": s.limit,
        "by": s.by,
        "aggregate": s.aggregate,
        "cgroup_id": str(s.cgroup_id),
    }


_CRED_FIELDS = (
    "uid",
    "euid",
    "suid",
    "fsuid",
    "gid",
    "egid",
    "sgid",
    "fsgid",
    "cap_inheritable",
    "cap_permitted",
    "cap_effective",
    "cap_ambient",
)


def credentials_dict(c: Credentials) -> JsonDict:
    return {name: getattr(c, name) for name in _CRED_FIELDS}


def privilege_dict(ev: PrivilegeChange) -> JsonDict:
    p = ev.privilege
    d: JsonDict = {"op": p.op, "old": credentials_dict(p.old), "new": credentials_dict(p.new)}
    d["changed"] = p.changed
    d["to_root"] = p.to_root
    d["hook"] = p.hook
    return d


def file_attr_dict(ev: FileAttr) -> JsonDict:
    a = ev.file_attr
    d: JsonDict = {"op": a.op, "call": a.call, "path": a.path}
    _known(d, a, ("mode", "uid", "gid", "file_mode"))
    d["hook"] = a.hook
    d["truncated"] = a.truncated
    d["resolved"] = a.resolved
    d["non_utf8"] = a.non_utf8
    d["world_writable_dir"] = a.world_writable_dir
    return d


def policy_dict(m: PolicyMatch) -> JsonDict:
    return {
        "name": m.name,
        "rule": m.rule,
        "action": m.action,
        "severity": m.severity,
        "tags": m.tags,
        "message": m.message,
        "mode": m.mode,
    }


class Serializer:
    """Event -> one JSON line (bytes, newline included).

    A line is assembled from parts in the schema's key order: the event's
    time, its process side (_ProcessJson.context) and its details. The
    result is byte for byte what orjson makes of the whole event as one
    dict (tests/test_grpc_schema.py holds it to protobuf's JSON); building
    that dict for every event was a third of a posted open's Python cost.
    """

    def __init__(self, ancestors: str = "full") -> None:
        """`ancestors`: one of ANCESTORS (--ancestors)."""
        self._procs = _ProcessJson(ancestors)
        self._policies: dict[int, tuple[PolicyMatch, bytes]] = {}  # by id(match)

    def _policy(self, m: PolicyMatch) -> bytes:
        # Few rules, many events: PolicyStore hands out one PolicyMatch per
        # rule, so its JSON is made once. Keyed by identity, as there; the
        # entry holds the match, so its id cannot be reused while cached.
        hit = self._policies.get(id(m))
        if hit is not None and hit[0] is m:
            return hit[1]
        if len(self._policies) >= 4096:
            self._policies.clear()
        data = b',"policy":' + orjson.dumps(policy_dict(m))
        self._policies[id(m)] = (m, data)
        return data

    @staticmethod
    def _lost(ev: Lost) -> bytes:
        # A lost event is about no process; `ancestors` is an empty list
        # because repeated fields are always printed.
        d = {
            "type": ev.type,
            "time": rfc3339(ev.time),
            "node": ev.node,
            "ancestors": [],
            "lost": {"kernel": ev.kernel, "daemon": ev.daemon},
        }
        return orjson.dumps(d, option=orjson.OPT_APPEND_NEWLINE)

    def line(self, ev: Event) -> bytes:
        shape = _SHAPES.get(type(ev))
        if shape is not None:  # a FileOpen or Connect
            policy: PolicyMatch | None = ev.policy  # type: ignore[union-attr]
            context = self._procs.context(ev)  # type: ignore[arg-type]
            return shape.line(ev, context, self._policy(policy) if policy is not None else b"")
        if isinstance(ev, Lost):
            return self._lost(ev)
        parts = self._parts(ev)
        parts[_CONTEXT] = self._procs.context(ev)
        return b"".join(parts)

    def lines(self, ev: Event, other: Serializer) -> tuple[bytes, bytes]:
        """line(ev), and other.line(ev) of a serializer with other ancestors: the
        parts that do not depend on the ancestors are made once for both."""
        if isinstance(ev, Lost):
            line = self._lost(ev)
            return line, line
        shape = _SHAPES.get(type(ev))
        if shape is not None:
            # The C line costs less than keeping its parts for a second join.
            policy = self._policy_part(ev)
            return (
                shape.line(ev, self._procs.context(ev), policy),
                shape.line(ev, other._procs.context(ev), policy),
            )
        parts = self._parts(ev)
        parts[_CONTEXT] = self._procs.context(ev)
        mine = b"".join(parts)
        parts[_CONTEXT] = other._procs.context(ev)
        return mine, b"".join(parts)

    def _policy_part(self, ev: ProcessEventKind) -> bytes:
        policy: PolicyMatch | None = getattr(ev, "policy", None)
        return self._policy(policy) if policy is not None else b""

    def _parts(
        self, ev: ProcessEventKind
    ) -> list[bytes]:
        """The line's parts, but the process side, which goes at [_CONTEXT]."""
        # Event types and RFC 3339 times need no JSON escaping; the details
        # sit under the key named by the type.
        kind = ev.type.encode()
        # Joined, not %: it sizes the 4-5 KB line once instead of growing it.
        return [
            b'{"type":"',
            kind,
            b'","time":"',
            rfc3339(ev.time).encode(),
            b'"',
            b"",  # _CONTEXT
            b',"',
            kind,
            b'":',
            orjson.dumps(details_dict(ev)),
            self._policy_part(ev),
            b"}\n",
        ]


_CONTEXT = 5  # where Serializer._parts leaves the process side

# The events most lines are about, written by export/_jsonline.c; the
# others are joined from parts above.
_SHAPES: dict[type, Shape] = {
    FileOpen: Shape(FileOpen.type, "file", FILE_FIELDS),
    Connect: Shape(Connect.type, "connect", CONNECT_FIELDS),
}


class ExportFileError(OSError):
    """An export file the daemon will not write; the message names the problem and the fix."""


class RotatingFile:
    """Appends whole lines to `path`; past max_bytes, path -> path.1 -> path.2 ...

    Rotation happens between writes, so a line is never split across
    files. `backups` old files are kept. Only a regular file rotates: a
    device or a FIFO (`--export-file /dev/null`, a pipe to a shipper) has
    no size to limit, and renaming it would put a file in its place.

    Every line holds command lines, and people pass passwords as
    arguments; and a root daemon that writes where a link points writes
    where its maker chose (into a user's `.bashrc`, a `$(...)` in an argv
    would run at their next login). So the file is never opened
    through a symlink, a file found in its place must be root's and
    unreadable to others, and its directory (and those above it) must be
    root's to change: all checked on what was opened (fstat), and every
    name resolved relative to the directory opened at the start.
    """

    def __init__(self, path: Path, max_bytes: int, backups: int = 5) -> None:
        if max_bytes <= 0:
            raise ValueError(f"export file size limit must be positive, got {max_bytes}")
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.rotate_errors = 0  # rotations that failed: the lines went on in the old file
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        directory = path.parent.resolve()
        try:
            shared = safefile.shared_directory([directory, path.parent])
        except OSError as exc:
            raise ExportFileError(
                f"export file {path}: cannot check its directory: {exc}"
            ) from None
        if shared is not None:
            raise ExportFileError(
                f"export file {path}: {shared}, not only root: they could replace the file "
                "with a link to any file; use a directory only root can write, like /var/log"
            )
        self._dir = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self._f = self._open()
        except BaseException:
            os.close(self._dir)
            raise
        self._rotates = stat.S_ISREG(os.fstat(self._f.fileno()).st_mode)
        self._size = self._f.tell() if self._rotates else 0

    def _open(self) -> BinaryIO:
        """The file, created root's only, or the one there if it is safe to write; else
        ExportFileError saying why."""
        name = self.path.name
        flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
        try:
            try:
                fd = safefile.create(name, self._dir, flags)
            except FileExistsError:
                fd = os.open(name, flags | os.O_NOFOLLOW, dir_fd=self._dir)
        except OSError as exc:
            if safefile.is_link_error(exc):
                problem = "is a symbolic link; give the path of the file itself"
            elif exc.errno == errno.EISDIR:
                problem = "is a directory; give a file name"
            else:
                problem = f"cannot be opened: {exc.strerror}"
            raise ExportFileError(f"export file {self.path} {problem}") from None
        try:
            unfit = _unsafe_export(os.fstat(fd))
            if unfit is not None:
                raise ExportFileError(f"export file {self.path} {unfit}")
        except BaseException:
            os.close(fd)
            raise
        # Unbuffered: a batch goes to the kernel in one writev (_writev.py).
        return open(fd, "ab", buffering=0)

    def _rename(self, src: str, dst: str) -> None:
        os.replace(src, dst, src_dir_fd=self._dir, dst_dir_fd=self._dir)

    def _exists(self, name: str) -> bool:
        try:
            os.stat(name, dir_fd=self._dir, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def _rotate(self) -> None:
        """The current file becomes name.1 and a new one is opened. If either fails,
        the lines go on into the file open now: logged and counted, and tried
        again after another max_bytes."""
        try:
            new = self._shift_and_open()
        except OSError as exc:  # ExportFileError included
            self.rotate_errors += 1
            _log.error(
                "export file rotation failed; writing on in the file open now",
                file=str(self.path),
                error=str(exc),
                failures=self.rotate_errors,
            )
        else:
            self._f.close()
            self._f = new
        self._size = 0

    def _shift_and_open(self) -> BinaryIO:
        name = self.path.name
        for i in range(self.backups - 1, 0, -1):
            if self._exists(f"{name}.{i}"):
                self._rename(f"{name}.{i}", f"{name}.{i + 1}")
        if self.backups > 0:
            self._rename(name, f"{name}.1")
        else:
            os.unlink(name, dir_fd=self._dir)
        return self._open()

    def write_lines(self, lines: list[bytes]) -> None:
        """Append whole lines; a rotation falls between two lines, never inside one."""
        start, size = 0, self._size
        limit = self.max_bytes if self._rotates else math.inf
        for i, line in enumerate(lines):
            if size and size + len(line) > limit:
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
        os.close(self._dir)


def _unsafe_export(st: os.stat_result) -> str | None:
    """What makes an opened export file unfit, as the end of a sentence; None if fit."""
    mode = st.st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)):
        return f"is {safefile.kind(mode)}; give a regular file, a FIFO or a device"
    if st.st_uid != 0:
        return (
            f"is owned by uid {st.st_uid}, not root: someone else made it; remove it "
            "(the daemon creates it, mode 0600) or `chown root` it"
        )
    # A device is the kernel's (/dev/null is 0666); a file or a pipe is readable
    # by whoever its mode lets read it.
    if not stat.S_ISCHR(mode) and stat.S_IMODE(mode) & 0o077:
        return (
            f"has mode {stat.S_IMODE(mode):04o}: users other than root could read every "
            "command line in it; `chmod 600` it"
        )
    return None
