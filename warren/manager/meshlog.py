"""The overlay mesh as the dispatcher sends it (ADRs 17, 52, 57, 65): every node on the overlay,
versioned by content, each version's whole encoding shared by every session that needs it, and
deltas (the nodes that joined, changed or left) for agents that announce them. A join then costs
each node one entry on the wire and in its parse, not the whole mesh: O(nodes) per join for the
cluster, not O(nodes^2).
"""

from __future__ import annotations

from warren.api import convert
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.manager import changelog
from warren.manager.dispatchwire import encode_mesh, encode_mesh_delta
from warren.state import ClusterState

MeshKey = tuple[str, str, str]  # what a node contributes to the mesh: key, endpoint, subnet


class MeshLog:
    """The mesh of the state last given to `update`. Used on the event loop only."""

    def __init__(self) -> None:
        self.version = 0  # goes up with each change of content
        self._keys: dict[str, MeshKey] = {}  # node id -> what it contributes
        self._by_id: dict[str, dpb.MeshNode] = {}
        self._log = changelog.ChangeLog(changelog.HISTORY)  # the node ids each version changed
        self._whole: bytes | None = None
        self._deltas: dict[int, bytes | None] = {}  # base -> delta onto the current version

    def update(self, state: ClusterState) -> None:
        """Take in the nodes of `state` (once per applied index that changed nodes): a new
        version if the mesh differs, with only the changed nodes converted."""
        keys = {
            n.id: (n.wg_public_key, n.wg_endpoint, n.overlay_subnet)
            for n in state.nodes.values()
            if n.overlay_subnet and n.overlay
        }
        if keys == self._keys:
            return
        old = self._keys
        changed = {i for i, key in keys.items() if old.get(i) != key} | {i for i in old if i not in keys}
        for node_id in changed:
            if node_id in keys:
                self._by_id[node_id] = convert.mesh_node_to_pb(state.nodes[node_id])
            else:
                self._by_id.pop(node_id, None)
        self._keys = keys
        self._log.record(self.version + 1, self.version, changed)
        self.version += 1
        self._whole = None
        self._deltas = {}

    def whole(self) -> bytes:
        """The current mesh, whole, sorted by node id, encoded once per version."""
        if self._whole is None:
            self._whole = encode_mesh([self._by_id[i] for i in sorted(self._by_id)], self.version)
        return self._whole

    def since(self, sent: int, deltas: bool) -> bytes | None:
        """What a session that holds version `sent` must be sent: None if it is current; a delta
        if its agent takes them and `sent` is still in the log; else the whole mesh."""
        if sent == self.version:
            return None
        if deltas:
            if sent not in self._deltas:
                ids = self._log.since(sent)
                self._deltas[sent] = (
                    None
                    if ids is None
                    else encode_mesh_delta(
                        [self._by_id[i] for i in sorted(ids) if i in self._by_id],
                        sorted(i for i in ids if i not in self._by_id),
                        sent,
                        self.version,
                    )
                )
            delta = self._deltas[sent]
            if delta is not None:
                return delta
        return self.whole()
