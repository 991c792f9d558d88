"""Fixtures that run the real daemon against the real kernel.

The daemon runs as a subprocess (`python -m tracer run`), exactly as a
user starts it; its stdout is parsed line by line, so every assertion is
about the JSON a consumer would see.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from capture import MODES

REPO = Path(__file__).resolve().parent.parent
BPF_DIR = REPO / "build" / "bpf"
Event = dict[str, Any]
# The emulated `make test-vm` guests verify and load programs ~30x slower.
READY_TIMEOUT = 300.0 if os.environ.get("TRACER_IN_VM") else 30.0


def tracer_cmd(*args: str) -> list[str]:
    if args[:1] == ("run",) and not {"--event-log-dir", "--no-event-log"} & set(args):
        args = ("run", "--no-event-log", *args[1:])  # tests never write /var/lib/tracer
    return [sys.executable, "-m", "tracer", "--bpf-dir", str(BPF_DIR), *args]


class Daemon:
    """A running `tracer run` whose JSON lines are collected as they arrive."""

    def __init__(self, *args: str, ready_timeout: float = READY_TIMEOUT) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("kernel tests load BPF programs and must run as root")
        self.events: list[Event] = []
        self.stderr: list[str] = []
        self._cond = threading.Condition()
        # Each daemon gets its own API socket, so that test daemons never
        # collide with each other or with one the machine runs.
        self._sock_dir = tempfile.TemporaryDirectory(prefix="tracer-test-")
        self.socket = Path(self._sock_dir.name) / "tracer.sock"
        if not any(a.startswith(("--grpc-socket", "--no-grpc")) for a in args):
            args = ("--grpc-socket", str(self.socket), *args)
        self.control_socket = Path(self._sock_dir.name) / "control.sock"
        if "--control-socket" in args:
            self.control_socket = Path(args[args.index("--control-socket") + 1])
        else:
            args = ("--control-socket", str(self.control_socket), *args)
        # ...and its own event log, so that tests never write /var/lib/tracer.
        self.event_log = Path(self._sock_dir.name) / "events"
        if "--event-log-dir" in args:
            self.event_log = Path(args[args.index("--event-log-dir") + 1])
        elif "--no-event-log" not in args:
            args = ("--event-log-dir", str(self.event_log), *args)
        self.proc = subprocess.Popen(
            tracer_cmd("run", *args),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self._threads:
            t.start()
        self.wait_log("event='ready'", ready_timeout)

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            ev = json.loads(line)  # a line that is not JSON fails the reader loudly
            with self._cond:
                self.events.append(ev)
                self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._cond:
                self.stderr.append(raw.decode("utf-8", "replace"))
                self._cond.notify_all()

    def wait_log(self, needle: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.stderr:
                    if needle in line:
                        return line
                if self.proc.poll() is not None and not self._threads[1].is_alive():
                    raise AssertionError(
                        f"daemon exited ({self.proc.returncode}) before {needle!r}:\n"
                        + "".join(self.stderr)
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {needle!r} in daemon log:\n" + "".join(self.stderr))
                self._cond.wait(min(left, 0.2))

    def wait_for(self, pred: Callable[[Event], bool], timeout: float = 10.0) -> Event:
        """The first event matching pred, waiting for it to arrive."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for ev in self.events[seen:]:
                    if pred(ev):
                        return ev
                seen = len(self.events)
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError(
                        f"no matching event after {timeout}s ({len(self.events)} events seen); "
                        "daemon log:\n" + "".join(self.stderr[-20:])
                    )
                self._cond.wait(min(left, 0.2))

    def matching(self, pred: Callable[[Event], bool]) -> list[Event]:
        with self._cond:
            return [ev for ev in self.events if pred(ev)]

    def sync(self, attempts: int = 5) -> None:
        """Wait until everything the kernel emitted before now has been read.

        Ring-buffer order is event order, so once the exit of a fresh
        marker process is here, every earlier record is too. A tiny ring
        buffer under load may drop the marker itself (counted as lost):
        then another marker is sent.
        """
        for attempt in range(attempts):
            marker = new_marker("sync")
            subprocess.run(["/bin/true", marker], check=True)
            try:
                self.wait_for(is_exit(marker), timeout=5)
                return
            except AssertionError:
                if attempt == attempts - 1:
                    raise

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("daemon did not stop within 15 s of SIGTERM") from None
        for t in self._threads:
            t.join(5)
        self._sock_dir.cleanup()
        return rc

    @property
    def address(self) -> str:
        return f"unix://{self.socket}"


def new_marker(prefix: str = "m") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def is_exec(marker: str) -> Callable[[Event], bool]:
    return lambda e: e["type"] == "process_exec" and marker in e["process"]["args"]


def is_exit(marker: str) -> Callable[[Event], bool]:
    return lambda e: e["type"] == "process_exit" and marker in e["process"]["args"]


class Prestarted:
    """A shell started before the daemon; each line written to it runs /bin/true LINE."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            ["bash", "-c", 'while read -r line; do /bin/true "$line"; done'],
            stdin=subprocess.PIPE,
        )

    def run_true(self, marker: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(marker.encode() + b"\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(5)


@pytest.fixture(scope="module", params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    """A capture mode of capture.py's: a module's tests run under each in turn."""
    m: str = request.param
    return m


@pytest.fixture(scope="session", params=["tp_btf", "raw_tp"])
def daemon_pair(request: pytest.FixtureRequest) -> Iterator[tuple[Daemon, Prestarted]]:
    """One daemon per process-hook variant; the same assertions run on both."""
    pre = Prestarted()
    d = Daemon("--process-hooks", request.param)
    yield d, pre
    pre.close()
    assert d.stop() == 0, "daemon did not exit 0 on SIGTERM:\n" + "".join(d.stderr)


@pytest.fixture
def daemon(daemon_pair: tuple[Daemon, Prestarted]) -> Daemon:
    return daemon_pair[0]


@pytest.fixture
def prestarted(daemon_pair: tuple[Daemon, Prestarted]) -> Prestarted:
    return daemon_pair[1]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="loads BPF programs or runs the daemon: run as root")
    for item in items:
        if item.get_closest_marker("kernel"):
            item.add_marker(skip)


def _checkout_status() -> set[str] | None:
    """`git status --porcelain` of the checkout, or None outside a git checkout."""
    try:
        r = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=all"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return set(r.stdout.splitlines()) if r.returncode == 0 else None


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_STATUS_KEY] = _checkout_status()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Tests never write into the checkout: what the run added fails it."""
    before = session.config.stash.get(_STATUS_KEY, None)
    after = _checkout_status()
    if before is None or after is None:
        return
    added = sorted(after - before)
    if added:
        print("\nerror: the tests left these in the checkout:\n  " + "\n  ".join(added))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_STATUS_KEY = pytest.StashKey[set[str] | None]()
