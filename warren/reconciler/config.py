"""The knobs of a reconciliation pass (`ReconcileConfig`): the heartbeat period nodes are judged
by, how much task history a slot keeps, and the caps on what one pass may start or stop, as the
replicated cluster settings give them. Pure: no clock, no I/O."""

from __future__ import annotations

import msgspec

from warren.commands.cluster import MAX_PER_PASS
from warren.model import ClusterInfo

# A pass's default cap on starts grows with the cluster (ADR 74): this many per node, never
# below DEFAULT_MAX_STARTS nor above the most an operator may set (MAX_PER_PASS). A fixed 1,000
# governed S2 (1,000 nodes, 100,000 tasks) at ~650 starts/s: every pass walked the 100,000
# tasks to place 1,000 of them.
STARTS_PER_NODE = 20
DEFAULT_MAX_STARTS = 1000


def default_max_starts(nodes: int) -> int:
    """The start cap of a pass when the cluster sets none, for a cluster of `nodes` nodes."""
    return min(max(DEFAULT_MAX_STARTS, STARTS_PER_NODE * nodes), MAX_PER_PASS)


class ReconcileConfig(msgspec.Struct, frozen=True):
    """Knobs of one pass. A node is DOWN after 3 missed heartbeat periods; the caps bound how
    many tasks one pass may start or stop, so a huge change is spread over several passes."""

    heartbeat_period: float = 5.0
    task_history_limit: int = 5
    max_starts_per_pass: int = DEFAULT_MAX_STARTS
    max_stops_per_pass: int = 1000

    @property
    def node_timeout(self) -> float:
        return 3 * self.heartbeat_period

    @property
    def late_after(self) -> float:
        """A node not heard from for this long (a beat missed by half a period) gets no new
        task (ADR 68)."""
        return 1.5 * self.heartbeat_period

    @classmethod
    def from_cluster(cls, cluster: ClusterInfo | None, nodes: int = 0, **overrides: int | float) -> ReconcileConfig:
        """The config implied by the replicated cluster settings for a cluster of `nodes` nodes
        (which sizes the default start cap), with optional overrides."""
        base = cls()
        if cluster is not None:
            base = cls(
                cluster.heartbeat_period,
                cluster.task_history_limit,
                cluster.max_starts_per_pass or default_max_starts(nodes),
                cluster.max_stops_per_pass or base.max_stops_per_pass,
            )
        return msgspec.structs.replace(base, **overrides)
