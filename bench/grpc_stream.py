"""gRPC streaming throughput and loss: `python bench/grpc_stream.py` (as root, for `e2e`).

Two kinds of load, reported separately:

synthetic  In process: events made in Python (an exec with a new process,
           a parent and 5 ancestors, then its exit) are offered to the real
           Hub in batches of 256, as the daemon's pipeline offers what it
           took from the ring buffer (--offer-each: one at a time), served by
           the real GrpcServer on a unix socket to real gRPC clients in other
           processes. No BPF: this is the API's own ceiling. `max`: the
           feeder waits whenever the hub or a subscriber is 4096 events
           behind (a lossless upper bound); `rate`: a fixed offered rate,
           with every loss counted.
e2e        The real daemon (`tracer run`, JSON to /dev/null) under an exec
           storm (bash running /bin/true in a loop), with 1 and 10
           subscribers: delivered events/s, and the capture pipeline's own
           loss (kernel ring buffer, and the outputs' queues).

Clients count events and parse every message (GetEventsResponse) but do
nothing else with them. Prints one line per measurement; synthetic ones add
the CPU time per event of each stage: feeder (making and offering events),
hub (encoding and queueing), filter (subscribers' regex threads), send
(the calls' threads: batching and gRPC's send), other (gRPC's own threads)
and client (one client process, the mean).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import grpc

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from export.grpc_server import GrpcConfig, GrpcServer  # noqa: E402
from export.hub import Hub  # noqa: E402
from export.proto_gen import tracer_v1_pb2 as pb  # noqa: E402
from export.proto_gen import tracer_v1_pb2_grpc as pb_grpc  # noqa: E402
from tracer import log  # noqa: E402
from tracer.core.events import Event, ExitStatus, Process, ProcessExec, ProcessExit  # noqa: E402
from tracer.daemon import _SWITCH_INTERVAL_S  # noqa: E402

END = "bench-end"


# -- client (a separate process) --------------------------------------------------


# What a filtered subscriber asks for: two RE2 searches per event on the hub
# thread, both matching every synthetic event, so the same events are
# delivered as without filters and only the filters' cost differs.
FILTERED = pb.GetEventsRequest(
    allow=[pb.Filter(binary_regex=["/(cc|gcc|clang)$"], args_regex=[r"-O[0-3]|-c"])]
)


def client(address: str, end_marker: str, ready: Path, filtered: bool) -> None:
    """Count events until one whose node (or args) is end_marker; print JSON stats."""
    by_args = end_marker.startswith("bench-end-")  # e2e: the daemon names the node
    n = lost = 0
    first = last = cpu0 = cpu1 = 0.0
    req = FILTERED if filtered else pb.GetEventsRequest()
    with grpc.insecure_channel(address) as ch:
        call = pb_grpc.TracerServiceStub(ch).GetEvents(req)
        ready.touch()
        for resp in call:
            now = time.perf_counter()
            if not n:
                first, cpu0 = now, time.process_time()
            last = now
            done = False
            for ev in resp.events:
                if ev.type == "lost":
                    lost += sum(ev.lost.daemon.values())
                    continue
                n += 1
                if ev.node == end_marker or (by_args and end_marker in ev.process.args):
                    done = True
            if done:
                cpu1 = time.process_time()
                call.cancel()
                break
    print(json.dumps({"events": n, "lost": lost, "seconds": last - first, "cpu": cpu1 - cpu0}))


def start_clients(
    address: str, count: int, end_marker: str, filtered: bool = False
) -> list[subprocess.Popen[str]]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-ready-"))
    procs = []
    for i in range(count):
        ready = tmp / str(i)
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "_client",
                    address,
                    end_marker,
                    str(ready),
                    "filtered" if filtered else "all",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    deadline = time.monotonic() + 30
    while not all((tmp / str(i)).exists() for i in range(count)):
        if time.monotonic() > deadline:
            raise RuntimeError("clients did not start")
        time.sleep(0.05)
    return procs


def wait_subscribed(address: str, n: int) -> None:
    with grpc.insecure_channel(address) as ch:
        s = pb_grpc.TracerServiceStub(ch)
        while s.GetHealth(pb.GetHealthRequest()).subscribers < n:
            time.sleep(0.05)


def results(procs: list[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    out = []
    for p in procs:
        stdout, _ = p.communicate(timeout=120)
        out.append(json.loads(stdout))
    return out


# -- synthetic --------------------------------------------------------------------


def _stage(name: str) -> str:
    """The stage a thread of this process works for, by its name."""
    if name == "MainThread":
        return "feeder"
    if name == "sink-grpc":
        return "hub"
    if name.startswith("grpc-filter-"):
        return "filter"  # a subscriber's own filter thread (regexes)
    if name.startswith("grpc-"):  # GrpcServer's workers
        return "send"  # the call's thread: batches() and gRPC's send of each message
    return "other"  # gRPC's C-core threads and its Python poller


def thread_cpu() -> dict[str, float]:
    """CPU seconds this process's threads have run, by stage (schedstat: ns exact)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            ns = int(Path(f"/proc/self/task/{tid}/schedstat").read_text().split()[0])
            comm = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended meanwhile
        stage = _stage(names.get(int(tid), comm))
        out[stage] = out.get(stage, 0.0) + ns / 1e9
    return out


