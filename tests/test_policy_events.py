"""file_open and connect events, in-kernel filtering and enforcement, on the real kernel.

One daemon runs the shipped policy library; each test that needs rules
of its own applies them to the running daemon (library + its rules), the
way an operator would, so hot reload is exercised throughout. The daemon
runs once per capture mode under test (tests/capture.py): tracepoint on
the host, every variant in the `make test-vm` guests, same assertions.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from capture import CONNECT_HOOK, MODES, failed_open_hook, open_hook
from conftest import REPO, Daemon, Event, is_exec, new_marker, tracer_cmd
from factories import closed_port, one_rule, policy_json
from sieve_walk import kernel_admits

from policy import Kind, compile_policies, parse_documents, parse_files
from tracer import control

pytestmark = pytest.mark.kernel

LIBRARY = REPO / "policy" / "library"
PY = sys.executable
CAT = os.path.realpath(shutil.which("cat") or "/bin/cat")
PY_BINARY = os.path.realpath(PY)


@pytest.fixture(scope="module")
def ctl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ctl") / "control.sock"


@pytest.fixture(scope="module", params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    m: str = request.param
    return m


@pytest.fixture(scope="module")
def pdaemon(ctl: Path, mode: str) -> Iterator[Daemon]:
    d = Daemon("--policy", str(LIBRARY), "--control-socket", str(ctl), "--capture-mode", mode)
    yield d
    assert d.stop() == 0, "".join(d.stderr)


def apply(ctl: Path, tmp: Path, extra: str) -> subprocess.CompletedProcess[str]:
    """`tracer policy apply` of the library plus one extra policy document."""
    doc = tmp / "extra.yaml"
    doc.write_text(textwrap.dedent(extra))
    return subprocess.run(
        tracer_cmd("policy", "apply", "--control-socket", str(ctl), str(LIBRARY), str(doc)),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _documents(tmp: Path, extra: str) -> list[list[str]]:
    """What must_apply sends: the library's documents and `extra`."""
    docs = [[str(p), p.read_text()] for p in sorted(LIBRARY.glob("*.y*ml"))]
    return [*docs, [str(tmp / "extra.yaml"), extra]]


def must_apply(ctl: Path, tmp: Path, extra: str) -> None:
    """The same request as `apply`, sent from this process: a CLI start-up
    takes ~20 s in the emulated `make test-vm` guests."""
    (tmp / "extra.yaml").write_text(textwrap.dedent(extra))
    reply = control.request(ctl, {"op": "policy_apply", "documents": _documents(tmp, extra)})
    assert reply["ok"], reply


# For tests of what the capture variant does not touch (exec hooks, policy
# parsing, counting): run under one mode only.
once = pytest.mark.parametrize("mode", MODES[:1], indirect=True)


def is_open_of(path: str, marker: str | None = None) -> object:
    def pred(e: Event) -> bool:
        if e["type"] != "file_open" or e["file_open"]["path"] != path:
            return False
        if marker is None:
            return True
        chain = [e["process"], e["parent"] or {}]
        return any(marker in p.get("args", []) for p in chain)

    return pred


def test_cat_shadow_under_the_default_policy(pdaemon: Daemon, mode: str) -> None:
    marker = new_marker()
    sh = subprocess.run(["bash", "-c", "cat /etc/shadow >/dev/null; exit 0", marker], check=True)
    assert sh.returncode == 0
    ev = pdaemon.wait_for(is_open_of("/etc/shadow", marker))
    assert ev["process"]["binary"] == CAT
    assert ev["parent"]["args"][-1] == marker
    f = ev["file_open"]
    assert f["flags"][0] == "O_RDONLY"
    assert f["result"] >= 0 and "error" not in f
    assert f["resolved"] is True and f["truncated"] is False
    assert f["hook"] == open_hook(mode)
    assert ev["policy"] == policy_json(
        "credential-files",
        0,
        "post",
        severity="high",
        tags=["T1003.008", "credential-access"],
        message="local password hashes read",
    )
    pdaemon.sync()
    assert len(pdaemon.matching(is_open_of("/etc/shadow", marker))) == 1


