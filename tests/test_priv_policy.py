"""Policies on privilege_change and file_attr: selected in the kernel, and the dry run agrees."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, Event, new_marker, tracer_cmd

from policy import parse_text
from policy.evaluate import Evaluator
from policy.model import PolicySet

NOBODY = 65534
# Keep the capabilities past a setresuid away from root, raise CAP_SETUID
# again and use it: root from non-root without a set-uid binary.
_BACK_TO_ROOT = textwrap.dedent(f"""
    import ctypes, os
    libc = ctypes.CDLL(None, use_errno=True)
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]
    libc.prctl(8, 1, 0, 0, 0)  # PR_SET_KEEPCAPS
    os.setresuid({NOBODY}, {NOBODY}, {NOBODY})
    h, d = Header(0x20080522, 0), (Data * 2)()
    assert libc.capget(ctypes.byref(h), d) == 0
    d[0].effective |= 1 << 7  # CAP_SETUID
    assert libc.capset(ctypes.byref(h), d) == 0
    os.setuid(0)
    print("still here", flush=True)
""")


def _policies(directory: Path, to_root_action: str) -> str:
    python = os.path.realpath(sys.executable)
    return textwrap.dedent(f"""
        policies:
          - name: p-root
            severity: high
            tags: [T1548]
            rules:
              - {{event: privilege_change, match: {{to_root: true}}, action: {to_root_action}}}
              - {{event: privilege_change, match: {{binary: ["{python}"], uid: [{NOBODY}]}}}}
          - name: p-attr
            rules:
              - {{event: file_attr, match: {{path: {{prefix: ["{directory}/"]}},
                 not_path: {{suffix: [.txt]}}}}}}
              - {{event: file_attr, match: {{path: {{prefix: ["{directory}/quiet"]}}}},
                 action: ignore}}
    """)


@pytest.fixture()
def workdir() -> Iterator[Path]:
    d = Path("/tmp") / new_marker("privpol")
    d.mkdir()
    for name in ("a.bin", "b.txt", "quiet.bin"):
        (d / name).write_text("x")
    yield d
    shutil.rmtree(d)


def _workload(d: Path) -> str:
    chmods = "".join(f"os.chmod({str(d / n)!r}, 0o4755)\n" for n in ("a.bin", "b.txt", "quiet.bin"))
    return "import os\n" + chmods + _BACK_TO_ROOT


def _ours(marker: str) -> Any:
    return lambda e: marker in (e.get("process") or {}).get("args", [])


@pytest.mark.kernel
def test_rules_select_in_the_kernel_and_the_dry_run_agrees(workdir: Path, tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(_policies(workdir, "post"))
    log = tmp_path / "log"
    d = Daemon("--policy", str(policy), "--event-log-dir", str(log))
    marker = new_marker("privpol")
    try:
        r = subprocess.run([sys.executable, "-c", _workload(workdir), marker],
                           capture_output=True, text=True, check=True)
        assert r.stdout == "still here\n"
        d.sync()
    finally:
        assert d.stop() == 0, "".join(d.stderr)
    mine = [e for e in d.matching(_ours(marker)) if e["type"] in ("file_attr", "privilege_change")]

    def key(e: Event) -> tuple[str, str]:
        detail = e.get("file_attr", {}).get("path") or e["privilege_change"]["op"]
        return e["type"], detail

    live = {key(e): (e["policy"]["name"], e["policy"]["rule"]) for e in mine if e.get("policy")}
    assert live == {
        ("file_attr", str(workdir / "a.bin")): ("p-attr", 0),
        ("privilege_change", "setresuid"): ("p-root", 1),
        ("privilege_change", "capset"): ("p-root", 1),
        ("privilege_change", "setuid"): ("p-root", 0),
    }
    # Unselected, they are reported all the same; an ignored one is not.
    assert {key(e) for e in mine} == {*live, ("file_attr", str(workdir / "b.txt"))}
    r2 = subprocess.run(
        tracer_cmd("policy", "test", str(policy), "--from", str(log), "--json",
                   "--examples", "1000"),
        capture_output=True, text=True, timeout=120,
    )
    assert r2.returncode == 0, r2.stderr
    replayed = {
        key(e): (rule["policy"], rule["rule"])
        for rule in json.loads(r2.stdout)["rules"]
        for e in rule["examples"]
        if _ours(marker)(e) and rule["action"] != "ignore"
    }
    assert replayed == live


@pytest.mark.kernel
def test_a_sigkill_rule_kills_the_process_that_became_root(workdir: Path, tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(_policies(workdir, "sigkill"))
    d = Daemon("--policy", str(policy))
    marker = new_marker("privkill")
    try:
        r = subprocess.run([sys.executable, "-c", _workload(workdir), marker],
                           capture_output=True, text=True)
        d.sync()
        (ev,) = [e for e in d.matching(_ours(marker)) if e.get("policy", {}).get("rule") == 0
                 and e["type"] == "privilege_change"]
    finally:
        assert d.stop() == 0, "".join(d.stderr)
    assert r.returncode == -9 and r.stdout == ""
    assert ev["policy"]["action"] == "sigkill"
    assert ev["privilege_change"]["to_root"]


@pytest.mark.kernel
def test_a_sigkill_rule_kills_a_chown_to_root_by_an_absolute_name(
    workdir: Path, tmp_path: Path
) -> None:
    """The kernel decides on the directory an absolute name is in, in every
    capture mode (tracepoint mode finds it again at the call's exit): the
    chown in a 755 directory is not a file_attr event, the one in a 1777
    directory is, and the rule kills it."""
    drop, safe = workdir / "drop", workdir / "safe"
    drop.mkdir()
    drop.chmod(0o1777)
    safe.mkdir(mode=0o755)
    for d in (drop, safe):
        (d / "f").write_text("x")
        os.chown(d / "f", NOBODY, NOBODY)
    policy = tmp_path / "p.yaml"
    policy.write_text(textwrap.dedent(f"""
        policies:
          - name: p-chown
            rules:
              - {{event: file_attr, match: {{path: {{prefix: ["{workdir}/"]}}}}, action: sigkill}}
    """))
    d = Daemon("--policy", str(policy))
    marker = new_marker("chownkill")
    script = (f"import os\nos.chown({str(safe / 'f')!r}, 0, -1)\nprint('safe', flush=True)\n"
              f"os.chown({str(drop / 'f')!r}, 0, -1)\nprint('still here', flush=True)\n")
    try:
        r = subprocess.run([sys.executable, "-c", script, marker], capture_output=True, text=True)
        d.sync()
        (ev,) = [e for e in d.matching(_ours(marker)) if e["type"] == "file_attr"]
    finally:
        assert d.stop() == 0, "".join(d.stderr)
    assert r.returncode == -9 and r.stdout == "safe\n"
    assert ev["policy"]["action"] == "sigkill"
    assert ev["file_attr"]["path"] == str(drop / "f") and ev["file_attr"]["world_writable_dir"]


@pytest.mark.parametrize(
    ("event", "want"),
    [
        ({"type": "privilege_change", "process": {"binary": "/x", "uid": 0},
          "privilege_change": {"op": "setuid", "to_root": True}}, ("p", 0)),
        ({"type": "privilege_change", "process": {"binary": "/x", "uid": 0},
          "privilege_change": {"op": "setuid", "to_root": False}}, None),
        ({"type": "privilege_change", "process": {"binary": "/usr/bin/sudo", "uid": 0},
          "privilege_change": {"op": "exec", "to_root": True}}, None),
        ({"type": "file_attr", "process": {"binary": "/x", "uid": 0},
          "file_attr": {"path": "/tmp/a/b.bin"}}, ("p", 1)),
        ({"type": "file_attr", "process": {"binary": "/x", "uid": 0},
          "file_attr": {"path": "/tmp/a/b.txt"}}, None),
    ],
)
def test_dry_run_verdicts(event: dict[str, Any], want: tuple[str, int] | None) -> None:
    rules = textwrap.dedent("""
        policies:
          - name: p
            rules:
              - {event: privilege_change, match: {to_root: true, not_binary: [/usr/bin/sudo]}}
              - {event: file_attr, match: {path: {suffix: [.bin]}}}
    """)
    v = Evaluator(PolicySet(parse_text(rules, "t.yaml"))).verdict(event)
    assert (None if v is None else (v.policy.name, v.index)) == want


@pytest.mark.parametrize(
    ("rule", "error"),
    [
        ("{event: privilege_change, match: {to_root: maybe}}", "to_root must be true or false"),
        ("{event: privilege_change, match: {path: [/x]}}", "unknown key 'path'"),
        ("{event: exec, match: {to_root: true}}", "unknown key 'to_root'"),
        ("{event: file_attr, match: {path: {glob: [/x/*]}}}", "globs are for file_open paths only"),
    ],
)
def test_bad_rules_are_refused(rule: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_text(f"policies:\n  - name: p\n    rules:\n      - {rule}\n", "t.yaml")
