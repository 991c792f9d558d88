"""Policy metadata (severity, tags, message) and monitor mode, parsed and on real events."""

from __future__ import annotations

import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Daemon, Event, new_marker
from factories import policy_json

from policy import PolicyError, parse_text
from policy.model import Mode, Severity
from tracer import control


def _doc(extra: str, rule: str = "{event: file_open, match: {path: [/x]}}") -> str:
    return f"policies:\n  - name: p\n{textwrap.indent(extra, '    ')}    rules: [{rule}]\n"


def test_metadata_is_parsed() -> None:
    (p,) = parse_text(
        _doc("severity: high\ntags: [T1003.008, credential-access]\nmessage: shadow read\n"
             "mode: monitor\n"),
        "f.yaml",
    )
    assert p.severity is Severity.HIGH
    assert p.tags == ("T1003.008", "credential-access")
    assert p.message == "shadow read"
    assert p.mode is Mode.MONITOR
    (q,) = parse_text(_doc(""), "f.yaml")
    assert (q.severity, q.tags, q.message, q.mode) == (Severity.INFO, (), "", Mode.ENFORCE)


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ("severity: urgent\n", "f.yaml:3: severity must be one of info, low, medium, high"),
        ("tags: [T10038]\n", "f.yaml:3: tag 'T10038' is not an ATT&CK technique id"),
        ("tags: [t1003.8]\n", "tag 't1003.8' is not an ATT&CK technique id"),
        ("tags: [[a]]\n", "f.yaml:3: a tag must be a string"),
        ("tags: [42]\n", "f.yaml:3: a tag must be a string"),
        ("tags: ['a b']\n", "tag 'a b': use 1-64 letters"),
        ("mode: audit\n", "f.yaml:3: mode must be one of enforce, monitor, not 'audit'"),
        ("message: " + "x" * 300 + "\n", "message is longer than 256"),
        ("priority: high\n", "unknown key 'priority' in a policy"),
    ],
)
def test_bad_metadata_is_refused_with_file_and_line(extra: str, problem: str) -> None:
    with pytest.raises(PolicyError) as exc:
        parse_text(_doc(extra), "f.yaml")
    assert problem in str(exc.value)


# -- on the real kernel -------------------------------------------------------


@pytest.fixture(scope="module")
def ctl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ctl") / "control.sock"


@pytest.fixture(scope="module")
def daemon(ctl: Path) -> Iterator[Daemon]:
    d = Daemon("--control-socket", str(ctl))
    yield d
    assert d.stop() == 0, "".join(d.stderr)


def _apply(ctl: Path, text: str) -> None:
    reply = control.request(ctl, {"op": "policy_apply", "documents": [["t.yaml", text]]})
    assert reply["ok"], reply


def _open_of(path: Path, marker: str) -> object:
    def pred(e: Event) -> bool:
        return (
            e["type"] == "file_open"
            and e["file_open"]["path"] == str(path)
            and marker in e["process"]["args"]
        )

    return pred


def _policy(name: str, path: Path, action: str, meta: str) -> str:
    return (
        f"  - name: {name}\n{textwrap.indent(meta, '    ')}    rules:\n"
        f"      - event: file_open\n        match: {{path: [{path}]}}\n"
        f"        action: {action}\n"
    )


@pytest.mark.kernel
def test_events_carry_the_policy_metadata_and_monitor_mode_does_not_kill(
    daemon: Daemon, ctl: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    meta = "severity: critical\ntags: [T1003.008]\nmessage: the secret was read\n"
    # An ignore rule on the same path: a monitor-mode sigkill keeps its rank
    # and still names the event, as it would when it acts.
    ignore = _policy("quiet", secret, "ignore", "")
    _apply(ctl, "policies:\n" + _policy("guard", secret, "sigkill", meta + "mode: monitor\n")
           + ignore)
    marker = new_marker()
    r = subprocess.run(["cat", str(secret), marker], capture_output=True)
    assert r.stdout == b"s3cret", "a monitor-mode rule must not act"
    ev = daemon.wait_for(_open_of(secret, marker))
    assert ev["policy"] == policy_json(
        "guard", 0, "sigkill", severity="critical", tags=["T1003.008"],
        message="the secret was read", mode="monitor",
    )
    # The same policy switched to enforce by an apply: it acts now.
    _apply(ctl, "policies:\n" + _policy("guard", secret, "sigkill", meta) + ignore)
    marker = new_marker()
    r = subprocess.run(["cat", str(secret), marker], capture_output=True)
    assert r.returncode == -9 and r.stdout == b""
    ev = daemon.wait_for(_open_of(secret, marker))
    assert ev["policy"]["action"] == "sigkill" and ev["policy"]["mode"] == "enforce"
    assert ev["policy"]["severity"] == "critical"
