"""`tracer policy test`: a policy set evaluated on a recorded log agrees with the kernel."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, Event, new_marker, tracer_cmd

from policy import parse_text
from policy.evaluate import Evaluator
from policy.model import PolicySet
from tracer.core import text


def _evaluator(yaml_text: str) -> Evaluator:
    return Evaluator(PolicySet(parse_text(textwrap.dedent(yaml_text), "t.yaml")))


def _open(path: str, flags: list[str], binary: str = "/usr/bin/cat", uid: int = 0,
          non_utf8: bool = False) -> dict[str, Any]:
    return {
        "type": "file_open",
        "process": {"binary": binary, "uid": uid, "flags": ["non_utf8"] if non_utf8 else []},
        "file_open": {"path": path, "flags": flags, "non_utf8": non_utf8},
    }


RULES = """
policies:
  - name: a
    rules:
      - {event: file_open, match: {path: {prefix: [/etc/]}, not_path: {suffix: [.conf]}}}
      - {event: file_open, access: write, match: {path: [/etc/hosts.conf]}, action: sigkill}
      - {event: file_open, match: {path: [/etc/quiet]}, action: ignore}
      - {event: connect, match: {daddr: ["10.0.0.0/8"], dport: ["8000-8100"]}}
      - {event: exec, match: {binary: {suffix: [/nc]}, not_uid: [0]}}
  - name: b
    rules:
      - {event: file_open, match: {path: {prefix: [/etc/quiet]}}}