class _Status:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def health(self) -> pb.GetHealthResponse:
        return pb.GetHealthResponse(subscribers=self.hub.subscribers)

    def info(self) -> pb.GetInfoResponse:
        return pb.GetInfoResponse()


class _NoPolicies:
    def apply_policy_texts(self, docs: list[tuple[str, str]]) -> list[str]:
        raise ValueError("this benchmark's server has no policies")


def _proc(pid: int, parent: str | None, args: tuple[str, ...]) -> Process:
    return Process(
        exec_id=f"bench:{pid * 1000}:{pid}",
        pid=pid,
        tid=pid,
        uid=1000,
        euid=1000,
        gid=1000,
        egid=1000,
        auid=1000,
        user="alice",
        binary=f"/usr/bin/{args[0]}",
        args=args,
        cwd="/home/alice/src/project",
        start_time=time.time_ns(),
        parent_exec_id=parent,
        flags=(),
        cgroup_id=12345,
    )


class Synthetic:
    """Exec (new process) then exit, alternately, under a fixed 7-deep ancestry."""

    def __init__(self) -> None:
        chain: list[Process] = []
        parent = None
        for pid, name in enumerate(["systemd", "sshd", "sshd", "bash", "make", "bash"], 1):
            p = _proc(pid, parent, (name, "--some", "args"))
            chain.append(p)
            parent = p.exec_id
        self.parent = chain[-1]
        self.ancestors = tuple(reversed(chain[:-1]))
        self.i = 0
        self._pending: Process | None = None

    def next(self, node: str = "bench") -> Event:
        now = time.time_ns()
        if self._pending is None:
            self.i += 1
            p = _proc(10_000 + self.i, self.parent.exec_id, ("cc", "-c", f"file{self.i}.c", "-O2"))
            self._pending = p
            return ProcessExec(now, node, p, self.parent, self.ancestors)
        p, self._pending = self._pending, None
        return ProcessExit(now, node, p, self.parent, self.ancestors, ExitStatus(0, None))


def synthetic(
    subscribers: int,
    mode: str,
    rate: int,
    seconds: float,
    filtered: bool = False,
    ancestors: str = "full",
    offer_each: bool = False,
) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-grpc-"))
    sock = tmp / "t.sock"
    hub = Hub("bench", time.time_ns, capacity=65536, subscriber_capacity=16384,
              ancestors=ancestors)
    server = GrpcServer(GrpcConfig(socket=sock), hub, _Status(hub), _NoPolicies())
    server.start()
    # As the daemon runs once it is ready: what exists by now lives as long
    # as the server, and a thread waits 1 ms for the GIL, not 5.
    gc.freeze()
    sys.setswitchinterval(_SWITCH_INTERVAL_S)
    address = f"unix://{sock}"
    procs = start_clients(address, subscribers, END, filtered)
    wait_subscribed(address, subscribers)
    gen = Synthetic()

    def feed(n: int) -> int:
        """Make n events and offer them; the ns the offers took."""
        if offer_each:
            ns = 0
            for _ in range(n):
                ev = gen.next()
                a = time.perf_counter_ns()
                hub.offer(ev)
                ns += time.perf_counter_ns() - a
            return ns
        # As the daemon's pipeline offers each batch it took from the ring buffer.
        events = [gen.next() for _ in range(n)]
        a = time.perf_counter_ns()
        hub.offer_many(events)
        return time.perf_counter_ns() - a

    offered = 0
    cpu0 = thread_cpu()
    t0 = time.perf_counter()
    offer_ns = 0
    if mode == "max":
        while time.perf_counter() - t0 < seconds:
            offer_ns += feed(256)
            offered += 256
            while hub.backlog > 4096 or hub.subscriber_backlog > 4096:
                time.sleep(0.0005)
    else:
        tick = 0.01
        per_tick = max(1, int(rate * tick))
        next_t = t0
        while time.perf_counter() - t0 < seconds:
            offer_ns += feed(per_tick)
            offered += per_tick
            next_t += tick
            delay = next_t - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
    feed_s = time.perf_counter() - t0
    for _ in range(20):  # the end marker, whatever is lost before it
        hub.offer(gen.next(node=END))
    stats = results(procs)
    cpu1 = thread_cpu()
    hub_lost = sum(hub.take_dropped().values())
    server.stop(grace=0)
    hub.close()
    rates = [s["events"] / s["seconds"] for s in stats if s["seconds"]]
    received = min(s["events"] for s in stats) - 20  # less the end markers
    lost = sum(s["lost"] for s in stats)
    if mode == "max":
        label = f"lossless feed, {seconds:.0f} s{', 2 RE2' if filtered else ''}"
        outcome = f"delivered={min(rates):6.0f}/s per subscriber (slowest)"
    else:
        label = f"offered {offered / feed_s:.0f}/s, {seconds:.0f} s"
        outcome = f"received {received} of {offered} (slowest subscriber)"
    print(
        f"synthetic  {label:<24} subscribers={subscribers:<2} {outcome} "
        f"hub_lost={hub_lost} subscriber_lost={lost} "
        f"offer={offer_ns / max(offered, 1) / 1000:.1f}us/event"
    )
    # CPU per event delivered, by stage: what the rate is made of on 2 CPUs.
    n = offered + 20
    stages = {k: (cpu1.get(k, 0.0) - cpu0.get(k, 0.0)) / n * 1e6 for k in cpu1}
    stages["client"] = sum(st["cpu"] for st in stats) / len(stats) / n * 1e6
    print("           cpu us/event: " + " ".join(f"{k}={v:.2f}" for k, v in stages.items()))


