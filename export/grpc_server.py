"""The gRPC server: TracerService, health checking and reflection.

Listeners and their defaults are the security model (README, "gRPC API"):
- a unix socket, by default, that only root can connect to (mode 0600,
  owned by the daemon's user, root). The socket is bound in a private
  directory, given its mode, then renamed into place, so it is never
  reachable with looser permissions, whatever the umask;
- TCP only with TLS, and by default only for clients whose certificate a
  given CA signed (mTLS). Plaintext TCP is refused at start-up; TLS without
  client certificates needs --grpc-insecure-no-client-auth and is read-only.
- Reading (GetEvents, GetHealth, GetInfo) is any admitted client's; changing
  the policy set (ApplyPolicies) is root's on the unix socket, and over TCP
  only a certificate that --grpc-admin names. Every change is logged with
  who made it.

Each listener is its own grpc.Server with its own threads and bounds, so
what a TCP client holds open never costs the unix socket anything; within a
listener, streams are bounded per listener and per client address, and
workers are kept for unary calls, so that health checks always get in.
"""

from __future__ import annotations

import collections
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import grpc
import structlog
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from export import reflection_v1
from export.config import GrpcConfig, TlsFiles
from export.filters import EventFilter, FilterBudgetExhausted, FilterError
from export.hub import Hub, TooManySubscribers
from export.proto_gen import tracer_v1_pb2 as pb
from tracer.core import sockpath, unixpeers

_log = structlog.get_logger(component="grpc")

SERVICE = pb.DESCRIPTOR.services_by_name["TracerService"].full_name
_GET_EVENTS = f"/{SERVICE}/GetEvents"

# Streams other than GetEvents (reflection, Health.Watch) one listener holds
# at once: a grpcurl or a watcher needs one or two.
OTHER_STREAMS = 8
# Workers beyond those the streams may hold: unary calls (Health.Check,
# GetHealth, GetInfo, ApplyPolicies) and the refusals of streams over a
# limit run on these, so they are served when every stream slot is taken.
UNARY_WORKERS = 4
# Calls admitted beyond the workers, waiting for one; past that gRPC refuses
# a call at once (RESOURCE_EXHAUSTED) instead of queueing without bound.
QUEUED_CALLS = 64


class ListenError(RuntimeError):
    """A listener could not be set up (path in use, bind failure, unreadable TLS file)."""


class StatusSource(Protocol):
    """What GetHealth and GetInfo report; the daemon implements it."""

    def health(self) -> pb.GetHealthResponse: ...

    def info(self) -> pb.GetInfoResponse: ...


class PolicyControl(Protocol):
    def apply_policy_texts(self, docs: list[tuple[str, str]]) -> list[str]:
        """Replace the policy set with (name, YAML) documents; returns warnings.
        Raises ValueError naming what is wrong, with nothing applied."""
        ...


# -- who calls -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Access:
    """What one listener lets its callers change."""

    unix: bool
    mtls: bool
    admins: frozenset[str]
    bound_name: str = ""  # the unix socket's, as the kernel knows it

    def caller(self, context: grpc.ServicerContext) -> tuple[str, str | None]:
        """(who, why not): who the caller is, for the log, and the reason it may
        not change policies (None: it may)."""
        if self.unix:
            # Mode 0600, owned by root: only root (or CAP_DAC_OVERRIDE) connects.
            # The caller is one of the processes connected at this moment.
            peers = ", ".join(
                f"pid {p.pid} uid {p.uid} ({p.comm})" for p in unixpeers.connected(self.bound_name)
            )
            return f"root on the unix socket (connected: {peers or 'unknown'})", None
        # Each value is a list of bytes (the stubs say bytes).
        auth = cast(Mapping[str, Sequence[bytes]], context.auth_context())
        subject = _first(auth, "x509_subject")
        if not self.mtls or subject is None:
            return (
                f"unauthenticated TLS client {context.peer()}",
                "this listener serves without client certificates "
                "(--grpc-insecure-no-client-auth) and is read-only",
            )
        names = {subject, _first(auth, "x509_common_name")}
        names.update(
            v.decode(errors="replace") for v in auth.get("x509_subject_alternative_name", [])
        )
        if self.admins & names:
            return f"certificate {subject}", None
        return (
            f"certificate {subject}",
            f"certificate {subject} may read but not change policies: "
            "no --grpc-admin of the daemon names it",
        )


