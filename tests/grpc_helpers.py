"""Test helpers for the gRPC API: a subscriber reading in a thread, throwaway certificates."""

from __future__ import annotations

import datetime
import ipaddress
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf.json_format import MessageToDict

from export.pb import JSON_OPTIONS
from export.proto_gen import tracer_v1_pb2 as pb
from export.proto_gen import tracer_v1_pb2_grpc as pb_grpc

Event = dict[str, Any]


def stub(channel: grpc.Channel) -> pb_grpc.TracerServiceStub:
    return pb_grpc.TracerServiceStub(channel)


def wait_subscribers(channel: grpc.Channel, n: int, timeout: float = 10.0) -> None:
    """Until the daemon counts `n` subscribers (GetEvents calls start asynchronously)."""
    s = stub(channel)
    deadline = time.monotonic() + timeout
    while (count := s.GetHealth(pb.GetHealthRequest(), timeout=5).subscribers) != n:
        if time.monotonic() > deadline:
            raise AssertionError(f"{count} subscribers, not {n}, after {timeout}s")
        time.sleep(0.05)


class Subscription:
    """A GetEvents call whose events a thread collects; `pause()` stops reading."""

    def __init__(self, channel: grpc.Channel, request: pb.GetEventsRequest) -> None:
        self.call = stub(channel).GetEvents(request)
        self.events: list[Event] = []
        self.messages = 0
        self.error: grpc.RpcError | None = None
        self._cond = threading.Condition()
        self._reading = threading.Event()
        self._reading.set()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for resp in self.call:
                self._reading.wait()
                evs = [MessageToDict(e, **JSON_OPTIONS) for e in resp.events]  # type: ignore[arg-type]
                with self._cond:
                    self.messages += 1
                    self.events.extend(evs)
                    self._cond.notify_all()
        except grpc.RpcError as exc:
            with self._cond:
                self.error = exc
                self._cond.notify_all()

    def pause(self) -> None:
        self._reading.clear()

    def resume(self) -> None:
        self._reading.set()

    def wait_for(self, pred: Callable[[Event], bool], timeout: float = 15.0) -> Event:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for ev in self.events:
                    if pred(ev):
                        return ev
                if self.error is not None:
                    raise AssertionError(f"stream failed: {self.error}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no matching event in {timeout}s ({len(self.events)} seen)"
                    )
                self._cond.wait(min(left, 0.2))

    def wait_error(self, timeout: float = 10.0) -> grpc.RpcError:
        self._thread.join(timeout)
        assert self.error is not None, "the stream did not fail"
        return self.error

    def snapshot(self) -> list[Event]:
        with self._cond:
            return list(self.events)

    def cancel(self) -> None:
        self.call.cancel()
        self._thread.join(5)


# -- certificates ---------------------------------------------------------------


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path  # a client certificate from another CA
    rogue_key: Path
    admin_cert: Path  # from the CA too: CN=ops-admin, SAN URI ADMIN_URI
    admin_key: Path


ADMIN_URI = "spiffe://tracer.test/ops"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    sans: Sequence[x509.GeneralName] = (),
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer if issuer else (subject, key)
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


def make_pki(d: Path) -> Pki:
    ca_key, rogue_ca_key = _key(), _key()
    ca = _cert("tracer test CA", ca_key, None, ca=True)
    rogue_ca = _cert("rogue CA", rogue_ca_key, None, ca=True)
    server_key = _key()
    server = _cert(
        "localhost",
        server_key,
        ("tracer test CA", ca_key),
        sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client_key = _key()
    client = _cert("analyst", client_key, ("tracer test CA", ca_key))
    rogue_key = _key()
    rogue = _cert("analyst", rogue_key, ("rogue CA", rogue_ca_key))
    admin_key = _key()
    admin = _cert(
        "ops-admin",
        admin_key,
        ("tracer test CA", ca_key),
        sans=[x509.UniformResourceIdentifier(ADMIN_URI)],
    )
    _write(d / "ca.pem", ca, None)
    _write(d / "server.pem", server, server_key)
    _write(d / "client.pem", client, client_key)
    _write(d / "rogue.pem", rogue, rogue_key)
    _write(d / "admin.pem", admin, admin_key)
    del rogue_ca
    return Pki(
        ca=d / "ca.pem",
        server_cert=d / "server.pem",
        server_key=d / "server.key",
        client_cert=d / "client.pem",
        client_key=d / "client.key",
        rogue_cert=d / "rogue.pem",
        rogue_key=d / "rogue.key",
        admin_cert=d / "admin.pem",
        admin_key=d / "admin.key",
    )
