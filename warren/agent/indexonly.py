"""An assignment set that keeps only the endpoints' index and the mesh's version (ADR 71).

`warren sim` runs 1,000 agents in one process. Its nodes have no load balancer and no overlay
to hand endpoints or mesh members to: all they need of them is the index the delta chain checks
(ADR 65) and their heartbeats acknowledge (ADR 33). Converting and holding every entry was
most of the simulator's work while nodes joined. The managers still compute, encode and send
every entry, and each node's grpc still receives every byte; a delta onto another index or
mesh version is still a VersionGap (AssignmentSet's own check, before these methods run). The
real agent uses AssignmentSet itself.

Nor are the entries parsed (#15): the session reads each message as `IndexOnlyMessage`, the
same message without its `services` and `mesh` lists, which protobuf then keeps as unknown
bytes, never decoded. At S2's size parsing them was a sixth of the simulator's time: a second of
endpoint patches is ~3,000 addresses, 100 us to parse, and 2 us to skip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory

from warren.agent.assignments import AssignmentSet, MeshMember
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.network.lb import Endpoint

ENTRY_FIELDS = ("services", "mesh")  # the lists of entries an index-only node never reads


def without_fields(full: type[message.Message], names: tuple[str, ...], name: str) -> type[message.Message]:
    """A message class `name` with the fields of `full` but `names`, to parse the same bytes:
    built from the descriptor of `full`, so it follows every field added to it."""
    described = full.DESCRIPTOR
    package = described.file.package
    # Its fields name types of the full message's file and of that file's own imports: both are
    # declared, as the pure-Python protobuf checks (upb does not).
    dependencies = [described.file.name, *(d.name for d in described.file.dependencies)]
    file = descriptor_pb2.FileDescriptorProto(
        name=f"warren/agent/indexonly/{name}.proto", package=package, dependency=dependencies, syntax="proto3"
    )
    proto = file.message_type.add()
    described.CopyToProto(proto)
    proto.name = name
    kept = [f for f in proto.field if f.name not in names]
    del proto.field[:]
    proto.field.extend(kept)
    del proto.enum_type[:]  # its fields name the full message's enums by their full names
    pool = descriptor_pool.Default()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.{name}"))


IndexOnlyMessage = without_fields(dpb.AssignmentsMessage, ENTRY_FIELDS, "AssignmentsMessageIndexOnly")


@dataclass
class IndexOnlyAssignmentSet(AssignmentSet):
    """AssignmentSet, holding no endpoint or mesh entry: a change is reported as an empty tuple,
    so the session's `on_services` still hears the new index. Its messages are read without
    their entries (`IndexOnlyMessage`)."""

    decode: ClassVar[Any] = staticmethod(IndexOnlyMessage.FromString)

    def _take_endpoints(self, msg: dpb.AssignmentsMessage) -> tuple[Endpoint, ...] | None:
        if not (msg.services_delta or msg.services_changed):
            return None
        self.endpoints_index = msg.services_index
        return ()

    def _take_mesh(self, msg: dpb.AssignmentsMessage) -> tuple[MeshMember, ...] | None:
        if not (msg.mesh_delta or msg.mesh_changed):
            return None
        self.mesh_version = msg.mesh_version
        return ()
