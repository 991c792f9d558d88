"""Evasions of file_open and connect capture, tried on the real kernel.

Each test is an attack a hostile process can make: change what the kernel
is asked while it reads it (a second thread flipping the buffer), reach a
peer without connect(), flood the ring buffer with records no policy
wants. The hostile programs that Python cannot write (threads racing a
syscall's argument) are C under tests/evasion/, compiled here with gcc.
Network tests use loopback addresses of their own (127.77.x.y) and
ports no other test uses. The daemon runs once per capture mode under
test (tests/capture.py).
"""

from __future__ import annotations

import collections
import errno
import os
import platform
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from capture import CONNECT_HOOK, UDP_CONNECT_HOOK, send_hook
from conftest import REPO, Daemon, Event, new_marker

from tracer import control

EVASION = REPO / "tests" / "evasion"
PY = sys.executable
# A race shows only while both threads run at once, on two CPUs: on a busy
# machine a round may run them one after the other. Rounds are repeated
# until the flipping thread has changed the outcome at least once.
ROUNDS = 20
# Bulk records per uid per second in the budget test: at most this, so that
# the 2 MiB ring has room for the capped storm and the paced execs while the
# daemon is stopped; less where the storm cannot exceed it.
BUDGET = 300
# The least budget the budget test's paced execs fit in, with a margin (see there).
VICTIM_BUDGET = 18
# The flood tests' storm: processes of one unprivileged uid.
STORMS = 3
STORM_UID = 60000 + os.getpid() % 5000
# The records of one storm exec in the ring: fork 96 and exit 104 bytes,
# the exec of spawn from a temporary directory ~250.
STORM_RUN_BYTES = 450
TRUE = os.path.realpath(shutil.which("true") or "/bin/true")


@pytest.fixture(scope="module")
def progs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The hostile programs, built for this run (their paths are unique)."""
    out = tmp_path_factory.mktemp("evasion")
    built = {}
    for name in ("connect_race", "connect_retry_race", "openat2_race"):
        built[name] = out / name
        _build(EVASION / f"{name}.c", built[name], "-pthread")
    return built


def _build(src: Path, exe: Path, *flags: str) -> None:
    subprocess.run(
        ["gcc", "-O2", "-Wall", *flags, "-o", str(exe), str(src)], check=True, capture_output=True
    )


@pytest.fixture(scope="module")
def ctl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ctl") / "control.sock"


@pytest.fixture(scope="module")
def edaemon(ctl: Path, mode: str) -> Iterator[Daemon]:
    d = Daemon("--control-socket", str(ctl), "--capture-mode", mode)
    yield d
    assert d.stop() == 0, "".join(d.stderr)


def apply(ctl: Path, doc: str) -> None:
    """Replace the daemon's policy set with this one document."""
    reply = control.request(
        ctl, {"op": "policy_apply", "documents": [["evasion.yaml", textwrap.dedent(doc)]]}
    )
    assert reply["ok"], reply


def connect_rule(name: str, match: str, action: str = "post") -> str:
    return (
        f"policies:\n  - name: {name}\n    rules:\n      - event: connect\n"
        f"        match: {match}\n        action: {action}\n"
    )


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Listener:
    """A TCP listener that accepts and closes every connection, counting them."""

    def __init__(self, addr: str, port: int, fastopen: bool = False) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((addr, port))
        if fastopen:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, 16)
        self.sock.listen(4096)
        self.accepted = 0
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


def conn_events(d: Daemon, port: int, via: str | None = None) -> list[Event]:
    return d.matching(
        lambda e: (
            e["type"] == "connect"
            and e["connect"].get("dport") == port
            and (via is None or e["connect"]["via"] == via)
        )
    )


def test_polling_a_non_blocking_connect_is_one_connect(edaemon: Daemon, ctl: Path) -> None:
    """connect() again on a connecting or connected TCP socket starts
    nothing (EALREADY, EISCONN): programs poll a non-blocking connect that
    way, and io_uring retries its own. Only the first call is a connect."""
    port = free_port()
    listener = Listener("127.77.4.9", port)
    try:
        apply(ctl, connect_rule("t-poll", f'{{daddr: ["127.77.4.9/32"], dport: [{port}]}}'))
        with socket.socket() as s:
            s.setblocking(False)
            answers = [s.connect_ex(("127.77.4.9", port))]
            select.select([], [s], [], 10)
            answers += [s.connect_ex(("127.77.4.9", port)) for _ in range(3)]
        assert answers[0] in (0, errno.EINPROGRESS) and answers[-1] == errno.EISCONN, answers
        edaemon.sync()
        evs = conn_events(edaemon, port)
        assert [e["connect"].get("error", "") for e in evs] in ([""], ["EINPROGRESS"]), evs
    finally:
        listener.close()