def _first(auth: Mapping[str, Sequence[bytes]], key: str) -> str | None:
    values = auth.get(key)
    return values[0].decode(errors="replace") if values else None


# -- limits and request checks (every call of a listener) -----------------------------


def _peer_key(peer: str) -> str | None:
    """The client's address without its port; None on the unix socket."""
    if peer.startswith("unix:"):
        return None
    host, sep, _ = peer.rpartition(":")
    return host if sep else peer


class _StreamLimits:
    """Streams one listener holds: GetEvents, others, and per client address."""

    def __init__(self, subscribers: int, others: int, per_peer: int) -> None:
        self._lock = threading.Lock()
        self._caps = {True: subscribers, False: others}
        self._held = {True: 0, False: 0}
        self._per_peer = per_peer
        self._peers: collections.Counter[str] = collections.Counter()

    def enter(self, subscriber: bool, peer: str | None) -> str | None:
        """Take a slot, or say why there is none."""
        with self._lock:
            if self._held[subscriber] >= self._caps[subscriber]:
                what = "GetEvents streams" if subscriber else "reflection and health-watch streams"
                return (
                    f"this listener already serves {self._caps[subscriber]} {what}, its limit"
                    + (" (--grpc-max-subscribers)" if subscriber else "")
                )
            if peer is not None and self._peers[peer] >= self._per_peer:
                return (
                    f"{peer} already holds {self._per_peer} streams on this listener, "
                    "the limit for one client address (--grpc-max-streams-per-peer)"
                )
            self._held[subscriber] += 1
            if peer is not None:
                self._peers[peer] += 1
            return None

    def leave(self, subscriber: bool, peer: str | None) -> None:
        with self._lock:
            self._held[subscriber] -= 1
            if peer is not None:
                self._peers[peer] -= 1
                if not self._peers[peer]:
                    del self._peers[peer]


@dataclass(frozen=True, slots=True)
class _Malformed:
    problem: str


