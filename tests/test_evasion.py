"""Opens and connects that make no open/connect syscall, or make it through x86's 32-bit entry.

io_uring requests (IORING_OP_OPENAT, _OPENAT2, _CONNECT) and `int $0x80`
syscalls must be reported with the right process, selected by the same
policies and enforced like any other open or connect, in every capture
mode (tests/capture.py: tracepoint on the host, every variant in the
`make test-vm` guests). The hostile programs are C (tests/evasion/),
compiled here: Python can issue neither call.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Daemon, Event, new_marker
from factories import policy_json

from tracer import control

SOURCES = Path(__file__).resolve().parent / "evasion"
X86 = platform.machine() == "x86_64"

# The hook a selected open/connect reports, per capture mode; `via` is
# "io_uring" or "ia32".
_OPEN_HOOK = {
    "lsm": "lsm/file_open",
    "fentry": "fentry/security_file_open",
    "kprobe": "kprobe/security_file_open",
}
_CONNECT_HOOK = {
    "lsm": "lsm/socket_connect",
    "fentry": "fentry/security_socket_connect",
    "kprobe": "kprobe/security_socket_connect",
}
_FAILED_URING_OPEN_HOOK = {
    "lsm": "fexit/io_openat2",
    "fentry": "fexit/io_openat2",
    "kprobe": "kretprobe/io_openat2",
}


def open_hook(mode: str, via: str) -> str:
    if mode == "tracepoint":
        return "io_uring:tp_btf/io_uring_complete" if via == "io_uring" else "ia32:tp_btf/sys_exit"
    return f"{via}:{_OPEN_HOOK[mode]}"


def connect_hook(mode: str, via: str) -> str:
    if mode == "tracepoint":
        return (
            "io_uring:tp_btf/inet_sock_set_state" if via == "io_uring" else "ia32:tp_btf/sys_exit"
        )
    return f"{via}:{_CONNECT_HOOK[mode]}"


@pytest.fixture(scope="module")
def bins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.fail("the evasion tests compile their programs: install gcc")
    out = tmp_path_factory.mktemp("evasion-bin")
    built = {}
    for name in ("uring", "int80") if X86 else ("uring",):
        exe = out / name
        subprocess.run([cc, "-O2", "-Wall", "-o", str(exe), str(SOURCES / f"{name}.c")], check=True)
        built[name] = exe
    return built


@pytest.fixture(scope="module")
def ctl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ctl") / "control.sock"


@pytest.fixture(scope="module")
def edaemon(ctl: Path, mode: str, bins: dict[str, Path]) -> Iterator[Daemon]:
    d = Daemon("--control-socket", str(ctl), "--capture-mode", mode)
    yield d
    assert d.stop() == 0, "".join(d.stderr)


def apply(ctl: Path, *rules: str) -> None:
    """Replace the daemon's policies with one policy of these rules."""
    doc = "policies:\n  - name: t-evasion\n    rules:\n" + "".join(rules)
    reply = control.request(ctl, {"op": "policy_apply", "documents": [["evasion.yaml", doc]]})
    assert reply["ok"], reply


def rule(event: str, match: str, action: str = "post") -> str:
    return f"      - event: {event}\n        match: {match}\n        action: {action}\n"


def by_marker(kind: str, marker: str) -> Callable[[Event], bool]:
    return lambda e: e["type"] == kind and marker in e["process"]["args"]


