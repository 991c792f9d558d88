"""The gRPC API against the real daemon, over real sockets, with real gRPC clients.

Every daemon here is `tracer run` as a subprocess capturing the real
kernel; events are made by running processes whose argv carries a unique
marker, and subscribers filter on that marker, so the machine's other
activity never changes what a test expects.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import Daemon, Event, new_marker, tracer_cmd
from factories import closed_port, one_rule
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_helpers import ADMIN_URI, Pki, Subscription, make_pki, stub, wait_subscribers
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from export.proto_gen import tracer_v1_pb2 as pb
from tracer.core.loader import RINGBUF_DEFAULT

pytestmark = pytest.mark.kernel

TRUE = os.path.realpath("/bin/true")


def marker_filter(marker: str, **fields: Any) -> pb.Filter:
    return pb.Filter(args_regex=[re.escape(marker)], **fields)


def with_marker(marker: str, kind: str | None = None) -> Any:
    def pred(e: Event) -> bool:
        return (kind is None or e["type"] == kind) and any(
            marker in a for a in e.get("process", {}).get("args", [])
        )

    return pred


def key(e: Event) -> tuple[str, str]:
    return e["type"], e["process"]["exec_id"]


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    d = Daemon()
    yield d
    assert d.stop() == 0, "".join(d.stderr)


@pytest.fixture
def channel(daemon: Daemon) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(daemon.address) as ch:
        yield ch


# -- security defaults ---------------------------------------------------------


def test_socket_is_root_only(daemon: Daemon) -> None:
    st = daemon.socket.lstat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == 0
    # Proven, not just read off the mode: an unprivileged process is refused.
    pid = os.fork()
    if pid == 0:  # child: become nobody, try to connect, report by exit status
        code = 3
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(daemon.socket))
            code = 0
        except PermissionError:
            code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 1, "nobody could connect (or the child failed)"


def test_plaintext_tcp_is_refused_at_start() -> None:
    r = subprocess.run(
        tracer_cmd("run", "--grpc-listen", "127.0.0.1:0"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert "--grpc-listen 127.0.0.1:0 needs --tls-cert and --tls-key" in r.stderr
    assert r.stdout == ""


def test_a_socket_in_use_is_not_stolen(daemon: Daemon) -> None:
    r = subprocess.run(
        tracer_cmd("run", "--grpc-socket", str(daemon.socket)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 1
    assert "another process listens on" in r.stderr
    assert daemon.socket.exists()  # and the running daemon still serves
    with grpc.insecure_channel(daemon.address) as ch:
        assert stub(ch).GetInfo(pb.GetInfoRequest(), timeout=5).node


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def mtls_daemon(pki: Pki) -> Iterator[tuple[Daemon, str]]:
    d = Daemon(
        "--no-grpc-socket",
        "--grpc-listen", "127.0.0.1:0",
        "--tls-cert", str(pki.server_cert),
        "--tls-key", str(pki.server_key),
        "--tls-client-ca", str(pki.ca),
        "--grpc-admin", ADMIN_URI,
    )  # fmt: skip
    line = d.wait_log("grpc listening")
    m = re.search(r"tcp='127\.0\.0\.1:(\d+)'", line)
    assert m, line
    yield d, f"127.0.0.1:{m[1]}"
    assert d.stop() == 0


def tls_channel(address: str, pki: Pki, cert: Path | None, key: Path | None) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )
    return grpc.secure_channel(address, creds)


def test_mtls_refuses_a_client_without_the_right_certificate(
    mtls_daemon: tuple[Daemon, str], pki: Pki
) -> None:
    _, address = mtls_daemon
    for cert, key_ in ((None, None), (pki.rogue_cert, pki.rogue_key)):
        with tls_channel(address, pki, cert, key_) as ch:
            with pytest.raises(grpc.RpcError) as exc:
                stub(ch).GetInfo(pb.GetInfoRequest(), timeout=10)
            assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
            with pytest.raises(grpc.RpcError):
                next(iter(stub(ch).GetEvents(pb.GetEventsRequest(), timeout=10)))
    with tls_channel(address, pki, pki.client_cert, pki.client_key) as ch:
        info = stub(ch).GetInfo(pb.GetInfoRequest(), timeout=10)
        assert info.process_hooks in ("tp_btf", "raw_tp")


def test_tracer_events_over_mtls(mtls_daemon: tuple[Daemon, str], pki: Pki) -> None:
    _, address = mtls_daemon
    marker = new_marker("mtls")
    cmd = tracer_cmd(
        "events", "--address", address, "--tls-ca", str(pki.ca),
        "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key),
        "--args", re.escape(marker), "--type", "process_exit", "-o", "compact", "-n", "1",
    )  # fmt: skip
    cli = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out = ""
        # Until the CLI's stream is open, a process may come too early: repeat it.
        deadline = time.monotonic() + 20
        while cli.poll() is None and time.monotonic() < deadline:
            subprocess.run([TRUE, marker], check=True)
            time.sleep(0.2)
        out, err = cli.communicate(timeout=10)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 0, err
    assert re.fullmatch(rf"\S+ exit \S+ \d+ {TRUE} {marker}  code 0\n", out), out


# -- policies ------------------------------------------------------------------


def _post_rule(name: str, path: Path) -> str:
    return (
        f"policies:\n  - name: {name}\n    rules:\n      - event: file_open\n"
        f"        match: {{path: ['{path}']}}\n"
    )


def _apply(ch: grpc.Channel, *docs: tuple[str, str]) -> pb.ApplyPoliciesResponse:
    req = pb.ApplyPoliciesRequest(
        documents=[pb.PolicyDocument(name=n, yaml=y) for n, y in docs]
    )
    resp: pb.ApplyPoliciesResponse = stub(ch).ApplyPolicies(req, timeout=30)
    return resp


def _opened_by_cat(d: Daemon, path: Path) -> Event:
    marker = new_marker("cat")
    subprocess.run(["cat", str(path), marker], capture_output=True)  # the marker: no such file
    return d.wait_for(
        lambda e: e["type"] == "file_open"
        and e["file_open"]["path"] == str(path)
        and marker in e["process"]["args"]
    )


def test_policies_apply_over_the_unix_socket_whole_or_not_at_all(
    daemon: Daemon, channel: grpc.Channel, tmp_path: Path
) -> None:
    watched = tmp_path / "watched"
    watched.write_text("x\n")
    assert list(_apply(channel, ("api-good.yaml", _post_rule("api-watch", watched))).warnings) == []
    assert _opened_by_cat(daemon, watched)["policy"]["name"] == "api-watch"
    bad = _post_rule("api-other", tmp_path / "other") + (
        "      - event: connect\n        match: {daddr: ['10.0.0.0/33']}\n"
    )
    with pytest.raises(grpc.RpcError) as exc:
        _apply(channel, ("api-bad.yaml", bad))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "api-bad.yaml:7" in str(exc.value.details()) and "CIDR" in str(exc.value.details())
    # Nothing of the refused set was applied: the old rule still selects.
    assert _opened_by_cat(daemon, watched)["policy"]["name"] == "api-watch"
    with pytest.raises(grpc.RpcError) as exc:
        _apply(channel)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_policies_apply_over_mtls_only_from_an_admin_certificate(
    mtls_daemon: tuple[Daemon, str], pki: Pki, tmp_path: Path
) -> None:
    d, address = mtls_daemon
    doc = tmp_path / "remote.yaml"
    doc.write_text(_post_rule("remote", tmp_path / "remote-watched"))
    base = tracer_cmd("policy", "apply", "--address", address, "--tls-ca", str(pki.ca))
    ok = subprocess.run(
        [*base, "--tls-cert", str(pki.admin_cert), "--tls-key", str(pki.admin_key), str(doc)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "applied 1 file(s)\n"
    # Who changed what is in the daemon's log.
    line = d.wait_log("policies changed over the API")
    assert "by='certificate CN=ops-admin'" in line and "remote.yaml" in line
    # The CA signed this one too, but no --grpc-admin names it: it reads, it does not change.
    reader = subprocess.run(
        [*base, "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key), str(doc)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert reader.returncode == 1
    assert "certificate CN=analyst may read but not change policies" in reader.stderr
    with tls_channel(address, pki, pki.client_cert, pki.client_key) as ch:
        assert stub(ch).GetInfo(pb.GetInfoRequest(), timeout=10).node
        for req in (
            pb.ApplyPoliciesRequest(clear=True),
            pb.ApplyPoliciesRequest(documents=[pb.PolicyDocument(name="x", yaml="policies: []")]),
        ):
            with pytest.raises(grpc.RpcError) as exc:
                stub(ch).ApplyPolicies(req, timeout=10)
            assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    d.wait_log("policy change refused")
    rogue = subprocess.run(
        [*base, "--tls-cert", str(pki.rogue_cert), "--tls-key", str(pki.rogue_key), str(doc)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert rogue.returncode == 1
    assert "cannot reach the daemon" in rogue.stderr and "Traceback" not in rogue.stderr


def test_tcp_without_client_certificates_needs_a_loud_flag_and_is_read_only(
    pki: Pki, tmp_path: Path
) -> None:
    tls = ("--grpc-listen", "127.0.0.1:0", "--tls-cert", str(pki.server_cert),
           "--tls-key", str(pki.server_key))  # fmt: skip
    r = subprocess.run(tracer_cmd("run", *tls), capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "--tls-client-ca" in r.stderr and "--grpc-insecure-no-client-auth" in r.stderr
    d = Daemon("--no-grpc-socket", *tls, "--grpc-insecure-no-client-auth")
    try:
        d.wait_log("TLS WITHOUT CLIENT CERTIFICATES")
        m = re.search(r"tcp='127\.0\.0\.1:(\d+)'", d.wait_log("grpc listening"))
        assert m
        with tls_channel(f"127.0.0.1:{m[1]}", pki, None, None) as ch:
            assert stub(ch).GetInfo(pb.GetInfoRequest(), timeout=10).node
            with pytest.raises(grpc.RpcError) as exc:
                _apply(ch, ("x.yaml", _post_rule("x", tmp_path / "x")))
            assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "read-only" in str(exc.value.details())
        d.wait_log("policy change refused")
    finally:
        assert d.stop() == 0


# -- standard tooling ------------------------------------------------------------


def test_health_service_answers(channel: grpc.Channel) -> None:
    h = health_pb2_grpc.HealthStub(channel)
    for service in ("", "tracer.v1.TracerService"):
        resp = h.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as exc:
        h.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_describes_the_api(channel: grpc.Channel) -> None:
    db = ProtoReflectionDescriptorDatabase(channel)
    services = set(db.get_services())
    assert {
        "tracer.v1.TracerService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services
    # A client that knows nothing of tracer learns the whole schema.
    pool = descriptor_pool.DescriptorPool(db)
    svc = pool.FindServiceByName("tracer.v1.TracerService")
    assert {m.name for m in svc.methods} == {"GetEvents", "GetHealth", "GetInfo", "ApplyPolicies"}
    event = pool.FindMessageTypeByName("tracer.v1.Event")
    kinds = [f.name for f in event.oneofs_by_name["event"].fields]
    assert kinds == [f.name for f in pb.Event.DESCRIPTOR.oneofs_by_name["event"].fields]
    assert {"process_exec", "file_open", "connect", "lost", "privilege_change"} <= set(kinds)


def test_get_health_and_info(channel: grpc.Channel, daemon: Daemon) -> None:
    s = stub(channel)
    h = s.GetHealth(pb.GetHealthRequest(), timeout=5)
    assert h.status == pb.GetHealthResponse.STATUS_SERVING
    assert h.since_last_poll.ToNanoseconds() < 5e9
    assert h.uptime.ToNanoseconds() > 0
    subprocess.run([TRUE, new_marker("info")], check=True)
    daemon.sync()
    info = s.GetInfo(pb.GetInfoRequest(), timeout=5)
    assert info.version
    assert info.kernel == os.uname().release
    assert info.process_hooks in ("tp_btf", "raw_tp")
    assert info.capture_mode in ("lsm", "fentry", "kprobe", "tracepoint")
    assert info.ringbuf_size == RINGBUF_DEFAULT
    assert info.kernel_emitted["process_exec"] >= 2
    assert "process_exec" in info.kernel_lost
    assert info.events["process_exec"] >= 2


# -- delivery --------------------------------------------------------------------


def test_two_subscribers_receive_exactly_their_events(channel: grpc.Channel) -> None:
    marker = new_marker("two")
    execs = Subscription(
        channel,
        pb.GetEventsRequest(allow=[marker_filter(marker, event_types=["process_exec"])]),
    )
    exits_but_echo = Subscription(
        channel,
        pb.GetEventsRequest(
            allow=[marker_filter(marker, event_types=["process_exit"])],
            deny=[pb.Filter(binary_regex=["/echo$"])],
        ),
    )
    wait_subscribers(channel, 2)
    try:
        subprocess.run([TRUE, marker], check=True)
        subprocess.run(["/bin/echo", marker], check=True, stdout=subprocess.DEVNULL)
        assert subprocess.run(["bash", "-c", "exit 3", marker]).returncode == 3
        end = f"{marker}-end"
        subprocess.run([TRUE, end], check=True)
        # Events arrive in order: after the end marker, nothing else of this test comes.
        execs.wait_for(with_marker(end, "process_exec"))
        exits_but_echo.wait_for(with_marker(end, "process_exit"))
        got_execs = [(e["type"], e["process"]["args"][1:]) for e in execs.snapshot()]
        got_exits = [
            (e["type"], e["process"]["args"][1:], e["process_exit"].get("code"))
            for e in exits_but_echo.snapshot()
        ]
    finally:
        execs.cancel()
        exits_but_echo.cancel()
    assert got_execs == [
        ("process_exec", [marker]),
        ("process_exec", [marker]),
        ("process_exec", ["-c", "exit 3", marker]),
        ("process_exec", [end]),
    ]
    assert got_exits == [
        ("process_exit", [marker], 0),
        ("process_exit", ["-c", "exit 3", marker], 3),
        ("process_exit", [end], 0),
    ]
    wait_subscribers(channel, 0)  # cancelled calls free their subscriber


def test_json_lines_and_grpc_carry_the_same_events(channel: grpc.Channel, daemon: Daemon) -> None:
    marker = new_marker("same")
    sub = Subscription(channel, pb.GetEventsRequest(allow=[marker_filter(marker)]))
    wait_subscribers(channel, 1)
    try:
        subprocess.run([TRUE, marker], check=True)
        assert subprocess.run(["bash", "-c", "exit 3", marker]).returncode == 3
        assert subprocess.run(["bash", "-c", "kill -KILL $$", marker]).returncode == -9
        subprocess.run([TRUE, marker, b"\xff\xfe", "\x1b[31m", "a\nb"], check=True)
        end = f"{marker}-end"
        subprocess.run([TRUE, end], check=True)
        sub.wait_for(with_marker(end, "process_exit"))
        daemon.wait_for(with_marker(end, "process_exit"))
        from_grpc = [e for e in sub.snapshot() if e["type"] != "lost"]
    finally:
        sub.cancel()
    from_json = {key(e): e for e in daemon.matching(with_marker(marker))}
    assert len(from_grpc) == len(from_json) == 10
    for e in from_grpc:
        # The JSON line is protobuf's JSON mapping of the message, exactly.
        assert e == from_json[key(e)]


def test_file_open_and_connect_events_with_their_policy_are_the_same_in_json_and_grpc(
    tmp_path: Path,
) -> None:
    """Both kinds the policy selects, succeeded and failed, with their rule:
    the JSON line is the gRPC message's JSON mapping."""
    watched = tmp_path / "watched"
    watched.mkdir()
    (watched / "there").write_text("x")
    listener = socket.create_server(("127.0.0.1", 0))
    port, closed = listener.getsockname()[1], closed_port()
    policy = tmp_path / "p.yaml"
    files = one_rule("t-files", "file_open", f'{{path: {{prefix: ["{watched}/"]}}}}')
    net = one_rule("t-net", "connect", f"{{dport: [{port}, {closed}]}}")
    policy.write_text(files + net.removeprefix("policies:\n"))
    marker = new_marker("kinds")
    script = (
        "import socket\n"
        f"open({str(watched / 'there')!r}).close()\n"
        "try:\n"
        f"    open({str(watched / 'missing')!r})\n"
        "except FileNotFoundError:\n"
        "    pass\n"
        f"socket.create_connection(('127.0.0.1', {port})).close()\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {closed}))\n"
        "except ConnectionRefusedError:\n"
        "    pass\n"
    )
    kinds = ("file_open", "connect")
    d = Daemon("--policy", str(policy))
    try:
        with grpc.insecure_channel(d.address) as ch:
            sub = Subscription(ch, pb.GetEventsRequest(allow=[marker_filter(marker)]))
            wait_subscribers(ch, 1)
            try:
                subprocess.run([sys.executable, "-c", script, marker], check=True)
                sub.wait_for(with_marker(marker, "process_exit"))
                d.wait_for(with_marker(marker, "process_exit"))
                from_grpc = [e for e in sub.snapshot() if e["type"] in kinds]
            finally:
                sub.cancel()
        from_json = [e for e in d.matching(with_marker(marker)) if e["type"] in kinds]
    finally:
        listener.close()
        assert d.stop() == 0, "".join(d.stderr)
    assert [(e["type"], e["policy"]["name"]) for e in from_grpc] == [
        ("file_open", "t-files"),
        ("file_open", "t-files"),
        ("connect", "t-net"),
        ("connect", "t-net"),
    ]
    assert [e["file_open"].get("error") for e in from_grpc[:2]] == [None, "ENOENT"]
    assert [e["connect"].get("error") for e in from_grpc[2:]] == [None, "ECONNREFUSED"]
    assert from_grpc == from_json


