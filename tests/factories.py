"""Events, processes and test outputs that many test modules build, in one place.

Values here are what the daemon would build (tracer/core/events.py), with
awkward details on purpose: cgroup ids beyond 2**53, hostile strings,
times that are not whole milliseconds.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tracer.core import text
from tracer.core.events import (
    Connect,
    ConnectInfo,
    Container,
    Credentials,
    Event,
    ExitStatus,
    FileAttr,
    FileAttrInfo,
    FileInfo,
    FileOpen,
    Lost,
    Pod,
    PolicyMatch,
    PolicySummary,
    PrivilegeChange,
    PrivilegeInfo,
    Process,
    ProcessExec,
    ProcessExit,
    SummaryInfo,
)

# Protobuf's Timestamp JSON: the fewest of 0, 3, 6 or 9 fractional digits that are exact.
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6}|\.\d{9})?Z$")
PROCESS_KEYS = {
    "exec_id",
    "pid",
    "tid",
    "uid",
    "euid",
    "gid",
    "egid",
    "auid",
    "user",
    "binary",
    "args",
    "cwd",
    "start_time",
    "parent_exec_id",
    "flags",
    "cgroup_id",
}
T0 = 1_700_000_000_123_456_789  # 2023-11-14T22:13:20.123456789Z


def mkproc(pid: int, parent: Process | None = None, **kw: Any) -> Process:
    fields: dict[str, Any] = {
        "exec_id": f"n1:{pid * 1000}:{pid}",
        "pid": pid,
        "tid": pid,
        "uid": 1000,
        "euid": 0,
        "gid": 1001,
        "egid": 1002,
        "auid": 1000,
        "user": "alice",
        "binary": f"/bin/p{pid}",
        "args": (f"p{pid}", "--flag"),
        "cwd": "/home/alice",
        "start_time": T0 - 5_000_000_000,
        "parent_exec_id": parent.exec_id if parent else None,
        "flags": (),
        "cgroup_id": (1 << 63) + 3,  # beyond 2**53: must not lose precision
    }
    fields.update(kw)
    return Process(**fields)


INIT = mkproc(1, auid=None, user="root", uid=0, flags=("procfs",))
SSHD = mkproc(50, INIT)
BASH = mkproc(100, SSHD)
LS = mkproc(200, BASH, binary="/bin/ls", args=("ls", "-l"))


def exec_ev(p: Process = LS, time: int = T0) -> ProcessExec:
    return ProcessExec(time=time, node="n1", process=p, parent=BASH, ancestors=(SSHD, INIT))


def exit_ev(p: Process = LS, time: int = T0) -> ProcessExit:
    return ProcessExit(
        time=time,
        node="n1",
        process=p,
        parent=BASH,
        ancestors=(SSHD, INIT),
        exit=ExitStatus(code=None, signal="SIGSEGV", core_dumped=True),
    )


def log_process(
    pid: int, parent: Process | None, binary: str, t: int, flags: tuple[str, ...] = ()
) -> Process:
    """A root process as the event log tests record it: exec_id from pid and start."""
    return Process(
        exec_id=f"n1:{t}:{pid}",
        pid=pid,
        tid=pid,
        uid=0,
        euid=0,
        gid=0,
        egid=0,
        auid=None,
        user="root",
        binary=binary,
        args=(binary.rsplit("/", 1)[-1], f"arg{pid}"),
        cwd="/",
        start_time=t,
        parent_exec_id=parent.exec_id if parent else None,
        flags=flags,
        cgroup_id=1,
    )


def file_open_ev(
    p: Process = LS, policy: PolicyMatch | None = None, **kw: Any
) -> FileOpen:
    fields: dict[str, Any] = {
        "path": "/etc/shadow",
        "flags": ("O_RDONLY", "O_CLOEXEC"),
        "mode": 0,
        "result": 3,
        "error": None,
        "hook": "tracepoint/sys_exit_openat",
        "truncated": False,
        "resolved": True,
    }
    fields.update(kw)
    return FileOpen(T0, "n1", p, BASH, (SSHD, INIT), FileInfo(**fields), policy)


def connect_ev(p: Process = LS, policy: PolicyMatch | None = None, **kw: Any) -> Connect:
    fields: dict[str, Any] = {
        "family": "AF_INET",
        "protocol": "TCP",
        "sock_type": "SOCK_STREAM",
        "daddr": "192.0.2.7",
        "dport": 443,
        "saddr": "198.51.100.2",
        "sport": 50123,
        "unix_path": None,
        "result": 0,
        "error": None,
        "hook": "tracepoint/sys_connect",
    }
    fields.update(kw)
    return Connect(T0, "n1", p, BASH, (SSHD, INIT), ConnectInfo(**fields), policy)


def summary_ev(p: Process = LS, policy: PolicyMatch | None = None, **kw: Any) -> PolicySummary:
    fields: dict[str, Any] = {
        "event": "file_open",
        "count": 199_999,
        "first": T0 - 999_999_001,
        "window_start": T0 - 1_000_000_000,
        "interval_ms": 1000,
        "limit": 1,
        "by": "process",
        "aggregate": True,
        "cgroup_id": 2**63 + 5,
    }
    fields.update(kw)
    return PolicySummary(T0, "n1", p, BASH, (SSHD, INIT), SummaryInfo(**fields), policy)


def ev_at(i: int) -> Event:
    """Event number i: exec for even, exit for odd, told apart by time."""
    return exec_ev(time=T0 + i) if i % 2 == 0 else exit_ev(time=T0 + i)


HOSTILE = mkproc(
    9,
    SSHD,
    binary=text.decode(b"/tmp/\xfe\\x41")[0],
    args=("a\\b", "line1\nline2", "\x1b[31mred", 'quote"', "", "\u202eevil"),
    flags=("non_utf8", "truncated_args"),
    user=None,
    auid=None,
    cgroup_id=(1 << 64) - 1,
)

CID = "f" * 64
IN_POD = mkproc(
    300,
    BASH,
    binary_dev=(1 << 32) - 1,
    binary_ino=(1 << 64) - 1,  # beyond 2**53: a string in JSON
    mnt_ns=4026531841,
    container=Container(id=CID, runtime="containerd", name="app", image="nginx:1.27"),
    pod=Pod(
        uid="6b2c0e7e-4a8f-4d59-9f0e-2b1f6e3c9a10",
        namespace="shop",
        name="web-5d8f9c7b6-x1",
        labels={"app": "web", "tier": "front"},
        workload="web",
        workload_kind="Deployment",
    ),
)
# What the cgroup alone tells, without pod metadata.
IN_POD_NO_METADATA = mkproc(
    301,
    BASH,
    container=Container(id=CID, runtime="cri-o"),
    pod=Pod(uid="6b2c0e7e-4a8f-4d59-9f0e-2b1f6e3c9a10"),
)
DOCKER = mkproc(302, BASH, container=Container(id=CID, runtime="docker"))


# -- outputs for the queued writers (export/sink.py) ---------------------------


class GatedOutput:
    """An output whose write() blocks until the test opens the gate."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.written: list[bytes] = []
        self.flushes = 0

    def write_lines(self, lines: list[bytes], /) -> None:
        self.entered.set()
        if not self.gate.wait(timeout=30):
            raise RuntimeError("test gate never opened")
        self.written.extend(lines)

    def flush(self) -> None:
        self.flushes += 1