@pytest.mark.parametrize(
    "how",
    [
        "os.chdir('/etc'); open('./shadow').close()",
        "fd = os.open('/etc', os.O_RDONLY); os.close(os.open('shadow', os.O_RDONLY, dir_fd=fd))",
        "os.chdir('/usr'); open('../etc/./shadow').close()",
        "open(sys.argv[2]).close()",  # a symlink to /etc/shadow
    ],
    ids=["relative", "openat-dirfd", "dotdot", "symlink"],
)
def test_the_real_path_is_reported(pdaemon: Daemon, tmp_path: Path, how: str) -> None:
    link = tmp_path / "innocent-name"
    link.symlink_to("/etc/shadow")
    marker = new_marker()
    code = f"import os, sys\n{how}\n"
    subprocess.run([PY, "-c", code, marker, str(link)], check=True)
    ev = pdaemon.wait_for(is_open_of("/etc/shadow", marker))
    assert ev["process"]["args"][3] == marker  # python -c CODE MARKER


def test_every_open_syscall_reports_its_flags_and_mode(
    pdaemon: Daemon, ctl: Path, tmp_path: Path, mode: str
) -> None:
    # Each syscall passes flags and mode in different argument registers
    # (openat's mode is the fourth: r10 on x86_64), openat2 in a struct.
    d = tmp_path / "watched"
    d.mkdir()
    must_apply(
        ctl,
        tmp_path,
        one_rule("t-watch", "file_open", f'{{path: {{prefix: ["{d}/"]}}}}'),
    )
    marker = new_marker()
    code = textwrap.dedent(
        """
        import ctypes, os, platform, struct, sys
        d = sys.argv[2]
        libc = ctypes.CDLL(None, use_errno=True)
        os.close(libc.creat(f"{d}/by-creat".encode(), 0o600))
        os.close(os.open(f"{d}/by-openat", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640))
        how = struct.pack("QQQ", os.O_RDONLY | os.O_NOFOLLOW, 0, 0)  # struct open_how
        fd = libc.syscall(437, -100, f"{d}/by-creat".encode(), how, len(how))  # openat2
        assert fd >= 0, ctypes.get_errno()
        os.close(fd)
        if platform.machine() == "x86_64":  # open(2) exists there only
            fd = libc.syscall(2, f"{d}/by-openat".encode(), os.O_RDWR | os.O_APPEND, 0)
            assert fd >= 0, ctypes.get_errno()
            os.close(fd)
        """
    )
    subprocess.run([PY, "-c", code, marker, str(d)], check=True)
    created = pdaemon.wait_for(is_open_of(f"{d}/by-creat", marker))
    assert created["file_open"]["hook"] == open_hook(mode, "creat")
    assert created["file_open"]["flags"][:3] == ["O_WRONLY", "O_CREAT", "O_TRUNC"]
    assert created["file_open"]["mode"] == 0o600
    at = pdaemon.wait_for(is_open_of(f"{d}/by-openat", marker))
    assert at["file_open"]["hook"] == open_hook(mode, "openat")
    assert {"O_WRONLY", "O_CREAT", "O_EXCL"} <= set(at["file_open"]["flags"]), at
    assert at["file_open"]["mode"] == 0o640
    o2 = pdaemon.wait_for(
        lambda e: (
            is_open_of(f"{d}/by-creat", marker)(e) and "O_NOFOLLOW" in e["file_open"]["flags"]
        )
    )
    assert o2["file_open"]["hook"] == open_hook(mode, "openat2")
    assert o2["file_open"]["flags"] == ["O_RDONLY", "O_NOFOLLOW"]
    if platform.machine() == "x86_64":
        o = pdaemon.wait_for(
            lambda e: (
                is_open_of(f"{d}/by-openat", marker)(e) and "O_APPEND" in e["file_open"]["flags"]
            )
        )
        assert o["file_open"]["hook"] == open_hook(mode, "open")
        assert o["file_open"]["flags"] == ["O_RDWR", "O_APPEND"], o