def _tolerant(parse: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """A deserializer that never raises: gRPC turns a raised error into
    INTERNAL, and a malformed request is the caller's error."""
    if parse is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except (DecodeError, ValueError) as exc:
            return _Malformed(str(exc))

    return deserialize


def _check(request: Any, context: grpc.ServicerContext) -> Any:
    if isinstance(request, _Malformed):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {request.problem}")
    return request


def _checked_stream(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
    for r in requests:
        yield _check(r, context)


class _Guard(grpc.ServerInterceptor):
    """Every call of a listener: malformed requests are INVALID_ARGUMENT, and
    streams take a slot of the listener's _StreamLimits while they last."""

    def __init__(self, limits: _StreamLimits) -> None:
        self._limits = limits

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        h = continuation(details)
        if h is None:
            return None
        limits = self._limits
        subscriber = details.method == _GET_EVENTS
        des, ser = _tolerant(h.request_deserializer), h.response_serializer

        def enter(context: grpc.ServicerContext) -> str | None:
            peer = _peer_key(context.peer())
            if (problem := limits.enter(subscriber, peer)) is not None:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, problem)
            return peer

        if h.unary_unary is not None:
            uu = h.unary_unary

            def unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
                return uu(_check(request, context), context)

            return grpc.unary_unary_rpc_method_handler(unary_unary, des, ser)
        if h.unary_stream is not None:
            us = h.unary_stream

            def unary_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                request = _check(request, context)
                peer = enter(context)
                try:
                    yield from us(request, context)
                finally:
                    limits.leave(subscriber, peer)

            return grpc.unary_stream_rpc_method_handler(unary_stream, des, ser)
        if h.stream_stream is not None:
            ss = h.stream_stream

            def stream_stream(
                requests: Iterator[Any], context: grpc.ServicerContext
            ) -> Iterator[Any]:
                peer = enter(context)
                try:
                    yield from ss(_checked_stream(requests, context), context)
                finally:
                    limits.leave(subscriber, peer)

            return grpc.stream_stream_rpc_method_handler(stream_stream, des, ser)
        su = h.stream_unary
        assert su is not None  # one of the four is set

        def stream_unary(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            peer = enter(context)
            try:
                return su(_checked_stream(requests, context), context)
            finally:
                limits.leave(subscriber, peer)

        return grpc.stream_unary_rpc_method_handler(stream_unary, des, ser)


# -- the service --------------------------------------------------------------------


def _identity(data: bytes) -> bytes:
    return data


class TracerService:
    def __init__(
        self, hub: Hub, status: StatusSource, policies: PolicyControl, access: _Access
    ) -> None:
        self._hub = hub
        self._status = status
        self._policies = policies
        self._access = access

    def get_events(
        self, request: pb.GetEventsRequest, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        # Serialized GetEventsResponse messages (the hub serializes each
        # event once for all subscribers), hence the identity serializer.
        try:
            event_filter = EventFilter.from_request(request)
        except FilterError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except FilterBudgetExhausted as exc:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        try:
            try:
                sub = self._hub.subscribe(event_filter)
            except TooManySubscribers as exc:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            peer = context.peer()
            _log.info("subscriber joined", id=sub.id, peer=peer, subscribers=self._hub.subscribers)
            # Called when the call ends for any reason (client gone, server
            # stopping): wakes batches() if it waits for events.
            if not context.add_callback(sub.close):
                sub.close()
            try:
                yield from sub.batches()
                if context.is_active():
                    # The hub closed: the daemon stops. OK would tell a SIEM that
                    # the stream is complete; this stream is cut short instead.
                    context.abort(
                        grpc.StatusCode.UNAVAILABLE,
                        "tracer is shutting down: no more events on this stream; "
                        "events from now on need a new call to a running daemon",
                    )
            finally:
                self._hub.unsubscribe(sub)
                _log.info(
                    "subscriber left", id=sub.id, peer=peer, subscribers=self._hub.subscribers
                )
        finally:
            event_filter.release()  # its compiled patterns, counted against all subscribers'

    def get_health(
        self, request: pb.GetHealthRequest, context: grpc.ServicerContext
    ) -> pb.GetHealthResponse:
        return self._status.health()

    def get_info(
        self, request: pb.GetInfoRequest, context: grpc.ServicerContext
    ) -> pb.GetInfoResponse:
        return self._status.info()

    def apply_policies(
        self, request: pb.ApplyPoliciesRequest, context: grpc.ServicerContext
    ) -> pb.ApplyPoliciesResponse:
        peer = context.peer()
        who, refusal = self._access.caller(context)
        if refusal is not None:
            _log.warning("policy change refused", by=who, peer=peer, reason=refusal)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)
        docs = [(d.name, d.yaml) for d in request.documents]
        if request.clear and docs:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "clear removes every policy and takes no documents",
            )
        if not docs and not request.clear:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "no policy documents (to remove every policy, set clear)",
            )
        try:
            warnings = self._policies.apply_policy_texts(docs)
        except ValueError as exc:
            _log.warning("policy change refused", by=who, peer=peer, error=str(exc))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        _log.warning(
            "policies changed over the API",
            by=who,
            peer=peer,
            documents=[n for n, _ in docs],
            cleared=request.clear,
        )
        return pb.ApplyPoliciesResponse(warnings=warnings)

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "GetEvents": grpc.unary_stream_rpc_method_handler(
                    self.get_events,
                    request_deserializer=pb.GetEventsRequest.FromString,
                    response_serializer=_identity,
                ),
                "GetHealth": grpc.unary_unary_rpc_method_handler(
                    self.get_health,
                    request_deserializer=pb.GetHealthRequest.FromString,
                    response_serializer=pb.GetHealthResponse.SerializeToString,
                ),
                "GetInfo": grpc.unary_unary_rpc_method_handler(
                    self.get_info,
                    request_deserializer=pb.GetInfoRequest.FromString,
                    response_serializer=pb.GetInfoResponse.SerializeToString,
                ),
                "ApplyPolicies": grpc.unary_unary_rpc_method_handler(
                    self.apply_policies,
                    request_deserializer=pb.ApplyPoliciesRequest.FromString,
                    response_serializer=pb.ApplyPoliciesResponse.SerializeToString,
                ),
            },
        )


@dataclass(slots=True)
class _Listener:
    name: str
    server: grpc.Server = field(repr=False)