class ListOutput:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.flushes = 0
        self.closed_with: list[bytes] | None = None

    def write_lines(self, lines: list[bytes], /) -> None:
        self.written.extend(lines)

    def flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        self.closed_with = list(self.written)


class FailingOutput:
    def __init__(self) -> None:
        self.attempts = 0

    def write_lines(self, lines: list[bytes], /) -> None:
        self.attempts += 1
        raise OSError(28, "No space left on device")

    def flush(self) -> None:
        pass



# -- policies and sockets --------------------------------------------------------


def one_rule(name: str, event: str, match: str, action: str = "post") -> str:
    """A policy document with one policy of one rule (match in YAML flow style)."""
    return (
        f"policies:\n  - name: {name}\n    rules:\n      - event: {event}\n"
        f"        match: {match}\n        action: {action}\n"
    )


def policy_json(name: str, rule: int, action: str, **kw: object) -> dict[str, object]:
    """An event's `policy` object as the daemon writes it (defaults of a policy
    that says nothing of severity, tags, message or mode)."""
    out: dict[str, object] = {
        "name": name,
        "rule": rule,
        "action": action,
        "severity": "info",
        "tags": [],
        "message": "",
        "mode": "enforce",
    }
    out.update(kw)
    return out


def closed_port() -> int:
    """A loopback TCP port nothing listens on (a connect to it is refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


# -- hypothesis strategies: every event kind, every optional field -----------------

# Examples per property: bounded so `make test` pays seconds; bench/fuzz_long.sh
# runs the same properties far longer.
FUZZ_EXAMPLES = int(os.environ.get("TRACER_FUZZ_EXAMPLES", "200"))
BOUNDED = settings(
    max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

_U32 = st.integers(0, 2**32 - 1)
_TEXT = st.text(max_size=40)
# What text.decode makes of any kernel bytes: escaped, never raw non-UTF-8.
_KERNEL_TEXT = st.binary(max_size=40).map(lambda b: text.decode(b)[0])
_NAME = st.one_of(_TEXT, _KERNEL_TEXT)
_TIME = st.integers(0, 2**63 - 1)


@st.composite
def processes(draw: st.DrawFn, parent: Process | None = None) -> Process:
    pid = draw(st.integers(1, 2**22))
    container = draw(
        st.none()
        | st.builds(
            Container,
            id=st.text("0123456789abcdef", min_size=1, max_size=64),
            runtime=st.sampled_from(["containerd", "cri-o", "docker", "podman"]),
            name=st.none() | _TEXT,
            image=st.none() | _TEXT,
        )
    )
    pod = draw(
        st.none()
        | st.builds(
            Pod,
            uid=_TEXT,
            namespace=st.none() | _TEXT,
            name=st.none() | _TEXT,
            labels=st.dictionaries(_TEXT, _TEXT, max_size=3),
            workload=st.none() | _TEXT,
            workload_kind=st.none() | _TEXT,
        )
    )
    return Process(
        exec_id=draw(_TEXT),
        pid=pid,
        tid=draw(st.integers(1, 2**22)),
        uid=draw(_U32),
        euid=draw(_U32),
        gid=draw(_U32),
        egid=draw(_U32),
        auid=draw(st.none() | _U32),
        user=draw(st.none() | _TEXT),
        binary=draw(_NAME),
        args=tuple(draw(st.lists(_NAME, max_size=4))),
        cwd=draw(_NAME),
        start_time=draw(_TIME),
        parent_exec_id=parent.exec_id if parent is not None else draw(st.none() | _TEXT),
        flags=tuple(draw(st.lists(st.sampled_from(["procfs", "fork", "non_utf8"]), max_size=2))),
        cgroup_id=draw(st.integers(0, 2**64 - 1)),
        container=container,
        pod=pod,
    )


_POLICY = st.none() | st.builds(
    PolicyMatch,
    name=_TEXT,
    rule=st.integers(0, 63),
    action=st.sampled_from(["post", "sigkill", "deny"]),
    severity=st.sampled_from(["info", "low", "medium", "high", "critical"]),
    tags=st.lists(_TEXT, max_size=3).map(tuple),
    message=_TEXT,
    mode=st.sampled_from(["enforce", "monitor"]),
)
_OPEN_FLAGS = ["O_RDONLY", "O_CREAT", "O_CLOEXEC"]
_ERRNO = st.sampled_from([(3, None), (0, None), (-2, "ENOENT"), (-13, "EACCES")])


_KINDS = [
    "process_exec",
    "process_exit",
    "file_open",
    "connect",
    "privilege_change",
    "file_attr",
    "lost",
]
_CAP_SET = st.lists(st.sampled_from(["CAP_SETUID", "CAP_SYS_ADMIN", "CAP_63"]), max_size=2).map(
    tuple
)
_CREDENTIALS = st.builds(
    Credentials, *([_U32] * 8), _CAP_SET, _CAP_SET, _CAP_SET, _CAP_SET
)
_PRIVILEGE = st.builds(
    PrivilegeInfo,
    op=st.sampled_from(["setuid", "setresgid", "capset", "exec"]),
    old=_CREDENTIALS,
    new=_CREDENTIALS,
    changed=st.lists(st.sampled_from(["uid", "euid", "cap_effective"]), max_size=3).map(tuple),
    to_root=st.booleans(),
    hook=st.sampled_from(["tracepoint/sys_exit", "ia32:tp_btf/sys_exit"]),
)


@st.composite
def file_attrs(draw: st.DrawFn) -> FileAttrInfo:
    chmod = draw(st.booleans())
    path, escaped = text.decode(draw(st.binary(max_size=60)))
    return FileAttrInfo(
        "chmod" if chmod else "chown",
        draw(st.sampled_from(["chmod", "fchmodat2"] if chmod else ["chown", "fchown"])),
        path,
        draw(st.integers(0, 0o7777)) if chmod else None,
        None if chmod else 0,
        None if chmod else draw(st.none() | _U32),
        draw(st.none() | st.integers(1, 0o177777)),
        draw(st.sampled_from(["tracepoint/sys_exit", "ia32:tp_btf/sys_exit"])),
        draw(st.booleans()),
        draw(st.booleans()),
        escaped,
        not chmod,
    )


@st.composite
def events(draw: st.DrawFn) -> Event:
    """Any event the daemon can emit, with and without every optional part."""
    parent = draw(st.none() | processes())
    p = draw(processes(parent))
    ancestors = tuple(draw(st.lists(processes(), max_size=3))) if parent is not None else ()
    time = draw(_TIME)
    kind = draw(
        st.sampled_from(
            ["process_exec", "process_exit", "file_open", "connect", "policy_summary", "lost"]
        )
    )
    kind = draw(st.sampled_from(_KINDS))
    if kind == "process_exec":
        return ProcessExec(time, "n1", p, parent, ancestors, draw(_POLICY))
    if kind == "process_exit":
        code = draw(st.none() | st.integers(0, 255))
        status = ExitStatus(
            code,
            None if code is not None else draw(st.sampled_from(["SIGKILL", "SIGSEGV"])),
            draw(st.booleans()),
        )
        return ProcessExit(time, "n1", p, parent, ancestors, status)
    if kind == "file_open":
        result, error = draw(_ERRNO)
        path = draw(st.binary(max_size=60))
        info = FileInfo(
            text.decode(path)[0],
            tuple(draw(st.lists(st.sampled_from(_OPEN_FLAGS), max_size=3))),
            draw(st.integers(0, 0o7777)),
            result,
            error,
            draw(st.sampled_from(["tracepoint/sys_exit_openat", "lsm/file_open"])),
            draw(st.booleans()),
            draw(st.booleans()),
            text.decode(path)[1],
        )
        return FileOpen(time, "n1", p, parent, ancestors, info, draw(_POLICY))
    if kind == "connect":
        family = draw(st.sampled_from(["AF_INET", "AF_INET6", "AF_UNIX"]))
        inet = family != "AF_UNIX"
        addr = st.ip_addresses(v=4 if family == "AF_INET" else 6).map(str)
        known = draw(st.booleans())
        result, error = draw(_ERRNO)
        info = ConnectInfo(
            family,
            draw(st.sampled_from(["TCP", "UDP"])) if inet else None,
            draw(st.sampled_from(["SOCK_STREAM", "SOCK_DGRAM"])),
            draw(addr) if inet else None,
            draw(st.integers(0, 65535)) if inet else None,
            draw(addr) if inet and known else None,
            draw(st.integers(1, 65535)) if inet and known else None,
            None if inet else draw(_NAME),
            result,
            error,
            "tracepoint/sys_connect",
        )
        return Connect(time, "n1", p, parent, ancestors, info, draw(_POLICY))
    if kind == "policy_summary":
        aggregate = draw(st.booleans())
        summary = SummaryInfo(
            draw(st.sampled_from(["process_exec", "file_open", "connect"])),
            draw(st.integers(1, 2**64 - 1)),
            draw(_TIME),
            draw(_TIME),
            draw(st.integers(1, 86_400_000)),
            1 if aggregate else draw(st.integers(1, 2**24 - 1)),
            draw(st.sampled_from(["process", "cgroup"])),
            aggregate,
            draw(st.integers(0, 2**64 - 1)),
        )
        return PolicySummary(time, "n1", p, parent, ancestors, summary, draw(_POLICY))
    if kind == "privilege_change":
        return PrivilegeChange(time, "n1", p, parent, ancestors, draw(_PRIVILEGE), draw(_POLICY))
    if kind == "file_attr":
        return FileAttr(time, "n1", p, parent, ancestors, draw(file_attrs()), draw(_POLICY))
    counts = st.dictionaries(st.sampled_from(["process_exec", "file_open", "malformed"]), _U32)
    return Lost(time, "n1", draw(counts), draw(counts))


class _Other:
    __slots__ = ("a", "b")


class BorrowedSlot:
    """Slots x and y, and w: _Other's descriptor of b, whose offset is y's
    here: read through it by offset, w would be y."""

    __slots__ = ("x", "y")
    w = _Other.__dict__["b"]
