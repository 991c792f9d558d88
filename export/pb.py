"""Events as protobuf messages of the API (export/tracer_v1.proto).

The fields follow export/jsonl.py one for one, and tests/test_grpc_schema.py
holds protobuf's JSON mapping of a message equal to the JSON line of the
same event. One Encoder serves every subscriber: an event is converted and
serialized once, however many subscribers receive it.
"""

from __future__ import annotations

from export.proto_gen import tracer_v1_pb2 as pb
from tracer.core.events import Connect, Event, FileOpen, Lost, PolicyMatch, Process, ProcessExit

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


# Tags of Event.process (4), .parent (5) and .ancestors (6), length-delimited.
_PROCESS_TAG, _PARENT_TAG, _ANCESTOR_TAG = b"\x22", b"\x2a", b"\x32"


class Encoder:
    """Event -> serialized pb.Event, reusing the bytes of each Process.

    Parents and ancestors recur in every event of their descendants, so
    each Process is serialized once (as export/jsonl.py builds its dict
    once), and an event is its small head message followed by those bytes
    as fields 4, 5 and 6: protobuf allows fields in any order, and repeated
    fields concatenate. Copying process messages into each Event instead
    costs twice as much (bench/grpc_stream.py). Not thread-safe: one thread
    (the hub's) encodes.
    """

    def __init__(self, limit: int = 16384) -> None:
        # exec_id -> (the Process, varint length + its serialized message)
        self._procs: dict[str, tuple[Process, bytes]] = {}
        self._limit = limit

    def _process(self, p: Process) -> bytes:
        hit = self._procs.get(p.exec_id)
        if hit is not None and hit[0] is p:
            return hit[1]
        data = process_message(p).SerializeToString()
        sized = varint(len(data)) + data
        if len(self._procs) >= self._limit:
            self._procs.clear()
        self._procs[p.exec_id] = (p, sized)
        return sized

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
        else:
            head.process_exec.SetInParent()
            _policy(head, ev.policy)
        get = self._process
        parts = [head.SerializeToString(), _PROCESS_TAG, get(ev.process)]
        if ev.parent is not None:
            parts += (_PARENT_TAG, get(ev.parent))
        for a in ev.ancestors:
            parts += (_ANCESTOR_TAG, get(a))
        return b"".join(parts)

    def message(self, ev: Event) -> pb.Event:
        return pb.Event.FromString(self.event_bytes(ev))

    def framed(self, ev: Event) -> bytes:
        return frame(self.event_bytes(ev))