class GrpcServer:
    """Owns one grpc.Server per listener, and the health status they share."""

    def __init__(
        self, config: GrpcConfig, hub: Hub, status: StatusSource, policies: PolicyControl
    ) -> None:
        if config.socket is None and config.listen is None:
            raise ValueError("no listener: give a socket path or a TCP address")
        self.config = config
        self._hub, self._status, self._policies = hub, status, policies
        # Blocking Watch: each watcher holds a worker, and so counts against
        # the stream limits like any other stream.
        self._health = health.HealthServicer(experimental_non_blocking=False)
        self._listeners: list[_Listener] = []
        self._socket_id: tuple[int, int] | None = None
        self.tcp_port: int | None = None
        try:
            if config.socket is not None:
                self._bind_unix(config.socket)
            if config.listen is not None:
                self._bind_tcp(config.listen, config.tls)
        except BaseException:
            self.stop(grace=0)  # no socket left behind by a half-made server
            raise

    def _server(self, name: str, access: _Access, per_peer: int) -> grpc.Server:
        cfg = self.config
        workers = cfg.max_subscribers + OTHER_STREAMS + UNARY_WORKERS
        limits = _StreamLimits(cfg.max_subscribers, OTHER_STREAMS, per_peer)
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"grpc-{name}"),
            interceptors=[_Guard(limits)],
            # Nobody else may bind the port beside us.
            options=[("grpc.so_reuseport", 0)],
            maximum_concurrent_rpcs=workers + QUEUED_CALLS,
        )
        service = TracerService(self._hub, self._status, self._policies, access)
        server.add_generic_rpc_handlers((service.handler(),))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection_v1.add_to_server((SERVICE, health.SERVICE_NAME), server)
        self._listeners.append(_Listener(name, server))
        return server

    def _bind_unix(self, path: Path) -> None:
        path = path.absolute()
        path.parent.mkdir(parents=True, exist_ok=True)
        if (problem := sockpath.takeover_problem(path, "--grpc-socket")) is not None:
            raise ListenError(problem)
        # Bound in a directory only we can enter, chmod'ed, then moved into
        # place: at no moment can anyone else connect to it.
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".tracer-sock-") as private:
            tmp = Path(private) / "s"
            access = _Access(unix=True, mtls=False, admins=frozenset(), bound_name=str(tmp))
            # Root's alone: a per-address limit would only limit root.
            server = self._server("unix", access, per_peer=1 << 30)
            if server.add_insecure_port(f"unix:{tmp}") == 0:
                raise ListenError(f"cannot listen on unix socket {path}")
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        self._socket_id = sockpath.identity(path)

    def _bind_tcp(self, listen: str, tls: TlsFiles | None) -> None:
        cfg = self.config
        if tls is None:
            raise ListenError(
                f"--grpc-listen {listen} needs --tls-cert and --tls-key: "
                "tracer does not serve events over plaintext TCP"
            )
        if tls.client_ca is None and not cfg.no_client_auth:
            raise ListenError(f"--grpc-listen {listen} needs --tls-client-ca")
        try:
            key, cert = tls.key.read_bytes(), tls.cert.read_bytes()
            ca = tls.client_ca.read_bytes() if tls.client_ca is not None else None
        except OSError as exc:
            raise ListenError(f"cannot read a TLS file: {exc}") from None
        creds = grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
        )
        access = _Access(unix=False, mtls=ca is not None, admins=frozenset(cfg.admins))
        server = self._server("tcp", access, cfg.max_peer_streams)
        try:
            port = server.add_secure_port(listen, creds)
        except RuntimeError as exc:
            raise ListenError(f"cannot listen on {listen}: {exc}") from None
        if port == 0:
            raise ListenError(f"cannot listen on {listen}")
        self.tcp_port = port
        if ca is None:
            _log.warning(
                "TLS WITHOUT CLIENT CERTIFICATES (--grpc-insecure-no-client-auth): anyone who "
                "reaches the port reads every event, command lines included; "
                "this listener is read-only",
                listen=listen,
            )

    def start(self) -> None:
        for listener in self._listeners:
            listener.server.start()
        for name in ("", SERVICE):
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        cfg = self.config
        _log.info(
            "grpc listening",
            socket=str(cfg.socket) if cfg.socket else None,
            tcp=f"{cfg.listen.rpartition(':')[0]}:{self.tcp_port}" if cfg.listen else None,
            mtls=bool(cfg.tls and cfg.tls.client_ca),
            tcp_admins=list(cfg.admins),
        )

    def stopping(self) -> None:
        """Tell health checkers first, before streams end."""
        self._health.enter_graceful_shutdown()

    def stop(self, grace: float = 5.0) -> None:
        """End calls (letting streams send what is queued for `grace` s), remove the socket."""
        done = [listener.server.stop(grace) for listener in self._listeners]
        for event in done:
            event.wait(grace + 1)
        path = self.config.socket
        if path is not None and self._socket_id is not None:
            sockpath.remove_if_ours(path, self._socket_id)
