"""The process tree around a selection: ancestors up to the root, all descendants.

The index (forensics/index.py) picks the processes and the segments that
hold them; only those segments are read, and of their lines only those
whose process is wanted are parsed. Each process gets its own file_open,
connect and enforcement events in time order.

Nothing known is left out. A process whose exec is not in the log (it
started before the daemon and was found in /proc, or its segment was
rotated away) is built from what its own events or its descendants'
events carry (every event names its parent and ancestors), and marked
partial with the reason. A daemon restart gives a running process a new
exec_id (the /proc start time is the fork's, at 10 ms precision): such a
process is joined to its image from before the restart.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from forensics.index import HAS_EXEC, HAS_EXIT, PROCFS, LogIndex, ProcRow
from forensics.log import JsonDict, Problems, first_exec_id, parse_line, parse_time, read_bytes

# Slack between a /proc start time (clock ticks) and the kernel's.
_PROCFS_SLACK_NS = 20_000_000
_SHOWN = frozenset({"file_open", "connect"})


class SelectionError(Exception):
    """Nothing matches the selection (exit code 4)."""


@dataclass(slots=True)
class Selection:
    exec_ids: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    at_ns: int | None = None
    pods: list[tuple[str, str]] = field(default_factory=list)  # (namespace, name)
    binaries: list[str] = field(default_factory=list)  # regexes searched in the path
    since_ns: int | None = None
    until_ns: int | None = None

    def empty(self) -> bool:
        return not (
            self.exec_ids or self.pids or self.pods or self.binaries
        ) and self.since_ns is None and self.until_ns is None


@dataclass(slots=True)
class Node:
    exec_id: str
    process: JsonDict
    start_ns: int
    events: list[tuple[int, JsonDict]] = field(default_factory=list)
    exit: JsonDict | None = None
    exit_ns: int | None = None
    children: list[Node] = field(default_factory=list)
    partial: list[str] = field(default_factory=list)  # why what is shown is incomplete
    selected: bool = False
    aliases: list[str] = field(default_factory=list)  # other exec_ids of this process
    sample: JsonDict = field(default_factory=dict)  # an event of it, for the chain it carries
    has_exec: bool = False


@dataclass(slots=True)
class Forest:
    roots: list[Node]
    selected: list[str]
    first_ns: int
    last_ns: int


def _node_of(exec_id: str) -> str:
    return exec_id.rsplit(":", 2)[0]


def restart_aliases(index: LogIndex) -> dict[str, str]:
    """exec_id after a daemon restart (found in /proc) -> the same process's exec_id before it."""
    by_pid: dict[tuple[str, int], list[ProcRow]] = {}
    for r in index.procs.values():
        if not r.bits & PROCFS:
            by_pid.setdefault((_node_of(r.exec_id), r.pid), []).append(r)
    alias: dict[str, str] = {}
    for r in index.procs.values():
        if not r.bits & PROCFS:
            continue
        best: ProcRow | None = None
        for e in by_pid.get((_node_of(r.exec_id), r.pid), ()):
            if (
                e.start_ns >= r.start_ns - _PROCFS_SLACK_NS
                and e.last_ns <= r.first_ns
                and not e.bits & HAS_EXIT
                and e.binary == r.binary
                and (best is None or e.start_ns > best.start_ns)
            ):
                best = e
        if best is not None:
            alias[r.exec_id] = best.exec_id
    return alias


def compile_regex(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"--binary {pattern!r}: invalid regex: {exc}") from None


def select(index: LogIndex, sel: Selection, members: dict[str, list[str]]) -> list[str]:
    """Canonical exec_ids of the processes the selection names."""
    regexes = [compile_regex(b) for b in sel.binaries]
    out: list[str] = []
    for c, mem in members.items():
        rows = [index.procs[e] for e in mem]
        r = rows[0]
        if sel.exec_ids and not any(e in sel.exec_ids for e in mem):
            continue
        if sel.pids and r.pid not in sel.pids:
            continue
        if sel.pods and not any((x.namespace, x.pod) in sel.pods for x in rows):
            continue
        if regexes and not any(x.search(r.binary) for x in regexes):
            continue
        first = min(x.first_ns for x in rows)
        last = max(x.last_ns for x in rows)
        if sel.since_ns is not None and last < sel.since_ns:
            continue
        if sel.until_ns is not None and first > sel.until_ns:
            continue
        if sel.at_ns is not None:
            start = min(x.start_ns or x.first_ns for x in rows)
            exited = any(x.bits & HAS_EXIT for x in rows)
            if start > sel.at_ns or (exited and last < sel.at_ns):
                continue
        out.append(c)
    if sel.at_ns is not None:  # of a reused pid, the image that ran at that time
        latest: dict[int, str] = {}
        for c in out:
            pid = index.procs[c].pid
            if pid not in latest or index.procs[c].start_ns > index.procs[latest[pid]].start_ns:
                latest[pid] = c
        out = list(latest.values())
    if not out:
        raise SelectionError("no process in the log matches the selection")
    return out