def test_failed_open_reports_the_name_asked_for(
    pdaemon: Daemon, ctl: Path, tmp_path: Path, mode: str
) -> None:
    d = tmp_path / "nothing-here"
    d.mkdir()
    must_apply(
        ctl,
        tmp_path,
        one_rule("t-missing", "file_open", f'{{path: {{prefix: ["{d}/"]}}}}'),
    )
    marker = new_marker()
    code = "import os, sys\nos.chdir(sys.argv[2])\nfor p in ('absent', sys.argv[2] + '/gone'):\n"
    code += "    try: open(p)\n    except FileNotFoundError: pass\n"
    subprocess.run([PY, "-c", code, marker, str(d)], check=True)
    for name in ("absent", "gone"):
        ev = pdaemon.wait_for(is_open_of(f"{d}/{name}", marker))
        assert ev["file_open"]["result"] == -2
        assert ev["file_open"]["error"] == "ENOENT"
        assert ev["file_open"]["resolved"] is False
        assert ev["file_open"]["hook"] == failed_open_hook(mode)


def _sieve_admits_read(docs: list[list[str]], mode: str, path: Path) -> bool:
    """Whether the kernel's path sieve for `docs` lets a read of `path` on
    to the full evaluation (policy/sieve.py builds the same table)."""
    c = compile_policies(parse_documents([(d[0], d[1]) for d in docs]), lsm_active=mode == "lsm")
    t = c.kinds[Kind.FILE_OPEN]
    return bool(kernel_admits(c.sieve, bytes(path)) & t.mask & ~t.write_only)


def _stats(ctl: Path) -> dict[str, dict[str, int]]:
    reply = control.request(ctl, {"op": "stats"})
    assert reply["ok"], reply
    kernel: dict[str, dict[str, int]] = reply["kernel"]
    return kernel


def test_exact_and_suffix_values_select_exactly_their_paths(
    pdaemon: Daemon, ctl: Path, tmp_path: Path, mode: str
) -> None:
    # The kernel skips the exact lookup for a length no exact value has,
    # and the suffix lookup for a last byte no suffix ends in: the misses
    # here share a length or a last byte with a value, and a path longer
    # than the 252-byte head is matched by its tail.
    d = tmp_path / "sel"
    deep = d.joinpath(*["n" * 60] * 4)
    deep.mkdir(parents=True)
    exact = d / "exact-file"
    suffix = ".tracer-key"
    must_apply(
        ctl,
        tmp_path,
        one_rule(
            "t-strings",
            "file_open",
            f'{{path: {{exact: ["{exact}"], suffix: ["{suffix}"]}}}}',
        ),
    )
    wanted = [exact, d / f"a{suffix}", deep / f"b{suffix}"]
    unwanted = [d / "exact-filX", d / "exact-fil", d / "a.tracer-kez", d / "a.tracer-keyy",
                deep / "b.tracer-kez"]
    assert len(str(deep / f"b{suffix}")) > 252
    for f in wanted + unwanted:
        f.write_text("x")
    marker = new_marker()
    code = "import sys\nfor p in sys.argv[2:]:\n    open(p).close()\n"
    subprocess.run([PY, "-c", code, marker, *map(str, wanted + unwanted)], check=True)
    for f in wanted:
        pdaemon.wait_for(is_open_of(str(f), marker))
    pdaemon.sync()
    got = {
        e["file_open"]["path"]
        for e in pdaemon.matching(
            lambda e: e["type"] == "file_open" and e["file_open"]["path"].startswith(str(d))
        )
    }
    assert got == {str(f) for f in wanted}


