"""Throttle and aggregate on the real kernel: what is posted, what is counted, and that
the counts equal what happened (bpf_probes/throttle.bpf.h)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REPO, Daemon, Event, tracer_cmd

from forensics.log import parse_time
from tracer import control

pytestmark = pytest.mark.kernel

STORM = 200_000


@pytest.fixture(scope="module")
def openloop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """open()+close() of a file N times from one process (bench/openloop.c)."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    assert cc is not None, "the storm needs a C compiler"
    exe = tmp_path_factory.mktemp("openloop") / "openloop"
    subprocess.run([cc, "-O2", "-o", str(exe), str(REPO / "bench" / "openloop.c")], check=True)
    return exe


def _policy(tmp: Path, target: Path, rule: str, action: str = "post") -> Path:
    p = tmp / "throttle.yaml"
    p.write_text(
        textwrap.dedent(
            f"""\
            policies:
              - name: storm
                rules:
                  - event: file_open
                    match: {{path: ["{target}"]}}
                    action: {action}
            """
        )
        + textwrap.indent(rule, " " * 8)
    )
    return p


def _target(tmp: Path) -> Path:
    t = tmp / "target"
    t.write_text("x\n")
    return t


def _opens_of(target: Path) -> Callable[[Event], bool]:
    return lambda e: e["type"] == "file_open" and e["file_open"]["path"] == str(target)


def _summaries(d: Daemon) -> list[Event]:
    return d.matching(
        lambda e: e["type"] == "policy_summary" and (e.get("policy") or {}).get("name") == "storm"
    )


def _counted(d: Daemon) -> int:
    return sum(int(e["policy_summary"]["count"]) for e in _summaries(d))


def _throttle_stats(d: Daemon) -> dict[str, int]:
    reply = control.request(d.control_socket, {"op": "stats"})
    assert reply["ok"], reply
    t: dict[str, int] = reply["throttle"]
    return t


def test_a_storm_of_identical_opens_is_one_event_and_the_count_of_the_rest(
    tmp_path: Path, openloop: Path, mode: str
) -> None:
    target = _target(tmp_path)
    pol = _policy(tmp_path, target, "aggregate: 60s\n")
    d = Daemon("--capture-mode", mode, "--policy", str(pol))
    try:
        run = subprocess.run([str(openloop), str(target), str(STORM)], check=True)
        assert run.returncode == 0
        d.sync()
        opens = d.matching(_opens_of(target))
        assert len(opens) == 1, opens[:3]
        # Counted in the kernel as they happened, before any summary.
        assert _throttle_stats(d)["suppressed"] == STORM - 1
        assert _summaries(d) == []  # the window (60 s) is still open
    finally:
        assert d.stop() == 0, "".join(d.stderr)
    # The stop reports the open window's count.
    (summary,) = _summaries(d)
    s = summary["policy_summary"]
    assert int(s["count"]) == STORM - 1
    assert (s["event"], s["aggregate"], s["limit"], s["interval_ms"], s["by"]) == (
        "file_open", True, 1, 60_000, "process"
    )
    assert summary["process"]["exec_id"] == opens[0]["process"]["exec_id"]
    ns = {k: parse_time(v) for k, v in (("posted", opens[0]["time"]), ("summary", summary["time"]),
                                         ("first", s["first"]), ("window", s["window_start"]))}
    assert ns["window"] <= ns["posted"] <= ns["first"] <= ns["summary"], ns
    assert [e for e in d.events if e["type"] == "lost"] == []
    assert "throttled events not reported" not in "".join(d.stderr)


def test_a_throttle_posts_n_per_window_and_reports_the_rest_when_it_ends(
    tmp_path: Path, openloop: Path, mode: str
) -> None:
    target = _target(tmp_path)
    rule = "throttle: {events: 5, per: 2s}\n"
    d = Daemon("--capture-mode", mode, "--policy", str(_policy(tmp_path, target, rule)))
    try:
        subprocess.run([str(openloop), str(target), "50"], check=True)
        # Without waiting for a stop: the window ends, and the daemon's
        # flush reports it within a quarter second.
        summary = d.wait_for(
            lambda e: e["type"] == "policy_summary" and e["policy"]["name"] == "storm",
            timeout=10,
        )
        assert int(summary["policy_summary"]["count"]) == 45
        assert len(d.matching(_opens_of(target))) == 5
        # A new process is a new key: its own five.
        subprocess.run([str(openloop), str(target), "7"], check=True)
        d.sync()
        assert len(d.matching(_opens_of(target))) == 10
    finally:
        assert d.stop() == 0, "".join(d.stderr)
    assert _counted(d) == 45 + 2


def test_a_throttle_by_cgroup_shares_one_budget_among_its_processes(
    tmp_path: Path, openloop: Path
) -> None:
    target = _target(tmp_path)
    rule = "throttle: {events: 4, per: 60s, by: cgroup}\n"
    d = Daemon("--policy", str(_policy(tmp_path, target, rule)))
    try:
        for _ in range(3):
            subprocess.run([str(openloop), str(target), "10"], check=True)
        d.sync()
        assert len(d.matching(_opens_of(target))) == 4
    finally:
        assert d.stop() == 0, "".join(d.stderr)
    assert _counted(d) == 26
    assert {e["policy_summary"]["by"] for e in _summaries(d)} == {"cgroup"}


