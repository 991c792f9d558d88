"""privilege_change and file_attr events on the real kernel.

Every workload is a real process making the real calls (Python's os
module, ctypes where it has no wrapper, a C program for the 32-bit entry);
the events are the daemon's JSON lines.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import shutil
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from capture import MODES
from conftest import REPO, Daemon, Event, is_exec, new_marker

pytestmark = pytest.mark.kernel

X86 = platform.machine() == "x86_64"
NOBODY = 65534
SETPRIV = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
# capget/capset through ctypes: Python's os module has neither.
_CAPS = textwrap.dedent("""
    import ctypes, os
    libc = ctypes.CDLL(None, use_errno=True)
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]
    def raise_effective(*caps):
        h, d = Header(0x20080522, 0), (Data * 2)()
        assert libc.capget(ctypes.byref(h), d) == 0
        for c in caps:
            d[c // 32].effective |= 1 << (c % 32)
        assert libc.capset(ctypes.byref(h), d) == 0, ctypes.get_errno()
    PR_SET_KEEPCAPS = 8
""")


# The privilege_change programs and file_attr's chmod are syscall
# tracepoints, the same programs in every capture mode: their tests run in
# one (per kernel, in the make test-vm guests). A chown's directory comes
# from the mode's path security hook, and 32-bit calls reach the raw
# sys_exit program each mode loads (tracepoint mode's also takes opens and
# connects): those tests run in every mode.
ONCE = "tracepoint" if "tracepoint" in MODES else MODES[0]
# The hook a chown to root by name reports, per capture mode.
CHOWN_HOOK = {
    "lsm": "lsm/path_chown",
    "fentry": "fentry/security_path_chown",
    "kprobe": "kprobe/security_path_chown",
    "tracepoint": "tracepoint/sys_exit",
}


@pytest.fixture(scope="module")
def daemon(mode: str) -> Iterator[Daemon]:
    d = Daemon("--capture-mode", mode)
    yield d
    assert d.stop() == 0, "".join(d.stderr)


@pytest.fixture()
def once(mode: str) -> None:
    if mode != ONCE:
        pytest.skip(f"the same tracepoint programs in every capture mode: run under {ONCE}")


@pytest.fixture()
def shared_dir() -> Iterator[Path]:
    """A directory under /tmp that user nobody can enter (pytest's tmp_path is 0700)."""
    d = Path("/tmp") / new_marker("priv")
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    yield d
    shutil.rmtree(d)


def _python(script: str, marker: str, prefix: tuple[str, ...] = ()) -> None:
    subprocess.run([*prefix, sys.executable, "-c", "import os\n" + script, marker], check=True)


def _events(daemon: Daemon, kind: str, marker: str) -> list[Event]:
    daemon.sync()
    return daemon.matching(
        lambda e: e.get("type") == kind and marker in (e.get("process") or {}).get("args", [])
    )


def _ops(events: list[Event]) -> list[str]:
    return [e["privilege_change"]["op"] for e in events]


def test_setresuid_reports_old_and_new_credentials(daemon: Daemon, once: None) -> None:
    marker = new_marker("setres")
    _python(
        f"os.setresgid({NOBODY}, {NOBODY}, {NOBODY})\nos.setresuid({NOBODY}, {NOBODY}, {NOBODY})",
        marker,
    )
    evs = _events(daemon, "privilege_change", marker)
    assert _ops(evs) == ["setresgid", "setresuid"]
    gid, uid = (e["privilege_change"] for e in evs)
    assert gid["old"]["gid"] == 0 and gid["new"]["gid"] == NOBODY
    assert gid["changed"] == ["gid", "egid", "sgid", "fsgid"]
    assert gid["new"]["cap_effective"] == []  # unchanged sets are not named
    assert uid["old"]["uid"] == 0 and uid["new"]["uid"] == NOBODY
    assert uid["new"]["euid"] == uid["new"]["suid"] == uid["new"]["fsuid"] == NOBODY
    # Leaving uid 0 clears the capability sets: named where they changed.
    assert {"uid", "euid", "suid", "fsuid", "cap_permitted", "cap_effective"} <= set(uid["changed"])
    assert "CAP_SETUID" in uid["old"]["cap_effective"]
    assert uid["new"]["cap_effective"] == []
    assert not uid["to_root"]
    assert uid["hook"] == "tracepoint/sys_exit"
    # The event's process is as the call left it.
    assert evs[1]["process"]["uid"] == evs[1]["process"]["euid"] == NOBODY


def test_a_call_that_changes_nothing_or_fails_is_not_reported(daemon: Daemon, once: None) -> None:
    marker = new_marker("nochange")
    _python(
        "os.setresuid(0, 0, 0)\n"  # root to root: nothing changes
        f"os.setresuid({NOBODY}, {NOBODY}, {NOBODY})\n"
        "try:\n    os.setuid(0)\nexcept PermissionError:\n    pass\n",
        marker,
    )
    assert _ops(_events(daemon, "privilege_change", marker)) == ["setresuid"]


def test_capset_and_a_setuid_to_root_from_non_root(daemon: Daemon, once: None) -> None:
    """A process that kept CAP_SETUID past its setresuid (a leaked capability) and uses it."""
    marker = new_marker("toroot")
    _python(
        _CAPS
        + "libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0)\n"
        + f"os.setresuid({NOBODY}, {NOBODY}, {NOBODY})\n"
        + "raise_effective(7)\n"  # CAP_SETUID
        + "os.setuid(0)\n",
        marker,
    )
    evs = _events(daemon, "privilege_change", marker)
    assert _ops(evs) == ["setresuid", "capset", "setuid"]
    down, capset, up = (e["privilege_change"] for e in evs)
    assert not down["to_root"]
    assert capset["changed"] == ["cap_effective"]
    assert capset["old"]["cap_effective"] == [] and capset["new"]["cap_effective"] == ["CAP_SETUID"]
    assert up["to_root"]
    assert up["old"]["uid"] == up["old"]["suid"] == NOBODY
    assert up["new"]["uid"] == up["new"]["euid"] == 0


def _setuid_copy(directory: Path, mode: int) -> Path:
    exe = directory / "true-copy"
    shutil.copy(os.path.realpath(shutil.which("true") or "/bin/true"), exe)
    os.chown(exe, 0, 0)
    exe.chmod(mode)
    return exe


def _as_nobody(*argv: str) -> None:
    """Run argv as nobody, switched in the forked child before the exec (the
    child's set*id calls are pytest's: its argv has no marker)."""
    subprocess.run(argv, check=True, user=NOBODY, group=NOBODY, extra_groups=[])


def test_exec_of_a_setuid_root_binary(daemon: Daemon, shared_dir: Path, once: None) -> None:
    exe = _setuid_copy(shared_dir, 0o4755)
    marker = new_marker("suidexec")
    _as_nobody(str(exe), marker)
    (ev,) = _events(daemon, "privilege_change", marker)
    pc = ev["privilege_change"]
    assert pc["op"] == "exec"
    assert pc["hook"] == "tp_btf/sched_process_exec"
    assert pc["old"]["uid"] == pc["old"]["euid"] == NOBODY
    assert pc["new"]["uid"] == NOBODY and pc["new"]["euid"] == pc["new"]["suid"] == 0
    assert pc["to_root"]
    assert "CAP_SYS_ADMIN" in pc["new"]["cap_effective"]  # euid 0 gets root's capabilities
    assert ev["process"]["binary"] == str(exe)
    # Without the bit, the same exec changes nothing.
    exe.chmod(0o755)
    marker = new_marker("plainexec")
    _as_nobody(str(exe), marker)
    assert _events(daemon, "privilege_change", marker) == []


def test_an_exec_that_drops_capabilities_is_a_change(
    daemon: Daemon, shared_dir: Path, once: None
) -> None:
    """A non-root process holding capabilities (setpriv keeps them across its
    setresuid) loses them at the exec of a plain binary."""
    exe = _setuid_copy(shared_dir, 0o755)
    marker = new_marker("capdrop")
    subprocess.run([*SETPRIV, str(exe), marker], check=True)
    evs = _events(daemon, "privilege_change", marker)
    assert evs[-1]["privilege_change"]["op"] == "exec", evs
    pc = evs[-1]["privilege_change"]
    assert pc["changed"] and all(f.startswith("cap_") for f in pc["changed"])
    assert pc["new"]["cap_effective"] == [] and pc["old"]["cap_effective"] != []
    assert not pc["to_root"]


@pytest.fixture(scope="module")
def int80_priv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not X86:
        pytest.skip("the 32-bit entry is x86's")
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.fail("the 32-bit tests compile their program: install gcc")
    exe = tmp_path_factory.mktemp("priv-bin") / "int80_priv"
    src = REPO / "tests" / "priv" / "int80_priv.c"
    subprocess.run([cc, "-O2", "-Wall", "-o", str(exe), str(src)], check=True)
    return exe


def _int80(exe: Path, *args: str, cwd: Path | None = None) -> str:
    return subprocess.run(
        [str(exe), *args], check=True, capture_output=True, text=True, cwd=cwd
    ).stdout


def test_a_32_bit_setresuid_is_reported_with_the_old_credentials(
    daemon: Daemon, int80_priv: Path
) -> None:
    """The raw sys_enter and sys_exit programs, in every capture mode: the
    syscalls:* tracepoints and the security hooks see no 32-bit set*id."""
    marker = new_marker("ia32uid")
    # root setting uid 0 again changes nothing: compared, not reported
    assert _int80(int80_priv, "setresuid32", "0", marker) == "ret: 0\n"
    assert _int80(int80_priv, "setresuid32", str(NOBODY), marker) == "ret: 0\n"
    (ev,) = _events(daemon, "privilege_change", marker)
    pc = ev["privilege_change"]
    assert pc["op"] == "setresuid"
    assert pc["hook"] == "ia32:tp_btf/sys_exit"
    assert pc["old"]["uid"] == pc["old"]["euid"] == pc["old"]["suid"] == 0
    assert "CAP_SETUID" in pc["old"]["cap_effective"]
    assert pc["new"]["uid"] == pc["new"]["euid"] == pc["new"]["suid"] == NOBODY
    assert pc["new"]["cap_effective"] == []
    assert {"uid", "euid", "suid", "fsuid", "cap_permitted", "cap_effective"} <= set(
        pc["changed"]
    )
    assert not pc["to_root"]



def test_a_32_bit_exec_is_compared_with_the_credentials_it_started_from(
    daemon: Daemon, int80_priv: Path
) -> None:
    """root with its real uid set to nobody (euid and suid still 0) runs a
    plain binary: nothing changes, whether the exec came through the 64-bit
    or the 32-bit entry, whose credentials the raw sys_enter saves. Taken
    for plain ones instead, they would make it a change to root."""
    markers = []
    for entry in ("64", "32"):
        marker = new_marker(f"exec{entry}")
        markers.append(marker)
        if entry == "64":
            code = (
                f"import os\nos.setresuid({NOBODY}, -1, -1)\n"
                f"os.execv('/bin/echo', ['/bin/echo', {marker!r}])"
            )
            run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            out = run.stdout
        else:
            out = _int80(int80_priv, "execve", str(NOBODY), "/bin/echo", marker)
        assert out == marker + "\n"
        daemon.wait_for(is_exec(marker))
    for marker in markers:
        evs = _events(daemon, "privilege_change", marker)
        assert [e for e in evs if e["privilege_change"]["op"] == "exec"] == [], marker


def _has_fchmodat2() -> bool:
    """fchmodat2 came in 6.6: a call on no file says whether the kernel has it."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall(452, -1, b"", 0, 0)
    return ctypes.get_errno() != errno.ENOSYS


def _attrs(daemon: Daemon, marker: str) -> list[dict[str, object]]:
    return [e["file_attr"] for e in _events(daemon, "file_attr", marker)]


def test_chmod_family_setting_set_id_bits(daemon: Daemon, shared_dir: Path, once: None) -> None:
    target = shared_dir / "payload"
    target.write_text("x")
    marker = new_marker("chmod")
    fchmodat2 = _has_fchmodat2()
    _python(
        textwrap.dedent(f"""
            import ctypes
            p = {str(target)!r}
            os.chmod(p, 0o4755)
            fd = os.open(p, os.O_RDONLY)
            os.fchmod(fd, 0o2755)
            d = os.open({str(shared_dir)!r}, os.O_RDONLY)
            os.chmod("payload", 0o6755, dir_fd=d)
            libc = ctypes.CDLL(None, use_errno=True)
            if {fchmodat2}:
                assert libc.syscall(452, -100, p.encode(), 0o4700, 0) == 0, ctypes.get_errno()
            os.chmod(p, 0o755)  # clears the bits: not reported
        """),
        marker,
    )
    got = _attrs(daemon, marker)
    want = [("chmod", 0o4755), ("fchmod", 0o2755), ("fchmodat", 0o6755)]
    want += [("fchmodat2", 0o4700)] if fchmodat2 else []
    assert [(a["call"], a["mode"]) for a in got] == want
    assert {a["op"] for a in got} == {"chmod"}
    assert all(a["path"] == str(target) for a in got), got
    # By fd the file is resolved, and its mode after the call is known.
    assert [a["resolved"] for a in got] == [False, True, False, False][: len(want)]
    assert got[1]["file_mode"] == stat.S_IFREG | 0o2755
    assert all(a["hook"] == "tracepoint/sys_exit" for a in got)


def test_chown_to_root_in_a_world_writable_directory(
    daemon: Daemon, mode: str, shared_dir: Path
) -> None:
    drop = shared_dir / "drop"
    drop.mkdir()
    drop.chmod(0o1777)
    safe = shared_dir / "safe"
    safe.mkdir(mode=0o755)
    for d in (drop, safe):
        (d / "f").write_text("x")
        os.chown(d / "f", NOBODY, NOBODY)
    marker = new_marker("chown")
    _python(
        textwrap.dedent(f"""
            os.chdir({str(drop)!r})
            os.chown("f", 0, -1)
            fd = os.open("f", os.O_RDONLY)
            os.fchown(fd, 0, 0)
            os.lchown("f", 0, -1)
            os.chown("f", 0, 0, dir_fd=os.open(".", os.O_RDONLY))  # fchownat
            os.chdir({str(safe)!r})
            os.chown("f", 0, -1)  # not a world-writable directory
            os.chown("f", {NOBODY}, -1)  # not to root
        """),
        marker,
    )
    got = _attrs(daemon, marker)
    assert [a["call"] for a in got] == ["chown", "fchown", "lchown", "fchownat"]
    assert all(a["op"] == "chown" for a in got)
    assert [a.get("uid") for a in got] == [0, 0, 0, 0]
    assert [a.get("gid") for a in got] == [None, 0, None, 0]
    assert all(a["world_writable_dir"] for a in got)
    assert {a["path"] for a in got} == {str(drop / "f")}
    assert {a["hook"] for a in got} == {CHOWN_HOOK[mode]}


def test_chown_to_root_is_judged_on_the_directory_the_kernel_found(
    daemon: Daemon, mode: str, shared_dir: Path
) -> None:
    """By a bare name, a relative or absolute name with directories, or
    through a dirfd: in the hook modes the directory is the one the kernel
    found the file in (through a symlink too); tracepoint mode finds the
    directory the name is in again at the exit, and a name that is itself
    a symlink is judged by the link's directory."""
    drop, safe = shared_dir / "drop", shared_dir / "safe"
    drop.mkdir()
    drop.chmod(0o1777)
    safe.mkdir(mode=0o755)
    for d in (drop, safe):
        for name in ("bare", "rel", "abs", "at", "linked"):
            (d / name).write_text("x")
            os.chown(d / name, NOBODY, NOBODY)
    (safe / "to-drop").symlink_to(drop / "linked")
    (drop / "to-safe").symlink_to(safe / "linked")
    marker = new_marker("chowndir")
    _python(
        textwrap.dedent(f"""
            os.chdir({str(drop)!r})
            os.chown("bare", 0, -1)
            os.chown("to-safe", 0, -1)  # a name in drop, the file in safe
            os.chdir({str(safe)!r})
            os.chown("bare", 0, -1)
            os.chdir({str(shared_dir)!r})
            at = os.open(".", os.O_RDONLY)
            for d in ("drop", "safe"):
                os.chown(d + "/rel", 0, -1)
                os.chown({str(shared_dir)!r} + "/" + d + "/abs", 0, -1)
                os.chown(d + "/at", 0, -1, dir_fd=at)  # fchownat
                os.chown(d + "/rel", {NOBODY}, -1)  # not to root
            os.chown("safe/to-drop", 0, -1)  # a name in safe, the file in drop
        """),
        marker,
    )
    got = _attrs(daemon, marker)
    names = [("chown", drop / "rel"), ("chown", drop / "abs"), ("fchownat", drop / "at")]
    if mode == "tracepoint":
        # The directory of the name, whatever the name is a link to.
        want = [("chown", drop / "bare"), ("chown", drop / "to-safe"), *names]
    else:
        want = [("chown", drop / "bare"), *names, ("chown", safe / "to-drop")]
    assert [(a["call"], a["path"]) for a in got] == [(c, str(p)) for c, p in want], got
    assert all(a["world_writable_dir"] and a["uid"] == 0 for a in got)
    assert {a["hook"] for a in got} == {CHOWN_HOOK[mode]}


@pytest.fixture()
def mounts(shared_dir: Path) -> Iterator[Path]:
    """shared_dir on a tmpfs of its own (the guests' /tmp is an overlay,
    whose symlinks tracepoint mode cannot follow: the test's own symlinks
    are meant to be followed), and tmpfs mounts under it: `tmp` (1777),
    `over` (a 1777 directory under a 755 tmpfs) and `stack` (a 1777 tmpfs
    on a 755 one); `ovl`, an overlay (a container's root) whose lower layer
    holds `w` (1777), `s` (755) and `to-w`, a symlink to w."""
    made: list[Path] = []

    def mount(where: Path, mode: int, size: str = "1m") -> None:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"mode={mode:o},size={size}", "none",
                        str(where)], check=True)
        made.append(where)

    mount(shared_dir, 0o755, "8m")
    layers = shared_dir / "layers"
    layers.mkdir()
    mount(layers, 0o755)
    for name in ("lower", "upper", "work"):
        (layers / name).mkdir()
    for name, m in (("w", 0o1777), ("s", 0o755)):
        (layers / "lower" / name).mkdir()
        (layers / "lower" / name).chmod(m)
        (layers / "lower" / name / "f").write_text("x")
        os.chown(layers / "lower" / name / "f", NOBODY, NOBODY)
    (layers / "lower" / "to-w").symlink_to("w")
    (shared_dir / "ovl").mkdir()
    subprocess.run(["mount", "-t", "overlay", "-o", f"lowerdir={layers}/lower,upperdir="
                    f"{layers}/upper,workdir={layers}/work", "none", str(shared_dir / "ovl")],
                   check=True)
    made.append(shared_dir / "ovl")

    for name, modes in (("tmp", (0o1777,)), ("over", (0o755,)), ("stack", (0o755, 0o1777))):
        (shared_dir / name).mkdir(mode=0o1777)
        (shared_dir / name).chmod(0o1777)
        for m in modes:
            mount(shared_dir / name, m)
        (shared_dir / name / "f").write_text("x")
        os.chown(shared_dir / name / "f", NOBODY, NOBODY)
    yield shared_dir
    for where in reversed(made):
        subprocess.run(["umount", "-l", str(where)], check=True)


