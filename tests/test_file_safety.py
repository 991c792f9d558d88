"""Files a root process writes: never through a link, never one someone else made.

The export file (`--export-file`), the event log's directory and files,
and `tracer tree --from DIR`, which must never write into DIR. Each test
sets the trap a user (or a copied log) could set, with real files, and
runs the real code or command.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import stat
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Daemon, tracer_cmd
from factories import log_process

from export import ExportFileError, RotatingFile
from export.eventlog import EventLog, EventLogConfig
from forensics import store
from tracer.core.events import FileInfo, FileOpen, ProcessExec

T0 = 1_790_000_000_000_000_000
USER = 1000  # any uid but root's


def _events(n: int = 40) -> list[ProcessExec | FileOpen]:
    init = log_process(1, None, "/sbin/init", T0 - 10**12)
    out: list[ProcessExec | FileOpen] = []
    for i in range(n):
        p = log_process(100 + i, init, "/usr/bin/cat", T0 + i * 1000)
        out.append(ProcessExec(time=T0 + i * 1000, node="n1", process=p, parent=init, ancestors=()))
        fi = FileInfo(f"/etc/f{i}", ("O_RDONLY",), 0, 3, None, "tp", False, True)
        out.append(
            FileOpen(
                time=T0 + i * 1000 + 1,
                node="n1",
                process=p,
                parent=init,
                ancestors=(),
                file=fi,
                policy=None,
            )
        )
    return out


def _write_log(d: Path, **cfg: float) -> None:
    sink = EventLog(EventLogConfig(directory=d, **cfg))  # type: ignore[arg-type]
    for ev in _events():
        sink.offer(ev)
    sink.close()


def _listing(d: Path) -> dict[str, tuple[int, int, float]]:
    return {
        p.name: (p.lstat().st_mode, p.lstat().st_size, p.lstat().st_mtime)
        for p in sorted(d.iterdir())
    }


def _tree(d: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        tracer_cmd("tree", "--from", str(d), *args), capture_output=True, text=True, timeout=60
    )


# -- the export file -----------------------------------------------------------


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A user's file that the daemon must never write: their shell's start-up file."""
    home = tmp_path / "home"
    home.mkdir()
    rc = home / ".bashrc"
    rc.write_text("# theirs\n")
    os.chown(home, USER, USER)
    os.chown(rc, USER, USER)
    return rc


def test_the_export_file_is_never_a_symlink(tmp_path: Path, victim: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "events.jsonl").symlink_to(victim)
    with pytest.raises(ExportFileError, match="is a symbolic link; give the path of the file"):
        RotatingFile(out / "events.jsonl", 1 << 20)
    assert victim.read_text() == "# theirs\n"
    # A dangling link: its target is not created either.
    (out / "dangling.jsonl").symlink_to(tmp_path / "made-by-root")
    with pytest.raises(ExportFileError, match="is a symbolic link"):
        RotatingFile(out / "dangling.jsonl", 1 << 20)
    assert not (tmp_path / "made-by-root").exists()


@pytest.mark.parametrize(
    ("setup", "problem"),
    [
        (lambda f: os.chown(f, USER, USER), f"is owned by uid {USER}, not root"),
        (lambda f: os.chmod(f, 0o644), "has mode 0644: users other than root could read"),
        (lambda f: os.chmod(f, 0o620), "has mode 0620"),
    ],
    ids=["theirs", "readable", "group-writable"],
)
def test_a_file_found_at_the_export_path_must_be_roots_alone(
    tmp_path: Path, setup: object, problem: str
) -> None:
    f = tmp_path / "events.jsonl"
    f.write_bytes(b"")
    os.chmod(f, 0o600)
    RotatingFile(f, 1 << 20).close()  # root's, 0600: adopted
    setup(f)  # type: ignore[operator]
    with pytest.raises(ExportFileError, match=problem):
        RotatingFile(f, 1 << 20)
    assert f.read_bytes() == b""


@pytest.mark.parametrize(
    ("setup", "problem"),
    [
        (lambda d: os.chmod(d, 0o777), "can be changed by everyone (mode 0777)"),
        (lambda d: os.chown(d, USER, USER), f"can be changed by its owner, uid {USER}"),
    ],
    ids=["world-writable", "theirs"],
)
def test_the_export_file_directory_must_be_roots_to_change(
    tmp_path: Path, setup: object, problem: str
) -> None:
    d = tmp_path / "out"
    d.mkdir()
    setup(d)  # type: ignore[operator]
    with pytest.raises(ExportFileError, match=re.escape(f"directory {d} {problem}")):
        RotatingFile(d / "events.jsonl", 1 << 20)
    assert list(d.iterdir()) == []
    with pytest.raises(ExportFileError, match="is a directory; give a file name"):
        RotatingFile(tmp_path, 1 << 20)


