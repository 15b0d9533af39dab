"""Incremental reconciliation (ADR 53): which services a pass must visit.

A pass visits the services that changed since the last pass (their spec or their tasks), those
with tasks on a node that changed, those depending on a service whose tasks changed (ADR 49),
every global service, and every service the last pass left unsettled. An unsettled service is
one whose decisions may change with time alone (a rollout, a drain, a restart delay, a task
waiting for room): `settled` says when a service's full-pass decisions can only change through
a committed change, so that skipping it decides the same as visiting it. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from warren import rebalance
from warren.model import Service, ServiceMode, Task, TaskState
from warren.state import ClusterState, Delete, Put

# Kinds of change that never alter a pass's decisions; any kind not listed here or handled below
# (cluster settings, volumes, networks) asks for a full pass.
_IGNORED_KINDS = frozenset({"admin", "secret", "config", "registry", "revoked"})


class Visit(msgspec.Struct, frozen=True):
    """What an incremental pass visits besides the global and the unsettled services."""

    services: frozenset[str] = frozenset()
    nodes: frozenset[str] = frozenset()


def touched_by(changes: Iterable[Put | Delete], before: ClusterState) -> Visit | None:
    """The services and nodes the committed `changes` touch, or None when they call for a full
    pass. `before` is the state the last pass saw: a deleted task's service is looked up there."""
    services: set[str] = set()
    nodes: set[str] = set()
    for change in changes:
        if change.kind in _IGNORED_KINDS:
            continue
        if isinstance(change, Put) and change.kind == "task" and isinstance(change.obj, Task):
            services.add(change.obj.service_id)
        elif isinstance(change, Put) and change.kind in ("service", "node"):
            (services if change.kind == "service" else nodes).add(change.obj.id)
        elif isinstance(change, Delete) and change.kind in ("service", "node"):
            (services if change.kind == "service" else nodes).add(change.id)
        elif isinstance(change, Delete) and change.kind == "task" and change.id in before.tasks:
            services.add(before.tasks[change.id].service_id)
        else:
            return None  # a task created and deleted since, or a kind that may affect anything
    return Visit(frozenset(services), frozenset(nodes))


def services_to_visit(state: ClusterState, visit: Visit, unsettled: Iterable[str]) -> set[str]:
    """The services of `visit`, expanded: tasks on a touched node, dependents, global services."""
    wanted = set(visit.services) | set(unsettled)
    for node_id in visit.nodes:
        wanted.update(state.tasks[t].service_id for t in state.tasks_by_node.get(node_id, ()))
    changed_names = {state.services[s].spec.name for s in visit.services if s in state.services}
    for service_id in state.coupled_services:  # the few a change elsewhere can concern
        service = state.services[service_id]
        if service.spec.mode is ServiceMode.GLOBAL or (
            service.depends_on and changed_names and any(d.service in changed_names for d in service.depends_on)
        ):
            wanted.add(service.id)
    return wanted


def settled(service: Service, tasks: Iterable[Task]) -> bool:
    """True when a pass over the service decides nothing until a committed change touches it:
    a replicated service, no rollout or rebalance under way, exactly `replicas` tasks of the
    current version running, and every other task ended or told to stop (the agent's report of
    the stop is a change). Anything else, a drain, a restart delay, a task waiting for room or
    for its dependencies, or a global service, may change with time or with other services."""
    if service.spec.mode != ServiceMode.REPLICATED:
        return False
    status = service.update_status
    if (status is not None and status.state.active) or rebalance.under_way(service):
        return False
    running = 0
    for t in tasks:
        if t.state.terminal:
            continue
        if t.draining_since and t.desired_state <= TaskState.RUNNING:
            return False  # its stop waits for the load balancers or a bound
        if t.desired_state > TaskState.RUNNING:
            if t.state < TaskState.ASSIGNED:
                return False
            continue
        if t.state != TaskState.RUNNING or t.spec_version != service.version or not t.node_id:
            return False
        running += 1
    return running == service.spec.replicas