def test_chown_to_root_by_a_path_through_mounts_links_and_dotdot(
    daemon: Daemon, mode: str, mounts: Path
) -> None:
    """Absolute names whose directory is found through tmpfs mounts (a
    mount over a world-writable directory, one mount on another),
    directory symlinks, "..", a last "." and hard links: the directory a
    name was looked up in decides, in every mode."""
    s = mounts
    drop, safe = s / "drop", s / "safe"
    drop.mkdir()
    drop.chmod(0o1777)
    safe.mkdir(mode=0o755)
    for d in (drop, safe):
        for name in ("f", "ln", "dd"):
            (d / name).write_text("x")
        (d / "sub").mkdir(mode=0o755)
        os.chown(d / "sub", NOBODY, NOBODY)
    (safe / "hard").write_text("x")
    os.link(safe / "hard", drop / "hard")  # one file, a name in each
    for d in (drop, safe, drop / "hard"):
        for f in d.iterdir() if d.is_dir() else [d]:
            os.chown(f, NOBODY, NOBODY, follow_symlinks=False)
    (s / "to-drop").symlink_to("drop")
    (s / "to-safe").symlink_to(safe)
    # A target longer than any inode holds (ext4: 59 bytes, tmpfs: 128).
    (s / "far").symlink_to("/" + "./" * 100 + str(safe).lstrip("/"))
    names = [
        ("tmp/f", True), ("over/f", False), ("stack/f", True),
        ("to-drop/ln", True), ("to-safe/ln", False),
        ("safe/../drop/dd", True), ("drop/../safe/dd", False),
        ("drop/sub/.", True), ("safe/sub/.", False),
        ("drop/hard", True), ("safe/hard", False),
        ("far/f", False),
        ("ovl/w/f", True), ("ovl/s/f", False), ("ovl/to-w/f", True),
    ]
    marker = new_marker("chownpath")
    _python(
        "".join(f"os.chown({f'{s}/{n}'!r}, 0, -1)\n" for n, _ in names)
        + f"os.chown({str(drop / 'f')!r}, {NOBODY}, -1)  # not to root\n",
        marker,
    )
    got = [(a["path"], a["world_writable_dir"]) for a in _attrs(daemon, marker)]
    # A symlink whose target the inode does not hold (a long one; any on
    # an overlay) stops tracepoint mode's walk: reported, not judged.
    unjudged = {"far/f", "ovl/to-w/f"} if mode == "tracepoint" else set()
    # The names as passed: pathlib would drop the ".".
    want = [(f"{s}/{n}", ww and n not in unjudged) for n, ww in names if ww or n in unjudged]
    assert got == want
    assert {a["hook"] for a in _attrs(daemon, marker)} == {CHOWN_HOOK[mode]}


