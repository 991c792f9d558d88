"""The gRPC stream's limits against the real daemon: huge events, clients that never read.

A chain of 66 processes made here (each a copy of bash under a ~4 KiB
non-UTF-8 directory, run with ~8 KiB of non-UTF-8 arguments) gives the
events of its deepest processes over 4 MiB of protobuf in full, more than
any gRPC client accepts by default.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import Daemon, new_marker
from grpc_helpers import Subscription, stub, wait_subscribers

from export.pb import CUT_FLAG, MAX_EVENT_BYTES
from export.proto_gen import tracer_v1_pb2 as pb

DEPTH = 66  # the process, its parent and the daemon's default 64 ancestors
# The script each level runs: the next level, or at the bottom `true` N
# times. $PAUSE seconds between processes (a bash builtin: a `sleep` would
# be a process too) spread the events over time.
CHAIN = """d=$1; m=$2; n=$3
exec 9<>"$FIFO"
pause() { read -r -t "$PAUSE" -u 9 _ || true; }
if [ "$d" -gt 1 ]; then
  pause
  "$BASH" "$0" $((d - 1)) "$m" "$n" "$4"
  pause
else
  for i in $(seq "$n"); do pause; /bin/true "$m-$i"; done
  /bin/true "$m-end"
fi
"""


def run_chain(tmp: Path, marker: str, loops: int, pause: float = 0.0) -> None:
    """Run the chain; its bottom runs /bin/true `loops` times, then once with `{marker}-end`."""
    # As long as a path may be (4096 with its NUL), less room for "/bash".
    long_dir = bytes(tmp)
    while len(long_dir) < 4080:
        long_dir += b"/" + bytes([0xFE]) * min(250, 4080 - len(long_dir) - 1)
    os.makedirs(long_dir, exist_ok=True)
    bash = long_dir + b"/bash"
    if not os.path.exists(bash):
        shutil.copy(shutil.which("bash") or "/bin/bash", bash)
    script = tmp / "chain.sh"
    script.write_text(CHAIN)
    fifo = tmp / "pause.fifo"
    if not fifo.exists():
        os.mkfifo(fifo)  # nobody writes: a read on it waits out its timeout
    big = bytes([0xFF]) * 8000  # cut by the kernel at 8 KiB of arguments in all
    subprocess.run(
        [bash, str(script), str(DEPTH), marker, str(loops), big],
        cwd=long_dir,
        env={
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "FIFO": str(fifo),
            "PAUSE": str(pause),
        },
        check=True,
        timeout=300,
    )


# What the daemon may hold more after the test's events than before them.
BOUND_MIB = 160


def marker_filter(marker: str) -> pb.GetEventsRequest:
    return pb.GetEventsRequest(allow=[pb.Filter(args_regex=[re.escape(marker)])])


def is_true(marker: str, kind: str) -> object:
    return lambda e: e["type"] == kind and e["process"]["args"][1:] == [marker]


def memory_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0])
    return out


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    d = Daemon("--no-event-log")
    yield d
    assert d.stop() == 0, "".join(d.stderr)


def test_a_deep_chain_of_long_arguments_breaks_no_stream(daemon: Daemon, tmp_path: Path) -> None:
    marker = new_marker("deep")
    # A client with gRPC's defaults: it refuses messages over 4 MiB.
    with grpc.insecure_channel(daemon.address) as ch:
        sub = Subscription(ch, marker_filter(marker))
        wait_subscribers(ch, 1)
        try:
            run_chain(tmp_path, marker, loops=2)
            subprocess.run(["/bin/true", f"{marker}-done"], check=True)  # after the whole chain
            sub.wait_for(is_true(f"{marker}-done", "process_exit"), timeout=60)
            end = sub.wait_for(is_true(f"{marker}-end", "process_exit"))
            assert sub.error is None
            got = sub.snapshot()
        finally:
            sub.cancel()
    # Every event arrived: the chain's execs and exits, and the bottom's trues.
    execs = [e["process"]["exec_id"] for e in got if e["type"] == "process_exec"]
    exits = {e["process"]["exec_id"] for e in got if e["type"] == "process_exit"}
    assert len(execs) == DEPTH + 4 and set(execs) <= exits
    assert not [e for e in got if e["type"] == "lost"]
    # The deepest: its process and parent whole, far ancestors cut, none silently gone.
    assert end["process"]["args"] == ["/bin/true", f"{marker}-end"]
    assert marker in end["parent"]["args"] and CUT_FLAG not in end["parent"]["flags"]
    ancestors = end["ancestors"]
    assert len(ancestors) == 64
    cut = [CUT_FLAG in a["flags"] for a in ancestors]
    assert any(cut) and not cut[0] and cut == sorted(cut)  # nearest whole, then cut
    assert all(a["args"] == [] and a["cwd"] == "" for a, c in zip(ancestors, cut, strict=True) if c)
    chain_ids = [end["parent"]["exec_id"], *(a["exec_id"] for a in ancestors)]
    assert [a["parent_exec_id"] for a in ancestors[:-1]] == chain_ids[2:]
    # The same event, in full, is the JSON output's.
    full = daemon.wait_for(is_true(f"{marker}-end", "process_exit"))
    assert [a["exec_id"] for a in full["ancestors"]] == [a["exec_id"] for a in ancestors]
    assert all(CUT_FLAG not in a["flags"] for a in full["ancestors"])
    assert len(repr(full)) > 4 * MAX_EVENT_BYTES


def test_memory_stays_bounded_with_huge_events_and_clients_that_never_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue_bytes = 8 << 20
    # A fixed threshold (glibc raises it as big blocks are freed, up to 32
    # MiB): every buffer of 128 KiB or more is mapped on its own and given
    # back when freed, so the daemon's RSS is what it holds, not what its
    # heap once held.
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(128 << 10))
    d = Daemon(
        "--no-event-log",
        "--grpc-queue-max-bytes",
        str(queue_bytes),
        # The JSON output, to a small rotated file, drops what it cannot write.
        "--queue-max-bytes",
        "16M",
        "--export-file",
        str(tmp_path / "events.jsonl"),
        "--export-max-size",
        "8M",
        "--export-backups",
        "1",
    )
    marker = new_marker("rss")
    # They take messages of any size (a stream that failed would hold
    # nothing) and never read one: what they were sent waits in the daemon.
    big_ok = [("grpc.max_receive_message_length", -1), ("grpc.http2.bdp_probe", 0)]
    try:
        with (
            grpc.insecure_channel(d.address, options=big_ok) as stuck_ch,
            grpc.insecure_channel(d.address) as ch,
        ):
            stuck = [
                stub(stuck_ch).GetEvents(pb.GetEventsRequest()),  # everything
                stub(stuck_ch).GetEvents(marker_filter(marker)),  # through its filter thread
            ]
            ends = pb.Filter(args_regex=[f"{re.escape(marker)}-done$"])
            reader = Subscription(ch, pb.GetEventsRequest(allow=[ends]))
            wait_subscribers(ch, 3)
            before = memory_kib(d.proc.pid)
            # 122 events of 4+ MiB in full, 132 of less, a few at a time.
            run_chain(tmp_path, marker, loops=60, pause=0.05)
            # Once the hub has this one, it has all of the chain's.
            subprocess.run(["/bin/true", f"{marker}-done"], check=True)
            reader.wait_for(is_true(f"{marker}-done", "process_exit"), timeout=120)
            # What the stuck clients hold stays while they are connected;
            # the JSON output, behind with its 4 MiB lines, can take many
            # seconds more on a busy machine to be done with them.
            limit_kib = before["VmRSS"] + (BOUND_MIB << 10)
            deadline = time.monotonic() + 60
            after = memory_kib(d.proc.pid)
            while after["VmRSS"] > limit_kib and time.monotonic() < deadline:
                time.sleep(0.5)
                after = memory_kib(d.proc.pid)
            assert reader.error is None
            reader.cancel()
            for call in stuck:
                call.cancel()
    finally:
        assert d.stop() == 0, "".join(d.stderr[-20:])
    grown_mib = (after["VmRSS"] - before["VmRSS"]) / 1024
    print(
        f"daemon VmRSS {before['VmRSS'] >> 10} -> {after['VmRSS'] >> 10} MiB, "
        f"VmHWM {after['VmHWM'] >> 10} MiB"
    )
    # Queues of 8 MiB for each stuck client, the process cache and the
    # encoders' caches of 66 processes of ~64 KiB; in full, the events the
    # stuck clients were sent are over 600 MiB.
    assert grown_mib < BOUND_MIB, f"the daemon holds {grown_mib:.0f} MiB more"