@pytest.mark.parametrize("after", ["drop", "keep", "fastopen"])
def test_a_connect_racing_a_disconnect_on_its_socket_is_judged(
    edaemon: Daemon, ctl: Path, progs: dict[str, Path], after: str
) -> None:
    """The retry skip above must let no connection through unjudged. A
    thread keeps the socket connecting to a black hole and disconnects it
    (connect AF_UNSPEC) while the main thread connects it to the selected
    peer. The security hook runs before connect() locks the socket: it can
    find the socket connecting, to the hole (`drop`: the main thread
    disconnects its own connections) or to the peer asked for (`keep`: a
    retry, for all the hook can tell), and the call then find it
    disconnected and start a connection of its own. `fastopen`: `keep`
    with a fast open for each connect, which the hook judges once per
    socket and peer unless the socket is closed. Every connect that
    started a connection must have its event, with its result."""
    port = free_port()
    apply(ctl, connect_rule("t-retry-race", f'{{daddr: ["127.77.7.2/32"], dport: [{port}]}}'))
    prog = str(progs["connect_retry_race"])
    # In a network namespace of its own: the hole's full queue and the SYN
    # storm stay off the machine's loopback.
    argv = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', prog, after]
    counts: collections.Counter[str] = collections.Counter()
    for _ in range(ROUNDS):  # until the two threads really ran at once
        out = subprocess.run(
            [*argv, "127.77.7.3", "127.77.7.2", str(port), "3000", "5"],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout.split()
        counts.update(dict(zip(out[::2], map(int, out[1::2]), strict=True)))
        if counts["started"] and counts["busy"]:
            break
    assert counts["started"] and counts["busy"], f"the threads never raced: {counts}"
    edaemon.sync()
    evs = [
        e
        for e in conn_events(edaemon, port)
        if e["connect"]["daddr"] == "127.77.7.2" and e["process"]["binary"] == prog
    ]
    began = [e for e in evs if e["connect"]["result"] == -errno.EINPROGRESS]
    assert len(began) == counts["started"], (
        f"{counts['started'] - len(began)} connections started without a verdict: "
        f"{dict(counts)}, {len(began)} events of a started connect ({len(evs)} in all)"
    )
    assert counts["accepted"] <= len(evs), f"{dict(counts)}, {len(evs)} events"


# ---------------------------------------------------------------- item 4: TOCTOU


def test_a_flipped_connect_address_reports_only_the_real_peer(
    edaemon: Daemon, ctl: Path, progs: dict[str, Path], mode: str
) -> None:
    """A thread flips the sockaddr between 127.77.4.2 (listening) and
    127.77.4.3 (nothing there) while the main thread connects: each event
    must name the peer the kernel used, which its result proves (a
    connection to .2 succeeds, one to .3 is refused)."""
    port = free_port()
    listener = Listener("127.77.4.2", port)
    try:
        apply(ctl, connect_rule("t-race", f'{{daddr: ["127.77.4.0/24"], dport: [{port}]}}'))
        out: list[str] = []
        for _ in range(ROUNDS):  # until the two threads really ran at once
            out += subprocess.run(
                [str(progs["connect_race"]), "loop", "127.77.4.2", "127.77.4.3", str(port), "400"],
                capture_output=True,
                text=True,
                check=True,
                timeout=120,
            ).stdout.split()
            if "ok" in out and "refused" in out:
                break
        counts = collections.Counter(out)
        assert set(out) == {"ok", "refused"}, f"not one of each outcome: {counts}"
        edaemon.sync()
        evs = conn_events(edaemon, port)
        assert len(evs) == len(out), f"{len(evs)} events for {counts}"
        wrong = [
            (e["connect"]["daddr"], e["connect"]["result"])
            for e in evs
            if (e["connect"]["daddr"], e["connect"]["result"])
            not in (("127.77.4.2", 0), ("127.77.4.3", -111))
        ]
        assert not wrong, f"{len(wrong)} events name a peer the kernel did not use: {wrong[:5]}"
        # In the program's order, event for event.
        assert [("ok" if e["connect"]["result"] == 0 else "refused") for e in evs] == out
        assert all(e["connect"]["user_memory"] is False for e in evs)
        assert {e["connect"]["hook"] for e in evs} == {CONNECT_HOOK[mode]}
        assert {e["process"]["binary"] for e in evs} == {str(progs["connect_race"])}
    finally:
        listener.close()


def test_a_sigkill_on_the_real_peer_kills_every_time_it_was_reached(
    edaemon: Daemon, ctl: Path, progs: dict[str, Path]
) -> None:
    """With sigkill on the listening address, no child may connect to it
    and live, whatever the flipping thread did to the buffer."""
    port = free_port()
    listener = Listener("127.77.4.2", port)
    try:
        apply(
            ctl,
            connect_rule(
                "t-race-kill", f'{{daddr: ["127.77.4.2/32"], dport: [{port}]}}', "sigkill"
            ),
        )
        out = subprocess.run(
            [str(progs["connect_race"]), "fork", "127.77.4.2", "127.77.4.3", str(port), "200"],
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        ).stdout.split()
        assert len(out) == 200 and set(out) <= {"killed", "refused"}, (
            f"{out.count('ok')} children connected to the killed peer and lived"
        )
        assert "killed" in out and "refused" in out
        edaemon.sync()
        evs = conn_events(edaemon, port)
        assert all(e["connect"]["daddr"] == "127.77.4.2" for e in evs)
        assert all(e["policy"]["action"] == "sigkill" for e in evs)
        assert len(evs) == out.count("killed")
    finally:
        listener.close()


def test_a_flipped_openat2_reports_the_flags_the_file_was_opened_with(
    edaemon: Daemon, ctl: Path, progs: dict[str, Path], tmp_path: Path
) -> None:
    target = tmp_path / new_marker("o2race")
    target.write_text("x")
    apply(
        ctl,
        f"""
        policies:
          - name: t-openat2-race
            rules:
              - event: file_open
                match: {{path: ["{target}"]}}
        """,
    )
    out: list[str] = []
    for _ in range(ROUNDS):  # until the two threads really ran at once
        out += subprocess.run(
            [str(progs["openat2_race"]), str(target), "400"],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout.split()
        if "r" in out and "w" in out:
            break
    assert set(out) == {"r", "w"}, f"the flipper never changed the mode: {set(out)}"
    edaemon.sync()
    evs = edaemon.matching(
        lambda e: e["type"] == "file_open" and e["file_open"]["path"] == str(target)
    )
    got = ["w" if "O_WRONLY" in e["file_open"]["flags"] else "r" for e in evs]
    assert got == out
    assert all(e["file_open"]["user_memory"] is False for e in evs)


def test_a_failed_open_says_its_name_came_from_user_memory(
    edaemon: Daemon, ctl: Path, tmp_path: Path, mode: str
) -> None:
    """The kernel's copy of a failed open's name is gone when its result is
    known: the event says the name is the process's (see the README)."""
    missing = tmp_path / new_marker("missing")
    present = tmp_path / new_marker("present")
    present.write_text("x")
    apply(
        ctl,
        f"""
        policies:
          - name: t-user-memory
            rules:
              - event: file_open
                match: {{path: ["{missing}", "{present}"]}}
        """,
    )
    code = f"import os\ntry: open({str(missing)!r})\nexcept OSError: pass\nopen({str(present)!r})"
    subprocess.run([PY, "-c", code], check=True)
    failed = edaemon.wait_for(
        lambda e: e["type"] == "file_open" and e["file_open"]["path"] == str(missing)
    )
    opened = edaemon.wait_for(
        lambda e: e["type"] == "file_open" and e["file_open"]["path"] == str(present)
    )
    assert failed["file_open"]["resolved"] is False and failed["file_open"]["user_memory"] is True
    assert opened["file_open"]["resolved"] is True and opened["file_open"]["user_memory"] is False
    assert failed["file_open"]["op"] == opened["file_open"]["op"] == "open"
    # ...and the daemon said at start which values it reads that way.
    line = edaemon.wait_log("reads some values from the process's memory")
    assert f"capture_mode='{mode}'" in line and "failed open" in line


# ------------------------------------------------- item 5: peers without connect()


def test_datagrams_to_an_address_are_connects_once_per_socket_and_peer(
    edaemon: Daemon, ctl: Path, mode: str
) -> None:
    p1, p2 = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    apply(ctl, connect_rule("t-udp", f'{{daddr: ["127.77.5.0/24"], dport: [{p1}, {p2}]}}'))
    marker = new_marker("udp")
    code = f"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(500):                                  # a chatty DNS client
    s.sendto(b"q", ("127.77.5.1", {p1}))
s.sendmsg([b"q"], [], 0, ("127.77.5.1", {p2}))       # another peer, through sendmsg
s.sendmsg([b"q"], [], 0, ("127.77.5.1", {p2}))
t = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a new socket: its own first send
t.sendto(b"q", ("127.77.5.1", {p1}))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # connected: one connect event,
u.connect(("127.77.5.2", {p1}))                       # no send event
u.send(b"q")
"""
    subprocess.run([PY, "-c", code, marker], check=True)
    edaemon.sync()
    to_p1 = [e for e in conn_events(edaemon, p1) if marker in e["process"]["args"]]
    to_p2 = [e for e in conn_events(edaemon, p2) if marker in e["process"]["args"]]
    assert [(e["connect"]["via"], e["connect"]["daddr"]) for e in to_p1] == [
        ("sendto", "127.77.5.1"),
        ("sendto", "127.77.5.1"),
        ("connect", "127.77.5.2"),
    ]
    assert [e["connect"]["via"] for e in to_p2] == ["sendmsg"]
    sendto, _, connected = to_p1
    assert sendto["connect"]["protocol"] == "UDP" and sendto["connect"]["result"] == 0
    assert sendto["connect"]["hook"] == send_hook(mode, "sendto")
    assert to_p2[0]["connect"]["hook"] == send_hook(mode, "sendmsg")
    assert connected["connect"]["hook"] == UDP_CONNECT_HOOK[mode]
    assert connected["connect"]["user_memory"] is False
    # The tracepoints see a datagram's address only in the process's memory.
    assert sendto["connect"]["user_memory"] is (mode == "tracepoint")


def test_tcp_fast_open_is_a_connect(edaemon: Daemon, ctl: Path, mode: str) -> None:
    port = free_port()
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.77.5.3", port))
    srv.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, 16)
    srv.listen(16)
    try:
        apply(ctl, connect_rule("t-tfo", f'{{daddr: ["127.77.5.3/32"], dport: [{port}]}}'))
        marker = new_marker("tfo")
        code = f"""
import socket
c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
c.sendto(b"hello", socket.MSG_FASTOPEN, ("127.77.5.3", {port}))
c.close()
"""
        subprocess.run([PY, "-c", code, marker], check=True)
        ev = edaemon.wait_for(
            lambda e: (
                e["type"] == "connect"
                and e["connect"].get("dport") == port
                and marker in e["process"]["args"]
            )
        )
        c = ev["connect"]
        assert (c["via"], c["daddr"], c["protocol"], c["result"]) == (
            "fastopen",
            "127.77.5.3",
            "TCP",
            0,
        )
        assert c["hook"] == (
            CONNECT_HOOK["tracepoint"] if mode == "tracepoint" else send_hook(mode, "sendto")
        )
        assert c["user_memory"] is False
    finally:
        srv.close()


# connect(AF_UNSPEC) from Python: its socket.connect takes only its own family.
DISCONNECT = """
import ctypes
_libc = ctypes.CDLL(None, use_errno=True)
def disconnect(s):
    assert _libc.connect(s.fileno(), (ctypes.c_char * 16)(), 16) == 0, ctypes.get_errno()
"""


def _fast_open_events(d: Daemon, port: int, marker: str) -> list[Event]:
    d.sync()
    return [e for e in conn_events(d, port, "fastopen") if marker in e["process"]["args"]]


def test_a_fast_open_after_a_disconnect_is_a_new_connect(
    edaemon: Daemon, ctl: Path, mode: str
) -> None:
    """connect(AF_UNSPEC) disconnects a socket, and a fast open to the same
    peer then opens a new connection: each is a connect, as a connect()
    again would be, not a repeat of a peer the socket has sent to."""
    port = free_port()
    listener = Listener("127.77.5.6", port, fastopen=True)
    try:
        apply(ctl, connect_rule("t-tfo-again", f'{{daddr: ["127.77.5.6/32"], dport: [{port}]}}'))
        marker = new_marker("tfo-again")
        code = f"""{DISCONNECT}
import socket
c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
for _ in range(2):
    c.sendto(b"hello", socket.MSG_FASTOPEN, ("127.77.5.6", {port}))
    disconnect(c)
"""
        subprocess.run([PY, "-c", code, marker], check=True)
        deadline = time.monotonic() + 10
        while listener.accepted < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert listener.accepted == 2
        evs = _fast_open_events(edaemon, port, marker)
        assert [(e["connect"]["daddr"], e["connect"]["result"]) for e in evs] == [
            ("127.77.5.6", 0)
        ] * 2, evs
    finally:
        listener.close()


@pytest.mark.parametrize("state", ["connected", "connecting"])
def test_fast_opens_that_fail_on_one_connection_are_one_connect(
    edaemon: Daemon, ctl: Path, mode: str, state: str
) -> None:
    """A fast open on a socket already connected (EISCONN) or connecting
    (EALREADY: its SYN goes to a listener whose queue is full, which drops
    it) starts nothing: the connection's own fast open is the one connect."""
    port = free_port()
    peer = ("127.77.5.7", port)
    listener = Listener(*peer, fastopen=True) if state == "connected" else None
    hole = filler = None
    if state == "connecting":
        hole = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        hole.bind(peer)
        hole.listen(0)  # holds one connection: the filler's
        filler = socket.create_connection(peer)
    try:
        apply(ctl, connect_rule("t-tfo-fail", f'{{daddr: ["127.77.5.7/32"], dport: [{port}]}}'))
        marker = new_marker("tfo-fail")
        code = f"""
import socket
c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
c.setblocking({state == "connected"})
for _ in range(4):
    try:
        c.sendto(b"hello", socket.MSG_FASTOPEN, {peer})
        print(0)
    except OSError as e:
        print(e.errno)
"""
        out = subprocess.run(
            [PY, "-c", code, marker], check=True, capture_output=True, text=True
        ).stdout.split()
        first, again = (
            (0, errno.EISCONN) if state == "connected" else (errno.EINPROGRESS, errno.EALREADY)
        )
        assert out == [str(first)] + [str(again)] * 3
        evs = _fast_open_events(edaemon, port, marker)
        assert [e["connect"]["result"] for e in evs] == [-first], evs
    finally:
        for s in (listener, hole, filler):
            if s is not None:
                s.close()


@pytest.mark.parametrize("how", ["sendto", "fastopen"])
def test_sigkill_applies_to_peers_reached_without_connect(
    edaemon: Daemon, ctl: Path, how: str
) -> None:
    kind = socket.SOCK_DGRAM if how == "sendto" else socket.SOCK_STREAM
    port = free_port(kind)
    srv = None
    if how == "fastopen":
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.bind(("127.77.5.4", port))
        srv.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, 16)
        srv.listen(16)
    try:
        rule = f'{{daddr: ["127.77.5.4/32"], dport: [{port}]}}'
        apply(ctl, connect_rule("t-send-kill", rule, "sigkill"))
        peer = f'("127.77.5.4", {port})'
        if how == "sendto":
            send = f'socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", {peer})'
        else:
            send = (
                "socket.socket(socket.AF_INET, socket.SOCK_STREAM)"
                f'.sendto(b"x", socket.MSG_FASTOPEN, {peer})'
            )
        code = f"import socket\n{send}\nprint('alive')"
        r = subprocess.run([PY, "-c", code], capture_output=True)
        assert r.returncode == -9 and b"alive" not in r.stdout
    finally:
        if srv is not None:
            srv.close()



def test_a_kill_for_a_datagram_peer_is_not_remembered_as_done(
    edaemon: Daemon, ctl: Path, mode: str
) -> None:
    """A socket shared by two processes (a fork, an fd passed on): the
    first to send to a sigkill peer dies, and so must the second, whose
    send the socket's once-per-peer report would otherwise wave through."""
    port = free_port(socket.SOCK_DGRAM)
    apply(ctl, connect_rule("t-shared-kill", f'{{daddr: ["127.77.5.6/32"], dport: [{port}]}}',
                            "sigkill"))
    marker = new_marker("shared")
    code = (
        "import os, socket\n"
        "print('pid', os.getpid(), flush=True)\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"peer = ('127.77.5.6', {port})\n"
        "child = os.fork()\n"
        "if child == 0:\n"
        "    s.sendto(b'x', peer)\n"
        "    os._exit(0)\n"
        "print('child', os.waitpid(child, 0)[1] & 0x7F, flush=True)\n"
        "s.sendto(b'x', peer)\n"
        "print('alive', flush=True)\n"
    )
    run = subprocess.run([PY, "-c", code, marker], capture_output=True, text=True)
    out = run.stdout.split()
    assert run.returncode == -9 and out[2:] == ["child", "9"], (run, mode)
    parent = int(out[1])

    def kill(e: Event) -> bool:
        return marker in e["process"]["args"] and e.get("policy", {}).get("action") == "sigkill"

    edaemon.wait_for(lambda e: kill(e) and e["process"]["pid"] == parent)
    pids = [e["process"]["pid"] for e in edaemon.matching(kill)]
    assert len(pids) == 2 and parent in pids, pids


# ------------------------------------------------------ item 9: flooding the ring


def _as_uid(uid: int) -> None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


@pytest.fixture(scope="module")
def spawn() -> Iterator[Path]:
    """tests/evasion/spawn.c, static, where the storm's unprivileged uid can run it."""
    with tempfile.TemporaryDirectory(prefix="tracer-spawn-") as d:
        os.chmod(d, 0o755)
        exe = Path(d) / "spawn"
        _build(EVASION / "spawn.c", exe, "-static")
        yield exe


class Storm:
    """STORMS processes of one uid, each running spawn (static) one exec
    after the other: fork, exec and exit records as fast as this machine
    makes them. Each counts its runs in a file of its own (spawn -c)."""

    def __init__(self, spawn: Path, uid: int, seconds: float = 0) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="tracer-storm-")
        self._counts = [Path(self._dir.name) / str(i) for i in range(STORMS)]
        self.procs = []
        for count in self._counts:
            with count.open("w") as out:
                self.procs.append(
                    subprocess.Popen(
                        [str(spawn), "-c", "-t", str(seconds), str(spawn)],
                        stdout=out,
                        preexec_fn=lambda: _as_uid(uid),
                    )
                )

    def runs(self) -> int:
        """Execs made so far."""
        return sum(int(c.read_text() or 0) for c in self._counts)

    def wait_runs(self, n: int, timeout: float = 600) -> None:
        """Until the storm has made n execs (however slow this machine is)."""
        deadline = time.monotonic() + timeout
        while self.runs() < n:
            assert time.monotonic() < deadline, f"the storm made {self.runs()} of {n} execs"
            time.sleep(0.05)

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
        self._dir.cleanup()