def test_32_bit_chmod_and_chown(
    daemon: Daemon, mode: str, shared_dir: Path, int80_priv: Path
) -> None:
    shared_dir.chmod(0o1777)
    target = shared_dir / "payload"
    target.write_text("x")
    os.chown(target, NOBODY, NOBODY)
    marker = new_marker("ia32attr")
    assert _int80(int80_priv, "chmod", str(target), "4755", marker) == "ret: 0\n"
    assert _int80(int80_priv, "chown32", "payload", "0", marker, cwd=shared_dir) == "ret: 0\n"
    got = _attrs(daemon, marker)
    # a chown's directory comes from the mode's path hook, as for 64-bit calls
    assert [(a["call"], a["hook"]) for a in got] == [
        ("chmod", "ia32:tp_btf/sys_exit"),
        ("chown", "ia32:" + (CHOWN_HOOK[mode] if mode != "tracepoint" else "tp_btf/sys_exit")),
    ]
    assert got[0]["mode"] == 0o4755
    assert got[1]["uid"] == 0 and "gid" not in got[1] and got[1]["world_writable_dir"]
    assert got[0]["path"] == got[1]["path"] == str(target)


def test_32_bit_calls_are_selected_by_policy(
    mode: str, shared_dir: Path, int80_priv: Path, tmp_path: Path
) -> None:
    """The rules of 64-bit calls, decided in the kernel: a rule names the
    32-bit call it selects, an ignore rule drops one."""
    policy = tmp_path / "p.yaml"
    policy.write_text(textwrap.dedent(f"""
        policies:
          - name: p32
            rules:
              - {{event: privilege_change, match: {{uid: [{NOBODY}]}}}}
              - {{event: file_attr, match: {{path: {{prefix: ["{shared_dir}/"]}}}}}}
              - {{event: file_attr, match: {{path: {{prefix: ["{shared_dir}/quiet"]}}}},
                 action: ignore}}
    """))
    for name in ("a.bin", "quiet.bin"):
        (shared_dir / name).write_text("x")
    d = Daemon("--capture-mode", mode, "--policy", str(policy))
    marker = new_marker("ia32pol")
    try:
        for name in ("a.bin", "quiet.bin"):
            assert _int80(int80_priv, "chmod", str(shared_dir / name), "4755", marker) == "ret: 0\n"
        assert _int80(int80_priv, "setresuid32", str(NOBODY), marker) == "ret: 0\n"
        got = [
            (e["type"], (e.get("file_attr") or e.get("privilege_change") or {}).get("hook"),
             e["policy"]["name"], e["policy"]["rule"])
            for e in _events(d, "privilege_change", marker) + _events(d, "file_attr", marker)
        ]
    finally:
        assert d.stop() == 0, "".join(d.stderr)
    assert got == [
        ("privilege_change", "ia32:tp_btf/sys_exit", "p32", 0),
        ("file_attr", "ia32:tp_btf/sys_exit", "p32", 1),
    ]
