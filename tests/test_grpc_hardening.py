"""The gRPC API under abuse and at its edges, against the real daemon with real clients:
streams held open to lock others out, malformed bytes, reflection v1, shutdown,
clearing the policy set."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import Daemon, new_marker, tracer_cmd
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_helpers import Pki, Subscription, make_pki, stub, wait_subscribers
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from export import reflection_v1
from export.proto_gen import tracer_v1_pb2 as pb

TRUE = "/bin/true"


def marker_request(marker: str) -> pb.GetEventsRequest:
    return pb.GetEventsRequest(allow=[pb.Filter(args_regex=[re.escape(marker)])])


def is_exit_of(marker: str) -> Any:
    return lambda e: e["type"] == "process_exit" and marker in e["process"]["args"]


def tcp_port(d: Daemon) -> int:
    m = re.search(r"tcp='127\.0\.0\.1:(\d+)'", d.wait_log("grpc listening"))
    assert m
    return int(m[1])


def tls_channel(port: int, pki: Pki) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    return grpc.secure_channel(f"127.0.0.1:{port}", creds)


class HeldStreams:
    """Reflection streams a client opens and never ends (the lock-out attack)."""

    def __init__(self, channel: grpc.Channel, n: int) -> None:
        self._release = threading.Event()
        self.held: list[Any] = []
        self.refused: list[grpc.RpcError] = []
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        for _ in range(n):
            call = refl.ServerReflectionInfo(self._requests())
            try:
                next(call)
                self.held.append(call)
            except grpc.RpcError as exc:
                self.refused.append(exc)

    def _requests(self) -> Iterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")
        self._release.wait(60)

    def close(self) -> None:
        self._release.set()
        for call in self.held:
            call.cancel()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_streams_held_open_on_tcp_lock_out_neither_the_socket_nor_health_checks(
    pki: Pki,
) -> None:
    d = Daemon(
        "--grpc-listen", "127.0.0.1:0",
        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
        "--grpc-insecure-no-client-auth",  # the worst case: anyone may connect
        "--grpc-max-subscribers", "2",
        "--grpc-max-streams-per-peer", "6",
    )  # fmt: skip
    try:
        port = tcp_port(d)
        with (
            tls_channel(port, pki) as tcp,
            tls_channel(port, pki) as tcp2,
            grpc.insecure_channel(d.address) as unix,
        ):
            attack = HeldStreams(tcp, 40)
            try:
                # One client address holds at most its share.
                assert len(attack.held) == 6
                assert {e.code() for e in attack.refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}  # type: ignore[attr-defined]
                assert "--grpc-max-streams-per-peer" in attack.refused[0].details()  # type: ignore[attr-defined]
                # Health checks and unary calls still get in on TCP, from the same address...
                for ch in (tcp, tcp2, unix):
                    resp = health_pb2_grpc.HealthStub(ch).Check(
                        health_pb2.HealthCheckRequest(), timeout=5
                    )
                    assert resp.status == health_pb2.HealthCheckResponse.SERVING
                    assert stub(ch).GetInfo(pb.GetInfoRequest(), timeout=5).node
                # ...and the unix socket serves streams as if nothing happened.
                marker = new_marker("lockout")
                subs = [Subscription(unix, marker_request(marker)) for _ in range(2)]
                wait_subscribers(unix, 2)
                subprocess.run([TRUE, marker], check=True)
                for sub in subs:
                    sub.wait_for(is_exit_of(marker))
                    sub.cancel()
                wait_subscribers(unix, 0)
                probe = HeldStreams(unix, 1)
                assert len(probe.held) == 1
                probe.close()
            finally:
                attack.close()
            # GetEvents has its bound per listener: TCP's full does not fill the socket's.
            marker = new_marker("per-listener")
            unix_subs = [Subscription(unix, marker_request(marker)) for _ in range(2)]
            wait_subscribers(unix, 2)
            deadline = time.monotonic() + 10
            while True:
                tcp_subs = [Subscription(tcp2, marker_request(marker)) for _ in range(3)]
                # Which of the three is refused depends on the order they arrive in.
                while not (refused := [s for s in tcp_subs if s.error is not None]):
                    assert time.monotonic() < deadline, "no third GetEvents was refused"
                    time.sleep(0.05)
                err = refused[0].error
                assert err is not None
                if "--grpc-max-streams-per-peer" not in err.details():  # type: ignore[attr-defined]
                    break
                # The attack's streams still count for the address: the server
                # lets go of each when its thread sees the cancel. Again.
                assert time.monotonic() < deadline, "the held streams were never let go"
                for sub in tcp_subs:
                    sub.cancel()
                wait_subscribers(unix, 2)
            wait_subscribers(unix, 4)
            assert [s.error for s in tcp_subs if s.error is not None] == [err]
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
            assert "--grpc-max-subscribers" in err.details()  # type: ignore[attr-defined]
            subprocess.run([TRUE, marker], check=True)
            for sub in [*(s for s in tcp_subs if s.error is None), *unix_subs]:
                sub.wait_for(is_exit_of(marker))
                sub.cancel()
    finally:
        assert d.stop() == 0


# -- one daemon on the unix socket for the rest ------------------------------------


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    d = Daemon()
    yield d
    assert d.stop() == 0, "".join(d.stderr)


@pytest.fixture
def channel(daemon: Daemon) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(daemon.address) as ch:
        yield ch


def _invalid_argument(call: Any, *args: Any) -> str:
    with pytest.raises(grpc.RpcError) as exc:
        result = call(*args, timeout=5)
        if not isinstance(result, bytes):
            next(iter(result))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.value
    return str(exc.value.details())


def test_malformed_request_bytes_are_invalid_argument(channel: grpc.Channel) -> None:
    method = "/tracer.v1.TracerService/"
    # Raw bytes on the wire: no serializer, so nothing checks them on the way out.
    corrupt = b"\xff\xff\xff"
    bad_utf8_filter = b"\x0a\x03\x12\x01\xff"  # allow[0].binary_regex[0] = b"\xff"
    bad_utf8_doc = b"\x0a\x06\x0a\x01a\x12\x01\xff"  # documents[0] = {name: a, yaml: b"\xff"}
    details = [
        _invalid_argument(channel.unary_unary(method + "GetInfo"), corrupt),
        _invalid_argument(channel.unary_unary(method + "GetHealth"), corrupt),
        _invalid_argument(channel.unary_stream(method + "GetEvents"), corrupt),
        _invalid_argument(channel.unary_stream(method + "GetEvents"), bad_utf8_filter),
        _invalid_argument(channel.unary_unary(method + "ApplyPolicies"), bad_utf8_doc),
        _invalid_argument(channel.unary_unary("/grpc.health.v1.Health/Check"), corrupt),
        _invalid_argument(
            channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            iter([corrupt]),
        ),
    ]
    assert all(d.startswith("malformed request: ") for d in details), details
    assert "bad UTF-8" in details[3]
    assert stub(channel).GetHealth(pb.GetHealthRequest(), timeout=5).status == (
        pb.GetHealthResponse.STATUS_SERVING
    )


def test_reflection_v1_describes_the_api(channel: grpc.Channel) -> None:
    request = reflection_v1.message_class("ServerReflectionRequest")
    response = reflection_v1.message_class("ServerReflectionResponse")
    call = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=request.SerializeToString,
        response_deserializer=response.FromString,
    )
    answers = list(
        call(
            iter(
                [
                    request(list_services=""),
                    request(file_containing_symbol="tracer.v1.TracerService"),
                    request(file_containing_symbol="grpc.reflection.v1.ServerReflection"),
                ]
            ),
            timeout=10,
        )
    )
    names = {s.name for s in answers[0].list_services_response.service}
    assert {
        "tracer.v1.TracerService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names
    for answer, package in ((answers[1], "tracer.v1"), (answers[2], "grpc.reflection.v1")):
        files = [
            descriptor_pb2.FileDescriptorProto.FromString(b)
            for b in answer.file_descriptor_response.file_descriptor_proto
        ]
        assert package in {f.package for f in files}, answer
    reflection_file = next(f for f in files if f.package == "grpc.reflection.v1")
    assert [m.name for m in reflection_file.service[0].method] == ["ServerReflectionInfo"]


def _apply(ch: grpc.Channel, req: pb.ApplyPoliciesRequest) -> pb.ApplyPoliciesResponse:
    resp: pb.ApplyPoliciesResponse = stub(ch).ApplyPolicies(req, timeout=30)
    return resp


def _rule(name: str, path: Path) -> str:
    return (
        f"policies:\n  - name: {name}\n    rules:\n      - event: file_open\n"
        f"        match: {{path: ['{path}']}}\n"
    )


def _policy_of_open(d: Daemon, path: Path) -> str | None:
    """The policy that selected cat's open of `path`; None: no policy selected it
    (only selected file opens become events)."""
    marker = new_marker("cat")
    subprocess.run(["cat", str(path), marker], capture_output=True)
    d.sync()
    opens = d.matching(
        lambda e: (
            e["type"] == "file_open"
            and e["file_open"]["path"] == str(path)
            and marker in e["process"]["args"]
        )
    )
    return str(opens[0]["policy"]["name"]) if opens else None


def test_the_policy_set_is_cleared_only_when_asked_explicitly(
    daemon: Daemon, channel: grpc.Channel, tmp_path: Path
) -> None:
    watched = tmp_path / "watched"
    watched.write_text("x\n")
    doc = pb.PolicyDocument(name="w.yaml", yaml=_rule("clear-watch", watched))
    _apply(channel, pb.ApplyPoliciesRequest(documents=[doc]))
    assert _policy_of_open(daemon, watched) == "clear-watch"
    # An empty set without `clear` (a request that lost its documents) changes nothing...
    with pytest.raises(grpc.RpcError) as exc:
        _apply(channel, pb.ApplyPoliciesRequest())
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "set clear" in str(exc.value.details())
    with pytest.raises(grpc.RpcError) as exc:
        _apply(channel, pb.ApplyPoliciesRequest(documents=[doc], clear=True))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _policy_of_open(daemon, watched) == "clear-watch"
    # ...`clear` empties it, and the log says who did.
    _apply(channel, pb.ApplyPoliciesRequest(clear=True))
    line = daemon.wait_log("cleared=True")
    assert "policies changed over the API" in line
    assert "by='root on the unix socket (connected: " in line
    assert f"pid {os.getpid()} uid 0 (" in line
    assert _policy_of_open(daemon, watched) is None
    # The CLI does the same over the control socket and the API; the log names its pid.
    _apply(channel, pb.ApplyPoliciesRequest(documents=[doc]))
    for how, log in (
        (["--control-socket", str(daemon.control_socket)], "over the control socket"),
        (["--address", daemon.address], "over the API"),
    ):
        cli = subprocess.Popen(
            tracer_cmd("policy", "apply", "--clear", *how),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        out, err = cli.communicate(timeout=60)
        assert cli.returncode == 0, err
        assert out == "removed every policy\n"
        line = daemon.wait_log(f"pid {cli.pid} uid 0" if "API" in log else f"peer_pid={cli.pid}")
        assert log in line
    assert _policy_of_open(daemon, watched) is None
    r = subprocess.run(
        tracer_cmd("policy", "apply", "--control-socket", str(daemon.control_socket)),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2 and "--clear" in r.stderr


def test_a_duplicate_policy_name_is_reported_at_its_line(channel: grpc.Channel) -> None:
    first = pb.PolicyDocument(name="a.yaml", yaml=_rule("dup", Path("/nonexistent/a")))
    second = pb.PolicyDocument(
        name="b.yaml",
        yaml=_rule("other", Path("/nonexistent/b")) + "  - name: dup\n    rules: [{event: exec}]\n",
    )
    with pytest.raises(grpc.RpcError) as exc:
        _apply(channel, pb.ApplyPoliciesRequest(documents=[first, second]))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert exc.value.details() == "b.yaml:6: policy 'dup' is also defined at a.yaml:2"


def test_get_events_ends_unavailable_when_the_daemon_stops() -> None:
    d = Daemon()
    marker = new_marker("shutdown")
    try:
        with grpc.insecure_channel(d.address) as ch:
            sub = Subscription(ch, marker_request(marker))
            wait_subscribers(ch, 1)
            subprocess.run([TRUE, marker], check=True)
            sub.wait_for(is_exit_of(marker))
            assert d.stop() == 0
            # Not OK: a reader must not take the end of the daemon for the end of the events.
            err = sub.wait_error()
            assert err.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
            assert "shutting down" in err.details()  # type: ignore[attr-defined]
    finally:
        d.stop()
