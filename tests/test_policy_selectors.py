"""Who did it: parent, ancestor and effective-uid selectors, in the kernel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from capture import MODES
from conftest import Daemon, Event, new_marker

from policy import PolicyError, glob, parse_text
from tracer import control

pytestmark = pytest.mark.kernel

TRUE = os.path.realpath(shutil.which("true") or "/bin/true")
BASH = os.path.realpath(shutil.which("bash") or "/bin/bash")


@pytest.fixture(scope="module")
def ctl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ctl") / "control.sock"


@pytest.fixture(scope="module", params=MODES)
def daemon(ctl: Path, request: pytest.FixtureRequest) -> Iterator[Daemon]:
    """Under every capture mode the kernel has (tests/capture.py): the hooks
    call the same evaluation, each from its own place."""
    d = Daemon("--control-socket", str(ctl), "--capture-mode", request.param)
    yield d
    assert d.stop() == 0, "".join(d.stderr)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 'network service' that spawns shells: a copy of bash under its own name."""
    d = tmp_path_factory.mktemp("svc")
    svc = d / "websvc"
    shutil.copy(BASH, svc)
    return svc


def _apply(ctl: Path, text: str) -> None:
    reply = control.request(ctl, {"op": "policy_apply", "documents": [["t.yaml", text]]})
    assert reply["ok"], reply


def _selected(d: Daemon, marker: str) -> list[Event]:
    d.sync()

    def ours(e: Event) -> bool:
        chain = [e.get("process") or {}, e.get("parent") or {}, *(e.get("ancestors") or [])]
        return bool(e.get("policy")) and any(marker in p.get("args", []) for p in chain)

    return d.matching(ours)


def test_parent_binary_selects_what_a_service_spawns(
    daemon: Daemon, ctl: Path, service: Path
) -> None:
    _apply(
        ctl,
        "policies:\n  - name: t-svc-child\n    rules:\n"
        f"      - {{event: exec, match: {{binary: [{TRUE}], parent_binary: [{service}]}}}}\n",
    )
    marker = new_marker("svc")
    subprocess.run([str(service), "-c", f"{TRUE} {marker}; exit 0"], check=True)
    caught = _selected(daemon, marker)
    assert [e["process"]["binary"] for e in caught] == [TRUE]
    assert caught[0]["parent"]["binary"] == str(service)
    marker = new_marker("plain")
    subprocess.run([BASH, "-c", f"{TRUE} {marker}; exit 0"], check=True)
    assert _selected(daemon, marker) == []


def test_ancestor_binary_selects_a_grandchild_and_not_a_stranger(
    daemon: Daemon, ctl: Path, service: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("x")
    _apply(
        ctl,
        "policies:\n  - name: t-svc-descendant\n    rules:\n"
        f"      - {{event: file_open, match: {{path: [{secret}], "
        f"ancestor_binary: {{prefix: [{service.parent}/]}}}}}}\n",
    )
    marker = new_marker("deep")
    # websvc -> bash -> bash -> cat: the service is the open's third ancestor.
    inner = f"{BASH} -c 'cat {secret} >/dev/null; exit 0'; exit 0"
    subprocess.run([str(service), "-c", f"{BASH} -c \"{inner}\"; exit 0", marker], check=True)
    caught = _selected(daemon, marker)
    assert [e["type"] for e in caught] == ["file_open"]
    assert caught[0]["policy"]["name"] == "t-svc-descendant"
    marker = new_marker("stranger")
    subprocess.run([BASH, "-c", f"cat {secret} >/dev/null; exit 0", marker], check=True)
    assert _selected(daemon, marker) == []


def test_euid_selects_a_process_whose_effective_uid_differs(
    daemon: Daemon, ctl: Path, tmp_path: Path
) -> None:
    target = tmp_path / "target"
    target.write_text("x")
    _apply(
        ctl,
        "policies:\n  - name: t-euid\n    rules:\n"
        f"      - {{event: file_open, match: {{path: [{target}], euid: [0], not_uid: [0]}}}}\n",
    )
    code = f"import os, sys\nos.setresuid(65534, 0, 0)\nopen({str(target)!r}).close()\n"
    marker = new_marker("setuid")
    subprocess.run([sys.executable, "-c", code, marker], check=True)
    caught = _selected(daemon, marker)
    assert [(e["process"]["uid"], e["process"]["euid"]) for e in caught] == [(65534, 0)]
    marker = new_marker("root")
    subprocess.run([sys.executable, "-c", f"open({str(target)!r}).close()", marker], check=True)
    assert _selected(daemon, marker) == []


def test_ancestor_binary_takes_no_suffix() -> None:
    with pytest.raises(PolicyError, match="ancestor_binary takes exact and prefix values"):
        parse_text(
            "policies:\n  - name: p\n    rules:\n      - event: exec\n"
            "        match: {ancestor_binary: {suffix: [/nginx]}}\n",
            "f.yaml",
        )


def test_globs_select_in_the_kernel_as_policy_glob_says(
    daemon: Daemon, ctl: Path, tmp_path: Path
) -> None:
    """Each path opened once: the kernel's verdict is policy/glob.py's, near misses included."""
    root = tmp_path / "g"
    globs = {
        "t-keys": f"{root}/home/*/.ssh/id_*",
        "t-cron": f"{root}/etc/cron*/**",
        "t-units": f"{root}/home/*/.config/systemd/user/*.service",
    }
    paths = [
        "home/alice/.ssh/id_rsa",
        "home/alice/.ssh/id_rsa.pub",  # still id_*: selected
        "home/alice/.ssh/known_hosts",
        "home/a/b/.ssh/id_rsa",  # * is one component
        "etc/cron.d/job",
        "etc/cron.daily/x/y",
        "etc/crontab",  # no component below
        "home/bob/.config/systemd/user/evil.service",
        "home/bob/.config/systemd/user/evil.timer",
    ]
    for rel in paths:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    doc = "policies:\n" + "".join(
        f"  - name: {name}\n    rules:\n      - event: file_open\n"
        f"        match: {{path: {{glob: [\"{g}\"]}}, not_path: {{glob: [\"{root}/**/*.pub\"]}}}}\n"
        for name, g in globs.items()
    )
    _apply(ctl, doc)
    marker = new_marker("glob")
    opens = "".join(f"open({str(root / rel)!r}).close()\n" for rel in paths)
    subprocess.run([sys.executable, "-c", opens, marker], check=True)
    got = {
        e["file_open"]["path"]: e["policy"]["name"]
        for e in _selected(daemon, marker)
        if e["type"] == "file_open"
    }
    want = {}
    for rel in paths:
        p = str(root / rel).encode()
        if glob.match(f"{root}/**/*.pub".encode(), p):
            continue
        for name, g in globs.items():
            if glob.match(g.encode(), p):
                want[str(root / rel)] = name
                break
    assert got == want
    assert set(want.values()) == set(globs)  # every glob selected something


@pytest.mark.parametrize(
    ("match", "problem"),
    [
        ('{path: {glob: ["/a**/b"]}}', "** must be a whole path component"),
        ('{path: {glob: ["home/*"]}}', "must be an absolute path"),
        ('{binary: {glob: ["/usr/*/sh"]}}', "globs are for file_open paths only"),
    ],
)
def test_bad_globs_are_refused(match: str, problem: str) -> None:
    with pytest.raises(PolicyError, match=None) as exc:
        rule = f"      - event: file_open\n        match: {match}\n"
        parse_text(f"policies:\n  - name: p\n    rules:\n{rule}", "f.yaml")
    assert problem in str(exc.value)