def test_enforcement_is_never_throttled(tmp_path: Path, mode: str) -> None:
    """Every open of a sigkill rule kills and is posted, whatever its throttle says."""
    target = _target(tmp_path)
    rule = "throttle: {events: 1, per: 60s, by: cgroup}\n"
    pol = _policy(tmp_path, target, rule, action="sigkill")
    d = Daemon("--capture-mode", mode, "--policy", str(pol))
    try:
        cat = shutil.which("cat") or "/bin/cat"
        codes = [subprocess.run([cat, str(target)], capture_output=True).returncode
                 for _ in range(3)]
        d.sync()
        assert codes == [-9, -9, -9]
        killed = d.matching(_opens_of(target))
        assert [e["policy"]["action"] for e in killed] == ["sigkill"] * 3
    finally:
        assert d.stop() == 0, "".join(d.stderr)
    assert _summaries(d) == []


def test_the_dry_run_predicts_what_the_kernel_posts_and_counts(
    tmp_path: Path, openloop: Path
) -> None:
    """One daemon records every open of the file; another runs a throttle live. The
    throttle replayed on the first one's log posts and counts what the second did."""
    target = _target(tmp_path)
    record = tmp_path / "record"
    record.mkdir()
    everything = _policy(record, target, "")
    under_test = _policy(tmp_path, target, "throttle: {events: 3, per: 60s}\n")
    log = tmp_path / "log"
    recorder = Daemon("--policy", str(everything), "--event-log-dir", str(log))
    live = Daemon("--policy", str(under_test))
    try:
        for n in (20, 2):
            subprocess.run([str(openloop), str(target), str(n)], check=True)
        for d in (recorder, live):
            d.sync()
    finally:
        assert live.stop() == 0, "".join(live.stderr)
        assert recorder.stop() == 0, "".join(recorder.stderr)
    assert len(recorder.matching(_opens_of(target))) == 22
    posted, counted = len(live.matching(_opens_of(target))), _counted(live)
    assert (posted, counted) == (3 + 2, 17)
    r = subprocess.run(
        tracer_cmd("policy", "test", str(under_test), "--from", str(log), "--json"),
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    (rule,) = json.loads(r.stdout)["rules"]
    assert (rule["events"], rule["posted"], rule["suppressed"]) == (22, posted, counted)


def test_the_throttle_table_is_sized_by_its_flag() -> None:
    d = Daemon("--throttle-keys", "64")
    try:
        ids = {
            int(line.split()[1])
            for fd in Path(f"/proc/{d.proc.pid}/fdinfo").iterdir()
            for line in fd.read_text().splitlines()
            if line.startswith("map_id:")
        }
        shown = json.loads(
            subprocess.run(["bpftool", "-j", "map", "show"], check=True, capture_output=True).stdout
        )
        ours = [m for m in shown if m["id"] in ids and m["name"] == "tr_throttle"]
        assert [m["max_entries"] for m in ours] == [64]
    finally:
        assert d.stop() == 0, "".join(d.stderr)
    r = subprocess.run(tracer_cmd("run", "--throttle-keys", "0"), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2
    assert "--throttle-keys must be between 1 and 1048576, not 0" in r.stderr


def test_counts_lost_to_eviction_are_counted_and_reported(tmp_path: Path) -> None:
    """A table too small for the keys of one window evicts keys whose counts
    were not reported yet: the stop says how many, and with the summaries
    that makes every event the kernel kept back."""
    watched = tmp_path / "w"
    watched.mkdir()
    names = [watched / f"f{i}" for i in range(50)]
    for p in names:
        p.write_text("x")
    pol = tmp_path / "evict.yaml"
    pol.write_text(
        "policies:\n  - name: storm\n    rules:\n      - event: file_open\n"
        f"        match: {{path: {{prefix: ['{watched}/']}}}}\n        aggregate: 60s\n"
    )
    d = Daemon("--policy", str(pol), "--throttle-keys", "8")
    script = "import sys\nfor p in sys.argv[1:]:\n    for _ in range(3):\n        open(p).close()\n"
    try:
        subprocess.run([sys.executable, "-c", script, *map(str, names)], check=True)
        d.sync()
        posted = len(d.matching(lambda e: e["type"] == "file_open"
                                and e["file_open"]["path"].startswith(f"{watched}/")))
        suppressed = _throttle_stats(d)["suppressed"]
        assert posted + suppressed == 3 * len(names)
    finally:
        assert d.stop() == 0, "".join(d.stderr)
    warned = [line for line in d.stderr if "throttled events not reported" in line]
    assert len(warned) == 1, "".join(d.stderr[-5:])
    lost = int(warned[0].split(" events=")[1].split()[0])
    assert lost > 0
    assert _counted(d) + lost == suppressed
