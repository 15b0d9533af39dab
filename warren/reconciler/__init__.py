"""The reconciler: compare desired state with the observed state and return one ApplyPlan.

Pure and deterministic (Nomad's `Compute() -> plan` shape): the caller passes the state, the
time, the heartbeats and an id generator, and commits the plan as one Raft entry. Applying the
plan and reconciling again gives an empty plan unless something external changed or a restart
delay expired.

One concept per module: `core` (the pass's working set, creating, stopping and placing tasks,
the plan), `config` (the knobs of a pass, from the cluster settings), `replicated` (slots),
`global_` (one task per node), `stops` (routing leads every stop, removed services), `liveness`
(which silent nodes are marked down, ADR 69).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

from warren.commands import ApplyPlan
from warren.model import Service, ServiceMode, Task
from warren.reconciler import liveness
from warren.reconciler.config import ReconcileConfig
from warren.reconciler.core import (
    DRAINING,
    RUNNING,
    Pass,
    died_on_its_own,
    is_empty,
    is_live,
    restart_attempt,
)
from warren.reconciler.global_ import reconcile_global
from warren.reconciler.incremental import Visit, services_to_visit, settled, touched_by
from warren.reconciler.liveness import DownCheck, Failover
from warren.reconciler.replicated import reconcile_replicated
from warren.reconciler.stops import removed_services, stop_drained
from warren.state import ClusterState

__all__ = [
    "DRAINING",
    "DownCheck",
    "Failover",
    "ReconcileConfig",
    "Visit",
    "died_on_its_own",
    "down_check",
    "is_empty",
    "is_live",
    "reconcile",
    "reconcile_pass",
    "restart_attempt",
    "touched_by",
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
    return reconcile_pass(state, now, heartbeats, config, new_id, routes)[0]


def down_check(
    state: ClusterState,
    now: float,
    heartbeats: Mapping[str, float],
    config: ReconcileConfig,
    failover: Failover = liveness.NO_FAILOVER,
) -> DownCheck:
    """The down check a pass with these arguments makes (ADR 69), for the caller to report."""
    return liveness.down_check(state, now, heartbeats, config.node_timeout, config.heartbeat_period, failover)


def reconcile_pass(
    state: ClusterState,
    now: float,
    heartbeats: Mapping[str, float],
    config: ReconcileConfig,
    new_id: Callable[[], str],
    routes: Mapping[str, Collection[str]] | None = None,
    visit: Visit | None = None,
    unsettled: Collection[str] = (),
    failover: Failover = liveness.NO_FAILOVER,
) -> tuple[ApplyPlan, frozenset[str]]:
    """A pass over every service (`visit` None), or an incremental one (ADR 53) over the
    services `visit` touches, the `unsettled` ones the last pass returned, and what depends on
    them. Returns the plan and the visited services that are not settled: the next incremental
    pass visits them again. Node checks, removed services and drains are always cluster-wide.
    `failover`: what a new leader still awaits (ADR 83)."""
    p = Pass(state, now, config, new_id, routes or {})
    p.check_nodes(heartbeats, failover)
    p.heartbeats = heartbeats
    p.orphan_tasks()
    if visit is None or (state.cluster is not None and state.cluster.auto_rebalance):
        wanted = None  # auto-rebalance weighs every service against the others (ADR 36)
    else:
        wanted = services_to_visit(state, visit, unsettled)
        wanted.update(p.overlay[t].service_id for t in p.overlay)  # on a node found down now
    current = {**state.tasks, **p.overlay} if p.overlay else state.tasks
    p.start_accounting(current.values())
    services = state.services.values() if wanted is None else (state.services[s] for s in wanted if s in state.services)
    visited: list[tuple[Service, list[Task]]] = []
    for service in sorted(services, key=lambda s: s.id):
        tasks = [p.settle(current[t]) for t in sorted(state.tasks_by_service.get(service.id, ()))]
        visited.append((service, tasks))
        p.draining.extend(t for t in tasks if t.draining_since and t.desired_state <= RUNNING)
        if service.spec.mode == ServiceMode.GLOBAL:
            reconcile_global(p, service, tasks)
        else:
            reconcile_replicated(p, service, tasks)
    removed_services(p)
    stop_drained(p)
    p.place()
    if p.rebalance_after_placing:
        p.recount()
        for rebalance_placed in p.rebalance_after_placing:
            rebalance_placed()
    plan = p.plan()
    changed = {t.service_id for t in plan.created} | {r.service_id for r in plan.rollouts}
    changed.update(p.task(u.id).service_id for u in plan.updated)
    changed.update(state.tasks[t].service_id for t in plan.deleted if t in state.tasks)
    still = frozenset(s.id for s, tasks in visited if s.id in changed or not settled(s, tasks))
    return plan, still
