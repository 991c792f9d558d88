"""JSON lines in a SIEM's schema (OCSF, ECS): one converter over the native event dict.

Both ways in convert the same representation, the native JSON dict of an
event (README "Event schema"): `tracer events` and `tracer replay` have it
from the API or the log, and the daemon builds it from its event objects.
A Mapper (export/ocsf.py, export/ecs.py) makes an event of three parts:

- its process side (`side`), which depends only on the process, its parent
  and ancestors and the node, from each process converted alone
  (`process`): the daemon converts each process once, and in a storm of
  one process's opens or connects the side is the same for every event,
  so it converts and serializes the side once and splices its bytes in;
- what follows from the event's kind, rule and outcome (`head_split`, one
  shared object per combination, serialized once by the daemon);
- the rest (`head_split` too): time, ids, the kind's details.

A few objects get fields from more than one part (`Mapper.merged`: OCSF's
`metadata` and `unmapped`; ECS's `event`, `tracer` and `process`): the
parts are merged one level deep. A new event kind is a case in the
mapper's `head_split` (and its constant part); the side does not change.

`convert()` merges the parts as dicts; `FormatSerializer.line()` builds
the same JSON from bytes. tests/test_siem.py holds them equal.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import orjson

from export.jsonl import CACHE_BYTES, JsonDict, details_dict, policy_dict, process_dict
from forensics.log import parse_time
from tracer.core.clock import rfc3339
from tracer.core.events import (
    Event,
    Lost,
    PolicyMatch,
    Process,
    ProcessEvent,
    ProcessEventKind,
)

FORMATS = ("native", "ocsf", "ecs")

# Severity as OCSF numbers it (severity_id), used by both formats (ECS's
# event.severity is the source's own number).
SEVERITY_NAMES = {
    0: "Unknown",
    1: "Informational",
    2: "Low",
    3: "Medium",
    4: "High",
    5: "Critical",
    6: "Fatal",
}
_SEVERITY_WORDS = {name.lower(): n for n, name in SEVERITY_NAMES.items()} | {"info": 1}
ENFORCING = ("sigkill", "deny")


def enforced(policy: Mapping[str, Any] | None) -> bool:
    """Whether the rule acted: a sigkill or deny rule, not in monitor mode."""
    return (
        policy is not None
        and policy.get("action") in ENFORCING
        and policy.get("mode", "enforce") != "monitor"
    )


_TECHNIQUE = re.compile(r"^(?:attack[.:/])?(t\d{4}(?:\.\d{3})?)$", re.IGNORECASE)
_TACTIC = re.compile(r"^(?:attack[.:/])?(ta\d{4})$", re.IGNORECASE)


class Mapper(Protocol):
    """Native event dict -> one schema's dict, in three parts (see the module doc)."""

    # Top-level objects that more than one part may fill (the schema's key
    # for what it has no field for among them): merged one level deep.
    merged: tuple[str, ...]

    def process(self, p: JsonDict) -> JsonDict:
        """One native process in this schema, without its parents (the
        daemon makes it once per process)."""
        ...

    def side(
        self, kind: str, node: str, chain: Sequence[JsonDict], converted: Sequence[JsonDict]
    ) -> JsonDict:
        """The process side: `chain` is the process, then its parent and
        ancestors, nearest first (native process dicts), and `converted`
        the same through process()."""
        ...

    def head_split(
        self, ev: JsonDict, time_ns: int, process: JsonDict | None
    ) -> tuple[JsonDict, JsonDict]:
        """The event's own fields, in two: those that follow from its kind,
        rule and outcome (the same object for every such event, never
        changed), and the rest. `ev` is without process, parent and
        ancestors; it and its details are the mapper's to change. The
        second part's merged objects are made for this event: the caller
        adds the other parts' fields to them."""
        ...


# Events whose process side converts alike: exec and exit differ, the rest do not.
_GROUPS = {"process_exec": "process_exec", "process_exit": "process_exit"}


def side_group(kind: str) -> str:
    return _GROUPS.get(kind, "activity")


def severity_id(policy: Mapping[str, Any] | None) -> int:
    """The policy's `severity`; for an event recorded before policies had one,
    Informational without a policy, Low for a rule that posts, Medium for
    one that enforces."""
    if policy is None:
        return 1
    given = policy.get("severity")
    if isinstance(given, bool):
        given = None
    if isinstance(given, int) and given in SEVERITY_NAMES:
        return given
    if isinstance(given, str) and given.strip().lower() in _SEVERITY_WORDS:
        return _SEVERITY_WORDS[given.strip().lower()]
    return 3 if policy.get("action") in ENFORCING else 2


