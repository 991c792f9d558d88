"""The gRPC server: TracerService, health checking and reflection.

Listeners and their defaults are the security model:
- a unix socket, by default, that only root can connect to (mode 0600,
  owned by the daemon's user, root). The socket is bound in a private
  directory, given its mode, then renamed into place, so it is never
  reachable with looser permissions, whatever the umask;
- TCP only with TLS, and optionally only for clients whose certificate a
  given CA signed (mTLS). Plaintext TCP is refused at start-up.
One call changes the daemon, ApplyPolicies: it is served only to callers
on the unix socket and to TCP clients whose certificate the client CA
signed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Protocol

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from export.config import GrpcConfig, TlsFiles
from export.filters import EventFilter, FilterError
from export.hub import Hub, TooManySubscribers
from export.proto_gen import tracer_v1_pb2 as pb
from tracer.core import sockpath

_log = structlog.get_logger(component="grpc")

SERVICE = pb.DESCRIPTOR.services_by_name["TracerService"].full_name


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


def _identity(data: bytes) -> bytes:
    return data


class TracerService:
    def __init__(
        self, hub: Hub, status: StatusSource, policies: PolicyControl, mtls: bool
    ) -> None:
        self._hub = hub
        self._status = status
        self._policies = policies
        self._mtls = mtls

    def get_events(
        self, request: pb.GetEventsRequest, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        # Serialized GetEventsResponse messages (the hub serializes each
        # event once for all subscribers), hence the identity serializer.
        try:
            event_filter = EventFilter.from_request(request)
        except FilterError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
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
        finally:
            self._hub.unsubscribe(sub)
            _log.info("subscriber left", id=sub.id, peer=peer, subscribers=self._hub.subscribers)

    def get_health(
        self, request: pb.GetHealthRequest, context: grpc.ServicerContext
    ) -> pb.GetHealthResponse:
        return self._status.health()

    def get_info(
        self, request: pb.GetInfoRequest, context: grpc.ServicerContext
    ) -> pb.GetInfoResponse:
        return self._status.info()

    def _may_change(self, context: grpc.ServicerContext) -> bool:
        """On the unix socket (mode 0600: root), or with a client certificate
        that the TLS handshake checked against --tls-client-ca."""
        if context.peer().startswith("unix:"):
            return True
        cert = context.auth_context().get("x509_pem_cert")
        return self._mtls and bool(cert)

    def apply_policies(
        self, request: pb.ApplyPoliciesRequest, context: grpc.ServicerContext
    ) -> pb.ApplyPoliciesResponse:
        peer = context.peer()
        if not self._may_change(context):
            _log.warning("policy change refused: caller not authenticated", peer=peer)
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "policies change only over the unix socket or from a TCP client whose "
                "certificate the daemon checks (--tls-client-ca)",
            )
        docs = [(d.name, d.yaml) for d in request.documents]
        if not docs:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no policy documents")
        try:
            warnings = self._policies.apply_policy_texts(docs)
        except ValueError as exc:
            _log.warning("policy change refused", peer=peer, error=str(exc))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        _log.info("policies applied over the API", peer=peer, documents=[n for n, _ in docs])
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


class GrpcServer:
    """Owns the grpc.Server, its listeners and the health status."""

    def __init__(
        self, config: GrpcConfig, hub: Hub, status: StatusSource, policies: PolicyControl
    ) -> None:
        if config.socket is None and config.listen is None:
            raise ValueError("no listener: give a socket path or a TCP address")
        self.config = config
        # One thread per streaming subscriber, plus room for unary calls.
        workers = config.max_subscribers + 8
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
            maximum_concurrent_rpcs=workers,
        )
        mtls = config.tls is not None and config.tls.client_ca is not None
        service = TracerService(hub, status, policies, mtls)
        self._server.add_generic_rpc_handlers((service.handler(),))
        self._health = health.HealthServicer(
            experimental_non_blocking=True,
            experimental_thread_pool=futures.ThreadPoolExecutor(max_workers=1),
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
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

    def _bind_unix(self, path: Path) -> None:
        path = path.absolute()
        path.parent.mkdir(parents=True, exist_ok=True)
        if (problem := sockpath.takeover_problem(path, "--grpc-socket")) is not None:
            raise ListenError(problem)
        # Bound in a directory only we can enter, chmod'ed, then moved into
        # place: at no moment can anyone else connect to it.
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".tracer-sock-") as private:
            tmp = Path(private) / "s"
            if self._server.add_insecure_port(f"unix:{tmp}") == 0:
                raise ListenError(f"cannot listen on unix socket {path}")
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        self._socket_id = sockpath.identity(path)

    def _bind_tcp(self, listen: str, tls: TlsFiles | None) -> None:
        if tls is None:
            raise ListenError(
                f"--grpc-listen {listen} needs --tls-cert and --tls-key: "
                "tracer does not serve events over plaintext TCP"
            )
        try:
            key, cert = tls.key.read_bytes(), tls.cert.read_bytes()
            ca = tls.client_ca.read_bytes() if tls.client_ca is not None else None
        except OSError as exc:
            raise ListenError(f"cannot read a TLS file: {exc}") from None
        creds = grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
        )
        try:
            port = self._server.add_secure_port(listen, creds)
        except RuntimeError as exc:
            raise ListenError(f"cannot listen on {listen}: {exc}") from None
        if port == 0:
            raise ListenError(f"cannot listen on {listen}")
        self.tcp_port = port
        if ca is None:
            _log.warning(
                "TLS without --tls-client-ca: any client that reaches the port reads the events"
            )

    def start(self) -> None:
        self._server.start()
        for name in ("", SERVICE):
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        _log.info(
            "grpc listening",
            socket=str(self.config.socket) if self.config.socket else None,
            tcp=f"{self.config.listen.rpartition(':')[0]}:{self.tcp_port}"
            if self.config.listen
            else None,
            mtls=bool(self.config.tls and self.config.tls.client_ca),
        )

    def stopping(self) -> None:
        """Tell health checkers first, before streams end."""
        self._health.enter_graceful_shutdown()

    def stop(self, grace: float = 5.0) -> None:
        """End calls (letting streams send what is queued for `grace` s), remove the socket."""
        self._server.stop(grace).wait(grace + 1)
        path = self.config.socket
        if path is not None and self._socket_id is not None:
            sockpath.remove_if_ours(path, self._socket_id)
