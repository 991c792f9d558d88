"""Events for a person's terminal: one compact line each, and terminal-safe JSON.

Every string in an event may come from the kernel unfiltered: argv, file
names, pod labels. A terminal obeys control characters and escape
sequences, so none of those may reach it raw: escape() shows each
character that is not printable (C0/C1 controls, DEL, bidi overrides and
other format characters, line separators, non-ASCII spaces) as a visible
escape. Colors, when enabled, are added after escaping, around text we
wrote ourselves.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from typing import Any

import orjson

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

MARKERS = {
    "process_exec": "exec",
    "process_exit": "exit",
    "file_open": "open",
    "connect": "conn",
    "policy_summary": "more",
    "privilege_change": "priv",
    "file_attr": "attr",
    "lost": "LOST",
}
_COLORS = {
    "process_exec": "32",  # green
    "process_exit": "33",  # yellow
    "file_open": "34",  # blue
    "connect": "35",  # magenta
    "policy_summary": "36",  # cyan
    "privilege_change": "1;33",  # bold yellow
    "file_attr": "1;36",  # bold cyan
    "lost": "1;31",  # bold red
}
_ALARM = "31"  # red: actions other than allow
_DIM = "2"


def _escape_char(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    o = ord(ch)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"


def escape(text: str) -> str:
    """`text` with every non-printable character shown as an escape."""
    if text.isprintable():  # the common case, checked in C
        return text
    return "".join(ch if ch.isprintable() else _escape_char(ch) for ch in text)


def _text(value: object) -> str:
    """Any JSON value, escaped: a log given to --from may hold strings where numbers belong."""
    return escape(value if isinstance(value, str) else "" if value is None else str(value))


def _obj(value: object) -> Mapping[str, Any]:
    """A JSON object, else an empty one: a forged or foreign log may put any
    value anywhere, and a line is shown with what it has, not a traceback."""
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _paint(text: str, code: str, color: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if color else text


def _clock(value: object) -> str:
    """HH:MM:SS.mmm of an RFC 3339 time (the date is left out: lines are live)."""
    rfc3339 = value if isinstance(value, str) else ""
    hms = rfc3339[11:19]
    frac = ""
    if rfc3339[19:20] == ".":
        digits = rfc3339[20:23]
        frac = digits[: len(digits) - len(digits.lstrip("0123456789"))] if digits else ""
    return escape(f"{hms}.{frac:0<3}")


def _where(ev: Mapping[str, Any]) -> str:
    """namespace/pod[/container], else runtime:short-id, else pod:uid, else the node."""
    p = _obj(ev.get("process"))
    pod = _obj(p.get("pod"))
    ctr = _obj(p.get("container"))
    if pod.get("name"):
        where = f"{_text(pod.get('namespace'))}/{_text(pod['name'])}"
        return f"{where}/{_text(ctr['name'])}" if ctr.get("name") else where
    if ctr.get("id"):
        return f"{_text(ctr.get('runtime'))}:{_text(str(ctr['id'])[:12])}"
    if pod.get("uid"):
        return f"pod:{_text(pod['uid'])}"
    return _text(ev.get("node"))


def _action(ev: Mapping[str, Any], color: bool) -> str:
    """`post high (policy-name: message)`, in red when the rule enforced (sigkill,
    deny); a monitor-mode rule that did not act says `would sigkill`."""
    policy = _obj(ev.get("policy"))
    action = policy.get("action")
    if not action:
        return ""
    monitor = policy.get("mode") == "monitor"
    severity = policy.get("severity")
    message = policy.get("message")
    text = ("would " if monitor else "") + _text(action)
    if severity and severity != "info":
        text += f" {_text(severity)}"
    text += f" ({_text(policy.get('name'))}" + (f": {_text(message)})" if message else ")")
    enforced = action != "post" and not monitor
    return " " + (_paint(text, _ALARM, color) if enforced else text)


def _detail(kind: str, ev: Mapping[str, Any], color: bool) -> str:
    d = _obj(ev.get(kind))
    if kind == "process_exit":
        sig = d.get("signal")
        text = f"signal {_text(sig)}" if sig else f"code {_text(d.get('code', '?'))}"
        if d.get("core_dumped"):
            text += " (core dumped)"
        return text
    if kind == "file_open":
        flags = "|".join(_text(f) for f in _list(d.get("flags")))
        result = f" = {_text(d['result'])}" if d.get("result") else ""
        err = f" {_text(d['error'])}" if d.get("error") else ""
        op = d.get("op")
        if op and op != "open":  # a new name: rename, link, symlink
            what = f"{_text(op)} {_text(d.get('source'))} -> {_text(d.get('path'))}"
            return f"{what}{result}{err}{_action(ev, color)}"
        return f"{_text(d.get('path'))} {flags}{result}{err}{_action(ev, color)}".strip()
    if kind == "connect":
        if d.get("unix_path") is not None:
            target = f"unix:{_text(d['unix_path'])}"
        else:
            daddr = _text(d.get("daddr"))
            if ":" in daddr:  # IPv6
                daddr = f"[{daddr}]"
            target = f"{_text(d.get('protocol'))} {daddr}:{_text(d.get('dport', 0))}"
        via = d.get("via")
        if via and via != "connect":  # reached without connect(): sendto, fastopen
            target += f" via {_text(via)}"
        result = f" = {_text(d['result'])}" if d.get("result") else ""
        err = f" {_text(d['error'])}" if d.get("error") else ""
        return f"{target}{result}{err}{_action(ev, color)}".strip()
    if kind == "privilege_change":
        return f"{_privilege(d)}{_action(ev, color)}"
    if kind == "file_attr":
        return f"{_file_attr(d)}{_action(ev, color)}"
    if kind == "process_exec":
        return _action(ev, color).strip()
    if kind == "policy_summary":
        # `12 more file_open since 10:00:01.000 (aggregate 1000ms)`
        how = "aggregate" if d.get("aggregate") else f"throttle {_text(d.get('limit'))} per"
        return (
            f"{_text(d.get('count'))} more {_text(d.get('event'))} since "
            f"{_clock(d.get('first'))} ({how} {_text(d.get('interval_ms'))}ms"
            f" by {_text(d.get('by'))}){_action(ev, color)}"
        )
    return ""


def _ids(c: Mapping[str, Any]) -> str:
    return f"uid={_text(c.get('uid'))} euid={_text(c.get('euid'))} gid={_text(c.get('gid'))}"


def _privilege(d: Mapping[str, Any]) -> str:
    """`setresuid uid=1000 euid=1000 gid=1000 -> uid=0 euid=0 gid=1000 TO ROOT`."""
    old = d.get("old")
    text = f"{_text(d.get('op'))} {_ids(_obj(old)) if old is not None else '?'} -> "
    text += _ids(_obj(d.get("new")))
    caps = [c for c in _list(d.get("changed")) if str(c).startswith("cap_")]
    if caps:
        text += " (" + ", ".join(_text(c) for c in caps) + ")"
    return text + (" TO ROOT" if d.get("to_root") else "")


def _file_attr(d: Mapping[str, Any]) -> str:
    """`chmod /tmp/x mode=04755` or `chown /tmp/x uid=0 (world-writable dir)`."""
    text = f"{_text(d.get('call'))} {_text(d.get('path'))}"
    if d.get("mode") is not None and isinstance(d["mode"], int):
        text += f" mode=0{d['mode']:o}"
    if d.get("uid") is not None:
        text += f" uid={_text(d['uid'])}"
    if d.get("world_writable_dir"):
        text += " (world-writable dir)"
    return text


def _lost(ev: Mapping[str, Any]) -> str:
    lost = _obj(ev.get("lost"))
    parts = []
    for where in ("kernel", "daemon"):
        counts = _obj(lost.get(where))
        if counts:
            items = ", ".join(f"{_text(k)}={_text(v)}" for k, v in sorted(counts.items()))
            parts.append(f"{where}: {items}")
    return "; ".join(parts)


def detail(ev: Mapping[str, Any], color: bool = False) -> str:
    """The event's own part (a path, an address, an exit status, the rule), escaped."""
    return _detail(_text(ev.get("type")), ev, color)


