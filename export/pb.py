"""Events as protobuf messages of the API (export/tracer_v1.proto).

The fields follow export/jsonl.py one for one, and tests/test_grpc_schema.py
holds protobuf's JSON mapping of a message equal to the JSON line of the
same event. One Encoder serves every subscriber: an event is converted and
serialized once, however many subscribers receive it.
"""

from __future__ import annotations

from export.proto_gen import tracer_v1_pb2 as pb
from tracer.events import Event, Lost, Process, ProcessExit

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
    return m


def lost_message(ev: Lost) -> pb.Event:
    m = pb.Event(type=ev.type, node=ev.node, lost=pb.Lost(kernel=ev.kernel, daemon=ev.daemon))
    m.time.FromNanoseconds(ev.time)
    return m


class Encoder:
    """Event -> pb.Event, reusing the message of each Process.

    Parents and ancestors recur in every event of their descendants, so
    their messages are built once (as export/jsonl.py does for dicts). Not
    thread-safe: one thread (the hub's) converts.
    """

    def __init__(self, limit: int = 16384) -> None:
        self._procs: dict[str, tuple[Process, pb.Process]] = {}
        self._limit = limit

    def _process(self, p: Process) -> pb.Process:
        hit = self._procs.get(p.exec_id)
        if hit is not None and hit[0] is p:
            return hit[1]
        m = process_message(p)
        if len(self._procs) >= self._limit:
            self._procs.clear()
        self._procs[p.exec_id] = (p, m)
        return m

    def message(self, ev: Event) -> pb.Event:
        if isinstance(ev, Lost):
            return lost_message(ev)
        get = self._process
        m = pb.Event(
            type=ev.type,
            node=ev.node,
            process=get(ev.process),
            parent=get(ev.parent) if ev.parent is not None else None,
            ancestors=[get(a) for a in ev.ancestors],
        )
        m.time.FromNanoseconds(ev.time)
        if isinstance(ev, ProcessExit):
            st = ev.exit
            m.process_exit.core_dumped = st.core_dumped
            if st.code is not None:
                m.process_exit.code = st.code
            if st.signal is not None:
                m.process_exit.signal = st.signal
        else:
            m.process_exec.SetInParent()
        return m

    def framed(self, ev: Event) -> bytes:
        return frame(self.message(ev).SerializeToString())
