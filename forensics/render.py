"""A process forest as a terminal tree (`-o text`) or nested JSON (`-o json`).

Both go through tracer/core/terminal.py's escaping, as `tracer events`'s
outputs do: argv and paths come from the kernel unfiltered.
"""

from __future__ import annotations

import shlex
from typing import Any

from forensics.tree import Forest, Node
from tracer.core import terminal
from tracer.core.clock import rfc3339
from tracer.core.terminal import escape

JsonDict = dict[str, Any]


def _exit_text(node: Node) -> str:
    if node.exit is None:
        return "no exit seen"
    if node.exit.get("signal"):
        return f"killed by {escape(str(node.exit['signal']))}"
    return f"exit {escape(str(node.exit.get('code', '?')))}"


def headline(node: Node) -> str:
    """binary args, pid, user, start, exit: one line, escaped."""
    p = node.process
    args = " ".join(shlex.quote(escape(str(a))) for a in (p.get("args") or [])[1:])
    user = p.get("user")
    who = f"uid {escape(str(p.get('uid', '?')))}" + (f" ({escape(str(user))})" if user else "")
    start = escape(str(p.get("start_time", "?")))
    text = f"{escape(str(p.get('binary', '?')))}"
    if args:
        text += f" {args}"
    text += f"  [pid {escape(str(p.get('pid', '?')))}, {who}, started {start}, {_exit_text(node)}]"
    if node.selected:
        text = "* " + text
    return text


def event_line(ev: JsonDict, color: bool = False) -> str:
    """HH:MM:SS.mmm kind detail, escaped."""
    marker = terminal.MARKERS.get(ev["type"], escape(ev["type"]))
    return f"{terminal.clock(ev.get('time', ''))} {marker} {terminal.detail(ev, color)}"


def to_text(forest: Forest, color: bool = False) -> str:
    lines: list[str] = []

    def walk(node: Node, prefix: str, last: bool, top: bool) -> None:
        branch = "" if top else ("└─ " if last else "├─ ")
        lines.append(prefix + branch + headline(node))
        inner = prefix + ("" if top else ("   " if last else "│  "))
        bar = "│  " if node.children else "   "
        lines.append(f"{inner}{bar}exec_id {escape(node.exec_id)}")
        for reason in node.partial:
            lines.append(f"{inner}{bar}PARTIAL: {escape(reason)}")
        for _, ev in node.events:
            lines.append(f"{inner}{bar}{event_line(ev, color)}")
        for i, child in enumerate(node.children):
            walk(child, inner, i == len(node.children) - 1, False)

    for root in forest.roots:
        walk(root, "", True, True)
    return "\n".join(lines) + "\n"


def node_dict(node: Node) -> JsonDict:
    return {
        "exec_id": node.exec_id,
        "aliases": node.aliases,
        "selected": node.selected,
        "partial": bool(node.partial),
        "partial_reasons": node.partial,
        "process": node.process,
        "exit": node.exit,
        "exit_time": rfc3339(node.exit_ns) if node.exit_ns is not None else None,
        "events": [ev for _, ev in node.events],
        "children": [node_dict(c) for c in node.children],
    }


def forest_dict(forest: Forest) -> JsonDict:
    return {
        "selected": forest.selected,
        "first_time": rfc3339(forest.first_ns),
        "last_time": rfc3339(forest.last_ns),
        "roots": [node_dict(r) for r in forest.roots],
    }


def to_json(forest: Forest) -> bytes:
    """One JSON document, safe on a terminal as `tracer events -o json` is: argv and
    paths may hold C1 controls, bidi overrides and DEL, which JSON leaves raw."""
    return terminal.json_line(forest_dict(forest))
