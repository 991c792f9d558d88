"""Shared helpers for the tracer benchmarks (not a benchmark itself).

- `Reaper`: every process a benchmark starts is registered here and is
  stopped (process group) and reaped on normal exit, on exceptions, on
  Ctrl-C and on SIGTERM/SIGHUP of the benchmark itself.
- `TracerDaemon`: runs `tracer run`, timestamps its stderr lines from a
  reader thread, reads its CPU time / RSS from /proc, stops it with
  SIGTERM and parses the final `event='stopped'` line.
- `ExportTail`: follows the JSON-lines export file incrementally.
- `OutputWatch`: when the export file received its n-th line of a type,
  for rates too high for a reader that parses each line.

Only the standard library and orjson (already a tracer dependency).
"""

from __future__ import annotations

import argparse
import ast
import atexit
import contextlib
import ctypes
import mmap
import os
import platform
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
TRACER = REPO / ".venv" / "bin" / "tracer"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_CHILD_SUBREAPER = 36


# --------------------------------------------------------------------------- cleanup


class Reaper:
    """Owns every child a benchmark starts; stops them all, whatever happens.

    Children are started in their own session (own process group), so a
    terminal Ctrl-C reaches only the benchmark, which then stops them in
    order: the daemon with SIGTERM (clean BPF detach), then SIGKILL.
    The benchmark is made a child subreaper so that grandchildren
    orphaned by a killed shell (e.g. 5,000 `sleep`s) come back to us and
    are reaped rather than left as zombies.
    """

    def __init__(self) -> None:
        self._procs: list[tuple[subprocess.Popen[bytes], int, float]] = []
        self._lock = threading.Lock()
        self._done = False
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        atexit.register(self.cleanup)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    @staticmethod
    def _on_signal(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through every finally/with

    def popen(
        self, argv: Sequence[str | os.PathLike[str]], *, term_signal: int = signal.SIGKILL,
        term_timeout: float = 10.0, **kw: object
    ) -> subprocess.Popen[bytes]:
        kw.setdefault("start_new_session", True)
        p: subprocess.Popen[bytes] = subprocess.Popen(argv, **kw)  # type: ignore[call-overload]
        with self._lock:
            self._procs.append((p, term_signal, term_timeout))
        return p

    def stop(self, p: subprocess.Popen[bytes]) -> None:
        """Stop one registered child and its process group now."""
        with self._lock:
            entry = next((e for e in self._procs if e[0] is p), None)
            if entry is not None:
                self._procs.remove(entry)
        sig, timeout = (entry[1], entry[2]) if entry else (signal.SIGKILL, 10.0)
        _stop_group(p, sig, timeout)

    def cleanup(self) -> None:
        with self._lock:
            procs, self._procs = list(reversed(self._procs)), []
        for p, sig, timeout in procs:
            with contextlib.suppress(Exception):
                _stop_group(p, sig, timeout)
        reap_orphans()


def _group_pids(pgid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            raw = Path(f"/proc/{d}/stat").read_bytes()
        except OSError:
            continue
        rest = raw[raw.rindex(b")") + 2 :].split()
        if int(rest[2]) == pgid:  # field 5: pgrp
            out.append(int(d))
    return out


def _stop_group(p: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    pgid = p.pid  # start_new_session: the child leads its own group
    members = _group_pids(pgid)
    if p.poll() is None and sig != signal.SIGKILL:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, sig)
            os.kill(p.pid, signal.SIGCONT)  # in case a benchmark left it stopped
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(30)
    # Grandchildren orphaned by the group leader's death are ours (subreaper).
    deadline = time.monotonic() + 30
    for pid in members:
        if pid == p.pid:
            continue
        while True:
            try:
                os.waitpid(pid, 0)
                break
            except ChildProcessError:
                # not (yet) ours: reparenting in flight, or reaped by someone else
                if not Path(f"/proc/{pid}").exists() or time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            except InterruptedError:
                continue


def reap_orphans() -> None:
    """Reap any zombie that was reparented to us (we are a subreaper)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


# --------------------------------------------------------------------------- daemon


_STOPPED_RE = re.compile(
    r"events=(\{.*?\}) lost_kernel=(\{.*?\}) lost_daemon=(\{.*?\})"
    r"(?: lost_grpc_subscribers=\{.*?\})? cache=CacheStats\((.*?)\)"
)
_KV_RE = re.compile(r"(\w+)=('(?:[^'\\]|\\.)*'|\{.*?\}|[^ ]+)")


def parse_kv(line: str) -> dict[str, str]:
    return {k: v.strip("'") for k, v in _KV_RE.findall(line)}


@dataclass
class Stopped:
    rc: int | None
    events: dict[str, int] = field(default_factory=dict)
    lost_kernel: dict[str, int] = field(default_factory=dict)
    lost_daemon: dict[str, int] = field(default_factory=dict)
    cache: dict[str, int] = field(default_factory=dict)
    found: bool = False
    exit_s: float = float("nan")  # SIGTERM -> the process exited

    @property
    def lost_total(self) -> int:
        return sum(self.lost_kernel.values()) + sum(self.lost_daemon.values())


class DaemonFailed(RuntimeError):
    """The daemon exited (or hung) before its ready line."""


_RUN_FLAGS: dict[str, frozenset[str]] = {}


def run_flags(tracer: Path = TRACER) -> frozenset[str]:
    """The options `tracer run` accepts (from its --help; cached)."""
    key = str(tracer)
    if key not in _RUN_FLAGS:
        try:
            out = subprocess.run([key, "run", "--help"], capture_output=True, text=True,
                                 timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        _RUN_FLAGS[key] = frozenset(re.findall(r"--[a-z0-9][a-z0-9-]*", out))
    return _RUN_FLAGS[key]


def private_sockets(directory: Path, tag: str, tracer: Path = TRACER) -> list[str]:
    """Per-run control/gRPC socket paths and event log, for a daemon that has them:
    the defaults under /run/tracer and /var/lib/tracer would collide with any
    other daemon on the machine."""
    flags = run_flags(tracer)
    out: list[str] = []
    if "--event-log-dir" in flags:
        out += ["--event-log-dir", str(directory / f"{tag}.events")]
    if "--control-socket" in flags:
        out += ["--control-socket", str(directory / f"{tag}.ctl.sock")]
    if "--grpc-socket" in flags:
        out += ["--grpc-socket", str(directory / f"{tag}.grpc.sock")]
    return out


_ANNOUNCED = False


class TracerDaemon:
    """One `tracer run` process writing to an export file.

    Without `argv`, the daemon gets its own control/gRPC sockets next to
    the export file (where the CLI has them); `extra` comes last, so it
    can override them.
    """

    def __init__(
        self,
        reaper: Reaper,
        export_file: Path,
        extra: Sequence[str] = (),
        tracer: Path = TRACER,
        argv: Sequence[str] | None = None,
    ) -> None:
        self.reaper = reaper
        self.export_file = export_file
        self._tracer_run = argv is None
        self.argv = list(argv) if argv is not None else [
            str(tracer), "run", "--export-file", str(export_file), "--export-max-size", "4G",
            *private_sockets(export_file.parent, export_file.stem, tracer), *extra,
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: list[tuple[float, str]] = []  # (perf_counter, line)
        self.ready = threading.Event()
        self.ready_at: float | None = None
        self.ready_fields: dict[str, str] = {}
        self.t_spawn = 0.0
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> float:
        """Spawn and wait for `ready`; returns seconds from spawn to the ready line."""
        global _ANNOUNCED
        if not _ANNOUNCED and self._tracer_run:
            _ANNOUNCED = True
            print(f"daemon command: {' '.join(self.argv)}", flush=True)
        self.t_spawn = time.perf_counter()
        self.proc = self.reaper.popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, term_signal=signal.SIGTERM, term_timeout=30.0,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self.ready.wait(timeout) or self.ready_at is None:
            if self._reader is not None:
                self._reader.join(2)
            tail = "\n".join(line for _, line in self.lines[-20:])
            rc = self.proc.poll()
            self.reaper.stop(self.proc)
            raise DaemonFailed(
                f"{self.argv[0]} not ready after {time.perf_counter() - self.t_spawn:.1f} s "
                f"(exit status {rc}); stderr:\n{tail}"
            )
        return self.ready_at - self.t_spawn

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for raw in self.proc.stderr:
            now = time.perf_counter()
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append((now, line))
            if not self.ready.is_set() and "event='ready'" in line:
                self.ready_at = now
                self.ready_fields = parse_kv(line)
                self.ready.set()
        if not self.ready.is_set():
            self.ready.set()  # died before ready: wake the waiter (start() checks)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu_seconds(self) -> float:
        """utime + stime of the daemon (all threads), in seconds."""
        raw = Path(f"/proc/{self.pid}/stat").read_bytes()
        rest = raw[raw.rindex(b")") + 2 :].split()
        return (int(rest[11]) + int(rest[12])) / CLK_TCK  # fields 14, 15

    def thread_cpu(self) -> dict[int, tuple[float, float]]:
        """tid -> (user s, system s); the main (ring-buffer/pipeline) thread has tid == pid."""
        out = {}
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            try:
                raw = Path(f"/proc/{self.pid}/task/{tid}/stat").read_bytes()
            except OSError:
                continue
            rest = raw[raw.rindex(b")") + 2 :].split()
            out[int(tid)] = (int(rest[11]) / CLK_TCK, int(rest[12]) / CLK_TCK)
        return out

    def mem_kb(self) -> dict[str, int]:
        out = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem", "VmSize", "Threads"):
                out[k] = int(v.split()[0])
        return out

    def pss_kb(self) -> int:
        """Proportional set size: a page shared with other processes (a library's
        code) counts as its share; a page mapped twice by this one, once."""
        for line in Path(f"/proc/{self.pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
        raise RuntimeError(f"no Pss in /proc/{self.pid}/smaps_rollup")

    def bpf_map_rss_kb(self) -> int:
        """Rss of the BPF map mmaps: the rings' data, mapped once and wholly resident."""
        total, in_map = 0, False
        for line in Path(f"/proc/{self.pid}/smaps").read_text().splitlines():
            first = line.split(None, 1)[0] if line else ""
            if "-" in first and not first.endswith(":"):
                in_map = "anon_inode:bpf-map" in line
            elif in_map and line.startswith("Rss:"):
                total += int(line.split()[1])
        return total

    def stop(self, timeout: float = 60.0) -> Stopped:
        assert self.proc is not None
        t0 = time.perf_counter()
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            rc = None
        exit_s = time.perf_counter() - t0
        self.reaper.stop(self.proc)  # SIGKILL if it hung; deregisters
        if self._reader is not None:
            self._reader.join(5)
        st = Stopped(rc=rc, exit_s=exit_s)
        for _, line in reversed(self.lines):
            if "event='stopped'" in line:
                m = _STOPPED_RE.search(line)
                if m:
                    st.events = ast.literal_eval(m.group(1))
                    st.lost_kernel = ast.literal_eval(m.group(2))
                    st.lost_daemon = ast.literal_eval(m.group(3))
                    st.cache = {
                        k: int(v) for k, v in (kv.split("=") for kv in m.group(4).split(", "))
                    }
                    st.found = True
                break
        return st

    def log_lines(self, level: str) -> list[str]:
        return [line for _, line in self.lines if f"level='{level}'" in line]


# --------------------------------------------------------------------------- export file


class ExportTail:
    """Reads complete JSON lines appended to the export file since the last call.

    Fast path: the serializer writes `{"type":"..."` first, so types are
    counted from the line prefix; only `lost` lines and, when `only` is
    given, lines containing those bytes are parsed and passed to on_event
    (a 20,000-exec storm is ~40k lines, too slow to parse all at once
    without delaying the drain measurement).
    """

    _PREFIX = b'{"type":"'

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pos = 0
        self._partial = b""
        self.types: Counter[str] = Counter()
        self.lost_kernel: Counter[str] = Counter()
        self.lost_daemon: Counter[str] = Counter()
        self.bad_lines = 0
        self.needle: bytes | None = None  # count lines holding these bytes, by type,
        self.needle_types: Counter[str] = Counter()  # without parsing them

    def read(self, on_event: Callable[[dict], None] | None = None,
             only: bytes | None = None) -> int:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._pos)
                data = f.read()
        except FileNotFoundError:
            return 0
        self._pos += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        n = 0
        pre = self._PREFIX
        for line in lines:
            if not line:
                continue
            n += 1
            t = None
            if line.startswith(pre):
                end = line.find(b'"', len(pre))
                t = line[len(pre):end].decode()
            if self.needle is not None and t is not None and self.needle in line:
                self.needle_types[t] += 1
            parse = t is None or t == "lost" or (
                on_event is not None and (only is None or only in line))
            if not parse:
                self.types[t] += 1  # type: ignore[index]
                continue
            try:
                ev = orjson.loads(line)
            except orjson.JSONDecodeError:
                self.bad_lines += 1
                continue
            t = ev.get("type", "?")
            self.types[t] += 1
            if t == "lost":
                lost = ev.get("lost") or {}
                self.lost_kernel.update(lost.get("kernel") or {})
                self.lost_daemon.update(lost.get("daemon") or {})
            if on_event is not None and (only is None or only in line):
                on_event(ev)
        return n

    @property
    def lost_total(self) -> int:
        return sum(self.lost_kernel.values()) + sum(self.lost_daemon.values())


@dataclass
class Delivery:
    """What OutputWatch saw: `count` lines of its type (complete when >= n);
    `seconds` and the daemon's `cpu` seconds from start() to the sample that
    first held the n-th line (to the last growth when it never came)."""

    count: int
    complete: bool
    seconds: float
    cpu: float


_BPF_MAP_TYPE_RINGBUF = 27
_POS = struct.Struct("<Q")


class RingFill:
    """The peak fill of one of a daemon's BPF rings, from the kernel's positions.

    Finds the ring by name among the maps the daemon holds open (its fdinfo
    and bpftool), opens it by id and maps its consumer and producer pages
    read-only; a thread samples producer - consumer every `interval` s.
    """

    def __init__(self, pid: int, name: str, interval: float = 0.0005) -> None:
        self.name, self.size, self.peak = name, 0, 0
        map_id = None
        for info in Path(f"/proc/{pid}/fdinfo").iterdir():
            try:
                fields = dict(line.split(":\t", 1) for line in info.read_text().splitlines()
                              if ":\t" in line)
            except OSError:
                continue
            if fields.get("map_type") != str(_BPF_MAP_TYPE_RINGBUF):
                continue
            shown = orjson.loads(subprocess.run(
                ["bpftool", "-j", "map", "show", "id", fields["map_id"]],
                check=True, capture_output=True).stdout)
            if shown.get("name") == name:
                map_id, self.size = int(fields["map_id"]), int(fields["max_entries"])
        if map_id is None:
            raise RuntimeError(f"the daemon {pid} holds no ring {name}")
        libbpf = ctypes.CDLL("libbpf.so.1", use_errno=True)
        fd = libbpf.bpf_map_get_fd_by_id(map_id)
        if fd < 0:
            raise OSError(-fd, f"bpf_map_get_fd_by_id({map_id})")
        try:
            self._mem = mmap.mmap(fd, 2 * mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(fd)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(interval,), daemon=True)
        self._thread.start()

    def _sample(self, interval: float) -> None:
        while not self._stop.wait(interval):
            used = (_POS.unpack_from(self._mem, mmap.PAGESIZE)[0]
                    - _POS.unpack_from(self._mem, 0)[0])
            self.peak = max(self.peak, used)

    def stop(self) -> str:
        """Stop sampling; the peak, in words."""
        self._stop.set()
        self._thread.join()
        self._mem.close()
        return (f"{self.name} peak fill {self.peak / 2**20:.1f} MiB of {self.size / 2**20:.0f} "
                f"MiB ({self.peak / self.size:.0%})")


class OutputWatch:
    """When the export file received its n-th line of one type, timed without competing for CPU.

    ExportTail copies and splits every line: at 4-5 KB lines that cost 13 us
    a line on the 2-vCPU development VM, as much CPU as the daemon spends
    making the line, so a posted storm measured the daemon sharing the
    machine with its own audience. This samples only the file's size and the
    daemon's CPU time every `interval`; a few times a second it counts the
    new lines of the type in place (mmap and memmem, a few ms per 100 MB),
    and the first sample whose size reached the end of the n-th line gives
    the time.
    """

    def __init__(self, path: Path, kind: str, n: int, cpu: Callable[[], float],
                 interval: float = 0.02, scan_every: float = 0.25) -> None:
        self.path = path
        self.n = n
        self._cpu = cpu
        self._interval = interval
        self._scan_every = scan_every
        self._first = b'{"type":"%s"' % kind.encode()  # the file's first line has no \n before it
        self._needle = b"\n" + self._first
        self.count = 0
        self._scanned = 0  # lines before this offset are counted; it follows a \n (or is 0)
        self._end: int | None = None  # just past the n-th line
        self._samples: list[tuple[float, int, float]] = []  # (perf_counter, size, daemon CPU)

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def start(self) -> None:
        self._samples = [(time.perf_counter(), self._size(), self._cpu())]

    def scan(self) -> None:
        """Count the complete lines written since the last scan."""
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return
        with f:
            size = os.fstat(f.fileno()).st_size
            if size <= self._scanned:
                return
            with mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as mm:
                limit = mm.rfind(b"\n", self._scanned) + 1  # whole lines only
                if limit <= self._scanned:
                    return
                if self._scanned == 0 and mm[: len(self._first)] == self._first:
                    self._found(mm, 0)
                pos = max(self._scanned - 1, 0)
                while (i := mm.find(self._needle, pos, limit)) >= 0:
                    self._found(mm, i + 1)
                    pos = i + 1
                self._scanned = limit

    def _found(self, mm: mmap.mmap, start: int) -> None:
        self.count += 1
        if self.count == self.n:
            self._end = mm.find(b"\n", start) + 1

    def wait(self, timeout: float = 900.0, stall: float = 5.0) -> Delivery:
        """Until the n-th line is there, or nothing was written for `stall` seconds."""
        t0, _, cpu0 = self._samples[0]
        deadline = t0 + timeout
        last_scan = t0
        while self._end is None:
            time.sleep(self._interval)
            now = time.perf_counter()
            size = self._size()
            if size != self._samples[-1][1]:
                self._samples.append((now, size, self._cpu()))
            if now - last_scan >= self._scan_every or now - self._samples[-1][0] >= 0.1:
                self.scan()
                last_scan = now
            if now - self._samples[-1][0] >= stall or now >= deadline:
                break
        end = self._end
        at = self._samples[-1]
        if end is not None:
            # The scan can see more than the last sample did: then now is the time.
            at = next((s for s in self._samples if s[1] >= end), None) or (
                time.perf_counter(), end, self._cpu())
        return Delivery(self.count, end is not None, at[0] - t0, at[2] - cpu0)


def host_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice
    busy = f[0] + f[1] + f[2] + f[5] + f[6]
    return busy / CLK_TCK, (f[7] if len(f) > 7 else 0) / CLK_TCK


IRQ_KINDS = ("IWI", "RES", "CAL", "TLB", "LOC")


def interrupts() -> dict[str, int]:
    """Machine-wide counts (all CPUs) of some /proc/interrupts lines, plus context switches:
    IWI irq-work (BPF ring-buffer wake-ups go through it), RES rescheduling IPIs,
    CAL function-call IPIs, TLB shootdowns, LOC timer; ctxt from /proc/stat."""
    out: dict[str, int] = {}
    ncpu = os.cpu_count() or 1
    for line in Path("/proc/interrupts").read_text().splitlines():
        name, _, rest = line.strip().partition(":")
        if name in IRQ_KINDS:
            out[name] = sum(int(x) for x in rest.split()[:ncpu] if x.isdigit())
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("ctxt "):
            out["ctxt"] = int(line.split()[1])
    return out


def tracer_bpf_programs() -> int | None:
    """How many BPF programs named tr_* are loaded (any process); None without bpftool."""
    exe = shutil.which("bpftool")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "-j", "prog", "show"], capture_output=True, timeout=30,
                             check=True).stdout
        return sum(1 for p in orjson.loads(out) if str(p.get("name", "")).startswith("tr_"))
    except (subprocess.SubprocessError, orjson.JSONDecodeError, OSError):
        return None