def test_a_failed_rotation_is_counted_and_the_lines_go_on(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    f = RotatingFile(path, max_bytes=100, backups=1)
    (tmp_path / "e.jsonl.1").mkdir()  # the backup's name is taken: the rename fails
    (tmp_path / "e.jsonl.1" / "x").touch()
    lines = [f"{i:02d}".encode() + b"x" * 57 + b"\n" for i in range(5)]  # 60 bytes each
    f.write_lines(lines[:2])  # over 100: a rotation that fails
    f.write_lines(lines[2:])
    f.close()
    assert f.rotate_errors == 4  # tried again at each line past the limit
    assert path.read_bytes() == b"".join(lines)  # nothing lost


def test_the_daemon_refuses_an_export_file_link_in_one_line(tmp_path: Path, victim: Path) -> None:
    link = tmp_path / "events.jsonl"
    link.symlink_to(victim)
    proc = subprocess.Popen(
        tracer_cmd("run", "--no-event-log", "--export-file", str(link)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("the daemon started with an export file that is a link") from None
    assert proc.returncode == 1
    errors = [line for line in err.splitlines() if line.startswith("tracer: error:")]
    assert errors == [
        f"tracer: error: export file {link} is a symbolic link; give the path of the file itself"
    ]
    assert victim.read_text() == "# theirs\n"


# -- the event log's directory and files ---------------------------------------


def test_the_event_log_directory_is_made_root_only(tmp_path: Path) -> None:
    d = tmp_path / "ev"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)  # as a package or an admin might have made it
    _write_log(d)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    for p in d.iterdir():
        assert stat.S_IMODE(p.lstat().st_mode) == 0o600, p.name


def test_the_event_log_refuses_a_link_or_a_directory_of_another_user(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "ev"
    link.symlink_to(real)
    with pytest.raises(OSError, match=f"{link} is a symbolic link, not a directory"):
        EventLog(EventLogConfig(directory=link))
    assert list(real.iterdir()) == []
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, USER, USER)
    with pytest.raises(OSError, match=f"{theirs} is owned by uid {USER}, not root"):
        EventLog(EventLogConfig(directory=theirs))
    assert list(theirs.iterdir()) == []
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(OSError, match=f"directory {shared} can be changed by everyone"):
        EventLog(EventLogConfig(directory=shared / "ev"))


@pytest.fixture(scope="module")
def watched() -> Iterator[tuple[Daemon, Path]]:
    """A daemon that posts every open under a fresh directory, to see the flags and
    mode each file there is created with."""
    top = Path(tempfile.mkdtemp(prefix="tracer-files-"))
    pol = top / "policy"
    pol.mkdir()
    area = top / "area"
    area.mkdir(mode=0o700)
    (pol / "watch.yaml").write_text(
        textwrap.dedent(
            f"""\
            policies:
              - name: watch-files
                rules:
                  - event: file_open
                    match: {{path: {{prefix: ["{area}/"]}}}}
            """
        )
    )
    d = Daemon("--policy", str(pol))
    yield d, area
    assert d.stop() == 0, "".join(d.stderr)
    shutil.rmtree(top)


def _creations(d: Daemon, area: Path) -> dict[str, tuple[set[str], int]]:
    d.sync()
    out: dict[str, tuple[set[str], int]] = {}
    for ev in d.matching(
        lambda e: e["type"] == "file_open" and e["file_open"]["path"].startswith(f"{area}/")
    ):
        fo = ev["file_open"]
        if "O_CREAT" in fo["flags"]:
            out.setdefault(fo["path"], (set(fo["flags"]), fo["mode"]))
    return out


def test_event_log_files_are_created_0600_exclusively_never_through_a_link(
    watched: tuple[Daemon, Path],
) -> None:
    # A chmod after the create leaves the file readable by all in between;
    # the kernel's view of the open says how it was made.
    d, area = watched
    log = area / "ev"
    log.mkdir(mode=0o700)
    # A plain segment an older version left: compressed through a .tmp at start.
    old = log / "events-00000001.jsonl"
    old.write_bytes(b"")
    os.chmod(old, 0o600)
    _write_log(log, segment_bytes=4000)
    made = _creations(d, area)
    names = {Path(p).name for p in made}
    assert "events-00000002.jsonl.zst" in names
    assert "events-00000001.jsonl.zst.tmp" in names
    assert "events-00000002.idx.tmp" in names
    for path, (flags, mode) in made.items():
        name = Path(path).name
        if not name.startswith("events-") or name == old.name:
            continue  # SQLite's journal, the lock file, the test's own file
        assert {"O_EXCL", "O_NOFOLLOW"} <= flags, (name, flags)
        assert mode == 0o600, (name, oct(mode))


# -- tracer tree --from never writes into the directory ------------------------


@pytest.fixture
def copied_log(tmp_path: Path) -> Path:
    """A log directory as copied from another node: segments and sidecars, no database."""
    d = tmp_path / "copy"
    _write_log(d, segment_bytes=3000)
    for p in d.iterdir():
        if p.name.startswith((".", store.DB_NAME)):
            p.unlink()
    return d


def test_tree_from_a_copy_does_not_follow_a_dangling_index_link(
    tmp_path: Path, copied_log: Path
) -> None:
    # tar and rsync keep symlinks: a copy may name any file index.sqlite.
    target = tmp_path / "authorized_keys"
    (copied_log / store.DB_NAME).symlink_to(target)
    before = _listing(copied_log)
    r = _tree(copied_log, "--pid", "105", "-o", "json")
    assert r.returncode == 0, r.stderr
    assert '"pid":105' in r.stdout
    assert not target.exists()
    assert _listing(copied_log) == before


def test_tree_from_a_copy_writes_nothing_there(copied_log: Path) -> None:
    before = _listing(copied_log)
    assert _tree(copied_log, "--pid", "107").returncode == 0
    assert _tree(copied_log, "--binary", "cat").returncode == 0
    assert _listing(copied_log) == before


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "symlink"])
@pytest.mark.parametrize("part", ["segment", "index"])
def test_tree_from_a_copy_reads_only_regular_files(
    tmp_path: Path, copied_log: Path, kind: str, part: str
) -> None:
    # A FIFO would hang the reader and /dev/zero grow it until it is
    # killed; a link reads whatever its maker chose. Each is named and
    # skipped, and the rest of the log is still read.
    seg = sorted(copied_log.glob("events-*.jsonl*"))[-1]  # pid 105 is in the first
    index = seg.with_name(seg.name.split(".")[0] + ".idx")
    victim = index if part == "index" else seg
    index.unlink()  # without its index, a segment is read to be indexed
    seg.unlink(missing_ok=True)
    if part == "index":
        seg.write_bytes(b"")
    if kind == "fifo":
        os.mkfifo(victim)
    elif kind == "dev-zero":
        victim.symlink_to("/dev/zero")
    else:
        (tmp_path / "elsewhere.jsonl").write_bytes(b"")
        victim.symlink_to(tmp_path / "elsewhere.jsonl")
    r = _tree(copied_log, "--pid", "105", "-o", "json")
    assert '"pid":105' in r.stdout, r.stderr
    if part == "segment":
        assert r.returncode != 0  # partial: a segment was skipped
        assert f"{victim}: " in r.stderr and "not a regular file" in r.stderr, r.stderr