def test_a_stalled_subscriber_loses_only_its_own_events_and_is_told_how_many() -> None:
    d = Daemon("--grpc-queue-size", "2048")
    marker = new_marker("stall")
    # The slow client keeps HTTP/2's default 64 KiB window (no BDP probing,
    # which would grow it to megabytes): what it can hold unread stays small
    # and the test's margin large.
    fixed_window = [("grpc.http2.bdp_probe", 0)]
    try:
        with (
            grpc.insecure_channel(d.address) as ch,
            grpc.insecure_channel(d.address, options=fixed_window) as slow_ch,
        ):
            req = pb.GetEventsRequest(allow=[marker_filter(marker)])
            slow, fast = Subscription(slow_ch, req), Subscription(ch, req)
            wait_subscribers(ch, 2)
            slow.pause()
            t0 = time.monotonic()
            # 2,000 processes, 4,004 events: about twice the slow one's queue.
            script = f'for i in $(seq 2000); do {TRUE} "{marker}-$i"; done'
            subprocess.run(["bash", "-c", script], check=True)
            time.sleep(max(0.0, 5.0 - (time.monotonic() - t0)))  # a 5 s stall
            slow.resume()
            end = f"{marker}-end"
            subprocess.run([TRUE, end], check=True)
            for sub in (slow, fast):
                sub.wait_for(with_marker(end, "process_exit"), timeout=60)
            d.wait_for(with_marker(end, "process_exit"))
            got_slow, got_fast = slow.snapshot(), fast.snapshot()
            slow.cancel()
            fast.cancel()
    finally:
        assert d.stop() == 0
    # Ground truth: the JSON output, which lost nothing.
    assert not d.matching(lambda e: e["type"] == "lost")
    truth = [key(e) for e in d.matching(with_marker(marker))]
    assert len(truth) == 2 * 2002  # bash, 2000 true, the end marker: exec and exit each
    # The other subscriber lost nothing either.
    assert [key(e) for e in got_fast] == truth
    # The slow one: what it received is in order, what it lost is counted exactly.
    lost_events = [e for e in got_slow if e["type"] == "lost"]
    received = [key(e) for e in got_slow if e["type"] != "lost"]
    assert lost_events, "the stall caused no loss: the test did not test anything"
    lost = sum(n for e in lost_events for n in e["lost"]["daemon"].values())
    assert all(not e["lost"]["kernel"] for e in lost_events)
    assert len(received) + lost == len(truth)
    assert received == [k for k in truth if k in set(received)]
    # It received the newest events, up to the end, after the gap.
    assert received[-1] == truth[-1]


