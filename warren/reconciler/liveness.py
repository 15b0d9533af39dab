"""The down check (ADR 69): which ready nodes missed their heartbeats past the node timeout, and
whether to believe it. Pure: the caller passes the time and the heartbeats.

When many nodes go silent at once it is far likelier that this manager stopped hearing (a stall,
a cut-off link, an overloaded machine) than that they all failed together. Marking them down
would orphan and restart every task they run, for nothing. So when more than MASS_SILENCE_SHARE
of the ready nodes, and at least MASS_SILENCE_MIN of them, are silent, none is marked down
(Kubernetes' node lifecycle controller stops evicting in a zone past --unhealthy-zone-threshold
for the same reason); the check resumes as soon as enough of them are heard again.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from warren.model import Availability, Node, NodeStatus
from warren.state import ClusterState

# The most heartbeats a second the leader is asked to take (Nomad's max_heartbeats_per_second, 50
# by default): past 250 nodes at the default 5 s, the period grows with the cluster. At 1,000
# nodes, 200 a second (with 1,000 sessions) were not taken in time on this 2-core machine, and
# the failed sessions fed themselves; at 50 a second S2 ran all its tasks (#15, ADR 73).
MAX_HEARTBEATS_PER_SECOND = 50.0


def heartbeat_period(configured: float, nodes: int) -> float:
    """The period agents beat at, and the down check counts with: the cluster's setting, or
    longer in a cluster so large that its nodes would beat more than MAX_HEARTBEATS_PER_SECOND."""
    return max(configured, nodes / MAX_HEARTBEATS_PER_SECOND)


# A node the leader has not heard from since it took over (ADR 83) is marked down only after this
# many node timeouts, and only once no other such node has found the leader for a timeout: every
# agent must open a new session at once, and a busy new leader takes 1,000 of them in over
# minutes. With one timeout it marked hundreds of live nodes down and started their tasks again
# elsewhere (#15). SwarmKit gives such nodes twice its grace period; Nomad 5 minutes.
FAILOVER_TIMEOUTS = 2.0
# ... and at the latest after this many, even while others still arrive.
FAILOVER_MAX_TIMEOUTS = 5.0


class Failover(msgspec.Struct, frozen=True):
    """What a new leader still awaits (ADR 83): the nodes it has not heard since it took over,
    and when the latest of the others was first heard (the takeover's time, before any)."""

    awaited: frozenset[str] = frozenset()
    last_arrival: float = 0.0

    def overdue(self, node_id: str, age: float, now: float, node_timeout: float) -> bool:
        """Whether a node unheard for `age` seconds is past its timeout."""
        if node_id not in self.awaited:
            return age > node_timeout
        if age > node_timeout * FAILOVER_MAX_TIMEOUTS:
            return True
        return age > node_timeout * FAILOVER_TIMEOUTS and now - self.last_arrival > node_timeout

    def timeout(self, node_id: str, node_timeout: float) -> float:
        """The least silence after which the node may be overdue."""
        return node_timeout * FAILOVER_TIMEOUTS if node_id in self.awaited else node_timeout


NO_FAILOVER = Failover()  # a leader that awaits no node


MASS_SILENCE_SHARE = 0.5  # more than this share of the ready nodes silent at once ...
MASS_SILENCE_MIN = 3  # ... and at least this many: a 2- or 3-node cluster still loses a node


class DownCheck(msgspec.Struct, frozen=True):
    """One down check. `overdue`: the ready nodes past the timeout, with the seconds since their
    last heartbeat; `drained`: those of them the operator drained. `silent`: the counted nodes
    that missed two heartbeats (so past the timeout within one more period); `counted`: the
    ready nodes the guard weighs (not the drained ones: the operator moved their tasks already,
    or asked to). `held`: a mass silence, so the overdue counted nodes are not marked down."""

    overdue: tuple[tuple[str, float], ...] = ()
    drained: frozenset[str] = frozenset()
    silent: int = 0
    counted: int = 0
    held: bool = False

    @property
    def down(self) -> tuple[tuple[str, float], ...]:
        """The overdue nodes to mark down, with their silence."""
        return tuple((n, age) for n, age in self.overdue if not self.held or n in self.drained)

    @property
    def held_nodes(self) -> tuple[str, ...]:
        """The overdue nodes not marked down, because of the guard."""
        return tuple(n for n, _ in self.overdue if self.held and n not in self.drained)

    def message(self) -> str:
        """What a held node's status says within the pass (the scheduler quotes it)."""
        return f"no heartbeat, not marked down: {self.silent} of {self.counted} nodes went silent at once"


def _drained(node: Node) -> bool:
    return node.availability == Availability.DRAIN


def down_check(
    state: ClusterState,
    now: float,
    heartbeats: Mapping[str, float],
    node_timeout: float,
    heartbeat_period: float,
    failover: Failover = NO_FAILOVER,
) -> DownCheck:
    """The down check at `now`. A node with no heartbeat recorded counts as heard now. A node a
    new leader still awaits gets longer (`Failover`)."""
    overdue: list[tuple[str, float]] = []
    drained_overdue: set[str] = set()
    silent = counted = 0
    for node in sorted(state.nodes.values(), key=lambda n: n.id):
        if node.status != NodeStatus.READY:
            continue
        age = now - heartbeats.get(node.id, now)
        if failover.overdue(node.id, age, now, node_timeout):
            overdue.append((node.id, age))
            if _drained(node):
                drained_overdue.add(node.id)
        if _drained(node):
            continue
        counted += 1
        # Two missed beats with the usual 3 periods.
        silent += age > failover.timeout(node.id, node_timeout) - heartbeat_period
    held = len(overdue) > len(drained_overdue) and silent >= MASS_SILENCE_MIN and silent > MASS_SILENCE_SHARE * counted
    return DownCheck(tuple(overdue), frozenset(drained_overdue), silent, counted, held)
