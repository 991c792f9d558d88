"""exec/fork/exit capture against the real kernel, through the daemon's JSON."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import Daemon, Event, Prestarted, is_exec, is_exit, new_marker

from tracer.core import text

pytestmark = pytest.mark.kernel

BASH = os.path.realpath(shutil.which("bash") or "/bin/bash")
TRUE = os.path.realpath("/bin/true")


def _chain_is_linked(ev: Event) -> None:
    """parent_exec_id pointers agree with the parent and ancestors given."""
    chain = [ev["process"], ev["parent"], *ev["ancestors"]]
    for child, parent in itertools.pairwise(chain):
        assert child["parent_exec_id"] == parent["exec_id"], (child, parent)


def test_exec_tree_through_a_shell(daemon: Daemon, tmp_path: Path) -> None:
    marker = new_marker()
    # The trailing `exit 0` keeps bash 5.2 from exec'ing /bin/true in place.
    sh = subprocess.Popen(["bash", "-c", f"sleep 0.1; /bin/true {marker}; exit 0"], cwd=tmp_path)
    assert sh.wait(10) == 0
    ev = daemon.wait_for(is_exec(marker))
    p = ev["process"]
    assert p["binary"] == TRUE
    assert p["args"] == ["/bin/true", marker]
    assert p["cwd"] == str(tmp_path.resolve())
    assert (p["uid"], p["euid"], p["user"]) == (0, 0, "root")
    assert p["pid"] == p["tid"] != sh.pid
    assert p["flags"] == []
    assert ev["parent"]["pid"] == sh.pid
    assert ev["parent"]["binary"] == BASH
    assert ev["parent"]["args"] == ["bash", "-c", f"sleep 0.1; /bin/true {marker}; exit 0"]
    assert ev["ancestors"][0]["pid"] == os.getpid()
    assert ev["ancestors"][-1]["pid"] == 1
    _chain_is_linked(ev)
    exit_ev = daemon.wait_for(is_exit(marker))
    assert exit_ev["process"]["exec_id"] == p["exec_id"]
    assert exit_ev["process_exit"] == {"code": 0, "core_dumped": False}


def test_exec_in_place_replaces_the_shell(daemon: Daemon) -> None:
    marker = new_marker()
    sh = subprocess.Popen(["bash", "-c", f"/bin/true {marker}"])
    assert sh.wait(10) == 0
    ev = daemon.wait_for(is_exec(marker))
    assert ev["process"]["pid"] == sh.pid
    assert ev["process"]["binary"] == TRUE
    # The image it replaced was bash, whose parent is this test process.
    assert ev["parent"]["pid"] == os.getpid()
    bash_ev = daemon.wait_for(
        lambda e: (
            e["type"] == "process_exec"
            and e["process"]["pid"] == sh.pid
            and e["process"]["binary"] == BASH
        )
    )
    assert bash_ev["process"]["exec_id"] != ev["process"]["exec_id"]
    assert ev["process"]["parent_exec_id"] == bash_ev["process"]["parent_exec_id"]


def test_short_lived_process_is_complete(daemon: Daemon) -> None:
    marker = new_marker()
    t0 = time.perf_counter()
    subprocess.run([TRUE, marker], check=True)
    assert time.perf_counter() - t0 < 1.0
    ev = daemon.wait_for(is_exec(marker))
    assert ev["process"]["binary"] == TRUE
    assert ev["process"]["args"] == [TRUE, marker]
    assert ev["parent"]["pid"] == os.getpid()
    ex = daemon.wait_for(is_exit(marker))
    assert ex["process"]["exec_id"] == ev["process"]["exec_id"]
    assert ex["process_exit"]["code"] == 0


def test_exit_code(daemon: Daemon) -> None:
    marker = new_marker()
    assert subprocess.run(["bash", "-c", "exit 3", marker]).returncode == 3
    ex = daemon.wait_for(is_exit(marker))
    assert ex["process_exit"] == {"code": 3, "core_dumped": False}


def test_killed_by_signal(daemon: Daemon) -> None:
    marker = new_marker()
    assert subprocess.run(["bash", "-c", "kill -KILL $$", marker]).returncode == -9
    ex = daemon.wait_for(is_exit(marker))
    assert "code" not in ex["process_exit"]
    assert ex["process_exit"]["signal"] == "SIGKILL"


def test_process_started_before_the_daemon(daemon: Daemon, prestarted: Prestarted) -> None:
    marker = new_marker()
    prestarted.run_true(marker)
    ev = daemon.wait_for(is_exec(marker))
    parent = ev["parent"]
    assert parent["pid"] == prestarted.proc.pid
    assert "procfs" in parent["flags"]
    assert parent["binary"] == BASH
    assert ev["ancestors"][0]["pid"] == os.getpid()
    _chain_is_linked(ev)


def _my_exec_id(daemon: Daemon) -> str:
    """This test process's exec_id, as the parent of a fresh child sees it."""
    marker = new_marker()
    subprocess.run([TRUE, marker], check=True)
    exec_id: str = daemon.wait_for(is_exec(marker))["parent"]["exec_id"]
    return exec_id


