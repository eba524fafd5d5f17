"""containerd's snapshots API, loaded from its compiled descriptors: messages, the
server's method table and a client.

The repository's ``proto/containerd/snapshots.proto`` and ``mount.proto`` are
containerd's ``containerd.services.snapshots.v1`` service and
``containerd.types.Mount`` as fusesnap serves them (same package, messages and
field numbers; without gogoproto's options, which change only Go's code).
``tools/gen-proto`` compiles them into ``snapshots.binpb`` beside this module,
a ``FileDescriptorSet``; this module builds
the message classes from it at import (protobuf's own dynamic messages: no
generated Python code), and a test checks that the set is what the .proto files
compile to.

`Servicer` is what a server implements (one method per RPC, as containerd names
them); `add_to_server` registers one with a `grpc.Server`; `Stub` calls a
server the way containerd does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = [
    "KIND_ACTIVE",
    "KIND_COMMITTED",
    "KIND_VIEW",
    "METHODS",
    "SERVICE",
    "Servicer",
    "Stub",
    "add_to_server",
    "message",
]

DESCRIPTORS = Path(__file__).parent / "snapshots.binpb"
PACKAGE = "containerd.services.snapshots.v1"
SERVICE = f"{PACKAGE}.Snapshots"


def _load() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.Default()
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTORS.read_bytes())
    for proto in files.file:
        try:
            pool.FindFileByName(proto.name)  # the well-known types are there already
        except KeyError:
            pool.Add(proto)
    return pool


_POOL = _load()


def message(name: str) -> Any:
    """The message class of ``name`` (``Info``, ``containerd.types.Mount``, ...)."""
    full = name if "." in name else f"{PACKAGE}.{name}"
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(full))


_KIND = _POOL.FindEnumTypeByName(f"{PACKAGE}.Kind")
KIND_VIEW = _KIND.values_by_name["VIEW"].number
KIND_ACTIVE = _KIND.values_by_name["ACTIVE"].number
KIND_COMMITTED = _KIND.values_by_name["COMMITTED"].number

_SERVICE = _POOL.FindServiceByName(SERVICE)
# method name -> (request class, response class, server streaming)
METHODS: dict[str, tuple[Any, Any, bool]] = {
    m.name: (
        message_factory.GetMessageClass(m.input_type),
        message_factory.GetMessageClass(m.output_type),
        m.server_streaming,
    )
    for m in _SERVICE.methods
}


class Servicer(Protocol):
    """One method per RPC of `SERVICE`, each ``(request, context) -> response`` (``List``
    yields its responses)."""

    def Prepare(self, request: Any, context: grpc.ServicerContext) -> Any: ...
    def View(self, request: Any, context: grpc.ServicerContext) -> Any: ...
    def Mounts(self, request: Any, context: grpc.ServicerContext) -> Any: ...
    def Commit(self, request: Any, context: grpc.ServicerContext) -> Any: ...
    def Remove(self, request: Any, context: grpc.ServicerContext) -> Any: ...
    def Stat(self, request: Any, context: grpc.ServicerContext) -> Any: ...
    def Update(self, request: Any, context: grpc.ServicerContext) -> Any: ...
    def List(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]: ...
    def Usage(self, request: Any, context: grpc.ServicerContext) -> Any: ...
    def Cleanup(self, request: Any, context: grpc.ServicerContext) -> Any: ...


def add_to_server(servicer: Servicer, server: grpc.Server) -> None:
    """Serve `SERVICE` on ``server`` with ``servicer``'s methods."""
    handlers = {}
    for name, (request, response, streaming) in METHODS.items():
        make = (
            grpc.unary_stream_rpc_method_handler
            if streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[name] = make(
            getattr(servicer, name),
            request_deserializer=request.FromString,
            response_serializer=response.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


class Stub:
    """A client of `SERVICE` on ``channel``: ``stub.Prepare(request, metadata=...)``."""

    def __init__(self, channel: grpc.Channel) -> None:
        for name, (request, response, streaming) in METHODS.items():
            make = channel.unary_stream if streaming else channel.unary_unary
            call = make(
                f"/{SERVICE}/{name}",
                request_serializer=request.SerializeToString,
                response_deserializer=response.FromString,
            )
            setattr(self, name, call)

    def __getattr__(self, name: str) -> Any:  # for type checkers: the methods set above
        raise AttributeError(name)
