"""The process tree around a selection: ancestors up to the root, all descendants.

The index (forensics/index.py) picks the processes and the segments that
hold them; only those segments are read, and of their lines only those
whose process is wanted are parsed. Each process gets its own file_open,
connect, privilege_change, file_attr and enforcement events in time order.

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

from forensics.index import HAS_EXEC, HAS_EXIT, PROCFS
from forensics.log import JsonDict, Problems, first_exec_id, parse_line, parse_time, read_bytes
from forensics.store import LogIndex, ProcRow

# Slack between a /proc start time (clock ticks) and the kernel's.
_PROCFS_SLACK_NS = 20_000_000
_SHOWN = frozenset({"file_open", "connect", "policy_summary", "privilege_change", "file_attr"})


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


def compile_regex(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"--binary {pattern!r}: invalid regex: {exc}") from None


class _Processes:
    """Index rows grouped by process, across a daemon restart.

    A restart gives a running process a new exec_id (found in /proc, with
    the fork's start time): that row is joined to the image of the same
    pid that was running before (started no earlier, not exited, same
    binary, last seen before the /proc row's first event).
    """

    def __init__(self, index: LogIndex) -> None:
        self.index = index
        self._pid_groups: dict[int, dict[str, ProcRow]] = {}
        self._canon: dict[str, str] = {}
        self.rows: dict[str, list[ProcRow]] = {}  # canonical exec_id -> its rows

    def _group(self, pid: int) -> None:
        if pid in self._pid_groups:
            return
        group = self._pid_groups[pid] = self.index.by_pids([pid])
        for r in group.values():
            c = self._alias(r, group) if r.bits & PROCFS else r.exec_id
            self._canon[r.exec_id] = c
            self.rows.setdefault(c, []).append(r)

    @staticmethod
    def _alias(r: ProcRow, group: dict[str, ProcRow]) -> str:
        best: ProcRow | None = None
        node = _node_of(r.exec_id)
        for e in group.values():
            if (
                not e.bits & (PROCFS | HAS_EXIT)
                and _node_of(e.exec_id) == node
                and e.start_ns >= r.start_ns - _PROCFS_SLACK_NS
                and e.last_ns <= r.first_ns
                and e.binary == r.binary
                and (best is None or e.start_ns > best.start_ns)
            ):
                best = e
        return best.exec_id if best is not None else r.exec_id

    def add(self, rows: dict[str, ProcRow]) -> list[str]:
        """Canonical exec_ids of these rows' processes."""
        for r in rows.values():
            self._group(r.pid)
        return list(dict.fromkeys(self._canon[e] for e in rows))

    def canon(self, exec_id: str) -> str:
        return self._canon.get(exec_id, exec_id)

    def parent(self, c: str) -> str | None:
        for r in self.rows.get(c, ()):
            if r.parent_exec_id is not None:
                up = self.index.by_exec_ids([r.parent_exec_id])
                return self.add(up)[0] if up else r.parent_exec_id
        return None


def _alive_at(procs: _Processes, ids: list[str], at: int) -> list[str]:
    """Of each pid's images, the one that ran at `at` (the latest started before it)."""
    latest: dict[int, tuple[int, str]] = {}
    for c in ids:
        rows = procs.rows[c]
        start = min(x.start_ns or x.first_ns for x in rows)
        last = max(x.last_ns for x in rows)
        if start > at or (any(x.bits & HAS_EXIT for x in rows) and last < at):
            continue
        pid = rows[0].pid
        if pid not in latest or start > latest[pid][0]:
            latest[pid] = (start, c)
    return [c for _, c in latest.values()]


def build(index: LogIndex, sel: Selection, problems: Problems) -> Forest:
    procs = _Processes(index)
    hits = index.matching(
        sel.exec_ids, sel.pids, sel.pods, sel.binaries, sel.since_ns, sel.until_ns
    )
    selected = procs.add(hits)
    if sel.at_ns is not None:
        selected = _alive_at(procs, selected, sel.at_ns)
    if not selected:
        raise SelectionError("no process in the log matches the selection")

    subtree: list[str] = list(selected)
    seen = set(subtree)
    frontier = list(subtree)
    while frontier:
        ids = [r.exec_id for c in frontier for r in procs.rows.get(c, ())]
        frontier = [c for c in procs.add(index.children(ids)) if c not in seen]
        seen.update(frontier)
        subtree += frontier
    ancestors: list[str] = []
    for c in selected:
        p = procs.parent(c)
        while p is not None and p not in seen and p in procs.rows:
            seen.add(p)
            ancestors.append(p)
            p = procs.parent(p)

    sub_rows = [r for c in subtree for r in procs.rows.get(c, ())]
    lo = min(r.first_ns for r in sub_rows)
    hi = max(r.last_ns for r in sub_rows)
    if sel.since_ns is not None:
        lo = max(lo, sel.since_ns)
    if sel.until_ns is not None:
        hi = min(hi, sel.until_ns)

    # Segments to read: every one holding the subtree; for ancestors, the
    # ones with their exec or exit, and those overlapping the subtree's time.
    ancestor_set = set(ancestors)
    want: dict[bytes, str] = {}
    segs: set[int] = set()
    for c in [*subtree, *ancestors]:
        for r in procs.rows.get(c, ()):
            want[r.exec_id.encode()] = c
            segs.update(
                i
                for i, bits in r.segments
                if c not in ancestor_set
                or bits & (HAS_EXEC | HAS_EXIT)
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
            if ev["type"] in _SHOWN and (
                (c in ancestor_set and not lo <= t <= hi)
                or (sel.since_ns is not None and t < sel.since_ns)
                or (sel.until_ns is not None and t > sel.until_ns)
            ):
                continue
            _add(nodes, c, t, ev)

    for c in [*subtree, *ancestors]:
        node = nodes.get(c)
        if node is not None:
            _fill_chain(nodes, node.sample, procs.canon)
    for node in nodes.values():
        node.partial = _partial_reasons(node)
        node.events.sort(key=lambda te: te[0])
        rows = procs.rows.get(node.exec_id, ())
        node.aliases = [r.exec_id for r in rows if r.exec_id != node.exec_id]
    for c in selected:
        if c in nodes:
            nodes[c].selected = True
        else:  # in the index, but none of its lines could be read
            problems.warn(c, "selected, but none of its events could be read from the log")
    return Forest(_link(nodes, procs.canon), [c for c in selected if c in nodes], lo, hi)


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


def _fill_chain(nodes: dict[str, Node], ev: JsonDict, canon: Callable[[str], str]) -> None:
    for d in [ev.get("parent"), *(ev.get("ancestors") or [])]:
        if not isinstance(d, dict) or not isinstance(d.get("exec_id"), str):
            continue
        c = canon(d["exec_id"])
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


def _link(nodes: dict[str, Node], canon: Callable[[str], str]) -> list[Node]:
    roots = []
    for node in nodes.values():
        parent = node.process.get("parent_exec_id")
        up = nodes.get(canon(parent)) if isinstance(parent, str) else None
        if up is None or up is node:
            roots.append(node)
        else:
            up.children.append(node)
    for node in nodes.values():
        node.children.sort(key=lambda n: n.start_ns)
    return sorted(roots, key=lambda n: n.start_ns)
