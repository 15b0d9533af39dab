"""The reconciler: compare desired state with the observed state and return one ApplyPlan.

Pure and deterministic (Nomad's `Compute() -> plan` shape): the caller passes the state, the
time, the heartbeats and an id generator, and commits the plan as one Raft entry. Applying the
plan and reconciling again gives an empty plan unless something external changed or a restart
delay expired.

One concept per module: `core` (the pass's working set, creating, stopping and placing tasks,
the plan), `replicated` (slots), `global_` (one task per node), `stops` (routing leads every
stop, removed services).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

from warren.commands import ApplyPlan
from warren.model import ServiceMode
from warren.reconciler.core import (
    DRAINING,
    RUNNING,
    Pass,
    ReconcileConfig,
    died_on_its_own,
    is_empty,
    is_live,
    restart_attempt,
)
from warren.reconciler.global_ import reconcile_global
from warren.reconciler.replicated import reconcile_replicated
from warren.reconciler.stops import removed_services, stop_drained
from warren.state import ClusterState

__all__ = [
    "DRAINING",
    "ReconcileConfig",
    "died_on_its_own",
    "is_empty",
    "is_live",
    "reconcile",
    "restart_attempt",
]


def reconcile(
    state: ClusterState,
    now: float,
    heartbeats: Mapping[str, float],
    config: ReconcileConfig,
    new_id: Callable[[], str],
    routes: Mapping[str, Collection[str]] | None = None,
) -> ApplyPlan:
    """One reconciliation pass over the whole cluster. Reads only its arguments. `routes` maps
    a node to the task addresses its load balancer may route to; a node missing is unknown."""
    p = Pass(state, now, config, new_id, routes or {})
    p.check_nodes(heartbeats)
    p.orphan_tasks()
    current = {**state.tasks, **p.overlay} if p.overlay else state.tasks
    p.start_accounting(current.values())
    for service in sorted(state.services.values(), key=lambda s: s.id):
        tasks = [p.settle(current[t]) for t in sorted(state.tasks_by_service.get(service.id, ()))]
        p.draining.extend(t for t in tasks if t.draining_since and t.desired_state <= RUNNING)
        if service.spec.mode == ServiceMode.GLOBAL:
            reconcile_global(p, service, tasks)
        else:
            reconcile_replicated(p, service, tasks)
    removed_services(p)
    stop_drained(p)
    p.place()
    return p.plan()