def _run(argv: list[str | Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=60)


def _check_process(ev: Event, exe: Path, proc: subprocess.CompletedProcess[str]) -> None:
    assert ev["process"]["binary"] == str(exe)
    assert ev["parent"]["pid"] == os.getpid()  # the test started it
    assert ev["process"]["args"][0] == str(exe)


def _secret(tmp_path: Path) -> Path:
    """A unique file standing in for /etc/shadow."""
    p = tmp_path / f"shadow-{new_marker()}"
    p.write_text("TOPSECRET\n")
    return p


URING_OPENS = [
    pytest.param([], id="openat"),
    pytest.param(["openat2"], id="openat2"),
    pytest.param(["async"], id="openat-io-wq"),
    pytest.param(["openat2", "async"], id="openat2-io-wq"),
]


@pytest.mark.parametrize("how", URING_OPENS)
def test_io_uring_open_is_reported(
    edaemon: Daemon, ctl: Path, bins: dict[str, Path], tmp_path: Path, mode: str, how: list[str]
) -> None:
    secret = _secret(tmp_path)
    apply(ctl, rule("file_open", f'{{path: ["{secret}"]}}'))
    marker = new_marker()
    r = _run([bins["uring"], "open", secret, *how, marker])
    assert r.returncode == 0 and r.stdout == "TOPSECRET\n", r
    ev = edaemon.wait_for(by_marker("file_open", marker))
    _check_process(ev, bins["uring"], r)
    f = ev["file_open"]
    assert f["path"] == str(secret) and f["resolved"] is True
    assert f["flags"] == ["O_RDONLY"] and f["result"] >= 0
    assert f["hook"] == open_hook(mode, "io_uring")
    assert ev["policy"] == policy_json("t-evasion", 0, "post")
    edaemon.sync()
    assert len(edaemon.matching(by_marker("file_open", marker))) == 1


@pytest.mark.parametrize("how", URING_OPENS)
def test_io_uring_reader_is_killed_before_it_reads(
    edaemon: Daemon, ctl: Path, bins: dict[str, Path], tmp_path: Path, how: list[str]
) -> None:
    secret = _secret(tmp_path)
    apply(ctl, rule("file_open", f'{{path: ["{secret}"]}}', "sigkill"))
    marker = new_marker()
    r = _run([bins["uring"], "open", secret, *how, marker])
    assert r.returncode == -9, r
    assert r.stdout == ""
    ev = edaemon.wait_for(by_marker("file_open", marker))
    assert ev["policy"] == policy_json("t-evasion", 0, "sigkill")
    assert ev["file_open"]["path"] == str(secret)


@pytest.mark.parametrize("how", [[], ["async"]], ids=["inline", "io-wq"])
def test_io_uring_open_deny(
    edaemon: Daemon, ctl: Path, bins: dict[str, Path], tmp_path: Path, mode: str, how: list[str]
) -> None:
    """LSM refuses the request (the CQE says -EPERM) and the program lives
    on; the other modes kill it, as they do for deny on a syscall."""
    secret = _secret(tmp_path)
    apply(ctl, rule("file_open", f'{{path: ["{secret}"]}}', "deny"))
    marker = new_marker()
    r = _run([bins["uring"], "open", secret, *how, marker])
    assert "TOPSECRET" not in r.stdout
    ev = edaemon.wait_for(by_marker("file_open", marker))
    if mode == "lsm":
        assert r.returncode == 2 and r.stdout == "open failed: -1\n", r
        assert ev["policy"]["action"] == "deny"
        assert ev["file_open"]["result"] == -1 and ev["file_open"]["error"] == "EPERM"
        assert ev["file_open"]["path"] == str(secret)
    else:
        assert r.returncode == -9 and r.stdout == ""
        assert ev["policy"]["action"] == "sigkill"


@pytest.mark.parametrize("how", [[], ["async"]], ids=["inline", "io-wq"])
def test_io_uring_open_without_a_completion(
    edaemon: Daemon, ctl: Path, bins: dict[str, Path], tmp_path: Path, mode: str, how: list[str]
) -> None:
    """IOSQE_CQE_SKIP_SUCCESS and a read linked to the fd the open will
    get: no completion tells the program (or tracepoint mode) anything.
    Killed before the read's data reaches it, in every mode."""
    secret = _secret(tmp_path)
    apply(ctl, rule("file_open", f'{{path: ["{secret}"]}}', "sigkill"))
    marker = new_marker()
    r = _run([bins["uring"], "open", secret, "linked", *how, marker])
    assert r.returncode == -9 and r.stdout == "", r
    ev = edaemon.wait_for(by_marker("file_open", marker))
    assert ev["file_open"]["path"] == str(secret)
    assert ev["policy"]["action"] == "sigkill"
    if mode == "tracepoint":
        assert ev["file_open"]["hook"] in (
            "io_uring:tp_btf/io_uring_submit_req",
            "io_uring:tp_btf/io_uring_submit_sqe",
        )
        assert ev["file_open"]["result"] == -115 and ev["file_open"]["resolved"] is False
    else:
        assert ev["file_open"]["hook"] == open_hook(mode, "io_uring")


def test_io_uring_open_into_a_fixed_slot(
    edaemon: Daemon, ctl: Path, bins: dict[str, Path], tmp_path: Path, mode: str
) -> None:
    """A fixed-file open makes no fd: the security hooks still see the
    file. Tracepoint mode cannot report it (its start-up warning says so)
    but must not mistake the slot number for an fd."""
    secret = _secret(tmp_path)
    apply(ctl, rule("file_open", f'{{path: ["{secret}"]}}', "sigkill"))
    marker = new_marker()
    r = _run([bins["uring"], "open", secret, "fixed", marker])
    if mode == "tracepoint":
        assert r.returncode == 0 and r.stdout == "TOPSECRET\n", r
        edaemon.sync()
        assert edaemon.matching(by_marker("file_open", marker)) == []
        return
    assert r.returncode == -9 and r.stdout == "", r
    ev = edaemon.wait_for(by_marker("file_open", marker))
    assert ev["file_open"]["path"] == str(secret)
    assert ev["file_open"]["hook"] == open_hook(mode, "io_uring")


def test_failed_io_uring_open_is_reported_by_the_hook_modes(
    edaemon: Daemon, ctl: Path, bins: dict[str, Path], tmp_path: Path, mode: str
) -> None:
    if mode == "tracepoint":
        pytest.skip("tracepoint mode cannot name a failed io_uring open (start-up warning)")
    missing = tmp_path / f"missing-{new_marker()}"
    apply(ctl, rule("file_open", f'{{path: ["{missing}"]}}'))
    marker = new_marker()
    r = _run([bins["uring"], "open", missing, marker])
    assert r.returncode == 2 and r.stdout == "open failed: -2\n", r
    ev = edaemon.wait_for(by_marker("file_open", marker))
    f = ev["file_open"]
    assert f["path"] == str(missing) and f["resolved"] is False
    assert f["result"] == -2 and f["error"] == "ENOENT"
    assert f["hook"] == f"io_uring:{_FAILED_URING_OPEN_HOOK[mode]}"


def test_unselected_io_uring_open_is_not_reported(
    edaemon: Daemon, ctl: Path, bins: dict[str, Path], tmp_path: Path
) -> None:
    """A legitimate io_uring program is neither reported nor slowed by a
    kill: the rule names another file."""
    secret, other = _secret(tmp_path), _secret(tmp_path)
    apply(ctl, rule("file_open", f'{{path: ["{secret}"]}}', "sigkill"))
    marker = new_marker()
    r = _run([bins["uring"], "open", other, "async", marker])
    assert r.returncode == 0 and r.stdout == "TOPSECRET\n", r
    edaemon.sync()
    assert edaemon.matching(by_marker("file_open", marker)) == []


class _Listener:
    """A loopback TCP listener that records what arrives."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(5)
        self.port: int = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.accepted = 0
        self._t = threading.Thread(target=self._serve, daemon=True)
        self._t.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except (TimeoutError, OSError):
            return
        self.accepted += 1
        conn.settimeout(2)
        try:
            while chunk := conn.recv(1024):
                self.received.append(chunk)
        except (TimeoutError, OSError):
            pass
        conn.close()

    def close(self) -> bytes:
        self._t.join(8)
        self.sock.close()
        return b"".join(self.received)


@pytest.mark.parametrize("how", [[], ["async"]], ids=["inline", "io-wq"])
def test_io_uring_connect_is_reported(
    edaemon: Daemon, ctl: Path, bins: dict[str, Path], mode: str, how: list[str]
) -> None:
    srv = _Listener()
    apply(ctl, rule("connect", f'{{daddr: ["127.0.0.1/32"], dport: [{srv.port}]}}'))
    marker = new_marker()
    r = _run([bins["uring"], "connect", "127.0.0.1", str(srv.port), *how, marker])
    srv.close()
    assert r.returncode == 0 and r.stdout == "connect: 0\n", r
    ev = edaemon.wait_for(by_marker("connect", marker))
    _check_process(ev, bins["uring"], r)
    c = ev["connect"]
    assert c["daddr"] == "127.0.0.1" and c["dport"] == srv.port and c["protocol"] == "TCP"
    assert c["hook"] == connect_hook(mode, "io_uring")
    assert ev["policy"] == policy_json("t-evasion", 0, "post")
    # Two programs watch the SYN_SENT transition: only one may take it.
    edaemon.sync()
    seen = edaemon.matching(by_marker("connect", marker))
    assert len(seen) == 1, "\n".join(json.dumps(e["connect"]) for e in seen)


def test_io_uring_connect_sigkill(edaemon: Daemon, ctl: Path, bins: dict[str, Path]) -> None:
    srv = _Listener()
    apply(ctl, rule("connect", f'{{daddr: ["127.0.0.1/32"], dport: [{srv.port}]}}', "sigkill"))
    marker = new_marker()
    r = _run([bins["uring"], "connect", "127.0.0.1", str(srv.port), marker])
    srv.close()
    assert r.returncode == -9 and r.stdout == "", r
    ev = edaemon.wait_for(by_marker("connect", marker))
    assert ev["policy"]["action"] == "sigkill"


def test_io_uring_connect_deny(
    edaemon: Daemon, ctl: Path, bins: dict[str, Path], mode: str
) -> None:
    if mode != "lsm":
        pytest.skip("deny refuses only under BPF-LSM (elsewhere it is sigkill, tested above)")
    srv = _Listener()
    apply(ctl, rule("connect", f"{{dport: [{srv.port}]}}", "deny"))
    marker = new_marker()
    r = _run([bins["uring"], "connect", "127.0.0.1", str(srv.port), marker])
    srv.close()
    assert r.returncode == 0 and r.stdout == "connect: -1\n", r
    assert srv.accepted == 0
    ev = edaemon.wait_for(by_marker("connect", marker))
    assert ev["policy"]["action"] == "deny"
    assert ev["connect"]["result"] == -1 and ev["connect"]["error"] == "EPERM"


ia32 = pytest.mark.skipif(not X86, reason="the 32-bit entry is x86's")


@ia32
@pytest.mark.parametrize("call", ["open", "openat", "openat2"])
def test_ia32_open_is_reported(
    edaemon: Daemon, ctl: Path, bins: dict[str, Path], tmp_path: Path, mode: str, call: str
) -> None:
    secret = _secret(tmp_path)
    apply(ctl, rule("file_open", f'{{path: ["{secret}"]}}'))
    marker = new_marker()
    r = _run([bins["int80"], call, secret, marker])
    assert r.returncode == 0 and r.stdout == "TOPSECRET\n", r
    ev = edaemon.wait_for(by_marker("file_open", marker))
    _check_process(ev, bins["int80"], r)
    f = ev["file_open"]
    assert f["path"] == str(secret) and f["flags"] == ["O_RDONLY"] and f["result"] >= 0
    assert f["hook"] == open_hook(mode, "ia32")
    edaemon.sync()
    assert len(edaemon.matching(by_marker("file_open", marker))) == 1


@ia32
def test_ia32_creat_is_reported(
    edaemon: Daemon, ctl: Path, bins: dict[str, Path], tmp_path: Path, mode: str
) -> None:
    target = tmp_path / f"made-{new_marker()}"
    apply(ctl, rule("file_open", f'{{path: ["{target}"]}}'))
    marker = new_marker()
    r = _run([bins["int80"], "creat", target, marker])
    assert r.returncode == 0, r
    ev = edaemon.wait_for(by_marker("file_open", marker))
    f = ev["file_open"]
    assert f["path"] == str(target) and f["mode"] == 0o600
    assert {"O_WRONLY", "O_CREAT", "O_TRUNC"} <= set(f["flags"])
    assert f["hook"] == open_hook(mode, "ia32")


@ia32
@pytest.mark.parametrize("call", ["open", "openat", "openat2"])
def test_ia32_reader_is_killed_before_it_reads(
    edaemon: Daemon, ctl: Path, bins: dict[str, Path], tmp_path: Path, call: str
) -> None:
    secret = _secret(tmp_path)
    apply(ctl, rule("file_open", f'{{path: ["{secret}"]}}', "sigkill"))
    marker = new_marker()
    r = _run([bins["int80"], call, secret, marker])
    assert r.returncode == -9 and r.stdout == "", r
    ev = edaemon.wait_for(by_marker("file_open", marker))
    assert ev["policy"]["action"] == "sigkill"


@ia32
def test_ia32_open_deny(
    edaemon: Daemon, ctl: Path, bins: dict[str, Path], tmp_path: Path, mode: str
) -> None:
    secret = _secret(tmp_path)
    apply(ctl, rule("file_open", f'{{path: ["{secret}"]}}', "deny"))
    marker = new_marker()
    r = _run([bins["int80"], "openat", secret, marker])
    ev = edaemon.wait_for(by_marker("file_open", marker))
    if mode == "lsm":
        assert r.returncode == 2 and r.stdout == "open failed: -1\n", r
        assert ev["file_open"]["error"] == "EPERM" and ev["policy"]["action"] == "deny"
    else:
        assert r.returncode == -9 and r.stdout == "", r


@ia32
@pytest.mark.parametrize("call", ["connect", "socketcall"])
def test_ia32_connect_is_reported(
    edaemon: Daemon, ctl: Path, bins: dict[str, Path], mode: str, call: str
) -> None:
    srv = _Listener()
    apply(ctl, rule("connect", f'{{daddr: ["127.0.0.1/32"], dport: [{srv.port}]}}'))
    marker = new_marker()
    r = _run([bins["int80"], call, "127.0.0.1", str(srv.port), marker])
    assert srv.close() == b"PAYLOAD"
    assert r.returncode == 0 and r.stdout == "connect: 0\n", r
    ev = edaemon.wait_for(by_marker("connect", marker))
    _check_process(ev, bins["int80"], r)
    c = ev["connect"]
    assert c["daddr"] == "127.0.0.1" and c["dport"] == srv.port and c["result"] == 0
    assert c["hook"] == connect_hook(mode, "ia32")


@ia32
@pytest.mark.parametrize("call", ["connect", "socketcall"])
def test_ia32_connect_sigkill_sends_nothing(
    edaemon: Daemon, ctl: Path, bins: dict[str, Path], call: str
) -> None:
    srv = _Listener()
    apply(ctl, rule("connect", f'{{daddr: ["127.0.0.1/32"], dport: [{srv.port}]}}', "sigkill"))
    marker = new_marker()
    r = _run([bins["int80"], call, "127.0.0.1", str(srv.port), marker])
    assert srv.close() == b""
    assert r.returncode == -9 and r.stdout == "", r
    ev = edaemon.wait_for(by_marker("connect", marker))
    assert ev["policy"]["action"] == "sigkill"


@ia32
def test_ia32_connect_deny(edaemon: Daemon, ctl: Path, bins: dict[str, Path], mode: str) -> None:
    if mode != "lsm":
        pytest.skip("deny refuses only under BPF-LSM (elsewhere it is sigkill, tested above)")
    srv = _Listener()
    apply(ctl, rule("connect", f"{{dport: [{srv.port}]}}", "deny"))
    marker = new_marker()
    r = _run([bins["int80"], "socketcall", "127.0.0.1", str(srv.port), marker])
    assert srv.close() == b"" and srv.accepted == 0
    assert r.returncode == 0 and r.stdout == "connect: -1\n", r
    ev = edaemon.wait_for(by_marker("connect", marker))
    assert ev["connect"]["error"] == "EPERM" and ev["policy"]["action"] == "deny"


def test_the_start_up_warning_names_what_the_mode_cannot_see(edaemon: Daemon, mode: str) -> None:
    gap_lines = [ln for ln in edaemon.stderr if "cannot see every open and connect" in ln]
    if mode == "tracepoint":
        assert len(gap_lines) == 1 and "level='warning'" in gap_lines[0]
        assert "io_uring opens that fail" in gap_lines[0]
        assert "io_uring connects other than TCP" in gap_lines[0]
        assert "a chown to root is judged on the directory its name is in" in gap_lines[0]
    else:
        # The hooks judge io_uring and 32-bit calls like any other, and
        # resolve a chown's directory: left to name is at most a syscall
        # the kernel lacks (fchmodat2 before 6.6).
        assert len(gap_lines) <= 1, gap_lines
        assert not any("io_uring" in ln or "chown" in ln for ln in gap_lines), gap_lines