@pytest.fixture(scope="module")
def storm_rate(spawn: Path) -> float:
    """Bulk records a second that a Storm makes here, with no daemon.

    The budget test scales its budget by it rather than assume one: under
    emulation (the `make test-vm` guests) an exec costs about a hundred
    times what it costs on the host.
    """
    seconds = 2.0
    storm = Storm(spawn, STORM_UID, seconds)
    for p in storm.procs:
        assert p.wait(60) == 0
    runs = storm.runs()
    storm.stop()
    return 3 * runs / seconds


def _runs_to_fill(nbytes: int) -> int:
    """Storm execs that put nbytes into a ring nobody reads, twice over."""
    return 2 * nbytes // STORM_RUN_BYTES


def test_an_exec_storm_does_not_crowd_out_selected_opens(tmp_path: Path, spawn: Path) -> None:
    """An unprivileged exec storm fills a tiny bulk ring; a posted open
    storm from another process loses nothing and keeps its ancestry. The
    reader is stopped (SIGSTOP) meanwhile: under emulation a live one
    keeps up with the storm, and stopped, it leaves every open waiting in
    the kernel while the bulk ring overflows."""
    ctl = tmp_path / "control.sock"
    target = tmp_path / new_marker("flood")
    target.write_text("x")
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "policies:\n  - name: t-flood\n    rules:\n      - event: file_open\n"
        f'        match: {{path: ["{target}"]}}\n'
    )
    d = Daemon(
        "--policy", str(policy), "--control-socket", str(ctl),
        "--ringbuf-size", "8K", "--uid-budget", "0",
    )  # fmt: skip
    marker = new_marker("opener")
    code = (
        f"import sys\nsys.stdin.readline()\nfor _ in range(1000): open({str(target)!r}).close()\n"
        "print('done', flush=True)"
    )
    opener = subprocess.Popen(
        [PY, "-c", code, marker],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )  # fmt: skip
    storm = None
    try:
        d.sync()  # the opener's exec is in, before the storm
        d.proc.send_signal(signal.SIGSTOP)
        storm = Storm(spawn, STORM_UID)
        assert opener.stdin is not None and opener.stdout is not None
        opener.stdin.write(b"go\n")
        opener.stdin.flush()
        assert opener.stdout.readline() == b"done\n"
        storm.wait_runs(_runs_to_fill(8 << 10))
    finally:
        if storm is not None:
            storm.stop()
        d.proc.send_signal(signal.SIGCONT)
        opener.wait(10)
    try:
        d.wait_for(lambda e: e["type"] == "lost" and e["lost"]["kernel"].get("process_exec", 0) > 0)
        d.sync(attempts=50)
        opens = d.matching(
            lambda e: e["type"] == "file_open" and e["file_open"]["path"] == str(target)
        )
        assert len(opens) == 1000
        for e in opens:
            assert e["process"]["pid"] == opener.pid and marker in e["process"]["args"]
            assert "partial" not in e["process"]["flags"]
            assert e["parent"]["pid"] == os.getpid()
    finally:
        assert d.stop() == 0, "".join(d.stderr)