def wait_quiet(
    max_cores: float = 0.1, window: float = 2.0, windows: int = 3, timeout: float = 900.0,
    own_cpu: Callable[[], float] | None = None, own_bpf: int = 0, log: bool = True,
) -> float:
    """Wait until the machine is quiet: `windows` consecutive windows in which others used
    less than max_cores and no foreign tr_* BPF programs were loaded (this may be a shared
    machine). own_cpu: CPU s of our own idle daemon, not counted. Returns seconds waited."""
    t0 = time.monotonic()
    quiet = 0
    announced = False
    while quiet < windows:
        b0, _ = host_cpu()
        c0 = own_cpu() if own_cpu else 0.0
        time.sleep(window)
        b1, _ = host_cpu()
        c1 = own_cpu() if own_cpu else 0.0
        cores = (b1 - b0 - (c1 - c0)) / window
        progs = tracer_bpf_programs() if cores < max_cores else None
        foreign = (progs or 0) - own_bpf
        if cores < max_cores and foreign <= 0:
            quiet += 1
            continue
        quiet = 0
        if log and not announced:
            print(f"    (machine busy: {cores:.2f} cores used by others"
                  f"{f', {foreign} foreign tr_* BPF programs' if foreign > 0 else ''}; waiting)",
                  flush=True)
            announced = True
        if time.monotonic() - t0 > timeout:
            print(f"    (still busy after {timeout:.0f} s; going ahead)", flush=True)
            break
    return time.monotonic() - t0


