"""What `tracer events` shows a person (tracer/core/terminal.py): lines, escaping, safe JSON."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from factories import exec_ev, exit_ev, mkproc

from export.jsonl import Serializer
from tracer.core import terminal as render


def as_dict(ev: Any) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(Serializer().line(ev))
    return out


def no_control_chars(text: str) -> bool:
    return all(ch.isprintable() for ch in text)


def test_compact_escapes_escape_sequences_and_newlines() -> None:
    p = mkproc(
        9,
        binary="/tmp/\x1b]0;pwned\x07evil",
        args=("x", "\x1b[31mred\x1b[0m", "two\nlines", "tab\there", "cr\rhidden"),
    )
    line = render.compact(as_dict(exec_ev(p)), color=False)
    assert "\x1b" not in line and "\n" not in line and "\r" not in line and "\x07" not in line
    assert no_control_chars(line)
    assert "\\x1b[31mred\\x1b[0m" in line
    assert "two\\nlines" in line
    assert "tab\\there" in line
    assert "cr\\rhidden" in line
    assert "/tmp/\\x1b]0;pwned\\x07evil" in line


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\u202eexe.txt", "\\u202eexe.txt"),  # right-to-left override
        ("a\u2028b", "a\\u2028b"),  # line separator
        ("\x9b31m", "\\x9b31m"),  # C1 CSI
        ("\x7f", "\\x7f"),
        ("no\u00a0break", "no\\xa0break"),  # a space that does not look like one
        ("\U000e0041tag", "\\U000e0041tag"),
        ("café ünïcode", "café ünïcode"),  # printable: as is
        ("\\x41 escaped by the daemon", "\\x41 escaped by the daemon"),
    ],
)
def test_escape(raw: str, shown: str) -> None:
    assert render.escape(raw) == shown


def test_colors_only_when_asked_and_never_inside_kernel_strings() -> None:
    ev = as_dict(exec_ev(mkproc(9, args=("x", "\x1b[32mfake"))))
    plain = render.compact(ev, color=False)
    colored = render.compact(ev, color=True)
    assert "\x1b" not in plain
    assert colored.count("\x1b[0m") == 2  # marker and node, which we wrote
    assert "\\x1b[32mfake" in colored


def test_compact_exec_and_exit_lines() -> None:
    p = mkproc(200, binary="/bin/ls", args=("ls", "-l", "my file"))
    line = render.compact(as_dict(exec_ev(p)))
    assert line == "22:13:20.123 exec n1 200 /bin/ls -l 'my file'"
    ex = render.compact(as_dict(exit_ev(p)))
    assert ex.endswith("/bin/ls -l 'my file'  signal SIGSEGV (core dumped)")
    assert ex.split()[1] == "exit"


def test_compact_file_open_connect_and_pod() -> None:
    pod = {"namespace": "shop", "name": "cart-1", "labels": {"app": "cart"}}
    proc = {"pid": 7, "binary": "/usr/bin/cat", "args": ["cat", "/etc/shadow"], "pod": pod}
    base = {"time": "2026-11-26T11:57:17Z", "node": "n1", "process": proc}
    open_ev = {
        **base,
        "type": "file_open",
        "file_open": {
            "path": "/etc/shadow",
            "flags": ["O_RDONLY"],
            "result": -13,
            "error": "EACCES",
        },
        "policy": {"name": "no-shadow", "rule": 0, "action": "deny"},
    }
    assert render.compact(open_ev) == (
        "11:57:17.000 open shop/cart-1 7 /usr/bin/cat /etc/shadow"
        "  /etc/shadow O_RDONLY = -13 EACCES deny (no-shadow)"
    )
    # Enforcement is painted red on a terminal; a post is not.
    assert "\x1b[31mdeny (no-shadow)" in render.compact(open_ev, color=True)
    conn = {
        **base,
        "type": "connect",
        "connect": {
            "family": "AF_INET6",
            "protocol": "TCP",
            "daddr": "2001:db8::1",
            "dport": 443,
            "result": 0,
        },
        "policy": {"name": "outbound-connections", "rule": 0, "action": "post"},
    }
    assert render.compact(conn).endswith("  TCP [2001:db8::1]:443 post (outbound-connections)")
    dns = {**conn, "connect": {**conn["connect"], "protocol": "UDP", "via": "sendto"}}
    assert render.compact(dns).endswith(
        "  UDP [2001:db8::1]:443 via sendto post (outbound-connections)"
    )
    moved = {
        **open_ev,
        "file_open": {"path": "/etc/cron.d/x", "flags": [], "result": 0, "op": "rename",
                      "source": "/etc/.x\x1b[2J"},
        "policy": {"name": "persistence", "rule": 0, "action": "post"},
    }  # fmt: skip
    assert render.compact(moved).endswith(
        "  rename /etc/.x\\x1b[2J -> /etc/cron.d/x post (persistence)"
    )
    assert "\x1b[31m" not in render.compact(conn, color=True).split("443")[1]
    unix = {
        **conn,
        "connect": {
            "family": "AF_UNIX",
            "unix_path": "@bus\x1b[2J",
            "result": -111,
            "error": "ECONNREFUSED",
        },
    }
    assert render.compact(unix).endswith(
        "  unix:@bus\\x1b[2J = -111 ECONNREFUSED post (outbound-connections)"
    )


def test_compact_lost() -> None:
    ev = {
        "type": "lost",
        "time": "2026-11-26T11:57:17.5Z",
        "node": "n1",
        "ancestors": [],
        "lost": {"kernel": {"process_exec": 3}, "daemon": {"process_exit": 1, "malformed": 2}},
    }
    assert render.compact(ev) == (
        "11:57:17.500 LOST n1 kernel: process_exec=3; daemon: malformed=2, process_exit=1"
    )


def test_json_line_is_terminal_safe_and_the_same_json() -> None:
    for args in (("x", "\x1b[31m\n"), ("x", "\x9b31m"), ("x", "\u202e"), ("x", "\x7f"), ("x", "é")):
        ev = as_dict(exec_ev(mkproc(9, args=args)))
        line = render.json_line(ev)
        text = line.decode()
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        assert json.loads(line) == ev
        assert all(ch.isprintable() or ch == "\n" for ch in text), args


def test_numbers_that_are_strings_in_a_forged_log_are_escaped_too() -> None:
    esc = "\x1b[2J"
    ev = {
        "type": "connect",
        "time": "2026-11-26T11:57:17Z",
        "node": "n1",
        "process": {"pid": esc, "binary": "/x", "args": []},
        "connect": {"daddr": "1.2.3.4", "dport": esc, "result": esc},
    }
    line = render.compact(ev)
    assert no_control_chars(line)
    assert line.count("\\x1b[2J") == 3
    lost = {"type": "lost", "time": "", "node": "n", "lost": {"kernel": {"k": esc}}}
    assert no_control_chars(render.compact(lost))


def test_compact_names_the_container() -> None:
    base = {"type": "process_exec", "time": "2026-11-26T11:57:17Z", "node": "n1"}
    cid = "ab" * 32
    cases = [
        ({"pod": {"namespace": "shop", "name": "cart-1", "uid": "u"},
          "container": {"id": cid, "runtime": "containerd", "name": "app"}}, "shop/cart-1/app"),
        ({"pod": {"uid": "6b2c0e7e"}, "container": {"id": cid, "runtime": "cri-o"}},
         "cri-o:abababababab"),
        ({"pod": {"uid": "6b2c0e7e"}}, "pod:6b2c0e7e"),
        ({"pod": {"namespace": "x\x1b[2J", "name": "p\u202e", "uid": "u"},
          "container": {"id": cid, "runtime": "docker", "name": "c\n"}}, "x\\x1b[2J/p\\u202e/c\\n"),
        ({}, "n1"),
    ]
    for extra, where in cases:
        proc = {"pid": 7, "binary": "/bin/true", "args": ["true"], **extra}
        assert render.compact({**base, "process": proc}) == f"11:57:17.000 exec {where} 7 /bin/true"


_OUR_COLORS = re.compile(r"\x1b\[[0-9;]+m")  # ours; a forged one is shown as text
_FORGED = [None, True, 7, -1.5, "\x1b[2Jx", [], ["\x1b]0;t\x07", 3], {}, {"k": ["\x9b"]}]


def _each_place(value: Any, path: tuple[Any, ...] = ()) -> Any:
    """Every (path, container) in a JSON value, the top one included."""
    yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _each_place(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _each_place(v, (*path, i))


def _with(ev: Any, path: tuple[Any, ...], value: Any) -> Any:
    out = json.loads(json.dumps(ev))
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


def test_compact_shows_any_json_at_any_place_without_failing() -> None:
    # A log given to --from may be forged or from another tool: every field
    # of every event kind, replaced by every kind of JSON value, still
    # gives one line, with nothing a terminal would obey.
    events = [
        as_dict(exec_ev(mkproc(9, args=("x", "y")))),
        as_dict(exit_ev(mkproc(9))),
        {"type": "file_open", "time": "2026-11-26T11:57:17Z", "node": "n1",
         "process": {"pid": 7, "binary": "/b", "args": ["b"], "pod": {"name": "p"},
                     "container": {"id": "c", "name": "n"}},
         "file_open": {"path": "/p", "flags": ["O_RDONLY"], "result": -13, "error": "EACCES"},
         "policy": {"name": "x", "action": "deny"}},
        {"type": "connect", "time": "2026-11-26T11:57:17Z", "node": "n1", "process": {"pid": 7},
         "connect": {"daddr": "::1", "dport": 1, "protocol": "TCP", "unix_path": None,
                     "result": -111, "error": "ECONNREFUSED"}},
        {"type": "lost", "time": "2026-11-26T11:57:17Z", "node": "n1",
         "lost": {"kernel": {"file_open": 1}, "daemon": {}}},
    ]
    tried = 0
    for ev in events:
        for path in _each_place(ev):
            if not path:
                continue
            for value in _FORGED:
                forged = _with(ev, path, value)
                for color in (False, True):
                    line = render.compact(forged, color)
                    assert no_control_chars(_OUR_COLORS.sub("", line)), (path, value, line)
                    tried += 1
    assert tried > 1000