# -- bad input ---------------------------------------------------------------------


def test_an_invalid_regex_is_invalid_argument_naming_the_field(
    channel: grpc.Channel, daemon: Daemon
) -> None:
    req = pb.GetEventsRequest(
        allow=[pb.Filter(event_types=["process_exec"]), pb.Filter(binary_regex=["ok", "(bad"])]
    )
    sub = Subscription(channel, req)
    err = sub.wait_error()
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "allow[1].binary_regex[1]" in err.details()  # type: ignore[attr-defined]
    assert sub.messages == 0  # the stream never opened
    assert stub(channel).GetHealth(pb.GetHealthRequest(), timeout=5).subscribers == 0


def test_garbage_on_the_socket_does_not_disturb_a_healthy_subscriber(
    channel: grpc.Channel, daemon: Daemon
) -> None:
    marker = new_marker("garbage")
    sub = Subscription(channel, pb.GetEventsRequest(allow=[marker_filter(marker)]))
    wait_subscribers(channel, 1)
    try:
        subprocess.run([TRUE, f"{marker}-before"], check=True)
        sub.wait_for(with_marker(f"{marker}-before", "process_exit"))
        sock_path = str(daemon.socket)
        garbage = [
            os.urandom(4096),
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            # A valid HTTP/2 preface, then a frame of nonsense.
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\xff" * 64,
        ]
        for junk in garbage:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(10)
                s.connect(sock_path)
                s.sendall(junk)
                # The daemon hangs up on it (whatever it answers first).
                while s.recv(4096):
                    pass
        subprocess.run([TRUE, f"{marker}-after"], check=True)
        sub.wait_for(with_marker(f"{marker}-after", "process_exit"))
        assert sub.error is None
        assert not [e for e in sub.snapshot() if e["type"] == "lost"]
    finally:
        sub.cancel()


