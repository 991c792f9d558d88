"""Settings of the exports that reach the command line: the event log and the gRPC API.

Light on purpose (no gRPC, no zstd): the CLI reads these fields' defaults
and help to build its flags without loading what they configure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from forensics.log import SEGMENT_MAX_BYTES
from tracer.core.options import option, parse_duration, parse_size

# The lines an output that writes them may hold queued (export/sink.py):
# 65,536 lines of the usual 4-5 KB, and a bound on memory whatever their size.
QUEUE_BYTES = 256 << 20
# What one gRPC subscriber may fall behind by, in serialized events
# (export/hub.py), beside the count.
SUBSCRIBER_QUEUE_BYTES = 64 << 20


@dataclass(slots=True)
class TlsFiles:
    cert: Path
    key: Path
    client_ca: Path | None = None  # set: clients must present a certificate it signed


@dataclass(slots=True)
class GrpcConfig:
    socket: Path | None = option(
        Path("/run/tracer/tracer.sock"),
        flag="--grpc-socket",
        parse=Path,
        help="unix socket of the API, mode 0600",
    )
    listen: str | None = option(  # HOST:PORT, needs tls
        None, flag="--grpc-listen", metavar="HOST:PORT", help="also serve TCP, with TLS"
    )
    tls: TlsFiles | None = None
    queue_capacity: int = option(
        16384,
        flag="--grpc-queue-size",
        parse=int,
        help="events a subscriber may fall behind before it loses the oldest",
    )
    queue_bytes: int = option(
        SUBSCRIBER_QUEUE_BYTES,
        flag="--grpc-queue-max-bytes",
        parse=parse_size,
        help="bytes of events a subscriber may fall behind before it loses the oldest",
    )
    max_subscribers: int = option(
        32,
        flag="--grpc-max-subscribers",
        parse=int,
        help="concurrent GetEvents streams, per listener",
    )
    max_peer_streams: int = option(
        8,
        flag="--grpc-max-streams-per-peer",
        parse=int,
        help="concurrent streams of any kind from one TCP client address",
    )
    admins: tuple[str, ...] = option(
        (),
        flag="--grpc-admin",
        metavar="SUBJECT",
        repeat=True,
        help="a client certificate that may change policies over TCP, by subject "
        "(CN=ops,O=example), common name or subject alternative name (repeatable; "
        "default: none, TCP is read-only)",
    )
    # TCP with TLS but no client certificates (--grpc-insecure-no-client-auth):
    # anyone who reaches the port reads; read-only.
    no_client_auth: bool = False

    @property
    def listeners(self) -> int:
        return (self.socket is not None) + (self.listen is not None)

    def problems(self) -> list[str]:
        out = []
        if self.listen is not None and self.tls is None:
            out.append(
                f"--grpc-listen {self.listen} needs --tls-cert and --tls-key: "
                "tracer does not serve events over plaintext TCP"
            )
        if self.listen is None and self.tls is not None:
            out.append("--tls-cert/--tls-key/--tls-client-ca need --grpc-listen")
        if self.listen is not None and not _host_port(self.listen):
            out.append(f"--grpc-listen wants HOST:PORT, not {self.listen!r}")
        if self.socket is None and self.listen is None:
            out.append("--no-grpc-socket leaves the API no listener: add --grpc-listen")
        if self.queue_capacity <= 0 or self.max_subscribers <= 0 or self.queue_bytes <= 0:
            out.append(
                "grpc-queue-size, grpc-queue-max-bytes and grpc-max-subscribers must be positive"
            )
        if self.max_peer_streams <= 0:
            out.append("--grpc-max-streams-per-peer must be positive")
        tls = self.tls
        if self.listen is not None and tls is not None:
            if tls.client_ca is None and not self.no_client_auth:
                out.append(
                    f"--grpc-listen {self.listen} serves only clients with a certificate: "
                    "give --tls-client-ca (or, to serve every client that reaches the port, "
                    "read-only, --grpc-insecure-no-client-auth)"
                )
            if tls.client_ca is not None and self.no_client_auth:
                out.append("--grpc-insecure-no-client-auth contradicts --tls-client-ca")
        if self.admins and (tls is None or tls.client_ca is None):
            out.append("--grpc-admin names client certificates: it needs --tls-client-ca")
        if self.no_client_auth and self.listen is None:
            out.append("--grpc-insecure-no-client-auth needs --grpc-listen")
        return out


def _host_port(text: str) -> bool:
    host, sep, port = text.rpartition(":")
    return bool(sep and host and port.isdigit() and int(port) < 65536)


@dataclass(slots=True)
class EventLogConfig:
    directory: Path = option(
        Path("/var/lib/tracer/events"),
        flag="--event-log-dir",
        parse=Path,
        help="record every event here",
    )
    segment_bytes: int = option(  # a segment is closed past this size...
        64 << 20,
        flag="--event-log-segment-size",
        parse=parse_size,
        help="close a segment past this size",
    )
    segment_age_s: float = 3600.0  # ...or this age, so age-based retention has a granularity
    max_bytes: int = option(
        1 << 30,
        flag="--event-log-max-size",
        parse=parse_size,
        help="all segments together, oldest deleted first",
    )
    max_age_s: float = option(
        7 * 86400.0,
        flag="--event-log-max-age",
        parse=parse_duration,
        help="delete closed segments older than this",
    )
    flush_interval_s: float = option(
        1.0,
        flag="--event-log-flush-interval",
        parse=parse_duration,
        help="the most a crash can lose",
    )

    def problems(self) -> list[str]:
        out = []
        for name in ("segment_bytes", "max_bytes", "max_age_s", "flush_interval_s"):
            if getattr(self, name) <= 0:
                out.append(f"event-log {name.replace('_', '-')} must be positive")
        if self.segment_bytes > SEGMENT_MAX_BYTES:
            out.append(
                f"event-log segment-size must be at most {SEGMENT_MAX_BYTES >> 20} MiB "
                "(what `tracer tree` reads of one segment)"
            )
        return out
