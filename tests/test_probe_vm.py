"""Inside the `make test-vm` guests: the richer kernels are detected and preferred."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import tracer_cmd

pytestmark = pytest.mark.vm


def test_probe_finds_kprobe_fentry_and_lsm() -> None:
    r = subprocess.run(tracer_cmd("probe", "--json"), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    for kind in ("kprobe", "fentry", "lsm", "tp_btf", "raw_tp", "tracepoint"):
        assert report["types"][kind] == {"loads": True, "attaches": True, "error": None}, kind
    assert report["bpf_lsm_enabled"] is True
    assert report["capture_mode"] == "lsm"
    assert report["process_hooks"] == "tp_btf"
