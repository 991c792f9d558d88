"""The default policy library on the real kernel: each policy catches what it is for,
and a near miss (the same file read instead of written, a public key, loopback) does not."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, Daemon, Event, new_marker

from policy import parse_files

pytestmark = pytest.mark.kernel

LIBRARY = REPO / "policy" / "library"
POLICIES = {p.name: p for p in parse_files([LIBRARY]).policies}


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    d = Daemon("--policy", str(LIBRARY))
    yield d
    assert d.stop() == 0, "".join(d.stderr)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's home with the files the library watches, public halves included."""
    h = tmp_path_factory.mktemp("home") / "alice"
    for rel in (
        ".ssh/id_ed25519", ".ssh/id_ed25519.pub", ".ssh/authorized_keys", ".aws/credentials",
        ".aws/config", ".kube/config", ".kube/cache/discovery", ".bashrc",
    ):
        (h / rel).parent.mkdir(parents=True, exist_ok=True)
        (h / rel).write_text("x\n")
    return h


def _read(path: Path | str) -> str:
    return f"try:\n    open({str(path)!r}).close()\nexcept OSError:\n    pass\n"


def _write(path: Path | str) -> str:
    # O_WRONLY without O_CREAT, nothing written: a file that exists is left as
    # it is; one that does not fails with ENOENT, which the kernel judges too.
    return (
        f"try:\n    os.close(os.open({str(path)!r}, os.O_WRONLY | os.O_APPEND))\n"
        "except OSError:\n    pass\n"
    )


def _run(script: str) -> str:
    marker = new_marker("lib")
    subprocess.run([sys.executable, "-c", "import os, socket, subprocess\n" + script, marker],
                   check=True)
    return marker


def _selected(daemon: Daemon, marker: str) -> list[Event]:
    daemon.sync()

    def ours(e: Event) -> bool:
        chain = [e.get("process") or {}, e.get("parent") or {}]
        return bool(e.get("policy")) and any(marker in p.get("args", []) for p in chain)

    return daemon.matching(ours)


def _policy_of(events: list[Event]) -> set[str]:
    return {e["policy"]["name"] for e in events}


def _cases(home: Path) -> dict[str, tuple[str, str]]:
    """policy -> (workload it must catch, near miss it must let pass)."""
    unit = f"/etc/systemd/system/tracer-test-{os.getpid()}.service"
    return {
        "credential-files": (_read("/etc/shadow"), _read("/etc/passwd")),
        "sudoers-read": (_read("/etc/sudoers"), _read("/etc/sudo.conf")),
        "ssh-private-keys": (_read(home / ".ssh/id_ed25519"), _read(home / ".ssh/id_ed25519.pub")),
        "cloud-credentials": (_read(home / ".aws/credentials"), _read(home / ".aws/config")),
        "kubernetes-credentials": (_read(home / ".kube/config"),
                                   _read(home / ".kube/cache/discovery")),
        "cron-writes": (_write("/etc/crontab"), _read("/etc/crontab")),
        "systemd-unit-writes": (_write(unit), _read("/etc/systemd/system.conf")),
        "init-script-writes": (_write("/etc/init.d/tracer-test-none"), _read("/etc/init.d/")),
        "preload-writes": (_write("/etc/ld.so.preload"), _read("/etc/ld.so.cache")),
        "shell-profile-writes": (_write(home / ".bashrc"), _read(home / ".bashrc")),
        "authorized-keys-writes": (_write(home / ".ssh/authorized_keys"),
                                   _read(home / ".ssh/authorized_keys")),
    }


def test_every_policy_has_a_case(home: Path) -> None:
    covered = {*_cases(home), *_NOT_FILES}
    assert covered == set(POLICIES)


_NOT_FILES = {
    "exec-from-temp",
    "outbound-connections",
    "service-shells",
    "setid-file-changes",
    "root-from-non-root",
}


@pytest.mark.parametrize("policy", sorted(set(POLICIES) - _NOT_FILES))
def test_a_file_policy_catches_its_case_and_not_the_near_miss(
    daemon: Daemon, home: Path, policy: str
) -> None:
    catch, near = _cases(home)[policy]
    caught = _selected(daemon, _run(catch))
    assert _policy_of(caught) == {policy}, caught
    p = POLICIES[policy]
    assert caught[0]["policy"]["severity"] == p.severity.value
    assert caught[0]["policy"]["tags"] == list(p.tags)
    assert caught[0]["policy"]["message"] == p.message
    assert _selected(daemon, _run(near)) == []


def test_a_users_own_systemd_unit_is_a_persistence_write(daemon: Daemon) -> None:
    """The glob: any home's ~/.config/systemd/user (the open fails: nothing is written)."""
    unit = f"/home/tracer-test-{os.getpid()}/.config/systemd/user/evil.service"
    caught = _selected(daemon, _run(_write(unit)))
    assert _policy_of(caught) == {"systemd-unit-writes"}
    assert caught[0]["file_open"]["path"] == unit
    near = f"/home/tracer-test-{os.getpid()}/.config/systemd/evil.service"
    assert _selected(daemon, _run(_write(near))) == []


