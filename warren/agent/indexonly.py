"""An assignment set that keeps only the endpoints' index and the mesh's version (ADR 71).

`warren sim` runs 1,000 agents in one process. Its nodes have no load balancer and no overlay
to hand endpoints or mesh members to: all they need of them is the index the delta chain checks
(ADR 65) and their heartbeats acknowledge (ADR 33). Converting and holding every entry was
most of the simulator's work while nodes joined. The managers still compute, encode and send
every entry, and each node's grpc still receives and parses the whole message; a delta onto
another index or mesh version is still a VersionGap (AssignmentSet's own check, before these
methods run). The real agent uses AssignmentSet itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from warren.agent.assignments import AssignmentSet, MeshMember
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.network.lb import Endpoint


@dataclass
class IndexOnlyAssignmentSet(AssignmentSet):
    """AssignmentSet, holding no endpoint or mesh entry: a change is reported as an empty tuple,
    so the session's `on_services` still hears the new index."""

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
