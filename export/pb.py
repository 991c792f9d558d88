"""Events as protobuf messages of the API (export/tracer_v1.proto).

The fields follow export/jsonl.py one for one, and tests/test_grpc_schema.py
holds protobuf's JSON mapping of a message equal to the JSON line of the
same event. One Encoder serves every subscriber: an event is converted and
serialized once, however many subscribers receive it.

The wire bytes are written by export/_pbwire.c from the events' own
attributes, by tables built here from the generated descriptors: building
upb messages field by field cost more than everything else the gRPC stream
does per event (BENCHMARKS.md, "gRPC streaming"). tests/test_pb_wire.py
holds the bytes equal to upb's deterministic serialization of the messages
the previous, upb-built encoder made.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from typing import NamedTuple

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from export import _pbwire as wire
from export.jsonl import CACHE_BYTES, check_ancestors
from export.proto_gen import tracer_v1_pb2 as pb
from tracer.core.events import (
    Connect,
    Event,
    FileAttr,
    FileOpen,
    Lost,
    PolicySummary,
    PrivilegeChange,
    Process,
    ProcessExec,
    ProcessExit,
)

# JSON options under which protobuf's JSON mapping of an Event is the JSON
# line of export/jsonl.py (use as MessageToDict(msg, **JSON_OPTIONS)).
JSON_OPTIONS = {"preserving_proto_field_name": True, "always_print_fields_with_no_presence": True}


# -- the tables export/_pbwire.c writes by ----------------------------------------

_SCALARS = {
    FieldDescriptor.TYPE_STRING: wire.STRING,
    FieldDescriptor.TYPE_BOOL: wire.BOOL,
    FieldDescriptor.TYPE_UINT32: wire.UINT32,
    FieldDescriptor.TYPE_UINT64: wire.UINT64,
    FieldDescriptor.TYPE_INT32: wire.INT32,
    FieldDescriptor.TYPE_INT64: wire.INT64,
}
_TIMESTAMP = "google.protobuf.Timestamp"


def _field(
    f: FieldDescriptor, attr: str | None
) -> tuple[int, int, int, str | None, wire.Message | None]:
    """One field's row: (number, kind, flags, attribute, sub-table). Raises
    on what the C writer cannot write, so a schema change that needs it
    fails at import, not on the wire."""
    sub = f.message_type
    if sub is not None and sub.GetOptions().map_entry:
        return f.number, wire.MAP, 0, attr, _table(sub)
    if sub is not None and f.is_repeated:
        raise TypeError(f"{f.full_name}: repeated messages are written by the Encoder only")
    if sub is not None:
        kind = wire.TIMESTAMP if sub.full_name == _TIMESTAMP else wire.MESSAGE
        return f.number, kind, 0, attr, _table(sub)
    if f.type not in _SCALARS or (f.is_repeated and f.type != FieldDescriptor.TYPE_STRING):
        raise TypeError(f"{f.full_name}: no wire writer for its type (or packed encoding)")
    flags = (wire.OPTIONAL if f.has_presence else 0) | (wire.REPEATED if f.is_repeated else 0)
    return f.number, _SCALARS[f.type], flags, attr, None


def _table(
    desc: Descriptor, only: Collection[str] | None = None, attrs: Mapping[str, str | None] = {}
) -> wire.Message:
    """The table of a message whose fields are the same-named attributes of
    the object written (`attrs`: where they differ; None: the object itself),
    in number order as upb writes them; `only`: these fields, the others unset."""
    fields = sorted(desc.fields, key=lambda f: f.number)
    return wire.Message(
        tuple(
            _field(f, attrs.get(f.name, f.name)) for f in fields if only is None or f.name in only
        )
    )


# Each event class's Event field of the `event` oneof, and the attribute
# that holds its message (None: the event itself).
_KIND_FIELDS: dict[type[Event], tuple[str, str | None]] = {
    ProcessExec: ("process_exec", None),
    ProcessExit: ("process_exit", "exit"),
    FileOpen: ("file_open", "file"),
    Connect: ("connect", "connect"),
    PolicySummary: ("policy_summary", "summary"),
    PrivilegeChange: ("privilege_change", "privilege"),
    FileAttr: ("file_attr", "file_attr"),
    Lost: ("lost", None),
}


def _head(cls: type[Event], kind_field: str, attr: str | None) -> wire.Message:
    """An event's Event message without its processes (the Encoder adds those)."""
    policy = ("policy",) if "policy" in {f.name for f in dataclasses.fields(cls)} else ()
    return _table(
        pb.Event.DESCRIPTOR,
        only={"type", "time", "node", kind_field, *policy},
        attrs={kind_field: attr},
    )