@pytest.fixture
def other_top() -> Iterator[Path]:
    """A scratch directory whose first path component is not /tmp's."""
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/run")
    d = Path(tempfile.mkdtemp(prefix="tracer-top-", dir=base))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_the_walk_prefilter_never_hides_a_selected_open(
    pdaemon: Daemon, ctl: Path, tmp_path: Path, other_top: Path, mode: str
) -> None:
    # After finding the path's components, the kernel turns an open away
    # when no rule left admits the first byte of its top component (exact
    # and prefix values) or the last byte of its leaf (suffix values), and
    # every rule needs a path hit. Each selected open below is one a
    # careless prefilter would drop.
    assert tmp_path.parts[1][0] != other_top.parts[1][0]
    o = other_top
    rules = f"""
        policies:
          - name: t-prefilter
            rules:
              - event: file_open
                match: {{path: {{prefix: ["{tmp_path}/pre/"]}}}}
              - event: file_open
                match: {{path: {{suffix: [".tracer-sfx"]}}}}
              - event: file_open
                access: write
                match: {{path: {{prefix: ["{o}/w/"]}}}}
        """
    must_apply(ctl, tmp_path, rules)
    for sub in (tmp_path / "pre", o / "w"):
        sub.mkdir()
    reads = {
        tmp_path / "pre" / "f": True,  # top admitted, prefix matches
        tmp_path / "prX": False,  # top admitted, prefix does not match
        o / "a.tracer-sfx": True,  # top not admitted; the leaf's last byte is
        o / "a.tracer-sfy": False,
        o / "w" / "f": False,  # the only rule for o/w/ is for writes
        o / "other": False,
    }
    writes = {o / "w" / "g": True}
    for f in [*reads, *writes]:
        f.write_text("x")
    marker = new_marker()
    before = _stats(ctl)["evaluated"]["file_open"]
    code = (
        "import sys\n"
        "for p in sys.argv[2:]:\n"
        "    open(p[2:], 'a' if p.startswith('w:') else 'r').close()\n"
    )
    args = [f"r:{f}" for f in reads] + [f"w:{f}" for f in writes]
    subprocess.run([PY, "-c", code, marker, *args], check=True)
    wanted = {str(f) for f, sel in [*reads.items(), *writes.items()] if sel}
    for path in wanted:
        pdaemon.wait_for(is_open_of(path, marker))
    # A rule with no positive path selector (binary and not_path) selects
    # an open whatever its bytes: cat of a file nothing above selects.
    cat = tmp_path / f"cat-{marker}"
    shutil.copy(CAT, cat)
    rules += f"""
              - event: file_open
                match: {{binary: {{exact: ["{cat}"]}}, not_path: {{prefix: ["/etc", "/usr"]}}}}
        """
    must_apply(ctl, tmp_path, rules)
    subprocess.run([str(cat), str(o / "other")], check=True, capture_output=True)
    by_cat = is_open_of(str(o / "other"))
    pdaemon.wait_for(lambda e: by_cat(e) and e["process"]["binary"] == str(cat))
    pdaemon.sync()
    got = {
        (e["file_open"]["path"], e["process"]["binary"])
        for e in pdaemon.matching(
            lambda e: e["type"] == "file_open"
            and e["file_open"]["path"].startswith((str(tmp_path), str(o)))
            and (marker in e["process"]["args"] or e["process"]["binary"] == str(cat))
        )
    }
    assert got == {(p, PY_BINARY) for p in wanted} | {(str(o / "other"), str(cat))}
    # ...and its not_path excludes what the loader and libc open for cat.
    # (Through a security hook on an overlay, the layer's own open of each
    # file used to escape the exclusion: bpf_probes/hooks.bpf.h, tr_backing_open.)
    excluded = pdaemon.matching(
        lambda e: e["type"] == "file_open"
        and e["process"]["binary"] == str(cat)
        and e["file_open"]["path"].startswith(("/etc/", "/usr/"))
    )
    assert excluded == [], [e["file_open"]["path"] for e in excluded]
    # Turned away or evaluated, every open went through the filter.
    assert _stats(ctl)["evaluated"]["file_open"] - before >= len(reads) + len(writes) + 1
    # The cat rule needs no path hit, yet it does not switch the prefilter
    # off for everyone else: another binary's opens of a file no path rule
    # admits are still turned away before their path is copied. The sieve
    # is a hash table: a path whose keys share a slot with a value's is
    # evaluated in full, which costs time and hides nothing (with the
    # library's values, "other" here in ~1 run of 80, the directory's name
    # being random). So the loop opens a name the sieve turns away, which
    # the model of the kernel's sieve walk finds among a few.
    docs = _documents(tmp_path, rules)
    away = next(
        o / f"loop-{i}" for i in range(64) if not _sieve_admits_read(docs, mode, o / f"loop-{i}")
    )
    away.write_text("x")
    n = 200
    before = _stats(ctl)
    loop = f"import sys\nfor _ in range({n}):\n    open(sys.argv[2]).close()\n"
    subprocess.run([PY, "-c", loop, marker, str(away)], check=True)
    after = _stats(ctl)
    delta = {
        k: after[k]["file_open"] - before[k]["file_open"] for k in ("evaluated", "prefiltered")
    }
    assert delta["evaluated"] >= n and delta["prefiltered"] >= n, (delta, str(away))
    pdaemon.sync()
    assert not pdaemon.matching(
        lambda e: e["type"] == "file_open"
        and marker in e["process"]["args"]
        and e["file_open"]["path"] == str(away)
    )