def test_exec_from_temp(daemon: Daemon, tmp_path: Path) -> None:
    dropped = Path("/tmp") / new_marker("drop")
    dropped.mkdir()
    try:
        shutil.copy(os.path.realpath(shutil.which("true") or "/bin/true"), dropped / "payload")
        caught = _selected(daemon, _run(f"subprocess.run([{str(dropped / 'payload')!r}])"))
        assert _policy_of(caught) == {"exec-from-temp"}
        assert caught[0]["process"]["binary"] == str(dropped / "payload")
    finally:
        shutil.rmtree(dropped)
    assert _selected(daemon, _run("subprocess.run(['/bin/true'])")) == []


def test_outbound_connections(daemon: Daemon) -> None:
    """A non-loopback peer in a network namespace of the test's own (nothing leaves it)."""
    connect = textwrap.dedent("""
        s = socket.socket()
        s.settimeout(2)
        try:
            s.connect((ADDR, 9))
        except OSError:
            pass
    """)
    # On the namespace's own loopback device, but not a loopback address.
    setup = "ip link set lo up && ip addr add 10.250.0.1/32 dev lo"
    marker = new_marker("out")
    script = "import socket\n" + connect.replace("ADDR", "'10.250.0.1'")
    subprocess.run(["unshare", "-n", "sh", "-c", f'{setup} && exec "$0" -c "$1" "$2"',
                    sys.executable, script, marker], check=True)
    caught = _selected(daemon, marker)
    assert _policy_of(caught) == {"outbound-connections"}
    assert caught[0]["connect"]["daddr"] == "10.250.0.1"
    assert _selected(daemon, _run(connect.replace("ADDR", "'127.0.0.1'"))) == []


def test_service_shells(daemon: Daemon, tmp_path: Path) -> None:
    """A shell whose parent is a web server; the same shell from an ordinary one is not."""
    nginx = tmp_path / "nginx"
    shutil.copy(os.path.realpath(shutil.which("bash") or "/bin/bash"), nginx)
    marker = new_marker("websh")
    subprocess.run([str(nginx), "-c", "/bin/sh -c 'exit 0'; exit 0", marker], check=True)
    # (nginx itself runs from the test's temporary directory: exec-from-temp's.)
    shells = [e for e in _selected(daemon, marker) if e["process"]["binary"] != str(nginx)]
    assert _policy_of(shells) == {"service-shells"}
    assert shells[0]["parent"]["binary"] == str(nginx)
    marker = new_marker("plainsh")
    subprocess.run(["bash", "-c", "/bin/sh -c 'exit 0'; exit 0", marker], check=True)
    assert _selected(daemon, marker) == []


@pytest.fixture()
def shared_dir() -> Iterator[Path]:
    """A directory under /tmp that user nobody can enter (pytest's tmp_path is 0700)."""
    d = Path("/tmp") / new_marker("lib")
    d.mkdir()
    d.chmod(0o755)
    yield d
    shutil.rmtree(d)


def test_setid_file_changes(daemon: Daemon, shared_dir: Path) -> None:
    f = shared_dir / "payload"
    f.write_text("x")
    caught = _selected(daemon, _run(f"os.chmod({str(f)!r}, 0o4755)"))
    assert _policy_of(caught) == {"setid-file-changes"}
    assert caught[0]["file_attr"]["mode"] == 0o4755
    assert caught[0]["policy"]["tags"] == ["T1548.001", "privilege-escalation"]
    assert _selected(daemon, _run(f"os.chmod({str(f)!r}, 0o755)")) == []


_AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def test_root_from_non_root(daemon: Daemon, shared_dir: Path) -> None:
    """A user's set-uid-root copy of a program; an expected set-uid program is not."""
    exe = shared_dir / "rootme"
    shutil.copy(os.path.realpath(shutil.which("true") or "/bin/true"), exe)
    exe.chmod(0o4755)
    marker = new_marker("root")
    subprocess.run([*_AS_NOBODY, str(exe), marker], check=True)
    # (It runs from /tmp: exec-from-temp's too.)
    caught = [e for e in _selected(daemon, marker) if e["type"] == "privilege_change"]
    assert _policy_of(caught) == {"root-from-non-root"}
    assert caught[0]["privilege_change"]["to_root"]
    assert caught[0]["process"]["binary"] == str(exe)
    passwd = shutil.which("passwd")
    if passwd is None or not os.stat(passwd).st_mode & 0o4000:
        pytest.skip("no set-uid passwd for the near miss")
    marker = new_marker("passwd")
    subprocess.run([*_AS_NOBODY, passwd, "--help", marker], check=False, capture_output=True)
    assert _selected(daemon, marker) == []
