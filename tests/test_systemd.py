"""deploy/systemd/tracer.service, and the notify protocol the real daemon speaks to it.

The test stands in for systemd: it binds the datagram socket named by
$NOTIFY_SOCKET and reads what the daemon sends.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, Daemon

from tracer.status import STALLED_AFTER_S

UNIT = REPO / "deploy" / "systemd" / "tracer.service"


def test_the_unit_verifies(tmp_path: Path) -> None:
    """systemd-analyze verify checks every key and that ExecStart is executable:
    the installed path is pointed at this checkout's virtualenv."""
    text = UNIT.read_text()
    unit = tmp_path / "tracer.service"
    unit.write_text(text.replace("/opt/tracer/venv", str(REPO / ".venv")))
    r = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    keys = {
        line.split("=", 1)[0]: line.split("=", 1)[1]
        for line in text.splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert keys["Type"] == "notify"
    assert keys["ProtectSystem"] == "strict"
    assert keys["NoNewPrivileges"] == "yes"
    assert keys["ProtectHome"] in ("yes", "read-only")
    assert "CAP_BPF" in keys["CapabilityBoundingSet"]
    assert keys["Restart"] == "on-failure"
    assert "WatchdogSec" in keys


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[tuple[float, str]] = []

    def wait(self, field: str, timeout: float) -> float:
        """When a message with `field` (e.g. READY=1) arrived; AssertionError if none did."""
        for t, m in self.messages:
            if field in m.split("\n"):
                return t
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            now = time.monotonic()
            self.messages.append((now, data.decode()))
            if field in data.decode().split("\n"):
                return now
        raise AssertionError(f"no {field} in {timeout}s; got {self.messages}")

    def drain(self) -> list[str]:
        out = []
        self.sock.setblocking(False)
        try:
            while True:
                out.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            pass
        self.sock.setblocking(True)
        self.messages.extend((time.monotonic(), m) for m in out)
        return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    ns = NotifySocket(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(ns.path))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # a ping every 0.5 s
    yield ns
    ns.close()


@pytest.mark.kernel
def test_ready_watchdog_and_stopping(notify: NotifySocket) -> None:
    d = Daemon("--metrics-listen", "127.0.0.1:0")
    try:
        notify.wait("READY=1", timeout=10)
        t0 = time.monotonic()
        notify.drain()
        time.sleep(1.6)
        pings = [m for m in notify.drain() if m == "WATCHDOG=1"]
        # One ping per half WatchdogSec at most, over however long the
        # sleep took on a loaded machine.
        most = int((time.monotonic() - t0) / 0.5) + 1
        assert 2 <= len(pings) <= most, (len(pings), most)
        # A stopped capture loop sends nothing: systemd would restart it.
        os.kill(d.proc.pid, signal.SIGSTOP)
        try:
            notify.drain()
            time.sleep(1.5)
            assert notify.drain() == []
        finally:
            os.kill(d.proc.pid, signal.SIGCONT)
        notify.wait("WATCHDOG=1", timeout=2)
    finally:
        rc = d.stop()
    assert rc == 0
    assert any("STOPPING=1" in m for m in notify.drain())
    # READY=1 once, and only after the daemon logged it was ready.
    assert sum("READY=1" in m for _, m in notify.messages) == 1


@pytest.mark.kernel
def test_not_ready_until_the_pods_are_listed(notify: NotifySocket, tmp_path: Path) -> None:
    """READY=1 waits for what /readyz waits for; the watchdog pings meanwhile."""
    from fake_apiserver import kubeconfig

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{port}")
    d = Daemon("--kubeconfig", str(cfg), "--node-name", "nowhere")
    try:
        notify.wait("WATCHDOG=1", timeout=5)
        time.sleep(1.0)
        assert not any("READY=1" in m for m in notify.drain())
    finally:
        assert d.stop() == 0


@pytest.mark.kernel
def test_no_watchdog_pings_for_another_pid(
    notify: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WATCHDOG_PID names the process systemd watches; a child that inherited
    the variables must not ping for it."""
    monkeypatch.setenv("WATCHDOG_PID", "1")
    d = Daemon()
    try:
        notify.wait("READY=1", timeout=10)
        time.sleep(1.2)
        assert not any("WATCHDOG=1" in m for m in notify.drain())
    finally:
        assert d.stop() == 0


def test_stall_threshold_is_below_the_units_watchdog() -> None:
    """/healthz says stalled before systemd's watchdog fires."""
    sec = next(
        line.split("=", 1)[1]
        for line in UNIT.read_text().splitlines()
        if line.startswith("WatchdogSec=")
    )
    assert float(sec.removesuffix("s")) > STALLED_AFTER_S