def test_unselected_opens_never_reach_user_space(pdaemon: Daemon, ctl: Path) -> None:
    before = _stats(ctl)
    # Python in the emulated guests opens ~250 files/s: fewer there.
    n = 5_000 if os.environ.get("TRACER_IN_VM") else 100_000
    code = textwrap.dedent(
        f"""
        import os
        names = [e.path for e in os.scandir('/usr/lib') if e.is_file()][:50]
        for i in range({n}):
            os.close(os.open(names[i % len(names)], os.O_RDONLY))
        """
    )
    opener = subprocess.Popen([PY, "-c", code])
    assert opener.wait() == 0
    pdaemon.sync()
    after = _stats(ctl)
    # The filter ran for every one of them in the kernel...
    assert after["evaluated"]["file_open"] - before["evaluated"]["file_open"] >= n
    # ...and let none through (the machine's own writes under /usr/lib, a
    # package being installed, are the library's to post).
    leaked = pdaemon.matching(
        lambda e: e["type"] == "file_open"
        and e["process"]["pid"] == opener.pid
        and e["file_open"]["path"].startswith("/usr/lib/")
    )
    assert leaked == [], "\n".join(
        f"{e['process']['binary']}: {e['file_open']} {e.get('policy')}" for e in leaked
    )


def _listener(family: socket.AddressFamily, addr: str) -> socket.socket:
    s = socket.socket(family, socket.SOCK_STREAM)
    s.bind((addr, 0))
    s.listen(4)
    return s


def test_connect_events_v4_v6_and_refused(
    pdaemon: Daemon, ctl: Path, tmp_path: Path, mode: str
) -> None:
    v4 = _listener(socket.AF_INET, "127.0.0.1")
    v6 = _listener(socket.AF_INET6, "::1")
    p4, p6, closed = v4.getsockname()[1], v6.getsockname()[1], closed_port()
    must_apply(
        ctl,
        tmp_path,
        one_rule("t-loopback", "connect", f"{{dport: [{p4}, {p6}, {closed}]}}"),
    )
    marker = new_marker()
    code = textwrap.dedent(
        f"""
        import socket
        a = socket.create_connection(("127.0.0.1", {p4}))
        b = socket.socket(socket.AF_INET6); b.connect(("::1", {p6}))
        c = socket.socket()
        try: c.connect(("127.0.0.1", {closed}))
        except ConnectionRefusedError: pass
        """
    )
    subprocess.run([PY, "-c", code, marker], check=True)

    def conn(port: int) -> Event:
        return pdaemon.wait_for(
            lambda e: (
                e["type"] == "connect"
                and e["connect"]["dport"] == port
                and marker in e["process"]["args"]
            )
        )

    e4, e6, ec = conn(p4), conn(p6), conn(closed)
    assert e4["connect"]["family"] == "AF_INET" and e4["connect"]["daddr"] == "127.0.0.1"
    assert e4["connect"]["protocol"] == "TCP" and e4["connect"]["result"] == 0
    assert e4["connect"]["saddr"] == "127.0.0.1" and e4["connect"]["sport"] > 0
    assert e6["connect"]["family"] == "AF_INET6" and e6["connect"]["daddr"] == "::1"
    assert e6["connect"]["result"] == 0 and e6["connect"]["saddr"] == "::1"
    assert ec["connect"]["result"] == -111 and ec["connect"]["error"] == "ECONNREFUSED"
    assert e4["policy"]["name"] == "t-loopback"
    assert {e["connect"]["hook"] for e in (e4, e6, ec)} == {CONNECT_HOOK[mode]}
    v4.close()
    v6.close()


@once
def test_loopback_is_not_outbound(pdaemon: Daemon) -> None:
    """The library's outbound rule excludes loopback, in the kernel."""
    srv = _listener(socket.AF_INET, "127.0.0.1")
    port = srv.getsockname()[1]
    marker = new_marker()
    subprocess.run(
        [PY, "-c", f"import socket; socket.create_connection(('127.0.0.1', {port}))", marker],
        check=True,
    )
    pdaemon.sync()
    assert (
        pdaemon.matching(lambda e: e["type"] == "connect" and marker in e["process"]["args"]) == []
    )
    srv.close()


