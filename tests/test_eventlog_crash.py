"""kill -9 of the daemon while it writes its event log: what survives, and what readers say."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zstandard
from conftest import REPO, Daemon, new_marker, tracer_cmd

from forensics.log import list_segments

pytestmark = pytest.mark.kernel

LIBRARY = REPO / "policy" / "library"


def _replay(*paths: Path) -> subprocess.CompletedProcess[str]:
    args = [a for p in paths for a in ("--from", str(p))]
    return subprocess.run(
        tracer_cmd("replay", *args), capture_output=True, text=True, timeout=120
    )


def _sidecar(seg: Path) -> Path:
    return seg.with_name(seg.name.split(".")[0] + ".idx")


def _frames(data: bytes) -> list[tuple[int, bytes]]:
    """Each whole zstd frame of `data`: where it ends, what it holds."""
    out, pos = [], 0
    while pos < len(data):
        d = zstandard.ZstdDecompressor().decompressobj()
        text = d.decompress(data[pos:])
        if not d.eof:
            break
        pos = len(data) - len(d.unused_data)
        out.append((pos, text))
    return out


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
        while len(list(log.glob("events-*.jsonl.zst"))) < 3:  # two closed, one open
            assert time.monotonic() < deadline, sorted(p.name for p in log.iterdir())
            time.sleep(0.2)
        d.proc.kill()  # SIGKILL, mid-write
        d.proc.wait(10)
    finally:
        loader.kill()
        loader.wait()
        d.stop()
    # Closed segments have their index; the open one has not (it gets it when closed).
    segs = [s.path for s in list_segments([log])]
    open_seg = segs[-1]
    assert not _sidecar(open_seg).exists(), [p.name for p in segs]
    assert len(segs) >= 3
    # Every closed segment is intact: every line reads, as many as its index says.
    for seg in segs[:-1]:
        r = _replay(seg)
        assert r.returncode == 0 and not r.stderr, (seg, r.stderr[-500:])
        assert len(r.stdout.splitlines()) == json.loads(_sidecar(seg).read_bytes())["events"] > 0
    # The segment being written: whole frames, one per batch, so a kill
    # tears one only if it interrupts the write() itself; a power cut can
    # lose the unsynced end of the file at any byte. That is simulated here
    # by cutting the last frame in two, whatever the kill left.
    raw = open_seg.read_bytes()
    frames = _frames(raw)
    assert not raw or frames[-1][0] == len(raw)  # the kill tore nothing: frames go out whole
    if raw:
        before = frames[-2][0] if len(frames) > 1 else 0
        kept = sum(text.count(b"\n") for _, text in frames[:-1])
        cut_frame_lines = frames[-1][1].count(b"\n")
        raw = raw[: before + (len(raw) - before) // 2]
        open_seg.write_bytes(raw)
    r = _replay(open_seg)
    if raw:
        assert r.returncode == 3, r.stderr
        assert f"{open_seg}: compressed data ends early" in r.stderr
        # The frames before the cut one, whole; of that one, what could be decoded.
        assert kept <= len(r.stdout.splitlines()) < kept + cut_frame_lines
    else:  # the kill came right after a rotation: nothing there yet
        assert r.returncode == 0 and not r.stderr
    # A new daemon on the same log closes the leftover: indexed, bytes kept.
    d2 = Daemon("--event-log-dir", str(log))
    try:
        deadline = time.monotonic() + 30
        while not _sidecar(open_seg).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _sidecar(open_seg).exists()
        assert open_seg.read_bytes() == raw
        assert not list(log.glob("*.tmp"))
        r2 = _replay(open_seg)
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