def wait_until(pred: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# --------------------------------------------------------------------------- misc


def add_quiet_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--quiet-cores", type=float, default=0.1,
                    help="before each measurement, wait until others use less than this many "
                    "cores for 6 s and load no tr_* BPF programs (0: do not wait)")
    ap.add_argument("--quiet-timeout", type=float, default=900.0)


def quiet(args: argparse.Namespace) -> None:
    """wait_quiet() as the --quiet-* options say."""
    if args.quiet_cores > 0:
        wait_quiet(args.quiet_cores, timeout=args.quiet_timeout)


def run_bench(bench: Callable[[Reaper, argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run `bench` as root with a Reaper that stops every child, also on Ctrl-C."""
    require_root()
    reaper = Reaper()
    try:
        return bench(reaper, args)
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        reaper.cleanup()


def tmpdir(prefix: str, keep: bool = False, base: Path | None = None) -> Path:
    d = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    if not keep:
        atexit.register(shutil.rmtree, d, True)
    return d


def fmt_stats(values: Iterable[float], fmt: str = "{:.3f}") -> str:
    v = list(values)
    if not v:
        return "-"
    return (
        f"median {fmt.format(statistics.median(v))}  min {fmt.format(min(v))}  "
        f"max {fmt.format(max(v))}  all [{', '.join(fmt.format(x) for x in v)}]"
    )


def machine_summary() -> dict[str, str]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    rev = "?"
    with contextlib.suppress(Exception):
        rev = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "tracer", "enrich", "export"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        if dirty:
            rev += " (+uncommitted changes in tracer/enrich/export)"
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "mem_gib": f"{mem_kb / 1048576:.1f}",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "tracer_rev": rev,
    }


def print_header(title: str) -> None:
    m = machine_summary()
    print(f"== {title} ==")
    print(
        f"date {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}  nproc {m['nproc']}  "
        f"cpu {m['cpu']!r}  mem {m['mem_gib']} GiB  kernel {m['kernel']}  "
        f"python {m['python']}  tracer {m['tracer_rev']}  "
        f"loadavg {' '.join(Path('/proc/loadavg').read_text().split()[:3])}"
    )
    sys.stdout.flush()


def require_root() -> None:
    if os.geteuid() != 0:
        sys.exit("benchmarks start the tracer daemon: run as root")
