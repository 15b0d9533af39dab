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
index: one node of the simulator reads its entries as a real node does (`TrackingAssignmentSet`)
and records the sets it holds (`SharedEndpoints`), and a node at one of those indexes sends that
set's digests. A node at another index sends none, and gets the whole list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory

from warren.agent.assignments import AssignmentSet, KeyOrdered, MeshMember
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.network.endpointdigest import endpoint_digest, sendable
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


# The endpoint sets the tracking node last held, by index: it holds a new one about every 2 s
# at S2's size, so this is a minute of them.
TRACKED_SETS = 32


class SharedEndpoints:
    """The endpoint sets that one node of the simulator (its tracker, a `TrackingAssignmentSet`)
    held, at the last TRACKED_SETS indexes it held, with their digests. The managers send every
    node the same set at one index, so any node at one of those indexes holds that set. Building
    the sets of other indexes would cost what reading every entry cost the simulator (ADR 71):
    under churn each node is at an index of its own. When the cluster is quiet the nodes all
    reach its last index, the tracker's too."""

    def __init__(self, keep: int = TRACKED_SETS) -> None:
        self._keep = keep
        self._sets: dict[int, KeyOrdered[Endpoint]] = {}  # oldest first
        self._digests: dict[int, list[dpb.EndpointDigest]] = {}

    def record(self, index: int, endpoints: KeyOrdered[Endpoint]) -> None:
        """The tracker now holds `endpoints`, the set of `index` (a copy: it changes its own)."""
        if index in self._sets:
            return
        self._sets[index] = endpoints.copy()
        while len(self._sets) > self._keep:
            oldest = next(iter(self._sets))
            del self._sets[oldest]
            self._digests.pop(oldest, None)

    def __len__(self) -> int:
        """The sets kept."""
        return len(self._sets)

    def __contains__(self, index: object) -> bool:
        """Whether the set of `index` is kept: a node at another index has no digests to send."""
        return index in self._sets

    def digests(self, index: int) -> list[dpb.EndpointDigest]:
        """The digests of the set of `index` (none if the tracker did not hold it lately)."""
        found = self._digests.get(index)
        if found is None:
            held = self._sets.get(index)
            if held is None:
                return []
            found = self._digests[index] = [
                dpb.EndpointDigest(name=e.name, digest=endpoint_digest(e)) for e in sendable(held.ordered())
            ]
        return found


@dataclass
class TrackingAssignmentSet(AssignmentSet):
    """The real AssignmentSet of one simulated node, which records each endpoint set it holds in
    `shared` for the index-only nodes (ADR 81)."""

    shared: SharedEndpoints = field(default_factory=SharedEndpoints)

    def _take_endpoints(self, msg: dpb.AssignmentsMessage) -> tuple[Endpoint, ...] | None:
        taken = super()._take_endpoints(msg)
        if taken is not None:
            self.shared.record(self.endpoints_index, self.endpoints)
        return taken


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
        self.endpoints_index = msg.services_index
        return ()

    def endpoint_digests(self) -> list[dpb.EndpointDigest]:
        return self.shared.digests(self.endpoints_index)

    def _take_mesh(self, msg: dpb.AssignmentsMessage) -> tuple[MeshMember, ...] | None:
        if not (msg.mesh_delta or msg.mesh_changed):
            return None
        self.mesh_version = msg.mesh_version
        return ()