def test_tree_ignores_an_index_that_root_does_not_own(tmp_path: Path) -> None:
    # A database whose rows say what the log does not: believed if root's
    # (the daemon's own), ignored if anyone else could have written it.
    d = tmp_path / "ev"
    _write_log(d)
    db = d / store.DB_NAME
    conn = sqlite3.connect(db)
    conn.execute("UPDATE procs SET pid = 4242 WHERE pid = 105")  # a pid that never ran
    conn.commit()
    conn.close()
    os.chmod(d, 0o700)
    assert "arg105" in _tree(d, "--pid", "4242").stdout  # root's database: read
    os.chown(db, USER, USER)
    before = _listing(d)
    r = _tree(d, "--pid", "4242")
    assert r.returncode == 4 and "arg105" not in r.stdout, r.stdout + r.stderr
    assert _tree(d, "--pid", "101").returncode == 0  # the sidecars still serve
    assert _listing(d) == before


def test_tree_reads_the_live_daemons_index_without_writing(tmp_path: Path) -> None:
    d = tmp_path / "ev"
    _write_log(d, segment_bytes=3000)
    assert (d / store.DB_NAME).exists()
    before = _listing(d)
    t0 = time.monotonic()
    r = _tree(d, "--binary", "cat", "-o", "json")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count('"binary":"/usr/bin/cat"') >= 40
    assert time.monotonic() - t0 < 30
    assert _listing(d) == before