def test_threads_are_not_processes(daemon: Daemon) -> None:
    before = _my_exec_id(daemon)
    tids: set[int] = set()
    lock = threading.Lock()

    def work(i: int) -> int:
        with lock:
            tids.add(threading.get_native_id())
        time.sleep(0.02)
        return i * i

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert sum(pool.map(work, range(64))) == sum(i * i for i in range(64))
    tids.discard(os.getpid())
    assert len(tids) >= 2
    daemon.sync()
    about_threads = daemon.matching(
        lambda e: (
            e["type"] != "lost"
            and (e["process"]["pid"] in tids or e["process"]["pid"] == os.getpid())
        )
    )
    assert about_threads == []
    # Had a thread been taken for a process, it would have replaced this
    # process's cache entry (same tgid) and children would name another parent.
    assert _my_exec_id(daemon) == before


def _fork_at(pid: int, argv: list[str]) -> subprocess.Popen[bytes] | None:
    """Start argv so that it gets `pid`, through ns_last_pid (root only)."""
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(pid - 1))
    proc = subprocess.Popen(argv)
    if proc.pid == pid:
        return proc
    proc.wait()
    return None


def test_pid_reuse_does_not_merge_processes(daemon: Daemon) -> None:
    first, second = new_marker("first"), new_marker("second")
    a = subprocess.Popen(["bash", "-c", "exit 4", first])
    a.wait()
    b = None
    for _ in range(50):  # another fork may take the pid first: retry
        b = _fork_at(a.pid, ["bash", "-c", "exit 5", second])
        if b is not None:
            break
    assert b is not None, "could not get the same pid twice"
    b.wait()
    ea, eb = daemon.wait_for(is_exec(first)), daemon.wait_for(is_exec(second))
    assert ea["process"]["pid"] == eb["process"]["pid"] == a.pid
    assert ea["process"]["exec_id"] != eb["process"]["exec_id"]
    xa, xb = daemon.wait_for(is_exit(first)), daemon.wait_for(is_exit(second))
    assert (xa["process"]["exec_id"], xa["process_exit"]["code"]) == (ea["process"]["exec_id"], 4)
    assert (xb["process"]["exec_id"], xb["process_exit"]["code"]) == (eb["process"]["exec_id"], 5)


def test_hostile_argv_is_preserved(daemon: Daemon) -> None:
    marker = new_marker()
    raw = [b"\xff\xfebad", b"line\nbreak", b"\x1b[31mred\x1b[0m", b"back\\slash", b""]
    subprocess.run([TRUE.encode(), marker.encode(), *raw], check=True)
    ev = daemon.wait_for(is_exec(marker))
    p = ev["process"]
    assert "non_utf8" in p["flags"]
    assert [text.encode(a) for a in p["args"][2:]] == raw
    assert p["args"][0] == TRUE


def test_huge_argv_is_flagged_truncated(daemon: Daemon) -> None:
    marker = new_marker()
    arg = "x" * 10
    subprocess.run([TRUE, marker, *([arg] * 10_000)], check=True)
    ev = daemon.wait_for(is_exec(marker))
    p = ev["process"]
    assert "truncated_args" in p["flags"]
    assert p["args"][:2] == [TRUE, marker]
    kept = p["args"][2:]
    assert 100 < len(kept) < 10_000
    assert all(a == arg for a in kept[:-1])
    assert arg.startswith(kept[-1])
    # The daemon is still alive and still delivering.
    daemon.sync()


def test_paths_cross_mount_points(daemon: Daemon) -> None:
    # /dev/shm is a separate tmpfs mount: both the binary and the cwd walk
    # must cross into it to be right.
    with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
        binary = Path(d) / "my true"
        shutil.copy(TRUE, binary)
        sub = Path(d) / "deep" / "er"
        sub.mkdir(parents=True)
        marker = new_marker()
        subprocess.run([str(binary), marker], cwd=sub, check=True)
        ev = daemon.wait_for(is_exec(marker))
    assert ev["process"]["binary"] == str(binary)
    assert ev["process"]["cwd"] == str(sub)


def test_exec_through_symlink_reports_the_real_file(daemon: Daemon, tmp_path: Path) -> None:
    link = tmp_path / "alias"
    link.symlink_to(TRUE)
    marker = new_marker()
    subprocess.run([str(link), marker], check=True)
    ev = daemon.wait_for(is_exec(marker))
    assert ev["process"]["binary"] == TRUE
    assert ev["process"]["args"][0] == str(link)


def test_exit_reported_by_a_non_leader_thread(daemon: Daemon) -> None:
    # The main thread leaves first (pthread_exit); a worker thread ends the
    # process, so the kernel's last exit is not the leader's.
    marker = new_marker()
    code = (
        "import ctypes, os, threading, time\n"
        "def worker():\n"
        "    time.sleep(0.3)\n"
        "    os._exit(7)\n"
        "threading.Thread(target=worker).start()\n"
        "ctypes.CDLL(None).pthread_exit(None)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, marker], capture_output=True)
    assert proc.returncode == 7, proc
    ev = daemon.wait_for(is_exec(marker))
    ex = daemon.wait_for(is_exit(marker))
    assert ex["process"]["exec_id"] == ev["process"]["exec_id"]
    assert "partial" not in ex["process"]["flags"]
    assert ex["process"]["tid"] != ex["process"]["pid"]
    assert ex["process_exit"]["code"] == 7
