"""Events as protobuf messages of the API (export/tracer_v1.proto).

The fields follow export/jsonl.py one for one, and tests/test_grpc_schema.py
holds protobuf's JSON mapping of a message equal to the JSON line of the
same event. One Encoder serves every subscriber: an event is converted and
serialized once, however many subscribers receive it.
"""

from __future__ import annotations

from collections.abc import Callable

from export.jsonl import CACHE_BYTES, check_ancestors
from export.proto_gen import tracer_v1_pb2 as pb
from tracer.core.events import (
    Connect,
    Credentials,
    Event,
    FileAttr,
    FileOpen,
    Lost,
    PolicyMatch,
    PolicySummary,
    PrivilegeChange,
    Process,
    ProcessEvent,
    ProcessExit,
)

# JSON options under which protobuf's JSON mapping of an Event is the JSON
# line of export/jsonl.py (use as MessageToDict(msg, **JSON_OPTIONS)).
JSON_OPTIONS = {"preserving_proto_field_name": True, "always_print_fields_with_no_presence": True}

# Tag of GetEventsResponse.events (field 1, length-delimited): a serialized
# GetEventsResponse is the concatenation of one such field per event, so
# events serialized once can be batched for any subscriber by joining bytes.
_EVENTS_TAG = b"\x0a"