def attack_tags(policy: Mapping[str, Any] | None) -> tuple[list[str], list[str], list[str]]:
    """(ATT&CK technique ids, tactic ids, other tags) of the policy's `tags`.

    `T1059`, `t1059.004`, `attack.t1059` are techniques (upper-cased, the
    `attack.` prefix dropped), `TA0002` a tactic; anything else is a plain tag.
    """
    techniques: list[str] = []
    tactics: list[str] = []
    other: list[str] = []
    tags = policy.get("tags") if policy is not None else None
    if not isinstance(tags, (list, tuple)):
        return techniques, tactics, other
    for tag in tags:
        if not isinstance(tag, str):
            continue
        if m := _TECHNIQUE.match(tag):
            techniques.append(m[1].upper())
        elif m := _TACTIC.match(tag):
            tactics.append(m[1].upper())
        else:
            other.append(tag)
    return techniques, tactics, other


def event_uid(ev: Mapping[str, Any], process: Mapping[str, Any] | None) -> str:
    """A stable id: the same event gets the same id live, from the API and from
    the log (so a SIEM back-filled by `tracer replay` can drop duplicates).

    `exec_id/tid/type/time`: the exec_id names the node and the process
    image, and one thread makes one event of a kind at a time; a lost
    event, about no process, is `node/lost/time`.
    """
    if process is not None:
        return f"{process['exec_id']}/{process['tid']}/{ev['type']}/{ev['time']}"
    return f"{ev['node']}/{ev['type']}/{ev['time']}"


def ms_of(text: str) -> int:
    """ms since the epoch of an RFC 3339 time as the daemon writes it."""
    ns = parse_time(text)
    if ns is None:
        raise ValueError(f"not an RFC 3339 UTC time: {text!r}")
    return ns // 1_000_000


def split_path(path: str) -> tuple[str, str]:
    """(directory, name) of an absolute path; ("", path) for one without a slash."""
    folder, slash, name = path.rpartition("/")
    if not slash:
        return "", path
    return folder or "/", name


class PerPath(dict[str, JsonDict]):
    """Objects made from paths, once per path (`per_path[path]`): a storm opens
    the same few paths. Shared between events, so never to be changed;
    bounded in count. A dict, so that a path seen before costs one lookup."""

    __slots__ = ("_make",)

    def __init__(self, make: Callable[[str], JsonDict]) -> None:
        super().__init__()
        self._make = make

    def __missing__(self, path: str) -> JsonDict:
        if len(self) >= 1024:
            self.clear()
        made = self[path] = self._make(path)
        return made


def _chain(ev: Mapping[str, Any]) -> list[JsonDict]:
    chain: list[JsonDict] = []
    if ev.get("process") is not None:
        chain.append(ev["process"])
        if ev.get("parent") is not None:
            chain.append(ev["parent"])
            chain.extend(ev.get("ancestors") or ())
    return chain


def _head_part(ev: Mapping[str, Any]) -> JsonDict:
    d = {k: v for k, v in ev.items() if k not in ("process", "parent", "ancestors")}
    kind = d["type"]
    if isinstance(d.get(kind), dict):
        d[kind] = dict(d[kind])  # the mapper's to change
    return d


def merge(parts: Sequence[JsonDict], merged: tuple[str, ...]) -> JsonDict:
    """The parts as one event, the `merged` objects merged one level deep (a
    later part's field wins, as in the JSON FormatSerializer writes)."""
    out: JsonDict = {}
    for part in parts:
        for k, v in part.items():
            have = out.get(k)
            out[k] = {**have, **v} if k in merged and have is not None else v
    return out


def convert(mapper: Mapper, ev: Mapping[str, Any]) -> JsonDict:
    """One native event dict (a JSON line, an API message) in the mapper's schema.

    Raises ValueError for an event that is not one (no valid time, a
    missing field); the callers have checked the native schema already.
    """
    try:
        time_ns = parse_time(ev["time"])
        if time_ns is None:
            raise ValueError(f"not an RFC 3339 UTC time: {ev['time']!r}")
        chain = _chain(ev)
        parts = list(mapper.head_split(_head_part(ev), time_ns, chain[0] if chain else None))
        if chain:
            converted = [mapper.process(p) for p in chain]
            parts.append(mapper.side(side_group(ev["type"]), ev["node"], chain, converted))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a tracer event: {exc!r}") from None
    return merge(parts, mapper.merged)