def build(
    index: LogIndex, sel: Selection, problems: Problems, events_window: bool = True
) -> Forest:
    alias = restart_aliases(index)
    canon = alias.get
    members: dict[str, list[str]] = {}  # canonical exec_id -> its exec_ids
    for e in index.procs:
        members.setdefault(canon(e, e), []).append(e)
    selected = select(index, sel, members)

    def parent_of(c: str) -> str | None:
        for e in members.get(c, [c]):
            r = index.procs.get(e)
            if r is not None and r.parent_exec_id is not None:
                return canon(r.parent_exec_id, r.parent_exec_id)
        return None

    children: dict[str, list[str]] = {}
    for c in members:
        p = parent_of(c)
        if p is not None:
            children.setdefault(p, []).append(c)

    subtree: list[str] = []
    seen: set[str] = set()
    todo = list(selected)
    while todo:
        c = todo.pop()
        if c in seen:
            continue
        seen.add(c)
        subtree.append(c)
        todo += children.get(c, [])
    ancestors: list[str] = []
    for c in selected:
        p = parent_of(c)
        while p is not None and p not in seen:
            seen.add(p)
            ancestors.append(p)
            p = parent_of(p)

    def rows(c: str) -> list[ProcRow]:
        return [index.procs[e] for e in members.get(c, [c]) if e in index.procs]

    sub_rows = [r for c in subtree for r in rows(c)]
    lo = min(r.first_ns for r in sub_rows)
    hi = max(r.last_ns for r in sub_rows)
    if sel.since_ns is not None:
        lo = max(lo, sel.since_ns)
    if sel.until_ns is not None:
        hi = min(hi, sel.until_ns)
    win_lo = sel.since_ns
    win_hi = sel.until_ns

    # Segments to read: every one holding the subtree; for ancestors, only
    # the ones overlapping the subtree's time (their context).
    ancestor_set = set(ancestors)
    want: dict[bytes, str] = {}
    segs: set[int] = set()
    for c in subtree:
        for r in rows(c):
            want[r.exec_id.encode()] = c
            segs.update(i for i, _ in r.segments)
    for c in ancestors:
        for r in rows(c):
            want[r.exec_id.encode()] = c
            segs.update(
                i
                for i, bits in r.segments
                if bits & (HAS_EXEC | HAS_EXIT)
                or (index.segments[i].last_ns >= lo and index.segments[i].first_ns <= hi)
            )

    nodes: dict[str, Node] = {}
    for i in sorted(segs):
        seg = index.segments[i].segment
        name = str(seg.path)
        for n, line in enumerate(read_bytes(seg, problems).splitlines(), 1):
            eid = first_exec_id(line)
            if eid is None or eid not in want:
                continue
            ev = parse_line(line, f"{name}:{n}", problems, name)
            if ev is None:
                continue
            c = want[eid]
            t = parse_time(ev["time"]) or 0
            if c in ancestor_set and not lo <= t <= hi and ev["type"] in _SHOWN:
                continue
            outside = (win_lo is not None and t < win_lo) or (win_hi is not None and t > win_hi)
            if outside and ev["type"] in _SHOWN:
                continue
            _add(nodes, c, t, ev)

    for c in [*subtree, *ancestors]:
        node = nodes.get(c)
        if node is not None:
            _fill_chain(nodes, node.sample, canon)
    for node in nodes.values():
        node.partial = _partial_reasons(node)
        node.events.sort(key=lambda te: te[0])
    for c, mem in members.items():
        if c in nodes:
            nodes[c].aliases = [e for e in mem if e != c]
    for c in selected:
        if c in nodes:
            nodes[c].selected = True
    return Forest(_link(nodes, canon), [c for c in selected if c in nodes], lo, hi)


_KNOWN_FROM_DESCENDANTS = "known only from its descendants' events"


def _add(nodes: dict[str, Node], c: str, t: int, ev: JsonDict) -> None:
    p = ev["process"]
    node = nodes.get(c)
    if node is None:
        node = nodes[c] = Node(c, p, parse_time(p.get("start_time", "")) or t, sample=ev)
    kind = ev["type"]
    if kind == "process_exec":
        node.process = p
        node.start_ns = parse_time(p.get("start_time", "")) or t
        node.has_exec = True
        if ev.get("policy"):
            node.events.append((t, ev))
    elif kind == "process_exit":
        node.exit = ev.get("process_exit") or {}
        node.exit_ns = t
    elif kind in _SHOWN:
        node.events.append((t, ev))


def _fill_chain(nodes: dict[str, Node], ev: JsonDict, canon: Callable[[str, str], str]) -> None:
    for d in [ev.get("parent"), *(ev.get("ancestors") or [])]:
        if not isinstance(d, dict) or not isinstance(d.get("exec_id"), str):
            continue
        c = canon(d["exec_id"], d["exec_id"])
        if c not in nodes:
            nodes[c] = Node(c, d, parse_time(d.get("start_time", "")) or 0, sample=ev)
            nodes[c].partial = [_KNOWN_FROM_DESCENDANTS]


def _partial_reasons(node: Node) -> list[str]:
    flags = node.process.get("flags") or []
    out = []
    if not node.has_exec and "fork" not in flags:
        if "procfs" in flags:
            out.append("started before the daemon (found in /proc): its exec is not in the log")
        else:
            out.append("its exec is not in the log (rotated away, or lost)")
    out += [r for r in node.partial if r == _KNOWN_FROM_DESCENDANTS]
    if "partial" in flags:
        out.append("the daemon missed its start: only what its exit record carries")
    return out


def _link(nodes: dict[str, Node], canon: Callable[[str, str], str]) -> list[Node]:
    roots = []
    for node in nodes.values():
        parent = node.process.get("parent_exec_id")
        up = nodes.get(canon(parent, parent)) if isinstance(parent, str) else None
        if up is None or up is node:
            roots.append(node)
        else:
            up.children.append(node)
    for node in nodes.values():
        node.children.sort(key=lambda n: n.start_ns)
    return sorted(roots, key=lambda n: n.start_ns)
