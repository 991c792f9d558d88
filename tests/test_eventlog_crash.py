"""kill -9 of the daemon while it writes its event log: what survives, and what readers say."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, Daemon, new_marker, tracer_cmd

from forensics.log import list_segments

LIBRARY = REPO / "policy" / "library"


def _replay(*paths: Path) -> subprocess.CompletedProcess[str]:
    args = [a for p in paths for a in ("--from", str(p))]
    return subprocess.run(
        tracer_cmd("replay", *args), capture_output=True, text=True, timeout=120
    )


def test_kill_9_mid_write_keeps_earlier_segments_and_the_torn_tail_is_skipped(
    tmp_path: Path,
) -> None:
    log = tmp_path / "events"
    # A long flush interval: nothing is synced to the disk while the kill
    # comes, as after a crash between two syncs.
    d = Daemon(
        "--policy", str(LIBRARY), "--event-log-dir", str(log),
        "--event-log-segment-size", "4M", "--event-log-flush-interval", "60s",
        "--export-file", str(tmp_path / "export.jsonl"),  # stdout would be torn too
    )
    marker = new_marker("crash")
    loader = subprocess.Popen(
        [sys.executable, "-c", "while True: open('/etc/shadow').close()", marker]
    )
    try:
        deadline = time.monotonic() + 60
        while len(list(log.glob("events-*.jsonl.zst"))) < 2:
            assert time.monotonic() < deadline, sorted(p.name for p in log.iterdir())
            time.sleep(0.2)
        d.proc.kill()  # SIGKILL, mid-write
        d.proc.wait(10)
    finally:
        loader.kill()
        loader.wait()
        d.stop()
    # Closed segments (compressed, or sealed and still waiting for the
    # compressor when the kill came) have their index; the open one has not.
    segs = [s.path for s in list_segments([log])]
    open_seg = segs[-1]
    assert open_seg.suffix == ".jsonl", [p.name for p in segs]
    assert len(segs) >= 3
    # Every closed segment is intact: every line reads, as many as its index says.
    for seg in segs[:-1]:
        r = _replay(seg)
        assert r.returncode == 0 and not r.stderr, (seg, r.stderr[-500:])
        sidecar = seg.with_name(seg.name.split(".")[0] + ".idx")
        assert len(r.stdout.splitlines()) == json.loads(sidecar.read_bytes())["events"] > 0
    left = [open_seg]
    # The segment being written. The writer hands the kernel whole lines
    # (a batch per writev), so a kill tears a line only if it
    # interrupts the write() itself; a power cut can lose the unsynced end
    # of the file at any byte. That is simulated here by cutting the last
    # line in two, whatever the kill left.
    raw = left[0].read_bytes()
    if raw.endswith(b"\n"):
        start = raw.rfind(b"\n", 0, len(raw) - 1) + 1
        raw = raw[: start + (len(raw) - start) // 2]
        left[0].write_bytes(raw)
    whole = raw.count(b"\n")
    r = _replay(left[0])
    assert len(r.stdout.splitlines()) == whole
    if raw:
        assert r.returncode == 3, r.stderr
        assert f"{left[0]}:{whole + 1}: last line is torn" in r.stderr
    else:  # the kill came right after a rotation: nothing there yet
        assert r.returncode == 0 and not r.stderr
    # A new daemon on the same log closes the leftovers: indexed, compressed, bytes kept.
    leftovers = list(log.glob("events-*.jsonl"))
    d2 = Daemon("--event-log-dir", str(log))
    try:
        gz = left[0].with_name(left[0].name + ".zst")
        deadline = time.monotonic() + 30
        while any(p.exists() for p in leftovers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(p.exists() for p in leftovers)
        assert all(p.with_name(p.name + ".zst").exists() for p in leftovers)
        assert not list(log.glob("*.tmp"))  # a compression the kill interrupted
        r2 = _replay(gz)
        assert r2.stdout == r.stdout and r2.returncode == r.returncode
    finally:
        assert d2.stop() == 0
    # The tree still answers from everything that survived.
    t = subprocess.run(
        tracer_cmd("tree", "--from", str(log), "--binary", "python"),
        capture_output=True, text=True, timeout=120,
    )
    assert t.returncode in (0, 3), t.stderr
    assert marker in t.stdout and "open /etc/shadow" in t.stdout
