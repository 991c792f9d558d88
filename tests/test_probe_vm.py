"""Inside the `make test-vm` guests: the richer kernels are detected and preferred."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from capture import open_hook
from conftest import Daemon, new_marker, tracer_cmd
from factories import policy_json

pytestmark = [pytest.mark.vm, pytest.mark.kernel]


def test_probe_finds_kprobe_fentry_and_lsm() -> None:
    r = subprocess.run(tracer_cmd("probe", "--json"), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    for kind in ("kprobe", "fentry", "lsm", "tp_btf", "raw_tp", "tracepoint"):
        assert report["types"][kind] == {"loads": True, "attaches": True, "error": None}, kind
    assert report["bpf_lsm_enabled"] is True
    assert report["capture_mode"] == "lsm"
    assert report["capture_modes"] == ["lsm", "fentry", "kprobe", "tracepoint"]
    assert report["process_hooks"] == "tp_btf"


@pytest.mark.parametrize(
    ("excluded", "expected"),
    [
        ((), "lsm"),
        (("lsm",), "fentry"),
        (("lsm", "fentry"), "kprobe"),
        (("lsm", "fentry", "kprobe"), "tracepoint"),
    ],
    ids=["default", "no-lsm", "no-lsm-fentry", "no-lsm-fentry-kprobe"],
)
def test_loader_falls_back(tmp_path: Path, excluded: tuple[str, ...], expected: str) -> None:
    """With the better variants masked, the daemon picks the next one, and
    its events say they came from that variant's hook."""
    target = tmp_path / "watched"
    target.write_text("x")
    pol = tmp_path / "p.yaml"
    pol.write_text(
        "policies:\n  - name: t-fallback\n    rules:\n      - event: file_open\n"
        f"        match: {{path: ['{target}']}}\n"
    )
    args = [a for m in excluded for a in ("--exclude-capture-mode", m)]
    d = Daemon("--policy", str(pol), "--control-socket", str(tmp_path / "c.sock"), *args)
    try:
        assert f"capture_mode='{expected}'" in d.wait_log("capture mode chosen")
        marker = new_marker()
        subprocess.run([sys.executable, "-c", "import sys; open(sys.argv[2])", marker, str(target)])
        ev = d.wait_for(
            lambda e: e["type"] == "file_open" and marker in e["process"]["args"], timeout=30
        )
        assert ev["file_open"]["path"] == str(target)
        assert ev["file_open"]["hook"] == open_hook(expected)
        assert ev["policy"] == policy_json("t-fallback", 0, "post")
    finally:
        assert d.stop() == 0
