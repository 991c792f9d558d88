"""JSON lines in a SIEM's schema (OCSF, ECS): one converter over the native event dict.

Both ways in convert the same representation, the native JSON dict of an
event (README "Event schema"): `tracer events` and `tracer replay` have it
from the API or the log, and the daemon builds it from its event objects
(process dicts made once per process image). A Mapper (export/ocsf.py,
export/ecs.py) splits an event into two parts:

- its process side (`side`), which depends only on the process, its parent
  and ancestors and the node: in a storm of one process's opens or
  connects it is the same for every event, so the daemon converts and
  serializes it once and splices its bytes into each line;
- its own part (`head_split`): time, ids, the kind's details, the policy;
  itself in two, what follows from the kind, the rule and the outcome
  (one shared object per combination, serialized once by the daemon) and
  the rest.

`convert()` merges the two as dicts; `FormatSerializer.line()` builds the
same JSON from bytes. tests/test_siem.py holds them equal.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import orjson

from export.jsonl import JsonDict, details_dict, policy_dict, process_dict
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
    """Native event dict -> one schema's dict, in two parts (see the module doc)."""

    # The top-level key of this schema's fields for what it has no field for
    # ("unmapped" in OCSF, "tracer" in ECS); both parts may fill it.
    custom_key: str

    def side(self, kind: str, node: str, chain: Sequence[JsonDict]) -> tuple[JsonDict, JsonDict]:
        """(fields, custom fields) of the process side: `chain` is the process,
        then its parent and ancestors, nearest first (native process dicts)."""
        ...

    def head_split(
        self, ev: JsonDict, time_ns: int, process: JsonDict | None
    ) -> tuple[JsonDict, JsonDict]:
        """The event's own fields, in two dicts with no key in common: those
        that follow from its kind, rule and outcome (the same object for
        every such event, never changed), and the rest. `ev` is without
        process, parent and ancestors."""
        ...


def head(mapper: Mapper, ev: JsonDict, time_ns: int, process: JsonDict | None) -> JsonDict:
    const, own = mapper.head_split(ev, time_ns, process)
    return {**const, **own}


def side_group(kind: str) -> str:
    """Events whose process side converts alike: exec and exit differ, the rest do not."""
    return kind if kind in ("process_exec", "process_exit") else "activity"


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


def _chain(ev: Mapping[str, Any]) -> list[JsonDict]:
    chain: list[JsonDict] = []
    if ev.get("process") is not None:
        chain.append(ev["process"])
        if ev.get("parent") is not None:
            chain.append(ev["parent"])
            chain.extend(ev.get("ancestors") or ())
    return chain


def _head_part(ev: Mapping[str, Any]) -> JsonDict:
    return {k: v for k, v in ev.items() if k not in ("process", "parent", "ancestors")}


def merge(side: JsonDict, custom: JsonDict, head: JsonDict, custom_key: str) -> JsonDict:
    """The whole event: side and head, objects both have (`process` in an ECS
    exit, the custom key) merged one level deep."""
    out = dict(side)
    if custom:
        out[custom_key] = dict(custom)
    for k, v in head.items():
        have = out.get(k)
        if isinstance(have, dict) and isinstance(v, dict):
            out[k] = {**have, **v}
        else:
            out[k] = v
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
        part = head(mapper, _head_part(ev), time_ns, chain[0] if chain else None)
        if not chain:
            return part
        side, custom = mapper.side(side_group(ev["type"]), ev["node"], chain)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a tracer event: {exc!r}") from None
    return merge(side, custom, part, mapper.custom_key)


class _Side:
    """A process side, converted once: its dicts, and its bytes for splicing."""

    __slots__ = ("custom", "custom_json", "ev", "fields", "fields_json")

    def __init__(self, ev: ProcessEvent, fields: JsonDict, custom: JsonDict) -> None:
        self.ev = ev  # holds the event's processes, so their ids stay theirs
        self.fields = fields
        self.custom = custom
        self.fields_json = orjson.dumps(fields)[1:-1]  # "k":v,... without braces
        self.custom_json = orjson.dumps(custom)[1:-1]


class FormatSerializer:
    """Event -> one JSON line in a SIEM schema, for the daemon's JSON output.

    The event is turned into its native dict (each process's dict made once
    per process object) and through convert()'s steps; the process side of
    a busy process is converted and serialized once and its bytes spliced
    into each of its events' lines. The event log keeps the native lines
    (jsonl.Serializer): `tracer tree` reads them.
    """

    def __init__(self, mapper: Mapper, sides: int = 256, processes: int = 16384) -> None:
        self._mapper = mapper
        self._custom_prefix = b',"' + mapper.custom_key.encode() + b'":{'
        self._procs: dict[str, tuple[Process, JsonDict]] = {}
        self._proc_limit = processes
        self._sides: dict[tuple[int, str], _Side] = {}
        self._side_limit = sides
        self._policies: dict[int, tuple[PolicyMatch, JsonDict]] = {}
        self._consts: dict[int, tuple[JsonDict, bytes]] = {}

    def _process(self, p: Process) -> JsonDict:
        hit = self._procs.get(p.exec_id)
        if hit is not None and hit[0] is p:
            return hit[1]
        d = process_dict(p)
        if len(self._procs) >= self._proc_limit:
            self._procs.clear()
        self._procs[p.exec_id] = (p, d)
        return d

    def _side(self, ev: ProcessEvent, group: str) -> _Side:
        key = (id(ev.process), group)
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
        chain = [self._process(ev.process)]
        if ev.parent is not None:
            chain.append(self._process(ev.parent))
            chain.extend(self._process(a) for a in ev.ancestors)
        fields, custom = self._mapper.side(group, ev.node, chain)
        side = _Side(ev, fields, custom)
        if len(self._sides) >= self._side_limit:
            self._sides.clear()
        self._sides[key] = side
        return side

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

    def _const_json(self, const: JsonDict) -> bytes:
        """`"k":v,...,` of a mapper's constant fields, serialized once per object."""
        hit = self._consts.get(id(const))
        if hit is not None and hit[0] is const:
            return hit[1]
        data = orjson.dumps(const)[1:-1]
        data = data + b"," if data else b""
        if len(self._consts) >= 4096:
            self._consts.clear()
        self._consts[id(const)] = (const, data)
        return data

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
                head(mapper, _head_part(native), ev.time, None), option=orjson.OPT_APPEND_NEWLINE
            )
        side = self._side(ev, side_group(ev.type))
        const, own = mapper.head_split(self.native_head(ev), ev.time, self._process(ev.process))
        key = mapper.custom_key
        custom = own.pop(key, None)
        if not side.fields.keys().isdisjoint(own):
            # The event adds to an object of the side (an ECS exit's
            # `process`): merged as dicts, once per process at most.
            if custom is not None:
                own[key] = custom
            whole = merge(side.fields, side.custom, {**const, **own}, key)
            return orjson.dumps(whole, option=orjson.OPT_APPEND_NEWLINE)
        body = orjson.dumps(own)
        parts = [b"{", self._const_json(const), body[1:-1]]
        mine = orjson.dumps(custom)[1:-1] if custom else b""
        if mine or side.custom_json:
            parts += (
                self._custom_prefix,
                mine,
                b"," if mine and side.custom_json else b"",
                side.custom_json,
                b"}",
            )
        if side.fields_json:
            parts += (b",", side.fields_json)
        parts.append(b"}\n")
        return b"".join(parts)