def test_a_storming_uid_is_held_to_its_budget_and_others_lose_nothing(
    tmp_path: Path, spawn: Path, storm_rate: float
) -> None:
    """While the bulk ring is behind, each uid adds at most its budget of
    records a second: one uid's exec storm is cut down (counted as lost)
    and another uid's execs all get through. The daemon is stopped
    (SIGSTOP) meanwhile, so the ring is behind however fast it could read.
    The budget is a quarter of what the storm makes on this machine (at
    most BUDGET), and the other uid's execs are paced to half of it."""
    budget = min(BUDGET, int(storm_rate / 4))
    assert budget >= VICTIM_BUDGET, (
        f"the storm made {storm_rate:.0f} records a second here: too few to exceed a "
        f"budget of {VICTIM_BUDGET}, which the paced execs need"
    )
    # A run is 3 records (fork, exec, exit). In one second: at most
    # 1/pace + 1 runs, 2 records of a run begun the second before, the
    # series' own 3: budget/2 + 8 at this pace, within any budget >= 16.
    pace_ms = max(30, 6000 // budget)
    ctl = tmp_path / "control.sock"
    d = Daemon(
        "--control-socket", str(ctl), "--ringbuf-size", "2M", "--uid-budget", str(budget),
    )  # fmt: skip
    marker = new_marker("victim")
    storm = None
    d.proc.send_signal(signal.SIGSTOP)
    try:
        storm = Storm(spawn, STORM_UID)
        storm.wait_runs(_runs_to_fill((2 << 20) // 8))  # behind: an eighth full
        subprocess.run(
            [str(spawn), "-n", "100", "-p", str(pace_ms), TRUE, marker],
            preexec_fn=lambda: _as_uid(STORM_UID + 1),
            check=True,
            stdout=subprocess.DEVNULL,
        )
    finally:
        if storm is not None:
            storm.stop()
        d.proc.send_signal(signal.SIGCONT)
    try:
        d.sync(attempts=20)
        seen = d.matching(
            lambda e: (
                e["type"] == "process_exec"
                and e["process"]["binary"] == TRUE
                and marker in e["process"]["args"]
            )
        )
        assert sorted(int(e["process"]["args"][2]) for e in seen) == list(range(1, 101))
        assert all(e["process"]["uid"] == STORM_UID + 1 for e in seen)
        stats = control.request(ctl, {"op": "stats"})["kernel"]
        assert stats["limited"]["process_exec"] > 0
        d.wait_for(lambda e: e["type"] == "lost" and e["lost"]["kernel"].get("process_exec", 0))
    finally:
        assert d.stop() == 0, "".join(d.stderr)


@pytest.fixture(scope="module")
def openflood() -> Iterator[Path]:
    """tests/evasion/openflood.c, static, in a directory any uid can enter,
    with the files it opens: `posted` and `killed`, both readable by all."""
    with tempfile.TemporaryDirectory(prefix="tracer-openflood-") as d:
        os.chmod(d, 0o755)
        exe = Path(d) / "openflood"
        _build(EVASION / "openflood.c", exe, "-static")
        for name in ("posted", "killed"):
            (Path(d) / name).write_text("x")
            (Path(d) / name).chmod(0o644)
        yield exe


def test_a_uid_flooding_posted_opens_keeps_to_its_budget_of_the_selected_ring(
    tmp_path: Path, openflood: Path
) -> None:
    """While the selected ring is behind, the opens one uid makes that a
    rule posts are held to its budget a second, as bulk records are: an
    unprivileged flood of 20,000 opens of a posted file (failed opens of
    /etc/shadow would do as well) leaves room in a 1 MiB ring (~6,000
    such records; half of it, the point where budgets start, and 100 a
    second for the flood's ~10 s under emulation) for another uid's 100
    paced posted opens, which all arrive. A sigkill record of the
    flooding uid, made while it is over its budget, is never held back.
    The daemon is stopped meanwhile (SIGSTOP), so the ring stays behind
    however fast it could read."""
    budget = 100  # the paced opens make at most half of it a second
    base = openflood.parent
    posted, killed = base / "posted", base / "killed"
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "policies:\n  - name: t-flood-posted\n    rules:\n      - event: file_open\n"
        f'        match: {{path: ["{posted}"]}}\n'
        "  - name: t-flood-kill\n    rules:\n      - event: file_open\n"
        f'        match: {{path: ["{killed}"]}}\n        action: sigkill\n'
    )
    ctl = tmp_path / "control.sock"
    d = Daemon(
        "--policy", str(policy), "--control-socket", str(ctl),
        "--selected-ringbuf-size", "1M", "--uid-budget", str(budget),
    )  # fmt: skip
    d.sync()
    d.proc.send_signal(signal.SIGSTOP)
    try:
        # The kill right after twice the budget of opens in one second of
        # the kernel's clock: the flood is over its budget when it is made.
        flood = subprocess.run(
            [str(openflood), "-k", str(killed), "-b", str(2 * budget), str(posted), "20000"],
            preexec_fn=lambda: _as_uid(STORM_UID),
            capture_output=True,
        )  # fmt: skip
        paced = subprocess.run(
            [str(openflood), "-p", "20", str(posted), "100"],
            preexec_fn=lambda: _as_uid(STORM_UID + 1),
            capture_output=True,
            check=True,
        )  # fmt: skip
    finally:
        d.proc.send_signal(signal.SIGCONT)
    try:
        assert flood.returncode == -signal.SIGKILL, (flood.returncode, flood.stderr)
        flooded = int(flood.stdout)
        assert flooded >= 20000 + 2 * budget and paced.stdout == b"100\n"
        d.sync(attempts=20)
        opens = d.matching(
            lambda e: e["type"] == "file_open" and e["file_open"]["path"] == str(posted)
        )
        by_uid = collections.Counter(e["process"]["uid"] for e in opens)
        assert by_uid[STORM_UID + 1] == 100, by_uid
        assert 0 < by_uid[STORM_UID] < flooded // 5, by_uid
        kills = d.matching(
            lambda e: e["type"] == "file_open" and e["file_open"]["path"] == str(killed)
        )
        assert [(e["process"]["uid"], e["policy"]["action"]) for e in kills] == [
            (STORM_UID, "sigkill")
        ]
        stats = control.request(ctl, {"op": "stats"})["kernel"]
        assert stats["limited"]["file_open"] >= flooded - by_uid[STORM_UID], stats
        d.wait_for(lambda e: e["type"] == "lost" and e["lost"]["kernel"].get("file_open", 0))
    finally:
        assert d.stop() == 0, "".join(d.stderr)


# --------------------------------------- item 6: a new name in a watched place


def _new_name_events(d: Daemon, watched: Path) -> list[Event]:
    return d.matching(
        lambda e: e["type"] == "file_open" and e["file_open"]["path"].startswith(str(watched) + "/")
    )


def test_rename_link_and_symlink_into_a_watched_path_are_reported(
    edaemon: Daemon, ctl: Path, tmp_path: Path, mode: str
) -> None:
    """`mv` a prepared file into a watched directory, `ln` one into it, link
    a symlink there: nothing is opened at the new name, yet each is a write
    to it that `access: write` rules select."""
    watched = tmp_path / new_marker("cron.d")
    watched.mkdir()
    apply(
        ctl,
        f"""
        policies:
          - name: t-new-names
            rules:
              - event: file_open
                access: write
                match: {{path: {{prefix: ["{watched}/"]}}}}
        """,
    )
    staged = tmp_path / ".x"
    staged.write_text("* * * * * root sh /tmp/evil\n")
    other = tmp_path / "other"
    other.write_text("x")
    subprocess.run(["mv", str(staged), str(watched / "x")], check=True)
    subprocess.run(["ln", str(other), str(watched / "hard")], check=True)
    subprocess.run(["ln", "-s", "/tmp/evil", str(watched / "soft")], check=True)
    # renameat with directory fds, relative names: the path is still absolute.
    code = (
        "import os, sys\n"
        f"a = os.open({str(tmp_path)!r}, os.O_RDONLY)\n"
        f"b = os.open({str(watched)!r}, os.O_RDONLY)\n"
        "os.rename('other', 'moved', src_dir_fd=a, dst_dir_fd=b)\n"
        "os.rename('moved', 'back', src_dir_fd=b, dst_dir_fd=a)\n"
    )
    subprocess.run([PY, "-c", code], check=True)
    edaemon.sync()
    evs = {e["file_open"]["path"]: e for e in _new_name_events(edaemon, watched)}
    x, hard, soft, moved = (
        evs[str(watched / n)]["file_open"] for n in ("x", "hard", "soft", "moved")
    )
    assert (x["op"], x["source"], x["result"]) == ("rename", str(staged), 0)
    assert (hard["op"], hard["source"]) == ("link", str(other))
    assert (soft["op"], soft["source"]) == ("symlink", "/tmp/evil")
    assert (moved["op"], moved["source"]) == ("rename", str(other))
    if mode == "tracepoint":
        # The syscall's own strings, joined to the kernel's dirfd or cwd path.
        assert x["hook"] == "tracepoint/sys_exit_renameat2"  # what coreutils' mv calls
        assert moved["hook"] == "tracepoint/sys_exit_renameat"
        assert hard["hook"] == "tracepoint/sys_exit_linkat"
        assert soft["hook"] == "tracepoint/sys_exit_symlinkat"
    else:
        # Resolved by the kernel's lookup, seen by the path security hooks.
        prefix = {"lsm": "lsm/path_", "fentry": "fentry/security_path_"}.get(
            mode, "kprobe/security_path_"
        )
        assert x["hook"] == moved["hook"] == prefix + "rename"
        assert hard["hook"] == prefix + "link" and soft["hook"] == prefix + "symlink"
    in_kernel = mode != "tracepoint"
    for f in (x, hard, soft, moved):
        assert f["flags"] == [] and f["user_memory"] is not in_kernel
        assert f["resolved"] is in_kernel
    assert evs[str(watched / "x")]["policy"]["name"] == "t-new-names"
    # Moving out of the watched directory names a path outside it: not selected.
    assert str(tmp_path / "back") not in {
        e["file_open"]["path"] for e in edaemon.matching(lambda e: e["type"] == "file_open")
    }


# x86-64 numbers: the calls arm64 never had are in it too.
_NEW_NAME_CALLS = {
    "rename": (82, "cwd"),
    "link": (86, "cwd"),
    "symlink": (88, "cwd"),
    "renameat": (264, "at"),
    "linkat": (265, "at"),
    "symlinkat": (266, "symlinkat"),
    "renameat2": (316, "at"),
}


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 syscall numbers")
def test_every_call_that_makes_a_new_name_is_reported_as_itself(
    edaemon: Daemon, ctl: Path, tmp_path: Path, mode: str
) -> None:
    """Each syscall of the family, by number (libc picks one for each of
    mv, ln and ln -s): one tracepoint-mode program serves them all and
    must tell them apart."""
    watched = tmp_path / new_marker("names")
    watched.mkdir()
    apply(
        ctl,
        "policies:\n  - name: t-each-name\n    rules:\n      - event: file_open\n"
        f'        access: write\n        match: {{path: {{prefix: ["{watched}/"]}}}}\n',
    )
    code = ["import ctypes, os", "libc = ctypes.CDLL(None, use_errno=True)"]
    code.append(f"d = os.open({str(watched)!r}, os.O_RDONLY)")
    for call, (nr, args) in _NEW_NAME_CALLS.items():
        src = tmp_path / f"src-{call}"
        src.write_text(call)
        new = f"{watched}/{call}"
        argv = {
            "cwd": f"b{str(src)!r}, b{new!r}",
            "at": f"-100, b{str(src)!r}, d, b{call!r}",
            "symlinkat": f"b{str(src)!r}, d, b{call!r}",
        }[args] + (", 0" if call in ("renameat2", "linkat") else "")  # flags
        code.append(f"assert libc.syscall({nr}, {argv}) == 0, ({call!r}, ctypes.get_errno())")
    subprocess.run([PY, "-c", "\n".join(code)], check=True)
    edaemon.sync()
    evs = {e["file_open"]["path"]: e["file_open"] for e in _new_name_events(edaemon, watched)}
    assert sorted(evs) == sorted(f"{watched}/{c}" for c in _NEW_NAME_CALLS)
    for call in _NEW_NAME_CALLS:
        ev = evs[f"{watched}/{call}"]
        op = call.removesuffix("at2").removesuffix("at")
        assert (ev["op"], ev["source"]) == (op, str(tmp_path / f"src-{call}")), (call, ev)
        if mode == "tracepoint":
            assert ev["hook"] == f"tracepoint/sys_exit_{call}", ev


def test_sigkill_on_a_rename_into_a_watched_path(
    edaemon: Daemon, ctl: Path, tmp_path: Path
) -> None:
    watched = tmp_path / new_marker("watched")
    watched.mkdir()
    apply(
        ctl,
        f"""
        policies:
          - name: t-new-name-kill
            rules:
              - event: file_open
                access: write
                match: {{path: {{prefix: ["{watched}/"]}}}}
                action: sigkill
        """,
    )
    staged = tmp_path / "staged"
    staged.write_text("x")
    code = f"import os\nos.rename({str(staged)!r}, {str(watched / 'k')!r})\nprint('alive')"
    r = subprocess.run([PY, "-c", code], capture_output=True)
    assert r.returncode == -9 and b"alive" not in r.stdout
    ev = edaemon.wait_for(
        lambda e: e["type"] == "file_open" and e["file_open"]["path"] == str(watched / "k")
    )
    assert ev["policy"]["action"] == "sigkill" and ev["file_open"]["op"] == "rename"


@pytest.mark.parametrize("how", ["sendto", "rename"])
def test_deny_refuses_sends_and_new_names_under_lsm(
    edaemon: Daemon, ctl: Path, tmp_path: Path, mode: str, how: str
) -> None:
    """LSM refuses a datagram to a denied peer (every time, though it is
    reported once) and a rename into a denied path with EPERM, and the
    process lives on; without LSM deny is a kill."""
    port = free_port(socket.SOCK_DGRAM)
    watched = tmp_path / new_marker("denied")
    watched.mkdir()
    staged = tmp_path / "staged"
    staged.write_text("x")
    if how == "sendto":
        rule = f'{{daddr: ["127.77.5.5/32"], dport: [{port}]}}'
        apply(ctl, connect_rule("t-deny-send", rule, "deny"))
        act = (
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"for _ in range(2):\n"
            f"    try: s.sendto(b'x', ('127.77.5.5', {port}))\n"
            "    except PermissionError as e: print('refused', e.errno)\n"
        )
    else:
        apply(
            ctl,
            "policies:\n  - name: t-deny-name\n    rules:\n      - event: file_open\n"
            f'        match: {{path: {{prefix: ["{watched}/"]}}}}\n        action: deny\n',
        )
        act = (
            f"try: os.rename({str(staged)!r}, {str(watched / 'x')!r})\n"
            "except PermissionError as e: print('refused', e.errno)\n"
        )
    marker = new_marker("deny")
    run = subprocess.run(
        [PY, "-c", f"import os, socket\n{act}print('alive')", marker],
        capture_output=True,
        text=True,
    )
    evs = edaemon.matching(lambda e: marker in e["process"]["args"] and "policy" in e)
    if not evs:
        edaemon.wait_for(lambda e: marker in e["process"]["args"] and "policy" in e)
        evs = edaemon.matching(lambda e: marker in e["process"]["args"] and "policy" in e)
    if mode == "lsm":
        refused = ["refused", "1"] * (2 if how == "sendto" else 1)
        assert run.returncode == 0 and run.stdout.split() == [*refused, "alive"]
        assert [e["policy"]["action"] for e in evs] == ["deny"]
        detail = evs[0]["connect" if how == "sendto" else "file_open"]
        assert detail["result"] == -1 and detail["error"] == "EPERM"
        assert staged.exists()
    else:
        assert run.returncode == -9 and run.stdout == ""
        assert [e["policy"]["action"] for e in evs] == ["sigkill"]


def test_the_raw_tp_variant_judges_tcp_connects_too(tmp_path: Path) -> None:
    """Where the process hooks fall back to raw_tp, so does SYN_SENT."""
    ctl = tmp_path / "control.sock"
    port = free_port()
    policy = tmp_path / "p.yaml"
    policy.write_text(connect_rule("t-raw", f'{{daddr: ["127.77.6.1/32"], dport: [{port}]}}'))
    d = Daemon(
        "--policy", str(policy), "--control-socket", str(ctl), "--process-hooks", "raw_tp",
        "--capture-mode", "tracepoint",
    )  # fmt: skip
    listener = Listener("127.77.6.1", port)
    try:
        socket.create_connection(("127.77.6.1", port)).close()
        ev = d.wait_for(lambda e: e["type"] == "connect" and e["connect"].get("dport") == port)
        assert ev["connect"]["hook"] == "tracepoint/inet_sock_set_state"
        assert ev["process"]["pid"] == os.getpid()
    finally:
        listener.close()
        assert d.stop() == 0, "".join(d.stderr)