_HEADS = {cls: _head(cls, name, attr) for cls, (name, attr) in _KIND_FIELDS.items()}
_PROCESS = _table(pb.Process.DESCRIPTOR)
_ANCESTOR = _table(pb.Ancestor.DESCRIPTOR)  # of a Process, as its fields are named alike


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


def _cut(p: Process) -> Process:
    """The process as written cut (CUT_FLAG): see MAX_EVENT_BYTES."""
    c, pod = p.container, p.pod
    return dataclasses.replace(
        p,
        args=(),
        cwd="",
        binary="" if len(p.binary) > _CUT_BINARY else p.binary,
        flags=(*p.flags, CUT_FLAG),
        container=None if c is None else dataclasses.replace(c, name=None, image=None),
        pod=None if pod is None else dataclasses.replace(pod, labels={}),
    )


def _tag(desc: Descriptor, name: str) -> bytes:
    """The tag of a length-delimited field (number < 16: one byte)."""
    number = desc.fields_by_name[name].number
    if number >= 16:
        raise ValueError(f"{desc.full_name}.{name}: export/_pbwire.c takes one-byte tags")
    return bytes([number << 3 | 2])


# Event.process, .parent, .ancestors and .lineage, and Lineage.ancestors.
_PROCESS_TAG = _tag(pb.Event.DESCRIPTOR, "process")
_PARENT_TAG = _tag(pb.Event.DESCRIPTOR, "parent")
_ANCESTOR_TAG = _tag(pb.Event.DESCRIPTOR, "ancestors")
_LINEAGE_TAG = _tag(pb.Event.DESCRIPTOR, "lineage")
_LINEAGE_ANCESTOR_TAG = _tag(pb.Lineage.DESCRIPTOR, "ancestors")
# GetEventsResponse.events: a serialized GetEventsResponse is the
# concatenation of one such field per event, so events serialized once can
# be batched for any subscriber by joining bytes.
_EVENTS_TAG = _tag(pb.GetEventsResponse.DESCRIPTOR, "events")


# --ancestors as export/_pbwire.c takes it.
_ANCESTORS = {
    "none": wire.ANCESTORS_NONE,
    "brief": wire.ANCESTORS_BRIEF,
    "full": wire.ANCESTORS_FULL,
}
# In the order export/_pbwire.c takes them.
_TAGS = b"".join(
    [_PROCESS_TAG, _PARENT_TAG, _ANCESTOR_TAG, _LINEAGE_TAG, _LINEAGE_ANCESTOR_TAG, _EVENTS_TAG]
)
_HEAD_ROWS = {cls: (head, cls is not Lost) for cls, head in _HEADS.items()}


class Items(NamedTuple):
    """A batch of events framed (Encoder.items)."""

    framed: list[tuple[str, bytes]]  # (type, framed) of each event written
    written: list[Event]  # the events those are of, in the same order
    nbytes: int  # the framed bytes' total
    losses: list[Lost]  # the batch's loss reports, not written
    failed: list[tuple[Event, Exception]]  # each event that could not be written, and why


class Encoder:
    """Event -> serialized pb.Event, reusing the bytes of each Process.

    Parents and ancestors recur in every event of their descendants, so
    each Process is serialized once (as export/jsonl.py builds its dict
    once), and an event is its small head message followed by those bytes
    as fields 4, 5 and 6 (export/_pbwire.c, Events). Several threads may
    share one: its caches change only under the GIL.
    """

    def __init__(self, ancestors: str = "full", limit: int = 16384) -> None:
        """`ancestors`: --ancestors, one of export.jsonl.ANCESTORS."""
        self._events = wire.Events(
            heads=_HEAD_ROWS,
            whole=wire.Cache(_PROCESS, limit, CACHE_BYTES),
            # Each entry keeps its whole process alive: charged as such.
            cut=wire.Cache(_PROCESS, limit, CACHE_BYTES, prepare=_cut, measure=_PROCESS),
            brief=wire.Cache(_ANCESTOR, limit, CACHE_BYTES, measure=_PROCESS),
            ancestors=_ANCESTORS[check_ancestors(ancestors)],
            tags=_TAGS,
            whole_bytes=_WHOLE_BYTES,
            max_bytes=MAX_EVENT_BYTES,
        )
        self.event_bytes = self._events.encode
        # One GetEventsResponse.events field: what the hub queues.
        self.framed = self._events.framed

    def items(self, batch: list[Event]) -> Items:
        """The hub's work for its plain subscribers, with no Python per event."""
        return Items(*self._events.items(batch, Lost))

    def message(self, ev: Event) -> pb.Event:
        return pb.Event.FromString(self.event_bytes(ev))