# -- end to end -----------------------------------------------------------------------


def e2e(subscribers: int, processes: int) -> None:
    if os.geteuid() != 0:
        print("e2e        skipped: needs root (loads BPF programs)")
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    sock = tmp / "t.sock"
    err = open(tmp / "daemon.log", "w+")
    daemon = subprocess.Popen(
        # Its own control socket and event log: the defaults would collide
        # with any other daemon on the machine.
        [sys.executable, "-m", "tracer", "run", "--grpc-socket", str(sock),
         "--control-socket", str(tmp / "ctl.sock"), "--event-log-dir", str(tmp / "events")],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=err,
    )
    try:
        deadline = time.monotonic() + 30
        while "event='ready'" not in (tmp / "daemon.log").read_text():
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("daemon did not start:\n" + (tmp / "daemon.log").read_text())
            time.sleep(0.1)
        address = f"unix://{sock}"
        end = f"bench-end-{uuid.uuid4().hex[:8]}"
        procs = start_clients(address, subscribers, end)
        wait_subscribed(address, subscribers)
        t0 = time.perf_counter()
        subprocess.run(
            ["bash", "-c", f"for i in $(seq {processes}); do /bin/true x; done; /bin/true {end}"],
            check=True,
        )
        storm_s = time.perf_counter() - t0
        stats = results(procs)
        with grpc.insecure_channel(address) as ch:
            info = pb_grpc.TracerServiceStub(ch).GetInfo(pb.GetInfoRequest())
    finally:
        daemon.terminate()
        daemon.wait(30)
    log = (tmp / "daemon.log").read_text()
    stopped = next(line for line in log.splitlines() if "event='stopped'" in line)
    rates = [s["events"] / s["seconds"] for s in stats if s["seconds"]]
    print(
        f"e2e        exec storm {processes} procs ({2 * processes / storm_s:6.0f} events/s) "
        f"subscribers={subscribers:<2} delivered/subscriber={min(rates):6.0f}/s (min) "
        f"subscriber_lost={sum(s['lost'] for s in stats)} "
        f"kernel_lost={sum(info.kernel_lost.values())} "
        f"daemon_lost={ {k: dict(v.by_kind) for k, v in info.daemon_lost.items()} } "
        f"final: {stopped.split('lost_kernel=')[1].split(' cache=')[0]}"
    )


def main() -> None:
    # structlog's default prints to stdout; the measurements own it.
    log.configure("warning")
    if len(sys.argv) > 1 and sys.argv[1] == "_client":
        client(sys.argv[2], sys.argv[3], Path(sys.argv[4]), sys.argv[5] == "filtered")
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0, help="feed time per synthetic run")
    p.add_argument("--processes", type=int, default=3000, help="processes per exec storm")
    p.add_argument("--only", choices=["synthetic", "e2e"])
    p.add_argument("--ancestors", choices=["full", "brief", "none"], default="full",
                   help="of the synthetic hub's events (the daemon's --ancestors)")
    p.add_argument("--offer-each", action="store_true",
                   help="synthetic: offer events one at a time (the script before 2026-12-07), "
                   "not in batches as the daemon does")
    p.add_argument("--one", action="store_true",
                   help="synthetic: only the lossless feed to one subscriber")
    args = p.parse_args()
    print(f"# {time.strftime('%Y-%m-%d')} {os.uname().release} {os.cpu_count()} cpus")
    a, each = args.ancestors, args.offer_each
    if args.only != "e2e":
        synthetic(1, "max", 0, args.seconds, ancestors=a, offer_each=each)
    if args.only != "e2e" and not args.one:
        synthetic(1, "rate", 50_000, args.seconds, ancestors=a, offer_each=each)
        synthetic(10, "max", 0, args.seconds, ancestors=a, offer_each=each)
        synthetic(10, "rate", 5_000, args.seconds, ancestors=a, offer_each=each)
        synthetic(10, "max", 0, args.seconds, filtered=True, ancestors=a, offer_each=each)
    if args.only != "synthetic" and not args.one:
        e2e(1, args.processes)
        e2e(10, args.processes)


if __name__ == "__main__":
    main()
