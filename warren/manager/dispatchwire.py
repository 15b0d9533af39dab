"""The dispatcher's messages as they go on the wire (ADR 57).

A change of the services' endpoints or of the mesh goes to every session at once, and both are
the same for every node: they are encoded once per Raft index and every session sends those same
bytes after its own fields. Protobuf merges concatenated encodings of a message (repeated fields
append, scalars take the last value), so the agent parses one AssignmentsMessage as before: the
protocol is unchanged.
"""

from __future__ import annotations

from typing import NamedTuple, cast

import grpc

from warren.api.v1 import dispatcher_pb2 as dpb
from warren.api.v1 import dispatcher_pb2_grpc


class Assignments(NamedTuple):
    """One AssignmentsMessage of a session: its own fields, and the encodings of the fields every
    session sends alike, appended as they are: `shared` (the endpoints) and `mesh`. Both are the
    logs' own bytes objects, never a per-session copy: gRPC holds a session's last message until
    its next, so a copy per session of a whole list (1.4 MB at 100,000 backends) stayed alive in
    every idle session (#15, ADR 72)."""

    own: dpb.AssignmentsMessage
    shared: bytes = b""
    mesh: bytes = b""

    def size(self) -> int:
        return self.own.ByteSize() + len(self.mesh) + len(self.shared)

    def encode(self) -> bytes:
        return b"".join((self.own.SerializeToString(), self.mesh, self.shared))

    def decoded(self) -> dpb.AssignmentsMessage:
        """The message the agent reads (for tests and logs: the dispatcher never needs it)."""
        return dpb.AssignmentsMessage.FromString(self.encode())


def encode_endpoints(services: list[dpb.ServiceEndpoint], index: int, kept: list[str] | None = None) -> bytes:
    """The endpoints part of an AssignmentsMessage, computed at Raft index `index`; with `kept`,
    the names of those the agent holds as they are, which `services` leaves out (ADR 81)."""
    return dpb.AssignmentsMessage(
        services=services, services_changed=True, services_index=index, services_kept=kept
    ).SerializeToString()


def encode_endpoint_delta(changed: list[dpb.ServiceEndpoint], removed: list[str], base: int, index: int) -> bytes:
    """The endpoints part of an AssignmentsMessage as a delta (ADR 65): the entries that changed
    and the names removed between `services_index` `base` and `index`."""
    return dpb.AssignmentsMessage(
        services=changed, services_removed=removed, services_delta=True, services_base=base, services_index=index
    ).SerializeToString()


def encode_endpoint_entries(entries: list[dpb.ServiceEndpoint]) -> bytes:
    """Entries alone, for a run (ADR 78): protobuf parses concatenated messages as one, their
    repeated fields in order, so a run is each version's entries, then one delta's header."""
    return dpb.AssignmentsMessage(services=entries).SerializeToString()


def encode_mesh(mesh: list[dpb.MeshNode], version: int = 0) -> bytes:
    """The mesh part of an AssignmentsMessage: every node on the overlay (ADR 17), as of mesh
    version `version` (what a delta applies onto, ADR 65)."""
    return dpb.AssignmentsMessage(mesh=mesh, mesh_changed=True, mesh_version=version).SerializeToString()


def encode_mesh_delta(changed: list[dpb.MeshNode], removed: list[str], base: int, version: int) -> bytes:
    """The mesh part of an AssignmentsMessage as a delta (ADR 65): the nodes that joined or
    changed and the ids of those gone between mesh versions `base` and `version`."""
    return dpb.AssignmentsMessage(
        mesh=changed, mesh_removed=removed, mesh_delta=True, mesh_base=base, mesh_version=version
    ).SerializeToString()


SESSION_METHOD = "/warren.api.v1.Dispatcher/Session"


def add_dispatcher_to_server(servicer: dispatcher_pb2_grpc.DispatcherServicer, server: grpc.aio.Server) -> None:
    """The generated registration, except that a session's messages are Assignments, sent by
    `Assignments.encode` (the generated code would serialize an AssignmentsMessage)."""
    dispatcher_pb2_grpc.add_DispatcherServicer_to_server(servicer, cast(grpc.aio.Server, _Wrapping(server)))


class _Wrapping:
    """Takes the generated handlers and adds them to the real server wrapped in _SessionBytes."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: tuple[grpc.GenericRpcHandler, ...]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_SessionBytes(h) for h in handlers))

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        # grpcio >= 1.63 looks these up first: the Session handler must be replaced here too.
        handlers = {name: _session_bytes(name, handler) for name, handler in handlers.items()}
        self._server.add_registered_method_handlers(service, handlers)


def _session_bytes(name: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """`handler`, sending Assignments if it is the Session method's."""
    if name != "Session":
        return handler
    return handler._replace(response_serializer=Assignments.encode)  # type: ignore[attr-defined]


class _SessionBytes(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler) -> None:
        self._inner = inner

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(handler_call_details)
        if handler is None or handler_call_details.method != SESSION_METHOD:
            return handler
        return handler._replace(response_serializer=Assignments.encode)  # type: ignore[attr-defined]
