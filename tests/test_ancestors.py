"""--ancestors: fewer ancestors in the JSON output, every one of them still in the event log."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import Daemon, is_exec, new_marker

from forensics.log import Problems, events, list_segments

pytestmark = pytest.mark.kernel


def _chain_exec(marker: str) -> None:
    """/bin/true MARKER three processes below us: its ancestors go beyond its parent."""
    subprocess.run(["sh", "-c", f"sh -c '/bin/true {marker}; :'; :"], check=True)


@pytest.mark.parametrize("mode", ["brief", "none"])
def test_the_output_names_fewer_ancestors_and_the_log_keeps_them_whole(
    mode: str, tmp_path: Path
) -> None:
    log_dir = tmp_path / "events"
    d = Daemon("--ancestors", mode, "--event-log-dir", str(log_dir))
    try:
        marker = new_marker("anc")
        _chain_exec(marker)
        out = d.wait_for(is_exec(marker), timeout=30)
    finally:
        assert d.stop() == 0, "".join(d.stderr)
    logged = [
        ev
        for seg in list_segments([log_dir])
        for _, ev in events(seg, Problems(out=None))
        if ev["type"] == "process_exec" and marker in ev["process"]["args"]
    ]
    assert len(logged) == 1
    full = logged[0]
    # The log: the whole chain, each ancestor with its command line.
    assert len(full["ancestors"]) >= 2
    assert all("args" in a and "uid" in a for a in full["ancestors"])
    assert "lineage" not in full
    # The output: the process and its parent whole, the ancestors named or left out.
    assert out["process"] == full["process"] and out["parent"] == full["parent"]
    assert out["ancestors"] == []
    if mode == "none":
        assert "lineage" not in out
    else:
        assert out["lineage"]["ancestors"] == [
            {"exec_id": a["exec_id"], "pid": a["pid"], "binary": a["binary"]}
            for a in full["ancestors"]
        ]
