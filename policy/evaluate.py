"""A policy set evaluated in Python on recorded events, as the kernel evaluates it live.

For `tracer policy test` (what would this set have posted, ignored or
killed?) over an event log. It follows bpf_probes/policy.bpf.h: the same
fields per event kind, the same string semantics (a value longer than the
maps' strings can only match by prefix of its head or suffix of its tail),
reads cannot match write-only rules, a selector on a value the event lacks
never matches, and when several rules match enforcement wins, then ignore,
then post, the first in file order among equals. What it cannot see is an
open or connect the recording daemon never posted: a log holds every exec
and exit, but only the opens and connects its own policies selected (and
of those a throttling rule of the recording set kept back, only the count,
in policy_summary events).

Throttle and aggregate (bpf_probes/throttle.bpf.h) are modelled by
ThrottleModel on the events' times: windows open at the first event a key
posts, as in the kernel; the kernel counts whole milliseconds of its boot
clock and the model of the wall clock, so an event within a millisecond
of a window's end may fall on the other side of it.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from policy import glob, workload
from policy.compile import STR_LEN
from policy.model import (
    Access,
    Action,
    Kind,
    Mode,
    Policy,
    PolicySet,
    Rule,
    StringMatch,
    ThrottleBy,
)
from tracer.core import text

ANCESTOR_DEPTH = 8  # TR_ANCESTOR_DEPTH
PATH_MAX = 4096  # TR_PATH_MAX: what the kernel's glob walks of a path
THROTTLE_KEYS = 16384  # the kernel table's default size (--throttle-keys), least recently used out
_WRITE_FLAGS = frozenset({"O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC"})
_RANK = {Action.SIGKILL: 0, Action.DENY: 0, Action.IGNORE: 1, Action.POST: 2}
_KIND_OF_TYPE = {
    "process_exec": Kind.EXEC,
    "file_open": Kind.FILE_OPEN,
    "connect": Kind.CONNECT,
    "privilege_change": Kind.PRIVILEGE_CHANGE,
    "file_attr": Kind.FILE_ATTR,
}


@dataclass(slots=True, frozen=True)
class Verdict:
    policy: Policy
    index: int  # of the rule in its policy
    rule: Rule


@dataclass(slots=True, frozen=True)
class _Facts:
    """What the kernel evaluates an event on (None: the event has no such value)."""

    binary: bytes | None  # as the kernel saw them: escaped strings unescaped
    path: bytes | None
    uid: int | None
    euid: int | None
    parent: bytes | None  # the parent's executable
    ancestors: tuple[bytes, ...]  # parent first, at most ANCESTOR_DEPTH
    daddr: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    dport: int | None
    is_write: bool  # file_open: opened for writing; privilege_change: to root
    where: workload.WorkloadFacts  # the event's own container and pod


def _str_hit(m: StringMatch, raw: bytes) -> bool:
    head, tail = raw[:STR_LEN], raw[-STR_LEN:]
    return (
        (len(raw) < STR_LEN and any(raw == s.encode() for s in m.exact))
        or any(head.startswith(s.encode()) for s in m.prefix)
        or any(tail.endswith(s.encode()) for s in m.suffix)
        or any(
            head.startswith(glob.head(g).encode()) and glob.match(g.encode(), raw[:PATH_MAX])
            for g in m.glob
        )
    )


def _strings(pos: StringMatch, neg: StringMatch, value: bytes | None) -> bool:
    if not pos and not neg:
        return True
    if value is None:
        return False
    return (not pos or _str_hit(pos, value)) and not (neg and _str_hit(neg, value))


def _values(pos: tuple[Any, ...], neg: tuple[Any, ...], value: Any, hit: Any) -> bool:
    if not pos and not neg:
        return True
    if value is None:
        return False
    return (not pos or any(hit(v, value) for v in pos)) and not any(hit(v, value) for v in neg)


def _in_net(net: Any, addr: Any) -> bool:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # the kernel holds IPv4 as ::ffff:a.b.c.d
    return addr.version == net.version and addr in net


def _in_range(r: tuple[int, int], port: int) -> bool:
    return r[0] <= port <= r[1]


def _ancestry(pos: StringMatch, neg: StringMatch, chain: tuple[bytes, ...]) -> bool:
    """Any of the ancestors for the positive values (none known: no hit), none for the negative."""
    return (not pos or any(_str_hit(pos, b) for b in chain)) and not (
        neg and any(_str_hit(neg, b) for b in chain)
    )


def _matches(rule: Rule, f: _Facts) -> bool:
    s = rule.selectors
    if (rule.access is Access.WRITE or s.to_root) and not f.is_write:
        return False
    same = lambda a, b: a == b  # noqa: E731
    return (
        _strings(s.binary, s.not_binary, f.binary)
        and _strings(s.path, s.not_path, f.path)
        and _strings(s.parent_binary, s.not_parent_binary, f.parent)
        and _ancestry(s.ancestor_binary, s.not_ancestor_binary, f.ancestors)
        and _values(s.uid, s.not_uid, f.uid, same)
        and _values(s.euid, s.not_euid, f.euid, same)
        and _values(s.daddr, s.not_daddr, f.daddr, _in_net)
        and _values(s.dport, s.not_dport, f.dport if f.daddr is not None else None, _in_range)
        and workload.matches(s, f.where)
    )


def _raw(value: object, escaped: bool) -> bytes | None:
    """A string of the event as the kernel's bytes (text.decode escaped non-UTF-8)."""
    if not isinstance(value, str):
        return None
    return text.encode(value) if escaped else value.encode()