class _Json:
    """A part of a line as JSON, to splice: `"k":v,...` of its fields but the
    merged objects (`fields`), and of each merged object (`inners`, in the
    mapper's order) each field as a fragment of JSON."""

    __slots__ = ("fields", "inners", "size")

    def __init__(self, d: JsonDict, merged: tuple[str, ...]) -> None:
        self.fields = orjson.dumps({k: v for k, v in d.items() if k not in merged})[1:-1]
        self.size = len(self.fields)
        self.inners: list[dict[str, bytes]] = []
        for k in merged:
            inner = {f: orjson.dumps(v) for f, v in (d.get(k) or {}).items()}
            self.size += sum(len(f) + len(v) for f, v in inner.items())
            self.inners.append(inner)


class _Process:
    """A process as a native dict and converted by the mapper, made once."""

    __slots__ = ("converted", "native", "process", "size")

    def __init__(self, p: Process, native: JsonDict, converted: JsonDict) -> None:
        self.process = p
        self.native = native
        self.converted = converted
        # Its arguments can be megabytes: the cache is bounded by this.
        self.size = len(orjson.dumps(converted))


class _Side:
    """A process side, converted and serialized once."""

    __slots__ = ("ev", "frames", "json", "process")

    def __init__(self, ev: ProcessEvent, process: JsonDict, json: _Json) -> None:
        self.ev = ev  # holds the event's processes, so their ids stay theirs
        self.process = process  # the native dict of the event's process
        self.json = json
        # By the id of the constant part: the kinds, rules and outcomes of
        # this process's events, each with this side.
        self.frames: dict[int, _Frame] = {}


_Fields = dict[str, orjson.Fragment]


class _Frame:
    """A constant part and a process side, to be completed by an event's own part.

    `tail` ends a line with their fields. For each merged object, `shares`
    holds their fields of it, to join to the event's own object of that
    name: a few as fragments to add to it (cheaper than its JSON spliced
    and parsed again as one), many as the JSON that opens it; and the whole
    object for an event that has none. No field of a merged object is in
    two parts (convert() would keep the later one).
    """

    __slots__ = ("const", "shares", "tail")

    def __init__(self, const: JsonDict, json: _Json, side: _Side, merged: tuple[str, ...]) -> None:
        self.const = const  # held, so that the id that keys the frame stays its
        joined = b",".join(f for f in (json.fields, side.json.fields) if f)
        self.tail = (b"," + joined if joined else b"") + b"}\n"
        self.shares: list[tuple[str, _Fields | None, bytes, orjson.Fragment | None]] = []
        for k, mine, theirs in zip(merged, json.inners, side.json.inners, strict=True):
            fields = {**mine, **theirs}
            opener = b"{" + b",".join(orjson.dumps(f) + b":" + v for f, v in fields.items())
            whole = orjson.Fragment(opener + b"}") if fields else None
            if len(fields) <= _FEW_FIELDS:
                few = {f: orjson.Fragment(v) for f, v in fields.items()}
                self.shares.append((k, few, b"", whole))
            else:
                self.shares.append((k, None, opener + b",", whole))


# Up to this many fields of a merged object are added to the event's own
# object as fragments; more are spliced as JSON (measured with
# bench/pipeline_cost.py: OCSF's 1-3 fields, ECS's process with ~15).
_FEW_FIELDS = 4