# -- the CLI -------------------------------------------------------------------------


def test_tracer_events_compact_from_the_daemon(daemon: Daemon, channel: grpc.Channel) -> None:
    marker = new_marker("cli")
    cmd = tracer_cmd(
        "events", "--address", daemon.address, "-o", "compact", "-n", "2",
        "--args", re.escape(marker), "--deny-type", "process_exec",
    )  # fmt: skip
    cli = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_subscribers(channel, 1)
        subprocess.run([TRUE, marker, "\x1b[31mred", "two\nlines"], check=True)
        assert subprocess.run(["bash", "-c", "kill -TERM $$", marker]).returncode == -15
        out, err = cli.communicate(timeout=20)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 2
    assert "\x1b" not in out
    assert lines[0].endswith(rf"{TRUE} {marker} '\x1b[31mred' 'two\nlines'  code 0")
    assert lines[1].endswith(f"-c 'kill -TERM $$' {marker}  signal SIGTERM")
    assert all(line.split()[1] == "exit" for line in lines)


def test_tracer_events_rejects_a_bad_flag_naming_it(daemon: Daemon) -> None:
    r = subprocess.run(
        tracer_cmd("events", "--address", daemon.address, "--deny-binary", "a(b"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert r.stderr.startswith("tracer: error: --deny-binary: invalid RE2 regex 'a(b'")


def test_tracer_events_from_a_log_file(daemon: Daemon, tmp_path: Path) -> None:
    marker = new_marker("file")
    subprocess.run([TRUE, marker], check=True)
    assert subprocess.run(["bash", "-c", "exit 4", marker]).returncode == 4
    daemon.wait_for(with_marker(marker, "process_exit"))
    daemon.sync()
    log = tmp_path / "events.jsonl"
    with log.open("w") as f:
        for e in daemon.matching(lambda e: True):
            f.write(json.dumps(e) + "\n")
    r = subprocess.run(
        tracer_cmd("events", "--from", str(log), "--args", re.escape(marker),
                   "--type", "process_exit", "--deny-binary", "^/usr/bin/true$", "--deny-binary",
                   "^/bin/true$"),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    got = [json.loads(line) for line in r.stdout.splitlines()]
    want = [
        e for e in daemon.matching(lambda e: True)
        if e["type"] == "lost"
        or (with_marker(marker, "process_exit")(e) and "true" not in e["process"]["binary"])
    ]  # fmt: skip
    assert got == want
    assert [e["process_exit"]["code"] for e in got if e["type"] != "lost"] == [4]
    # A damaged line is reported by number and skipped; the rest still comes out.
    with log.open("a") as f:
        f.write('{"type": "process_exec", "trunc\n')
    r = subprocess.run(
        tracer_cmd("events", "--from", str(log), "-o", "compact", "--args", re.escape(marker)),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode == 1
    n = len(log.read_text().splitlines())
    assert f"{log}:{n}: skipped, not a JSON event" in r.stderr
    assert len([x for x in r.stdout.splitlines() if " exec " in x or " exit " in x]) == 4


def test_a_failed_tcp_listener_leaves_no_unix_socket_behind(tmp_path: Path) -> None:
    sock = tmp_path / "t.sock"
    r = subprocess.run(
        tracer_cmd(
            "run", "--grpc-socket", str(sock), "--grpc-listen", "127.0.0.1:0",
            "--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key",
            "--tls-client-ca", "/nonexistent-ca.pem",
        ),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode == 1
    assert "cannot read a TLS file" in r.stderr
    assert not sock.exists()


def test_grpc_is_loaded_only_to_serve(daemon: Daemon) -> None:
    """grpc's core library is ~13 MiB of resident code: a daemon run with
    --no-grpc never loads it, one that serves does."""
    off = Daemon("--no-grpc")
    try:
        without = Path(f"/proc/{off.proc.pid}/maps").read_text()
    finally:
        off.stop()
    assert "cygrpc" not in without
    assert "cygrpc" in Path(f"/proc/{daemon.proc.pid}/maps").read_text()
