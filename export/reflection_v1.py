"""gRPC server reflection under its stable name, grpc.reflection.v1.

grpcio-reflection serves only grpc.reflection.v1alpha, and current clients
(grpcurl, Postman, grpcui) ask for v1 first. The two protocols differ in
their package name alone: every message, field number and type is the same,
so v1alpha's servicer answers v1 requests byte for byte. What v1 needs of its
own is its descriptor in the pool, so that reflection can describe itself:
it is derived here from v1alpha's by renaming the package.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as alpha

PACKAGE = "grpc.reflection.v1"
SERVICE_NAME = f"{PACKAGE}.ServerReflection"
_FILE = "grpc/reflection/v1/reflection.proto"


def _register(pool: descriptor_pool.DescriptorPool) -> None:
    try:
        pool.FindFileByName(_FILE)
        return
    except KeyError:
        pass
    fd = descriptor_pb2.FileDescriptorProto()
    alpha.DESCRIPTOR.CopyToProto(fd)
    old = f".{fd.package}."
    fd.name, fd.package = _FILE, PACKAGE
    for msg in fd.message_type:
        for f in msg.field:
            if f.HasField("type_name"):
                f.type_name = f.type_name.replace(old, f".{PACKAGE}.")
    for svc in fd.service:
        for m in svc.method:
            m.input_type = m.input_type.replace(old, f".{PACKAGE}.")
            m.output_type = m.output_type.replace(old, f".{PACKAGE}.")
    pool.Add(fd)


_register(descriptor_pool.Default())


def message_class(name: str) -> Any:
    """A v1 message class (ServerReflectionRequest, ...), for clients."""
    desc = descriptor_pool.Default().FindMessageTypeByName(f"{PACKAGE}.{name}")
    return message_factory.GetMessageClass(desc)


def add_to_server(service_names: tuple[str, ...], server: grpc.Server) -> None:
    """Serve both v1 and v1alpha reflection for `service_names` (both names are added)."""
    names = (*service_names, SERVICE_NAME, reflection.SERVICE_NAME)
    servicer = reflection.ReflectionServicer(names)
    reflection.enable_server_reflection(names, server)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=alpha.ServerReflectionRequest.FromString,
        response_serializer=alpha.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE_NAME, {"ServerReflectionInfo": handler}),)
    )
