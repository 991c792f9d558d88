"""Choosing the file/connect capture mode: the probe's order, forcing and excluding."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import tracer_cmd

from tracer.core.loader import CaptureModeUnavailable, choose_capture_mode

ALL = ["lsm", "fentry", "kprobe", "tracepoint"]


@pytest.mark.parametrize(
    ("usable", "forced", "excluded", "chosen"),
    [
        (ALL, "auto", (), "lsm"),
        (ALL, "auto", ("lsm",), "fentry"),
        (ALL, "auto", ("lsm", "fentry"), "kprobe"),
        (ALL, "auto", ("lsm", "fentry", "kprobe"), "tracepoint"),
        (["tracepoint"], "auto", (), "tracepoint"),
        (ALL, "kprobe", ("fentry",), "kprobe"),
    ],
)
def test_choice(usable: list[str], forced: str, excluded: tuple[str, ...], chosen: str) -> None:
    assert choose_capture_mode(usable, forced, excluded) == chosen


def test_nothing_left_or_forced_missing_is_refused() -> None:
    with pytest.raises(CaptureModeUnavailable, match="capture mode lsm is not available"):
        choose_capture_mode(["tracepoint"], "lsm")
    with pytest.raises(CaptureModeUnavailable, match="no capture mode left"):
        choose_capture_mode(["tracepoint"], "auto", ("tracepoint",))


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(tracer_cmd(*args), capture_output=True, text=True, timeout=60)


@pytest.mark.kernel
def test_forcing_a_mode_this_kernel_lacks_is_one_clear_line() -> None:
    report = json.loads(_run("probe", "--json").stdout)
    missing = [m for m in ALL if m not in report["capture_modes"]]
    assert missing, "this host is expected to lack LSM/fentry (see KERNEL.md)"
    r = _run("run", "--capture-mode", missing[0], "--no-grpc")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert lines == [
        f"tracer: error: capture mode {missing[0]} is not available on this kernel "
        f"(available: {', '.join(report['capture_modes'])}); run `tracer probe`"
    ]


def test_excluding_every_mode_or_the_forced_one_is_refused() -> None:
    args = [a for m in ALL for a in ("--exclude-capture-mode", m)]
    r = _run("run", "--no-grpc", *args)
    assert r.returncode == 1 and "no capture mode left" in r.stderr
    r = _run(
        "run", "--no-grpc", "--capture-mode", "tracepoint", "--exclude-capture-mode", "tracepoint"
    )
    assert r.returncode == 2
    assert r.stderr.strip() == (
        "tracer: error: --capture-mode tracepoint is also in --exclude-capture-mode"
    )
