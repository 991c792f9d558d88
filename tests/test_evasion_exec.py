"""Exec evasions on the real kernel: fileless and deleted binaries, a file
mounted over a binary's path, paths too deep for the walk, binary paths
longer than a policy string, and cgroups dressed up as another pod's.

Each hostile program runs for real; each test checks that the event names
the right process and parent, that the policies select it, and that a
sigkill rule stops it in the kernel. The daemon runs once per capture
mode under test (tests/capture.py): tracepoint on the host, every
variant in the `make test-vm` guests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Daemon, Event, new_marker
from test_policy_events import LIBRARY, must_apply, one_rule

from enrich import cgroup2_mount

PY = sys.executable
PY_BINARY = os.path.realpath(PY)
TRUE = os.path.realpath(shutil.which("true") or "/bin/true")
TOUCH = os.path.realpath(shutil.which("touch") or "/bin/touch")
CAT = os.path.realpath(shutil.which("cat") or "/bin/cat")
BASH = os.path.realpath(shutil.which("bash") or "/bin/bash")
GAP = "\u2026"  # the marker component of a path cut in the middle
PATH_DEPTH, PATH_LEAF = 64, 16
NOBODY = 65534
WALK_STEPS = 4096  # TR_WALK_STEPS  # TR_PATH_DEPTH, TR_PATH_LEAF


@pytest.fixture(scope="module")
def ctl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ctl") / "control.sock"


@pytest.fixture(scope="module")
def edaemon(ctl: Path, mode: str) -> Iterator[Daemon]:
    d = Daemon("--policy", str(LIBRARY), "--control-socket", str(ctl), "--capture-mode", mode)
    yield d
    assert d.stop() == 0, "".join(d.stderr)


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    """A directory under /tmp (exec-from-temp watches it), without symlinks."""
    return Path(os.path.realpath(tmp_path))


def exec_of(marker: str, binary: str | None = None) -> Callable[[Event], bool]:
    """The exec of the program under test (not of the python that set it up)."""

    def pred(e: Event) -> bool:
        if e["type"] != "process_exec":
            return False  # a `lost` event (another agent's storm) has no process
        p = e["process"]
        return (
            marker in p["args"]
            and p["binary"] != PY_BINARY
            and (binary is None or p["binary"] == binary)
        )

    return pred


def policy_of(ev: Event) -> dict[str, object]:
    """The rule that selected the event (the policy's metadata aside)."""
    return {k: ev["policy"][k] for k in ("name", "rule", "action")}


def mnt_ns() -> int:
    return os.stat("/proc/self/ns/mnt").st_ino


# -- fileless and deleted executables -------------------------------------------

# argv: marker, memfd name, file to copy in, how to exec, then the program's args.
MEMFD_EXEC = textwrap.dedent(
    """
    import ctypes, os, sys
    marker, name, src, how, *args = sys.argv[1:]
    fd = os.memfd_create(name, 0)
    os.write(fd, open(src, "rb").read())
    print(os.fstat(fd).st_ino, flush=True)
    argv = [os.path.basename(src), *args, marker]
    if how == "proc-fd":
        os.execv(f"/proc/self/fd/{fd}", argv)
    # execveat(fd, "", argv, envp, AT_EMPTY_PATH), not glibc's fexecve fallbacks
    nr = {"x86_64": 322, "aarch64": 281}[os.uname().machine]
    c_argv = (ctypes.c_char_p * (len(argv) + 1))(*[a.encode() for a in argv], None)
    c_envp = (ctypes.c_char_p * 1)(None)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall(nr, fd, b"", c_argv, c_envp, 0x1000)
    sys.exit(f"execveat: {os.strerror(ctypes.get_errno())}")
    """
)


def memfd_run(
    marker: str, name: str, src: str, how: str, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-c", MEMFD_EXEC, marker, name, src, how, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def memfd_dev() -> int:
    fd = os.memfd_create("t-dev")
    try:
        return os.fstat(fd).st_dev
    finally:
        os.close(fd)


@pytest.mark.parametrize("how", ["proc-fd", "execveat"])
def test_memfd_exec_is_named_as_the_kernel_names_it(edaemon: Daemon, how: str) -> None:
    marker = new_marker("memfd")
    name = f"t-{marker}"
    run = memfd_run(marker, name, TRUE, how)
    assert run.returncode == 0, run.stderr
    ev = edaemon.wait_for(exec_of(marker))
    p = ev["process"]
    assert p["binary"] == f"memfd:{name}"
    assert "memfd" in p["flags"] and "deleted" not in p["flags"]
    assert p["binary_dev"] == memfd_dev()
    assert p["binary_ino"] == run.stdout.split()[0]
    assert p["mnt_ns"] == mnt_ns()
    # The python that made the memfd exec'd itself away: its parent is us.
    assert ev["parent"]["pid"] == os.getpid()
    assert policy_of(ev) == {"name": "exec-from-temp", "rule": 0, "action": "post"}


def test_a_memfd_prefix_rule_kills_the_exec(edaemon: Daemon, ctl: Path, tmp: Path) -> None:
    marker = new_marker("memfd-kill")
    must_apply(
        ctl,
        tmp,
        one_rule(
            "t-memfd", "exec", f'{{binary: {{prefix: ["memfd:t-kill-{marker}"]}}}}', "sigkill"
        ),
    )
    witness = tmp / "created"
    run = memfd_run(marker, f"t-kill-{marker}-x", TOUCH, "execveat", str(witness), cwd=tmp)
    assert run.returncode == -9, run.stderr
    assert not witness.exists()
    ev = edaemon.wait_for(exec_of(marker))
    assert ev["process"]["binary"] == f"memfd:t-kill-{marker}-x"
    assert policy_of(ev) == {"name": "t-memfd", "rule": 0, "action": "sigkill"}


def test_a_memfd_process_is_selected_by_its_binary_on_open(
    edaemon: Daemon, ctl: Path, tmp: Path, mode: str
) -> None:
    secret = tmp / "secret"
    secret.write_text("TOPSECRET\n")
    marker = new_marker("memfd-cat")
    action = "deny" if mode == "lsm" else "sigkill"
    match = f'{{binary: {{prefix: ["memfd:t-cat-{marker}"]}}, path: ["{secret}"]}}'
    must_apply(ctl, tmp, one_rule("t-memfd-open", "file_open", match, action))
    run = memfd_run(marker, f"t-cat-{marker}", CAT, "proc-fd", str(secret))
    assert "TOPSECRET" not in run.stdout
    assert run.returncode == (1 if mode == "lsm" else -9), run.stderr
    ev = edaemon.wait_for(lambda e: e["type"] == "file_open" and marker in e["process"]["args"])
    assert ev["process"]["binary"] == f"memfd:t-cat-{marker}"
    assert policy_of(ev) == {"name": "t-memfd-open", "rule": 0, "action": action}


def test_a_binary_unlinked_before_its_exec_is_flagged(edaemon: Daemon, tmp: Path) -> None:
    evil = tmp / "evil"
    shutil.copy(TRUE, evil)
    ino = evil.stat().st_ino
    marker = new_marker("del")
    code = (
        "import os, sys\nfd = os.open(sys.argv[2], os.O_RDONLY)\nos.unlink(sys.argv[2])\n"
        "os.execve(fd, ['evil', sys.argv[1]], {})\n"
    )
    run = subprocess.run([PY, "-c", code, marker, str(evil)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    ev = edaemon.wait_for(exec_of(marker))
    p = ev["process"]
    assert p["binary"] == str(evil)
    assert "deleted" in p["flags"] and "memfd" not in p["flags"]
    assert p["binary_ino"] == str(ino)
    assert ev["parent"]["pid"] == os.getpid()
    # /tmp: exec-from-temp selects it like any other
    assert policy_of(ev) == {"name": "exec-from-temp", "rule": 0, "action": "post"}


def test_a_binary_unlinked_after_its_exec_is_flagged_from_then_on(
    edaemon: Daemon, ctl: Path, tmp: Path
) -> None:
    sh = tmp / "sh"
    shutil.copy(BASH, sh)
    secret = tmp / "watched"
    secret.write_text("x\n")
    must_apply(ctl, tmp, one_rule("t-watched", "file_open", f'{{path: ["{secret}"]}}'))
    marker = new_marker("del-after")
    proc = subprocess.Popen(
        [str(sh), "-c", 'read -r _; exec 3< "$1"; exit 0', marker, str(secret)],
        stdin=subprocess.PIPE,
    )
    try:
        ex = edaemon.wait_for(exec_of(marker))
        assert "deleted" not in ex["process"]["flags"]
        sh.unlink()
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.close()
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    op = edaemon.wait_for(lambda e: e["type"] == "file_open" and marker in e["process"]["args"])
    assert op["process"]["pid"] == proc.pid
    assert op["process"]["binary"] == str(sh)
    assert "deleted" in op["process"]["flags"]
    assert op["parent"]["pid"] == os.getpid()
    gone = edaemon.wait_for(
        lambda e: e["type"] == "process_exit" and marker in e["process"]["args"]
    )
    assert "deleted" in gone["process"]["flags"]


def test_a_file_mounted_over_a_binary_has_its_own_identity(edaemon: Daemon) -> None:
    """Same path, other file: an unprivileged user binds a file of its own
    over `true` in a user and mount namespace of its own; dev, inode and
    mount namespace tell the two apart."""
    d = Path(tempfile.mkdtemp(prefix="tracer-overmount-", dir="/tmp"))
    try:
        os.chmod(d, 0o755)
        os.chown(d, NOBODY, NOBODY)
        evil = d / "evil"
        shutil.copy(TOUCH, evil)
        witness = d / "created"
        marker = new_marker("overmount")
        run = subprocess.run(
            [
                *("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"),
                *("unshare", "-Urm", "--propagation", "private"),
                *("sh", "-c", 'mount --bind "$1" "$2" && exec "$2" "$3" "$4"', "sh"),
                *(str(evil), TRUE, str(witness), marker),
            ],
            capture_output=True,
            text=True,
            cwd=d,  # touch makes the marker too
        )
        assert run.returncode == 0, run.stderr
        assert witness.exists()  # it was touch that ran, under true's name
        # The device of the file system each file is on: on overlayfs
        # stat() gives a non-directory its layer's st_dev, the directory the
        # overlay's, which is the superblock the kernel (and binary_dev) has.
        st = (d.stat().st_dev, str(evil.stat().st_ino))
        real = (Path(TRUE).parent.stat().st_dev, str(os.stat(TRUE).st_ino))
    finally:
        shutil.rmtree(d)
    ev = edaemon.wait_for(exec_of(marker, TRUE))
    p = ev["process"]
    assert p["binary"] == TRUE and p["uid"] == NOBODY
    assert (p["binary_dev"], p["binary_ino"]) == st
    assert (p["binary_dev"], p["binary_ino"]) != real
    assert p["mnt_ns"] != mnt_ns()
    # setpriv, unshare and sh each exec'd the next in place: the parent is us
    assert ev["parent"]["pid"] == os.getpid()


# -- deep paths ---------------------------------------------------------------------


def deep_dir(root: Path, depth: int = 70) -> Path:
    d = root.joinpath(*(f"d{i}" for i in range(depth)))
    d.mkdir(parents=True)
    return d


def reported(path: Path) -> str:
    """How a path with more components than the walk keeps is reported."""
    parts = path.parts[1:]
    if len(parts) <= PATH_DEPTH:
        return str(path)
    ring = PATH_DEPTH - PATH_LEAF
    return "/" + "/".join((*parts[:ring], GAP, *parts[-PATH_LEAF:]))


@pytest.mark.parametrize("depth", [70, 400])
def test_a_deep_binary_keeps_its_root_side_and_exec_from_temp_sees_it(
    edaemon: Daemon, tmp: Path, depth: int
) -> None:
    """70 directories: more than the walk keeps; 400: more steps than it
    took to find the root before (128)."""
    sh = deep_dir(tmp / "deep", depth) / "sh"
    shutil.copy(TRUE, sh)
    marker = new_marker("deep")
    subprocess.run([str(sh), marker], check=True)
    ev = edaemon.wait_for(exec_of(marker))
    p = ev["process"]
    assert p["binary"] == reported(sh)
    assert p["binary"].startswith(str(tmp / "deep" / "d0" / "d1") + "/")
    assert p["binary"].endswith(f"/{GAP}/" + "/".join(sh.parts[-PATH_LEAF:]))
    assert "truncated_path" in p["flags"]
    assert ev["parent"]["pid"] == os.getpid()
    assert policy_of(ev) == {"name": "exec-from-temp", "rule": 0, "action": "post"}


@pytest.mark.skipif(
    bool(os.environ.get("TRACER_IN_VM")),
    reason="the same walk in every mode; 4096 nested mkdirs take minutes under emulation",
)
def test_a_path_deeper_than_the_walk_goes_is_not_anchored_at_the_root(
    edaemon: Daemon, tmp: Path
) -> None:
    """Past TR_WALK_STEPS the root is not found: the path starts with the
    gap marker, not with some component that would pass for the root's."""
    top = tmp / "deeper"
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(WALK_STEPS + 10):  # relative, one level at a time: no PATH_MAX
            os.mkdir("a", dir_fd=fd)
            nfd = os.open("a", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        with open(os.open("sh", os.O_WRONLY | os.O_CREAT, 0o755, dir_fd=fd), "wb") as f:
            f.write(Path(TRUE).read_bytes())
        marker = new_marker("deeper")
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child execs or exits
            try:
                os.fchdir(fd)
                os.execv("./sh", ["sh", marker])
            finally:
                os._exit(127)
        assert os.waitpid(pid, 0)[1] == 0
    finally:
        os.close(fd)
        subprocess.run(["rm", "-rf", str(top)], check=True)  # rmtree recurses per level
    ev = edaemon.wait_for(exec_of(marker))
    p = ev["process"]
    assert p["binary"].startswith(f"/{GAP}/a/a/") and p["binary"].endswith("/a/a/sh")
    assert p["cwd"].startswith(f"/{GAP}/a/a/")
    assert "truncated_path" in p["flags"]
    assert ev["parent"]["pid"] == os.getpid()
    assert "policy" not in ev  # no prefix of /tmp/ could be told


def test_a_prefix_rule_kills_a_deep_exec(edaemon: Daemon, ctl: Path, tmp: Path) -> None:
    root = tmp / new_marker("deepkill")
    sh = deep_dir(root) / "sh"
    shutil.copy(TOUCH, sh)
    must_apply(
        ctl, tmp, one_rule("t-deep", "exec", f'{{binary: {{prefix: ["{root}/"]}}}}', "sigkill")
    )
    witness = tmp / "created"
    marker = new_marker()
    r = subprocess.run([str(sh), str(witness), marker], cwd=tmp)
    assert r.returncode == -9
    assert not witness.exists()
    ev = edaemon.wait_for(exec_of(marker))
    assert ev["process"]["binary"] == reported(sh)
    assert policy_of(ev) == {"name": "t-deep", "rule": 0, "action": "sigkill"}


def test_a_prefix_rule_stops_a_deep_open(edaemon: Daemon, ctl: Path, tmp: Path, mode: str) -> None:
    root = tmp / new_marker("deepopen")
    secret = deep_dir(root) / "secret"
    secret.write_text("TOPSECRET\n")
    action = "deny" if mode == "lsm" else "sigkill"
    must_apply(
        ctl, tmp, one_rule("t-deep-open", "file_open", f'{{path: {{prefix: ["{root}/"]}}}}', action)
    )
    marker = new_marker()
    r = subprocess.run([CAT, str(secret), marker], capture_output=True, text=True)
    assert "TOPSECRET" not in r.stdout
    assert r.returncode == (1 if mode == "lsm" else -9)
    ev = edaemon.wait_for(lambda e: e["type"] == "file_open" and marker in e["process"]["args"])
    f = ev["file_open"]
    if mode == "lsm":  # refused: no file was opened, the path is the name asked for
        assert (f["path"], f["resolved"], f["truncated"]) == (str(secret), False, False)
        assert f["error"] == "EPERM"
    else:
        assert (f["path"], f["resolved"], f["truncated"]) == (reported(secret), True, True)
    assert ev["process"]["binary"] == CAT
    assert policy_of(ev) == {"name": "t-deep-open", "rule": 0, "action": action}


def test_a_suffix_rule_on_a_binary_path_longer_than_a_policy_string(
    edaemon: Daemon, ctl: Path, tmp: Path
) -> None:
    """The kernel keeps the first 252 bytes of each process's binary for
    file and connect rules; a suffix selector needs the last ones."""
    marker = new_marker("long")
    d = tmp / ("L" * 200) / ("M" * 60)
    d.mkdir(parents=True)
    ours, other = d / f"cat-{marker}", d / f"dog-{marker}"
    shutil.copy(CAT, ours)
    shutil.copy(CAT, other)
    assert len(str(ours)) > 252
    secret = tmp / "secret"
    secret.write_text("x\n")
    must_apply(
        ctl,
        tmp,
        one_rule(
            "t-long", "file_open", f'{{binary: {{suffix: ["/cat-{marker}"]}}, path: ["{secret}"]}}'
        ),
    )
    # cat then fails on the marker, a file that does not exist: exit 1
    subprocess.run([str(other), str(secret), marker + "-other"], capture_output=True)
    subprocess.run([str(ours), str(secret), marker], capture_output=True)
    ev = edaemon.wait_for(lambda e: e["type"] == "file_open" and marker in e["process"]["args"])
    assert ev["process"]["binary"] == str(ours)
    assert policy_of(ev) == {"name": "t-long", "rule": 0, "action": "post"}
    edaemon.sync()
    assert (
        edaemon.matching(
            lambda e: e["type"] == "file_open" and marker + "-other" in e["process"]["args"]
        )
        == []
    )


# -- spoofed container identity ----------------------------------------------------------


class DelegatedSubtree:
    """A cgroup subtree delegated to an unprivileged user (as systemd does
    for user@UID.service), in which that user builds a kubelet-shaped
    hierarchy of its own: pod uid and container id of someone else's."""

    def __init__(self, uid: int = NOBODY) -> None:
        mount = cgroup2_mount()
        assert mount is not None
        self.top = Path(mount) / f"tracer-test-{uuid.uuid4().hex[:10]}"
        self.top.mkdir()
        self.delegated = self.top / f"user@{uid}.service"
        self.delegated.mkdir()
        for f in (
            self.delegated,
            *(
                self.delegated / n
                for n in ("cgroup.procs", "cgroup.subtree_control", "cgroup.threads")
            ),
        ):
            os.chown(f, uid, -1)
        self.pod_uid = str(uuid.uuid4())
        self.container_id = uuid.uuid4().hex + uuid.uuid4().hex
        u = self.pod_uid.replace("-", "_")
        self.leaf = self.delegated.joinpath(
            "kubepods.slice",
            "kubepods-burstable.slice",
            f"kubepods-burstable-pod{u}.slice",
            f"cri-containerd-{self.container_id}.scope",
        )
        subprocess.run(["mkdir", "-p", str(self.leaf)], user=uid, check=True)

    def run(self, *argv: str) -> int:
        proc = subprocess.Popen(
            ["sh", "-c", 'read -r _; exec "$@"', "sh", *argv], stdin=subprocess.PIPE
        )
        (self.leaf / "cgroup.procs").write_text(f"{proc.pid}\n")
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.close()
        return proc.wait(10)

    def remove(self) -> None:
        d = self.leaf
        while d != self.top.parent:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
            d = d.parent


def test_a_user_delegated_kubelet_layout_is_not_a_container(edaemon: Daemon) -> None:
    sub = DelegatedSubtree()
    marker = new_marker("spoof")
    cgroup_id = os.stat(sub.leaf).st_ino
    try:
        assert sub.run(TRUE, marker) == 0
        ev = edaemon.wait_for(exec_of(marker, TRUE))
    finally:
        sub.remove()
    p = ev["process"]
    assert p["cgroup_id"] == str(cgroup_id)
    assert "container" not in p and "pod" not in p


# -- processes that were running before the daemon: the /proc snapshot -----------


def _wait_exec(proc: subprocess.Popen[bytes], binary: str) -> None:
    """Until proc runs `binary` (its python has exec'd it)."""
    deadline = time.monotonic() + 120  # python and a memfd copy of bash: slow when emulated
    while time.monotonic() < deadline:
        try:
            if os.readlink(f"/proc/{proc.pid}/exe").startswith(binary):
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"{proc.pid} never ran {binary}")


def test_the_proc_snapshot_names_memfd_and_deleted_binaries_as_exec_events_do(
    tmp: Path,
) -> None:
    from enrich.procfs import read_process

    marker = new_marker("snap")
    # bash -c 'read -r _' MARKER: waits on stdin; the marker is its $0
    fileless = subprocess.Popen(
        [PY, "-c", MEMFD_EXEC, marker, f"t-{marker}", BASH, "proc-fd", "-c", "read -r _"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    gone = tmp / "gone"
    shutil.copy(BASH, gone)
    deleted = subprocess.Popen([str(gone), "-c", "read -r _", marker], stdin=subprocess.PIPE)
    try:
        _wait_exec(fileless, f"/memfd:t-{marker}")
        _wait_exec(deleted, str(gone))
        ino = gone.stat().st_ino
        gone.unlink()
        assert fileless.stdout is not None
        memfd_ino = int(fileless.stdout.readline())
        p = read_process(fileless.pid)
        assert p.binary == f"memfd:t-{marker}".encode()
        assert p.binary_flags == ("memfd",)
        assert (p.binary_dev, p.binary_ino) == (memfd_dev(), memfd_ino)
        assert p.mnt_ns == mnt_ns()
        q = read_process(deleted.pid)
        assert q.binary == str(gone).encode()
        assert q.binary_flags == ("deleted",)
        assert q.binary_ino == ino
        me = read_process(os.getpid())
        assert me.binary_flags == () and me.binary == PY_BINARY.encode()
        assert me.binary_ino == os.stat(PY_BINARY).st_ino
    finally:
        for proc in (fileless, deleted):
            proc.kill()
            proc.wait()