def test_sigkill_on_open_kills_before_the_content_is_read(
    pdaemon: Daemon, ctl: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET\n")
    must_apply(
        ctl,
        tmp_path,
        one_rule("t-protect-secret", "file_open", f'{{path: ["{secret}"]}}', "sigkill"),
    )
    r = subprocess.run(["cat", str(secret)], capture_output=True)
    assert r.returncode == -9
    assert b"TOPSECRET" not in r.stdout
    ev = pdaemon.wait_for(is_open_of(str(secret)))
    assert ev["policy"] == policy_json("t-protect-secret", 0, "sigkill")


def test_sigkill_on_connect_no_payload_arrives(pdaemon: Daemon, ctl: Path, tmp_path: Path) -> None:
    srv = _listener(socket.AF_INET, "127.0.0.1")
    port = srv.getsockname()[1]
    received: list[bytes] = []

    def serve() -> None:
        srv.settimeout(5)
        try:
            conn, _ = srv.accept()
        except TimeoutError:
            return
        conn.settimeout(3)
        try:
            while chunk := conn.recv(1024):
                received.append(chunk)
        except TimeoutError:
            pass
        conn.close()

    t = threading.Thread(target=serve)
    t.start()
    must_apply(
        ctl,
        tmp_path,
        one_rule(
            "t-block-port", "connect", f'{{daddr: ["127.0.0.1/32"], dport: [{port}]}}', "sigkill"
        ),
    )
    marker = new_marker()
    code = (
        f"import socket; s = socket.create_connection(('127.0.0.1', {port})); s.sendall(b'PAYLOAD')"
    )
    r = subprocess.run([PY, "-c", code, marker])
    t.join(10)
    srv.close()
    assert r.returncode == -9
    assert b"PAYLOAD" not in b"".join(received)
    ev = pdaemon.wait_for(lambda e: e["type"] == "connect" and marker in e["process"]["args"])
    assert ev["policy"]["action"] == "sigkill"
    assert ev["policy"]["name"] == "t-block-port"


@once
def test_sigkill_on_exec_stops_the_program(pdaemon: Daemon, ctl: Path, tmp_path: Path) -> None:
    evil = tmp_path / "evil"
    shutil.copy(os.path.realpath(shutil.which("touch") or "/bin/touch"), evil)
    must_apply(
        ctl,
        tmp_path,
        one_rule("t-no-evil", "exec", f'{{binary: ["{evil}"]}}', "sigkill"),
    )
    witness = tmp_path / "created"
    marker = new_marker()
    r = subprocess.run([str(evil), str(witness), marker], cwd=tmp_path)
    assert r.returncode == -9
    assert not witness.exists()
    ev = pdaemon.wait_for(is_exec(marker))
    assert ev["policy"] == policy_json("t-no-evil", 0, "sigkill")


@once
def test_a_bad_policy_is_refused_and_the_old_one_still_enforces(
    pdaemon: Daemon, ctl: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "still-secret"
    secret.write_text("x")
    must_apply(
        ctl,
        tmp_path,
        one_rule("t-guard", "file_open", f'{{path: ["{secret}"]}}', "sigkill"),
    )
    bad = apply(
        ctl,
        tmp_path,
        one_rule("t-bad", "connect", '{daddr: ["10.0.0.0/33"]}'),
    )
    assert bad.returncode != 0
    assert "extra.yaml:5" in bad.stderr and "bad CIDR" in bad.stderr  # the match line
    assert subprocess.run(["cat", str(secret)], capture_output=True).returncode == -9
    assert pdaemon.proc.poll() is None


def test_deny_on_open(ctl: Path, pdaemon: Daemon, tmp_path: Path, mode: str) -> None:
    """LSM refuses the open with EPERM and the process lives on; without
    LSM, deny falls back to sigkill and applying the policy says so."""
    never = tmp_path / "never"
    never.write_text("NOPE\n")
    r = apply(ctl, tmp_path, one_rule("t-deny", "file_open", f'{{path: ["{never}"]}}', "deny"))
    assert r.returncode == 0, r.stderr
    marker = new_marker()
    code = (
        "import sys\ntry: print(open(sys.argv[2]).read())\n"
        "except PermissionError as e: print('refused', e.errno)\nprint('alive')"
    )
    run = subprocess.run([PY, "-c", code, marker, str(never)], capture_output=True, text=True)
    assert "NOPE" not in run.stdout
    ev = pdaemon.wait_for(is_open_of(str(never), marker))
    if mode == "lsm":
        assert "deny needs BPF-LSM" not in r.stderr
        assert run.returncode == 0 and run.stdout.split() == ["refused", "1", "alive"]
        assert ev["policy"] == policy_json("t-deny", 0, "deny")
        assert ev["file_open"]["result"] == -1 and ev["file_open"]["error"] == "EPERM"
    else:
        assert "deny needs BPF-LSM" in r.stderr
        assert run.returncode == -9 and run.stdout == ""
        assert ev["policy"] == policy_json("t-deny", 0, "sigkill")


def test_deny_on_connect(ctl: Path, pdaemon: Daemon, tmp_path: Path, mode: str) -> None:
    """LSM refuses the connect with EPERM: no connection is made."""
    srv = _listener(socket.AF_INET, "127.0.0.1")
    srv.settimeout(2)
    port = srv.getsockname()[1]
    r = apply(ctl, tmp_path, one_rule("t-deny-port", "connect", f"{{dport: [{port}]}}", "deny"))
    assert r.returncode == 0, r.stderr
    marker = new_marker()
    code = textwrap.dedent(
        f"""
        import socket
        try: socket.create_connection(("127.0.0.1", {port}))
        except PermissionError as e: print("refused", e.errno)
        print("alive")
        """
    )
    run = subprocess.run([PY, "-c", code, marker], capture_output=True, text=True)
    ev = pdaemon.wait_for(lambda e: e["type"] == "connect" and marker in e["process"]["args"])
    if mode == "lsm":
        assert run.returncode == 0 and run.stdout.split() == ["refused", "1", "alive"]
        with pytest.raises(TimeoutError):
            srv.accept()  # nothing ever reached the listener
        assert ev["policy"] == policy_json("t-deny-port", 0, "deny")
        assert ev["connect"]["result"] == -1 and ev["connect"]["error"] == "EPERM"
    else:
        assert "deny needs BPF-LSM" in r.stderr
        assert run.returncode == -9 and run.stdout == ""
        assert ev["policy"]["action"] == "sigkill"
    srv.close()


@once
def test_policy_list_counts_matches(pdaemon: Daemon, ctl: Path, tmp_path: Path) -> None:
    r = subprocess.run(
        tracer_cmd("policy", "apply", "--control-socket", str(ctl), str(LIBRARY)),
        capture_output=True,
        text=True,
        check=True,
    )
    assert "applied" in r.stdout
    for _ in range(3):
        subprocess.run(["cat", "/etc/shadow"], capture_output=True, check=True)
    pdaemon.sync()
    listing = subprocess.run(
        tracer_cmd("policy", "list", "--control-socket", str(ctl), "--json"),
        capture_output=True,
        text=True,
        check=True,
    )
    rules = json.loads(listing.stdout)
    cred = [r for r in rules if r["policy"] == "credential-files" and r["rule"] == 0]
    assert len(cred) == 1 and cred[0]["hits"] >= 3
    assert {r["policy"] for r in rules} == {p.name for p in parse_files([LIBRARY]).policies}


def test_sighup_rereads_the_policy_directory(tmp_path: Path) -> None:
    pdir = tmp_path / "policies"
    pdir.mkdir()
    target = tmp_path / "watched-file"
    target.write_text("x")
    (pdir / "a.yaml").write_text(
        "policies:\n  - name: t-none\n    rules:\n      - event: exec\n"
        "        match: {binary: [/nonexistent]}\n"
    )
    d = Daemon("--policy", str(pdir), "--control-socket", str(tmp_path / "c.sock"))
    try:
        (pdir / "a.yaml").write_text(
            f"policies:\n  - name: t-hup\n    rules:\n      - event: file_open\n"
            f"        match: {{path: ['{target}']}}\n"
        )
        d.proc.send_signal(1)  # SIGHUP
        d.wait_log("policies=['t-hup']")
        subprocess.run(["cat", str(target)], capture_output=True, check=True)
        ev = d.wait_for(is_open_of(str(target)))
        assert ev["policy"]["name"] == "t-hup"
        (pdir / "a.yaml").write_text("policies: [ {name: broken\n")
        d.proc.send_signal(1)
        d.wait_log("policy reload refused")
        assert d.proc.poll() is None
    finally:
        assert d.stop() == 0