class FormatSerializer:
    """Event -> one JSON line in a SIEM schema, for the daemon's JSON output.

    The event is turned into its native dict (each process's dict made once
    per process object) and through convert()'s steps; the process side of
    a busy process and the constant part of each kind, rule and outcome are
    converted and serialized once, and their bytes spliced into each line
    with the event's own part. The event log keeps the native lines
    (jsonl.Serializer): `tracer tree` reads them.
    """

    def __init__(self, mapper: Mapper, sides: int = 256, processes: int = 16384) -> None:
        self._mapper = mapper
        self._merged = mapper.merged
        self._procs: dict[str, _Process] = {}
        self._proc_limit = processes
        self._proc_bytes = 0
        self._sides: dict[tuple[str, str], _Side] = {}
        self._side_limit = sides
        self._side_bytes = 0
        self._policies: dict[int, tuple[PolicyMatch, JsonDict]] = {}
        self._consts: dict[int, tuple[JsonDict, _Json]] = {}

    def _process(self, p: Process) -> _Process:
        # Keyed like the native process cache (jsonl._ProcessJson): by
        # exec_id, checked by identity, bounded in count and bytes.
        hit = self._procs.get(p.exec_id)
        if hit is not None and hit.process is p:
            return hit
        native = process_dict(p)
        proc = _Process(p, native, self._mapper.process(native))
        if len(self._procs) >= self._proc_limit or self._proc_bytes + proc.size > CACHE_BYTES:
            self._procs.clear()
            self._proc_bytes = 0
        self._procs[p.exec_id] = proc
        self._proc_bytes += proc.size
        return proc

    def _side(self, ev: ProcessEvent, group: str) -> _Side:
        key = (ev.process.exec_id, group)
        hit = self._sides.get(key)
        if hit is not None:
            seen = hit.ev
            if (
                seen.process is ev.process
                and seen.parent is ev.parent
                and seen.ancestors is ev.ancestors
                and seen.node == ev.node
            ):
                return hit
        procs = [self._process(ev.process)]
        if ev.parent is not None:
            procs.append(self._process(ev.parent))
            procs.extend(self._process(a) for a in ev.ancestors)
        chain = [p.native for p in procs]
        fields = self._mapper.side(group, ev.node, chain, [p.converted for p in procs])
        side = _Side(ev, chain[0], _Json(fields, self._merged))
        # Bounded in bytes too, like the native process cache: a process
        # can have megabytes of arguments.
        size = side.json.size
        if len(self._sides) >= self._side_limit or self._side_bytes + size > CACHE_BYTES:
            self._sides.clear()
            self._side_bytes = 0
        self._sides[key] = side
        self._side_bytes += size
        return side

    def _frame(self, const: JsonDict, side: _Side) -> _Frame:
        frame = _Frame(const, self._const(const), side, self._merged)
        # A frame copies its side's bytes: counted with the sides, and past
        # the bound every side goes, with its frames.
        size = side.json.size
        if len(side.frames) >= 64 or self._side_bytes + size > CACHE_BYTES:
            self._sides.clear()
            self._side_bytes = 0
            side.frames.clear()
        side.frames[id(const)] = frame
        self._side_bytes += size
        return frame

    def _const(self, const: JsonDict) -> _Json:
        """The JSON of a mapper's constant part, made once per object."""
        hit = self._consts.get(id(const))
        if hit is not None and hit[0] is const:
            return hit[1]
        json = _Json(const, self._merged)
        if len(self._consts) >= 4096:
            self._consts.clear()
        self._consts[id(const)] = (const, json)
        return json

    def native_head(self, ev: ProcessEventKind) -> JsonDict:
        """The native dict of the event without its process, parent and ancestors."""
        d: JsonDict = {"type": ev.type, "time": rfc3339(ev.time), "node": ev.node}
        d[ev.type] = details_dict(ev)
        policy = getattr(ev, "policy", None)
        if policy is not None:
            d["policy"] = self._policy(policy)
        return d

    def _policy(self, m: PolicyMatch) -> JsonDict:
        # One dict per rule, as PolicyStore hands one PolicyMatch per rule:
        # the mappers keep what they derive from it by its identity.
        hit = self._policies.get(id(m))
        if hit is not None and hit[0] is m:
            return hit[1]
        if len(self._policies) >= 4096:
            self._policies.clear()
        d = policy_dict(m)
        self._policies[id(m)] = (m, d)
        return d

    def line(self, ev: Event) -> bytes:
        mapper = self._mapper
        if isinstance(ev, Lost):
            native: JsonDict = {
                "type": ev.type,
                "time": rfc3339(ev.time),
                "node": ev.node,
                "ancestors": [],
                "lost": {"kernel": ev.kernel, "daemon": ev.daemon},
            }
            return orjson.dumps(
                merge(mapper.head_split(native, ev.time, None), self._merged),
                option=orjson.OPT_APPEND_NEWLINE,
            )
        side = self._side(ev, _GROUPS.get(ev.type, "activity"))
        const, own = mapper.head_split(self.native_head(ev), ev.time, side.process)
        frame = side.frames.get(id(const))
        if frame is None or frame.const is not const:
            frame = self._frame(const, side)
        dumps = orjson.dumps
        for k, few, opener, whole in frame.shares:
            mine = own.get(k)
            if not mine:
                if whole is not None:
                    own[k] = whole
            elif few is not None:
                mine.update(few)
            else:
                own[k] = orjson.Fragment(opener + dumps(mine)[1:])
        # The own part opens the line: it always has the event's time, so
        # its JSON is never empty.
        return dumps(own)[:-1] + frame.tail
