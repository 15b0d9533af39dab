"""Stops (ADR 33): routing leads every stop. A task the load balancers route to is not stopped at
once but marked draining (still desired running, out of the endpoints); its stop is sent once no
ready node may still route to it (`routes`, what the dispatcher heard from the agents) and its
`stop_drain` passed, or after the bound of 3 heartbeat periods, saying which nodes did not
confirm. Tasks of removed services go the same way, then are deleted."""

from __future__ import annotations

import msgspec

from warren.commands import RolloutChange
from warren.model import NodeStatus, Task, TaskState
from warren.reconciler.core import ASSIGNED, DRAINING, RUNNING, SHUTDOWN, Pass


def removed_services(p: Pass) -> None:
    """Tasks of a removed service are deleted once they stopped (or their node is gone)."""
    for service_id in sorted(p.state.tasks_by_service):
        if service_id in p.state.services:
            continue
        for task_id in sorted(p.state.tasks_by_service[service_id]):
            task = p.task(task_id)
            if task.state >= TaskState.COMPLETE or task.state < ASSIGNED:
                p.deleted.add(task_id)
            elif task.draining_since:
                p.draining.append(task)
            elif task.desired_state <= RUNNING:
                p.shutdown(task, "service removed")


def stop_drained(p: Pass) -> None:
    """Send the stop to draining tasks once no ready node on the overlay may still route to
    them (or the bound passed) and their `stop_drain` passed (ADR 33). After a failover the
    routes are unknown until the agents report: the bound keeps that from blocking."""
    routers = [n.id for n in p.nodes.values() if n.status == NodeStatus.READY and n.overlay]
    bound = p.config.node_timeout
    for found in p.draining:
        task = p.task(found.id)
        if task.desired_state > RUNNING:
            continue
        if task.state.terminal:  # it ended while draining: nothing to wait for
            p.update(task, desired_state=SHUTDOWN)
            continue
        address = task.overlay_address
        waiting = sorted(n for n in routers if address in p.routes.get(n, (address,)))
        drained_for = p.now - task.draining_since
        if (waiting and drained_for < bound) or drained_for < task.spec.stop_drain:
            continue
        why = task.message.removeprefix(DRAINING) if task.message.startswith(DRAINING) else "drained"
        name = f"{task.service_name}.{task.slot}"
        if waiting:
            names = ", ".join(n[:12] for n in waiting)
            unconfirmed = f"not confirmed out of the load balancing of node(s) {names} within {bound:g}s"
            why += f" ({unconfirmed})"
            _note_in_rollout(p, task, f"{name} stopped {unconfirmed}")
        elif lost := _lost_while_draining(p, task):
            names = ", ".join(n[:12] for n in lost)
            unconfirmed = f"node(s) {names} went down before confirming it out of their load balancing"
            why += f" ({unconfirmed})"
            _note_in_rollout(p, task, f"{name} stopped: {unconfirmed}")
        p.update(task, desired_state=SHUTDOWN, message=f"shutdown: {why}")


def _lost_while_draining(p: Pass, task: Task) -> list[str]:
    """Overlay nodes that went down (a silent agent) while `task` drained, their last known
    routes still holding it: the stop no longer waits for them, but says so."""
    down_at = {s.node_id: s.at for s in p.node_status if s.status == NodeStatus.DOWN}  # in this pass
    return sorted(
        n.id
        for n in p.nodes.values()
        if n.status == NodeStatus.DOWN
        and n.overlay
        and task.overlay_address in p.routes.get(n.id, ())
        and down_at.get(n.id, n.updated_at) >= task.draining_since
    )


def _note_in_rollout(p: Pass, task: Task, note: str) -> None:
    """Say in the rollout's status under way that a stop did not wait for every node; unless
    the rollout itself moved on in this pass (its own message then says why)."""
    service = p.state.services.get(task.service_id)
    status = service.update_status if service is not None else None
    if service is None or status is None or not status.state.active or status.to_version != service.version:
        return
    if note in status.message or any(r.service_id == service.id for r in p.rollouts):
        return
    message = f"{status.message}; {note}" if status.message else note
    noted = msgspec.structs.replace(status, message=message)
    p.rollouts.append(RolloutChange(service.id, service.version, noted))
