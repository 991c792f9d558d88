"""A process forest as one self-contained HTML page (`tracer tree -o html`).

Everything is inline (CSS, script, data): the page makes no network
request, so it can be attached to an incident report and opened offline.
The script builds the tree from the embedded JSON with textContent only,
never innerHTML, so no string from an event is ever parsed as markup;
the JSON itself is embedded with every `<` escaped, so it cannot end
its script element.
"""

from __future__ import annotations

from typing import Any

import orjson

from forensics.render import event_line, headline
from forensics.tree import Forest, Node
from tracer.core.clock import rfc3339
from tracer.core.terminal import escape

JsonDict = dict[str, Any]


def _ms(ns: int, lo: int) -> float:
    return round((ns - lo) / 1e6, 3)


def _node(node: Node, lo: int, hi: int) -> JsonDict:
    end = node.exit_ns if node.exit_ns is not None else hi
    return {
        "id": node.exec_id,
        "label": headline(node),
        "partial": node.partial,
        "selected": node.selected,
        "start": _ms(max(node.start_ns, lo), lo),
        "end": _ms(max(end, lo), lo),
        "detail": {"process": node.process, "exit": node.exit, "aliases": node.aliases},
        "events": [
            {
                "t": _ms(t, lo),
                "kind": ev["type"],
                "text": event_line(ev),
                "event": ev,
            }
            for t, ev in node.events
        ],
        "children": [_node(c, lo, hi) for c in node.children],
    }


def _bounds(forest: Forest) -> tuple[int, int]:
    """The axis: the selection's span, to the last exit in it; older starts are clipped."""
    hi = forest.last_ns

    def walk(n: Node) -> None:
        nonlocal hi
        if n.exit_ns is not None:
            hi = max(hi, n.exit_ns)
        for c in n.children:
            walk(c)

    for r in forest.roots:
        walk(r)
    return forest.first_ns, max(hi, forest.first_ns + 1)


def to_html(forest: Forest, title: str) -> bytes:
    lo, hi = _bounds(forest)
    data = {
        "title": title,
        "from": rfc3339(lo),
        "to": rfc3339(hi),
        "span": _ms(hi, lo),
        "roots": [_node(r, lo, hi) for r in forest.roots],
    }
    blob = orjson.dumps(data).replace(b"<", b"\\u003c")
    page = _PAGE.replace("@@TITLE@@", _attr(title))
    head, tail = page.split("@@DATA@@")
    return head.encode() + blob + tail.encode()


def _attr(text: str) -> str:
    return (
        escape(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        .replace('"', "&quot;")
    )


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>@@TITLE@@</title>
<style>
body{font:13px/1.4 system-ui,sans-serif;margin:0;display:flex;height:100vh;color:#222}
#main{flex:1;overflow:auto;padding:8px 12px}
#side{width:38%;border-left:1px solid #ccc;overflow:auto;padding:8px 12px;background:#fafafa}
#side pre{white-space:pre-wrap;word-break:break-all;font:12px/1.3 monospace}
h1{font-size:15px;margin:4px 0 8px}
ul{list-style:none;margin:0;padding-left:18px}
#tree>ul{padding-left:0}
.row{display:flex;align-items:center;gap:6px;cursor:pointer;padding:1px 0}
.row:hover{background:#eef}
.toggle{width:14px;text-align:center;color:#666;flex:none}
.label{flex:1;font-family:monospace;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.sel>.row .label{font-weight:bold}
.partial>.row .label{color:#a60}
.bar{position:relative;width:30%;height:10px;background:#f0f0f0;flex:none}
.bar .span{position:absolute;top:2px;height:6px;background:#79c}
.bar .tick{position:absolute;top:0;width:2px;height:10px;background:#c33}
.ev .label{color:#345}
.ev.connect .label{color:#818}
.collapsed>ul{display:none}
#axis{display:flex;justify-content:space-between;margin-left:70%;font-size:11px;color:#666}
.reason{color:#a60;font-size:12px;padding-left:20px}
</style></head>
<body><div id="main"><h1 id="title"></h1><div id="axis"></div><div id="tree"></div></div>
<div id="side"><h1>Details</h1><p>Click a process or an event.</p><pre id="detail"></pre></div>
<script type="application/json" id="data">@@DATA@@</script>
<script>
"use strict";
(function () {
  var data = JSON.parse(document.getElementById("data").textContent);
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function show(obj) {
    document.getElementById("detail").textContent = JSON.stringify(obj, null, 2);
  }
  function pct(ms) { return (data.span > 0 ? 100 * ms / data.span : 0).toFixed(3) + "%"; }
  document.getElementById("title").textContent =
    data.title + " (" + data.from + " .. " + data.to + ")";
  var axis = document.getElementById("axis");
  for (var i = 0; i <= 4; i++) {
    axis.appendChild(el("span", "", "+" + (data.span * i / 4 / 1000).toFixed(3) + " s"));
  }
  function eventItem(ev) {
    var li = el("li", "ev " + ev.kind);
    var row = el("div", "row");
    row.appendChild(el("span", "toggle", "\u2022"));
    row.appendChild(el("span", "label", ev.text));
    var bar = el("span", "bar"), tick = el("span", "tick");
    tick.style.left = pct(ev.t);
    bar.appendChild(tick);
    row.appendChild(bar);
    row.addEventListener("click", function (e) { e.stopPropagation(); show(ev.event); });
    li.appendChild(row);
    return li;
  }
  function nodeItem(n) {
    var li = el("li", "node" + (n.selected ? " sel" : "") + (n.partial.length ? " partial" : ""));
    li.setAttribute("data-exec-id", n.id);
    var row = el("div", "row");
    var hasKids = n.children.length + n.events.length > 0;
    var toggle = el("span", "toggle", hasKids ? "\u25be" : "");
    row.appendChild(toggle);
    row.appendChild(el("span", "label", (n.partial.length ? "[partial] " : "") + n.label));
    var bar = el("span", "bar"), span = el("span", "span");
    span.style.left = pct(n.start);
    span.style.width = "max(2px, " + pct(Math.max(0, n.end - n.start)) + ")";
    bar.appendChild(span);
    row.appendChild(bar);
    row.addEventListener("click", function () { show(n.detail); });
    toggle.addEventListener("click", function (e) {
      e.stopPropagation();
      li.classList.toggle("collapsed");
      toggle.textContent = li.classList.contains("collapsed") ? "\u25b8" : "\u25be";
    });
    li.appendChild(row);
    n.partial.forEach(function (r) { li.appendChild(el("div", "reason", "partial: " + r)); });
    var ul = el("ul");
    n.events.forEach(function (ev) { ul.appendChild(eventItem(ev)); });
    n.children.forEach(function (c) { ul.appendChild(nodeItem(c)); });
    li.appendChild(ul);
    return li;
  }
  var top = el("ul");
  data.roots.forEach(function (r) { top.appendChild(nodeItem(r)); });
  document.getElementById("tree").appendChild(top);
})();
</script></body></html>
"""
