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

A node that opens a new session sends digests of the endpoints it holds (ADR 81), so that the
managers send only those that differ. The managers send every node the same endpoints at one
index, so the simulator's nodes share them (`SharedEndpoints`): each index's set is built once,
by the first node to reach it, and its digests once, and kept while a node holds that index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory

from warren.agent.assignments import AssignmentSet, KeyOrdered, MeshMember, VersionGap, endpoints_after
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.network.endpointdigest import endpoint_digest
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


class SharedEndpoints:
    """The endpoint sets that a process's index-only nodes hold, by services_index, and their
    digests. A message that changes the endpoints is read whole once per index (by the first
    node that reaches it), onto the set of the index that node held. A set is kept while a node
    holds its index: with a window of recent indexes instead, at S2's churn (hundreds of versions
    a second, each node sent one every ~2 s) most nodes' bases were gone before their next
    message, and they could no longer send digests."""

    def __init__(self) -> None:
        self._sets: dict[int, KeyOrdered[Endpoint]] = {}
        self._holders: dict[int, int] = {}  # index -> nodes holding its set
        self._digests: dict[int, list[dpb.EndpointDigest]] = {}
        self.built = 0  # sets built (for tests)
        self.unreadable = 0  # messages that did not apply onto the set of their base

    def reach(self, held_index: int, msg: message.Message) -> None:
        """A node that holds the set of `held_index` applied `msg`, which changes its endpoints:
        it now holds the set of the message's index (if it could be built)."""
        index = msg.services_index  # type: ignore[attr-defined]
        if index not in self._sets:
            self._build(held_index, msg, index)
        if index in self._sets:
            self._holders[index] = self._holders.get(index, 0) + 1
        self._release(held_index)

    def _build(self, held_index: int, msg: message.Message, index: int) -> None:
        full = dpb.AssignmentsMessage.FromString(msg.SerializeToString())  # with its unknown fields
        base = self._sets.get(held_index) if full.services_delta or full.services_kept else KeyOrdered()
        if base is None:
            return
        try:
            self._sets[index] = endpoints_after(base.copy(), full)
        except VersionGap:  # a real node would resynchronise; this one only sends no digests
            self.unreadable += 1
            return
        self.built += 1

    def _release(self, index: int) -> None:
        left = self._holders.get(index, 0) - 1
        if left > 0:
            self._holders[index] = left
        elif index in self._holders:
            del self._holders[index], self._sets[index]
            self._digests.pop(index, None)

    def __len__(self) -> int:
        """The sets held."""
        return len(self._sets)

    def digests(self, index: int) -> list[dpb.EndpointDigest]:
        """The digests of the set of `index` (none if no set of it could be built)."""
        found = self._digests.get(index)
        if found is None:
            held = self._sets.get(index)
            if held is None:
                return []
            found = self._digests[index] = [
                dpb.EndpointDigest(name=e.name, digest=endpoint_digest(e)) for e in held.ordered()
            ]
        return found


@dataclass
class IndexOnlyAssignmentSet(AssignmentSet):
    """AssignmentSet, holding no endpoint or mesh entry: a change is reported as an empty tuple,
    so the session's `on_services` still hears the new index. Its messages are read without
    their entries (`IndexOnlyMessage`); the endpoints of its index are in `shared`."""

    decode: ClassVar[Any] = staticmethod(IndexOnlyMessage.FromString)
    shared: SharedEndpoints = field(default_factory=SharedEndpoints)

    def _take_endpoints(self, msg: dpb.AssignmentsMessage) -> tuple[Endpoint, ...] | None:
        if not (msg.services_delta or msg.services_changed):
            return None
        self.shared.reach(self.endpoints_index, msg)
        self.endpoints_index = msg.services_index
        return ()

    def endpoint_digests(self) -> list[dpb.EndpointDigest]:
        return self.shared.digests(self.endpoints_index)

    def _take_mesh(self, msg: dpb.AssignmentsMessage) -> tuple[MeshMember, ...] | None:
        if not (msg.mesh_delta or msg.mesh_changed):
            return None
        self.mesh_version = msg.mesh_version
        return ()