def varint(n: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int."""
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def frame(event_bytes: bytes) -> bytes:
    """One serialized Event as a GetEventsResponse.events field."""
    return _EVENTS_TAG + varint(len(event_bytes)) + event_bytes


def process_message(p: Process) -> pb.Process:
    m = pb.Process(
        exec_id=p.exec_id,
        pid=p.pid,
        tid=p.tid,
        uid=p.uid,
        euid=p.euid,
        gid=p.gid,
        egid=p.egid,
        auid=p.auid,
        user=p.user,
        binary=p.binary,
        args=p.args,
        cwd=p.cwd,
        parent_exec_id=p.parent_exec_id,
        flags=p.flags,
        cgroup_id=p.cgroup_id,
        binary_dev=p.binary_dev,
        binary_ino=p.binary_ino,
        mnt_ns=p.mnt_ns,
    )
    m.start_time.FromNanoseconds(p.start_time)
    c = p.container
    if c is not None:
        m.container.id, m.container.runtime = c.id, c.runtime
        if c.name is not None:
            m.container.name = c.name
        if c.image is not None:
            m.container.image = c.image
    pod = p.pod
    if pod is not None:
        m.pod.uid = pod.uid
        m.pod.labels.update(pod.labels)
        for name in ("namespace", "name", "workload", "workload_kind"):
            value = getattr(pod, name)
            if value is not None:
                setattr(m.pod, name, value)
    return m


def lost_message(ev: Lost) -> pb.Event:
    m = pb.Event(type=ev.type, node=ev.node, lost=pb.Lost(kernel=ev.kernel, daemon=ev.daemon))
    m.time.FromNanoseconds(ev.time)
    return m


def _policy(m: pb.Event, p: PolicyMatch | None) -> None:
    if p is not None:
        m.policy.name, m.policy.rule, m.policy.action = p.name, p.rule, p.action
        m.policy.severity, m.policy.message, m.policy.mode = p.severity, p.message, p.mode
        m.policy.tags.extend(p.tags)


def _file_open(m: pb.FileOpen, ev: FileOpen) -> None:
    f = ev.file
    m.path = f.path
    m.flags.extend(f.flags)
    m.mode, m.result, m.hook = f.mode, f.result, f.hook
    m.truncated, m.resolved, m.non_utf8 = f.truncated, f.resolved, f.non_utf8
    m.op, m.user_memory = f.op, f.user_memory
    if f.error is not None:
        m.error = f.error
    if f.source is not None:
        m.source = f.source


def _connect(m: pb.Connect, ev: Connect) -> None:
    c = ev.connect
    m.family, m.sock_type, m.result, m.hook = c.family, c.sock_type, c.result, c.hook
    m.via, m.user_memory = c.via, c.user_memory
    # Optional fields: set only when known, so they are absent (not null) in JSON.
    for name in ("protocol", "daddr", "dport", "saddr", "sport", "unix_path", "error"):
        value = getattr(c, name)
        if value is not None:
            setattr(m, name, value)


def _summary(m: pb.PolicySummary, ev: PolicySummary) -> None:
    s = ev.summary
    m.event, m.count, m.interval_ms, m.limit = s.event, s.count, s.interval_ms, s.limit
    m.by, m.aggregate, m.cgroup_id = s.by, s.aggregate, s.cgroup_id
    m.first.seconds, m.first.nanos = divmod(s.first, 1_000_000_000)
    m.window_start.seconds, m.window_start.nanos = divmod(s.window_start, 1_000_000_000)


def _credentials(m: pb.Credentials, c: Credentials) -> None:
    m.uid, m.euid, m.suid, m.fsuid = c.uid, c.euid, c.suid, c.fsuid
    m.gid, m.egid, m.sgid, m.fsgid = c.gid, c.egid, c.sgid, c.fsgid
    m.cap_inheritable.extend(c.cap_inheritable)
    m.cap_permitted.extend(c.cap_permitted)
    m.cap_effective.extend(c.cap_effective)
    m.cap_ambient.extend(c.cap_ambient)


def _privilege(m: pb.PrivilegeChange, ev: PrivilegeChange) -> None:
    p = ev.privilege
    m.op, m.to_root, m.hook = p.op, p.to_root, p.hook
    _credentials(m.old, p.old)
    _credentials(m.new, p.new)
    m.changed.extend(p.changed)


def _file_attr(m: pb.FileAttr, ev: FileAttr) -> None:
    a = ev.file_attr
    m.op, m.call, m.path, m.hook = a.op, a.call, a.path, a.hook
    m.truncated, m.resolved, m.non_utf8 = a.truncated, a.resolved, a.non_utf8
    m.world_writable_dir = a.world_writable_dir
    for name in ("mode", "uid", "gid", "file_mode"):
        value = getattr(a, name)
        if value is not None:
            setattr(m, name, value)


# Tags of Event.process (4), .parent (5), .ancestors (6) and .lineage (7),
# and of Lineage.ancestors (1), length-delimited.
_PROCESS_TAG, _PARENT_TAG, _ANCESTOR_TAG = b"\x22", b"\x2a", b"\x32"
_LINEAGE_TAG, _LINEAGE_ANCESTOR_TAG = b"\x3a", b"\x0a"

# The most one serialized event takes: gRPC clients refuse messages over
# 4 MiB by default, and a chain of 66 processes with 8 KiB of non-UTF-8
# arguments each made a 4.08 MiB event. The event's process, its parent
# and its ancestors (nearest first) are written whole while they fit half
# of it; from the first that does not, processes are written cut (CUT_FLAG)
# and, past the whole budget, left out as if --ancestor-depth had stopped.
MAX_EVENT_BYTES = 1 << 20
_WHOLE_BYTES = MAX_EVENT_BYTES // 2
# A process written cut lacks its args, cwd, pod labels and container name
# and image, and its binary when longer than this. Its exec_id names it: its
# own events carry it whole.
CUT_FLAG = "cut"
_CUT_BINARY = 512


def _cut_message(p: Process) -> pb.Process:
    m = process_message(p)
    del m.args[:]
    m.cwd = ""
    if len(m.binary) > _CUT_BINARY:
        m.binary = ""
    m.pod.labels.clear()
    m.container.ClearField("name")
    m.container.ClearField("image")
    if not p.container:
        m.ClearField("container")
    if not p.pod:
        m.ClearField("pod")
    m.flags.append(CUT_FLAG)
    return m


def _ancestor_message(p: Process) -> pb.Ancestor:
    return pb.Ancestor(exec_id=p.exec_id, pid=p.pid, binary=p.binary)


def _sized(m: pb.Process | pb.Ancestor) -> bytes:
    data = m.SerializeToString()
    return varint(len(data)) + data


class Encoder:
    """Event -> serialized pb.Event, reusing the bytes of each Process.

    Parents and ancestors recur in every event of their descendants, so
    each Process is serialized once (as export/jsonl.py builds its dict
    once), and an event is its small head message followed by those bytes
    as fields 4, 5 and 6: protobuf allows fields in any order, and repeated
    fields concatenate. Copying process messages into each Event instead
    costs twice as much (bench/grpc_stream.py). Several threads may share
    one: its cache is read and written by single dict operations, and a
    race costs only a process serialized twice.
    """

    def __init__(self, ancestors: str = "full", limit: int = 16384) -> None:
        """`ancestors`: --ancestors, one of export.jsonl.ANCESTORS."""
        self._ancestors = check_ancestors(ancestors)
        # exec_id -> (the Process, varint length + its serialized message)
        self._procs: dict[str, tuple[Process, bytes]] = {}
        self._cut: dict[str, tuple[Process, bytes]] = {}
        self._brief: dict[str, tuple[Process, bytes]] = {}
        self._limit = limit
        # Bytes held by each cache, by id(cache): bounded in bytes too.
        self._held: dict[int, int] = {}

    def _get(
        self,
        cache: dict[str, tuple[Process, bytes]],
        p: Process,
        make: Callable[[Process], pb.Process | pb.Ancestor],
        limit: int,
    ) -> bytes:
        hit = cache.get(p.exec_id)
        if hit is not None and hit[0] is p:
            return hit[1]
        sized = _sized(make(p))
        held = self._held.get(id(cache), 0)
        if len(cache) >= limit or held + len(sized) > CACHE_BYTES:
            cache.clear()
            held = 0
        cache[p.exec_id] = (p, sized)
        self._held[id(cache)] = held + len(sized)
        return sized

    def _processes(self, ev: ProcessEvent, total: int) -> list[bytes]:
        """Fields 4, 5 and 6 of the event, within MAX_EVENT_BYTES, `total` being used."""
        procs, cut, limit = self._procs, self._cut, self._limit
        chain = [(_PROCESS_TAG, ev.process)]
        if ev.parent is not None:
            chain.append((_PARENT_TAG, ev.parent))
        if self._ancestors == "full":
            chain.extend((_ANCESTOR_TAG, a) for a in ev.ancestors)
        parts: list[bytes] = []
        whole = True
        for tag, p in chain:
            data = self._get(procs, p, process_message, limit) if whole else b""
            if not whole or total + len(data) > _WHOLE_BYTES:
                whole = False
                data = self._get(cut, p, _cut_message, limit)
                if parts and total + 1 + len(data) > MAX_EVENT_BYTES:
                    break
            parts += (tag, data)
            total += 1 + len(data)
        if self._ancestors == "brief":
            parts += self._lineage(ev, total)
        return parts

    def _lineage(self, ev: ProcessEvent, total: int) -> list[bytes]:
        """Field 7: the ancestors named, as many as fit in MAX_EVENT_BYTES (a
        binary path can be 4 KiB long)."""
        names: list[bytes] = []
        size = 0
        for a in ev.ancestors:
            data = self._get(self._brief, a, _ancestor_message, self._limit)
            if total + 1 + 4 + size + 1 + len(data) > MAX_EVENT_BYTES:
                break
            names += (_LINEAGE_ANCESTOR_TAG, data)
            size += 1 + len(data)
        return [_LINEAGE_TAG, varint(size), *names]

    def event_bytes(self, ev: Event) -> bytes:
        if isinstance(ev, Lost):
            return lost_message(ev).SerializeToString()
        head = pb.Event(type=ev.type, node=ev.node)
        head.time.seconds, head.time.nanos = divmod(ev.time, 1_000_000_000)
        if isinstance(ev, ProcessExit):
            st = ev.exit
            head.process_exit.core_dumped = st.core_dumped
            if st.code is not None:
                head.process_exit.code = st.code
            if st.signal is not None:
                head.process_exit.signal = st.signal
        elif isinstance(ev, FileOpen):
            _file_open(head.file_open, ev)
            _policy(head, ev.policy)
        elif isinstance(ev, Connect):
            _connect(head.connect, ev)
            _policy(head, ev.policy)
        elif isinstance(ev, PolicySummary):
            _summary(head.policy_summary, ev)
            _policy(head, ev.policy)
        elif isinstance(ev, PrivilegeChange):
            _privilege(head.privilege_change, ev)
            _policy(head, ev.policy)
        elif isinstance(ev, FileAttr):
            _file_attr(head.file_attr, ev)
            _policy(head, ev.policy)
        else:
            head.process_exec.SetInParent()
            _policy(head, ev.policy)
        head_bytes = head.SerializeToString()
        return b"".join([head_bytes, *self._processes(ev, len(head_bytes))])

    def message(self, ev: Event) -> pb.Event:
        return pb.Event.FromString(self.event_bytes(ev))

    def framed(self, ev: Event) -> bytes:
        return frame(self.event_bytes(ev))