def _binary(proc: Mapping[str, Any]) -> bytes | None:
    flags = proc.get("flags")
    return _raw(proc.get("binary"), isinstance(flags, list) and "non_utf8" in flags)


def _facts(kind: Kind, ev: Mapping[str, Any]) -> _Facts | None:
    proc = ev.get("process")
    if not isinstance(proc, Mapping):
        return None
    binary = _binary(proc)
    uid = proc.get("uid") if isinstance(proc.get("uid"), int) else None
    euid = proc.get("euid") if isinstance(proc.get("euid"), int) else None
    lineage = [ev.get("parent"), *(ev.get("ancestors") or [])][:ANCESTOR_DEPTH]
    chain = tuple(b for p in lineage if isinstance(p, Mapping) and (b := _binary(p)) is not None)
    parent = _binary(lineage[0]) if isinstance(lineage[0], Mapping) else None
    who = (uid, euid, parent, chain)
    where = workload.facts_of_json(proc)
    if kind is Kind.EXEC:
        return _Facts(binary, None, *who, None, None, False, where)
    if kind is Kind.FILE_OPEN:
        fo = ev.get("file_open")
        path = _raw(fo.get("path"), fo.get("non_utf8") is True) if isinstance(fo, Mapping) else None
        if not isinstance(fo, Mapping) or path is None:
            return None
        open_flags = fo.get("flags")
        writes = isinstance(open_flags, list) and not _WRITE_FLAGS.isdisjoint(open_flags)
        return _Facts(binary, path, *who, None, None, writes, where)
    if kind is Kind.PRIVILEGE_CHANGE:
        pc = ev.get("privilege_change")
        if not isinstance(pc, Mapping):
            return None
        return _Facts(binary, None, *who, None, None, pc.get("to_root") is True, where)
    if kind is Kind.FILE_ATTR:
        fa = ev.get("file_attr")
        path = _raw(fa.get("path"), fa.get("non_utf8") is True) if isinstance(fa, Mapping) else None
        if path is None:
            return None
        return _Facts(binary, path, *who, None, None, False, where)
    c = ev.get("connect")
    if not isinstance(c, Mapping):
        return None
    try:
        daddr = ipaddress.ip_address(c["daddr"]) if isinstance(c.get("daddr"), str) else None
    except ValueError:
        daddr = None
    dport = c.get("dport") if isinstance(c.get("dport"), int) else None
    return _Facts(binary, _raw(c.get("unix_path"), False), *who, daddr, dport, False, where)


class Evaluator:
    """A policy set's verdict on recorded events (dicts of the JSON-lines schema)."""

    def __init__(self, policies: PolicySet) -> None:
        self._rules = {k: policies.rules_of(k) for k in Kind}

    def verdict(self, ev: Mapping[str, Any]) -> Verdict | None:
        """The rule that would have selected the event, or None (not selected)."""
        kind = _KIND_OF_TYPE.get(ev.get("type"))  # type: ignore[arg-type]
        if kind is None:
            return None
        facts = _facts(kind, ev)
        if facts is None:
            return None
        best: tuple[int, int] | None = None
        found: Verdict | None = None
        for order, (pol, idx, rule) in enumerate(self._rules[kind]):
            if (best is None or (_RANK[rule.action], order) < best) and _matches(rule, facts):
                best, found = (_RANK[rule.action], order), Verdict(pol, idx, rule)
        return found


def _content(ev: Mapping[str, Any]) -> tuple[object, ...]:
    """What an aggregate key holds besides the process: path or peer, and access."""
    kind = ev.get("type")
    if kind == "file_open":
        fo = ev.get("file_open") or {}
        flags = fo.get("flags")
        writes = isinstance(flags, list) and not _WRITE_FLAGS.isdisjoint(flags)
        return (fo.get("path"), writes)
    if kind == "connect":
        c = ev.get("connect") or {}
        return (c.get("unix_path"), c.get("daddr"), c.get("dport"))
    return ((ev.get("process") or {}).get("binary"),)


class ThrottleModel:
    """Which of the events a rule selects its throttle or aggregate posts, in time order."""

    def __init__(self) -> None:
        # key -> [window start (ms), events posted in it]
        self._windows: OrderedDict[tuple[object, ...], list[int]] = OrderedDict()

    def posts(self, v: Verdict, ev: Mapping[str, Any], time_ns: int) -> bool:
        t = v.rule.throttle
        kernel_posts = v.rule.action is Action.POST or (
            v.policy.mode is Mode.MONITOR and v.rule.action in (Action.SIGKILL, Action.DENY)
        )
        if t is None or not kernel_posts:
            return True  # never an enforcement
        proc = ev.get("process") or {}
        who = proc.get("cgroup_id") if t.by is ThrottleBy.CGROUP else proc.get("pid")
        key = (v.policy.name, v.index, who, *(_content(ev) if t.aggregate else ()))
        now = time_ns // 1_000_000
        w = self._windows.get(key)
        if w is None:
            if len(self._windows) >= THROTTLE_KEYS:
                self._windows.popitem(last=False)
            self._windows[key] = [now, 1]
            return True
        self._windows.move_to_end(key)
        if now - w[0] >= t.per_ms:
            w[0], w[1] = now, 1
            return True
        if w[1] < t.events:
            w[1] += 1
            return True
        return False
