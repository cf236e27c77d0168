"""gRPC server reflection for a platform server: `grpc.reflection.v1` and `grpc.reflection.v1alpha` both served,
and method symbols (`package.Service.Method`, what `grpcurl describe` asks for) resolved.

grpcio-reflection implements only v1alpha. The v1 protocol has the same messages and field numbers in another
package, so the same servicer answers both: v1 calls are decoded and encoded with the v1alpha classes, and the v1
schema (the v1alpha file renamed) is added to the default descriptor pool so that clients can describe the v1
service like any other listed one.

Python protobuf's `DescriptorPool.FindFileContainingSymbol` does not find methods (grpc/grpc#34743), so every
`describe` of a method failed with "Symbol not found"; `MethodResolvingPool` resolves them through their service.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb2

__all__ = ["SERVICE_NAMES", "V1ALPHA_SERVICE_NAME", "V1_SERVICE_NAME", "MethodResolvingPool", "enable_reflection"]

V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
V1ALPHA_SERVICE_NAME: str = reflection.SERVICE_NAME
SERVICE_NAMES = (V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME)
"""The reflection services `enable_reflection` serves."""

_V1_FILE_NAME = "grpc/reflection/v1/reflection.proto"


class MethodResolvingPool:
    """A read-only view of a descriptor pool for the reflection servicer (the `DescriptorPool` methods it calls),
    whose `FindFileContainingSymbol` also finds methods: on a miss, `package.Service.Method` is looked up as a
    method of `package.Service`.

    Args:
        pool: The pool looked up (the default pool, where the generated `_pb2` modules add their files).
    """

    def __init__(self, pool: descriptor_pool.DescriptorPool) -> None:
        self._pool = pool

    def FindFileContainingSymbol(self, symbol: str) -> descriptor.FileDescriptor:
        """The file that defines `symbol` (a message, field, enum, service, method, ...).

        Raises:
            KeyError: No such symbol.
        """
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            service = self._service_of_method(symbol)
            if service is None:
                raise
            return service.file

    def FindFileByName(self, name: str) -> descriptor.FileDescriptor:
        """The file named `name` (`package/path/file.proto`). Raises KeyError when missing."""
        return self._pool.FindFileByName(name)

    def FindMessageTypeByName(self, full_name: str) -> descriptor.Descriptor:
        """The message `full_name`. Raises KeyError when missing."""
        return self._pool.FindMessageTypeByName(full_name)

    def FindExtensionByNumber(self, message: descriptor.Descriptor, number: int) -> descriptor.FieldDescriptor:
        """The extension `number` of `message`. Raises KeyError when missing."""
        return self._pool.FindExtensionByNumber(message, number)

    def FindAllExtensions(self, message: descriptor.Descriptor) -> list[descriptor.FieldDescriptor]:
        """Every extension of `message` the pool knows."""
        return list(self._pool.FindAllExtensions(message))

    def _service_of_method(self, symbol: str) -> descriptor.ServiceDescriptor | None:
        service_name, _, method_name = symbol.rpartition(".")
        try:
            service = self._pool.FindServiceByName(service_name)
        except KeyError:
            return None
        return service if method_name in service.methods_by_name else None


def _add_v1_schema(pool: descriptor_pool.DescriptorPool) -> None:
    """Adds `grpc/reflection/v1/reflection.proto` to `pool` unless the v1 service is already there: the v1alpha
    file with the v1 package, type references and options."""
    try:
        pool.FindServiceByName(V1_SERVICE_NAME)
        return
    except KeyError:
        pass
    old, new = f".{v1alpha_pb2.DESCRIPTOR.package}.", ".grpc.reflection.v1."
    file = descriptor_pb2.FileDescriptorProto()
    v1alpha_pb2.DESCRIPTOR.CopyToProto(file)
    file.name = _V1_FILE_NAME
    file.package = new.strip(".")
    for message in file.message_type:  # the file has no nested messages
        for field in message.field:
            if field.type_name:
                field.type_name = field.type_name.replace(old, new)
    for service in file.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, new)
            method.output_type = method.output_type.replace(old, new)
    file.options.Clear()  # v1alpha's are deprecated = true and its Java and Go packages
    file.options.java_package = "io.grpc.reflection.v1"
    file.options.java_outer_classname = "ServerReflectionProto"
    file.options.java_multiple_files = True
    file.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    pool.AddSerializedFile(file.SerializeToString())


def enable_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serves `grpc.reflection.v1.ServerReflection` and `grpc.reflection.v1alpha.ServerReflection` on `server`,
    from the default descriptor pool with method symbols resolved.

    Args:
        service_names: The full names of the services listed; the two reflection services are added.
        server: The server, before it starts.
    """
    pool = descriptor_pool.Default()
    _add_v1_schema(pool)
    servicer = reflection.aio.ReflectionServicer({*service_names, *SERVICE_NAMES}, pool=MethodResolvingPool(pool))
    handlers = {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=v1alpha_pb2.ServerReflectionRequest.FromString,
            response_serializer=v1alpha_pb2.ServerReflectionResponse.SerializeToString,
        )
    }
    for name in SERVICE_NAMES:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
        server.add_registered_method_handlers(name, handlers)