def clock(rfc3339: str) -> str:
    """HH:MM:SS.mmm of an RFC 3339 time, escaped."""
    return _clock(rfc3339)


def compact(ev: Mapping[str, Any], color: bool = False) -> str:
    """One line: time, kind, namespace/pod or node, pid, binary, arguments, detail."""
    kind = _text(ev.get("type"))
    marker = f"{MARKERS.get(kind, kind):<4}"
    head = f"{_clock(ev.get('time'))} {_paint(marker, _COLORS.get(kind, '0'), color)}"
    where = _paint(_where(ev), _DIM, color)
    if kind == "lost":
        return f"{head} {where} {_lost(ev)}"
    p = _obj(ev.get("process"))
    args = " ".join(shlex.quote(_text(a)) for a in _list(p.get("args"))[1:])
    line = f"{head} {where} {_text(p.get('pid', '?'))} {_text(p.get('binary'))}"
    if args:
        line += f" {args}"
    detail = _detail(kind, ev, color)
    if detail:
        line += f"  {detail}"
    return line


def _unsafe_for_terminal(ch: str) -> bool:
    # JSON escapes C0 controls itself; the rest of what escape() shows as an
    # escape (DEL, C1, format and bidi, separators, private use, unassigned)
    # it leaves raw.
    o = ord(ch)
    return o == 0x7F or (o > 0x7F and not ch.isprintable())


def json_line(ev: Mapping[str, Any]) -> bytes:
    """The event as one JSON line that is safe to show on a terminal.

    orjson leaves DEL, C1 controls (U+009B is CSI to some terminals), bidi
    overrides, line separators and other non-printable characters raw,
    which is valid JSON; the rare line that holds one is written with every
    character outside printable ASCII escaped instead. The JSON value is the
    same.
    """
    line = orjson.dumps(ev, option=orjson.OPT_APPEND_NEWLINE)
    if (line.isascii() and b"\x7f" not in line) or not any(
        _unsafe_for_terminal(ch) for ch in line.decode()
    ):
        return line
    return json.dumps(ev, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"