"""


@pytest.mark.parametrize(
    ("event", "want"),
    [
        (_open("/etc/passwd", ["O_RDONLY"]), ("a", 0)),
        (_open("/etc/hosts.conf", ["O_RDONLY"]), None),  # not_path wins; a read is no write
        (_open("/etc/hosts.conf", ["O_WRONLY", "O_TRUNC"]), ("a", 1)),
        (_open("/etc/quiet", ["O_RDONLY"]), ("a", 2)),  # ignore beats post (a.0, b.0)
        (_open("/etc/quietly", ["O_RDONLY"]), ("a", 0)),  # first in file order
        (_open("/usr/lib/x", ["O_RDONLY"]), None),
        (_open(text.decode(b"/etc/\xff")[0], ["O_RDONLY"], non_utf8=True), ("a", 0)),
        (_open("/etc/" + "d/" * 200 + "x.conf", ["O_RDONLY"]), None),  # tail still ends .conf
        (
            {"type": "connect", "process": {"binary": "/x", "uid": 5},
             "connect": {"daddr": "10.1.2.3", "dport": 8080}},
            ("a", 3),
        ),
        (
            {"type": "connect", "process": {"binary": "/x", "uid": 5},
             "connect": {"daddr": "10.1.2.3", "dport": 9000}},
            None,
        ),
        (
            {"type": "connect", "process": {"binary": "/x", "uid": 5},
             "connect": {"unix_path": "/run/x.sock"}},
            None,  # no address: a daddr rule never matches
        ),
        ({"type": "process_exec", "process": {"binary": "/bin/nc", "uid": 1000}}, ("a", 4)),
        ({"type": "process_exec", "process": {"binary": "/bin/nc", "uid": 0}}, None),
        ({"type": "process_exec", "process": {"uid": 1000}}, None),  # binary unknown
        ({"type": "lost"}, None),
        ({"type": "file_open", "process": "junk", "file_open": 3}, None),
    ],
)
def test_verdicts_follow_the_kernels_rules(
    event: dict[str, Any], want: tuple[str, int] | None
) -> None:
    v = _evaluator(RULES).verdict(event)
    assert (None if v is None else (v.policy.name, v.index)) == want


# -- live against replayed -----------------------------------------------------


def _policy_text(watched: Path, port: int, closed: int) -> str:
    cat = os.path.realpath(shutil.which("cat") or "/bin/cat")
    python = os.path.realpath(sys.executable)
    return f"""
    policies:
      - name: t-guard
        mode: monitor
        rules:
          - {{event: file_open, access: write, match: {{path: {{prefix: ["{watched}/"]}}}},
             action: sigkill}}
      - name: t-reads
        rules:
          - {{event: file_open, match: {{path: {{prefix: ["{watched}/"]}},
              not_path: {{suffix: [.tmp]}}, binary: ["{cat}"]}}}}
          - {{event: file_open, match: {{path: {{suffix: [.log]}}}}}}
          - {{event: file_open, match: {{path: ["{watched}/quiet"]}}, action: ignore}}
          - {{event: connect, match: {{daddr: ["127.0.0.0/8"], dport: [{port}]}}}}
          - {{event: exec, match: {{binary: {{prefix: ["{watched}/"]}}}}}}
          - {{event: exec, match: {{binary: ["{cat}"], parent_binary: ["{python}"]}}}}
          - {{event: file_open, match: {{path: ["{watched}/b.tmp"],
              ancestor_binary: {{exact: ["{python}"]}}}}}}
    """


def _key(e: Event) -> tuple[Any, ...]:
    # Not the exec_id: each daemon's exec program stamps its own time into it.
    detail = e.get("file_open", {}).get("path") or e.get("connect", {}).get("dport")
    return e["type"], e["process"]["pid"], e["process"]["binary"], detail


@pytest.mark.kernel
def test_replayed_verdicts_agree_with_the_kernels_live(tmp_path: Path) -> None:
    """One daemon records everything under a directory and every loopback
    connect; another runs the set under test live. The set replayed on the
    first one's log selects exactly what the second selected, by the same rules."""
    watched = tmp_path / "w"
    watched.mkdir()
    for name in ("a.txt", "b.tmp", "c.log", "quiet"):
        (watched / name).write_text("x")
    shutil.copy(os.path.realpath(shutil.which("true") or "/bin/true"), watched / "tool")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    other = socket.create_server(("127.0.0.1", 0))
    record = tmp_path / "record.yaml"
    record.write_text(textwrap.dedent(f"""
        policies:
          - name: everything
            rules:
              - {{event: file_open, match: {{path: {{prefix: ["{watched}/"]}}}}}}
              - {{event: connect, match: {{daddr: ["127.0.0.0/8"]}}}}
    """))
    under_test = tmp_path / "test.yaml"
    under_test.write_text(textwrap.dedent(_policy_text(watched, port, other.getsockname()[1])))
    log = tmp_path / "log"
    recorder = Daemon("--policy", str(record), "--event-log-dir", str(log))
    live = Daemon("--policy", str(under_test))
    marker = new_marker("dry")
    script = textwrap.dedent(f"""
        import socket, subprocess, sys
        w = {str(watched)!r}
        for name in ("a.txt", "b.tmp", "c.log", "quiet"):
            subprocess.run(["cat", w + "/" + name], stdout=subprocess.DEVNULL)
            open(w + "/" + name).close()
        open(w + "/new.log", "w").close()
        open(w + "/a.txt", "a").close()
        subprocess.run([w + "/tool"])
        for p in ({port}, {other.getsockname()[1]}):
            socket.create_connection(("127.0.0.1", p)).close()
    """)
    try:
        subprocess.run([sys.executable, "-c", script, marker], check=True)
        for d in (recorder, live):
            d.sync()
    finally:
        assert live.stop() == 0, "".join(live.stderr)
        assert recorder.stop() == 0, "".join(recorder.stderr)
        listener.close()
        other.close()

    def ours(e: Event) -> bool:
        chain = [e["process"], e.get("parent") or {}]
        return any(marker in p.get("args", []) for p in chain)

    selected = {
        _key(e): (e["policy"]["name"], e["policy"]["rule"], e["policy"]["action"])
        for e in live.matching(ours)
        if e["type"] in ("file_open", "connect") or e.get("policy")
    }
    # The workload exercised every rule but the ignore one (whose opens the
    # kernel drops): the comparison below is about all of them.
    assert {v[:2] for v in selected.values()} == {
        ("t-guard", 0), *(("t-reads", i) for i in (0, 1, 3, 4, 5, 6))
    }, selected
    r = subprocess.run(
        tracer_cmd("policy", "test", str(under_test), "--from", str(log), "--json",
                   "--examples", "1000"),
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    replayed = {
        _key(e): (rule["policy"], rule["rule"], rule["action"])
        for rule in report["rules"]
        for e in rule["examples"]
        if ours(e)
    }
    # The kernel drops what an ignore rule selects; the dry run counts it.
    ignored = {k for k, v in replayed.items() if v[2] == "ignore"}
    assert {k[3] for k in ignored} == {str(watched / "quiet")}
    assert {k: v for k, v in replayed.items() if k not in ignored} == selected
