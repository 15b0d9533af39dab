"""Global services: one task per eligible node, created directly ASSIGNED to that node, and a new
version rolled out node by node (ADR 33)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

from warren import rollout
from warren.commands import RolloutChange
from warren.model import NodeStatus, Resources, Service, Task, TaskState, UpdateOrder, is_ready
from warren.reconciler.core import Pass, died_on_its_own, is_live, newest_first, restart_attempt
from warren.scheduler import fits, node_is_schedulable


def reconcile_global(p: Pass, service: Service, tasks: list[Task]) -> None:
    first_created = len(p.created)
    spec = service.spec
    by_node: defaultdict[str, list[Task]] = defaultdict(list)
    for t in tasks:
        by_node[t.node_id].append(t)

    live: dict[str, Task] = {}
    for node_id in sorted(by_node):
        node_live = [t for t in by_node[node_id] if is_live(t)]
        if not node_live:
            continue
        if not node_id:
            for t in node_live:
                p.shutdown(t, "global task without a node")
            continue
        why = p.displaced_by(node_live[0], spec.constraints)
        node_live.sort(key=lambda t: (t.slot == 0, p.current(t, service), t.state, t.created_at, t.id))
        keeper = node_live.pop()
        if keeper.slot == 0 and not why:
            keeper = p.adopt(keeper, service)
        # Start-first (ADR 33): the node's older task keeps serving while the new one gets ready.
        older = [t for t in node_live if t.slot == 0 and t.spec_version != keeper.spec_version]
        keep_older = not why and keeper.spec_version == service.version and not is_ready(keeper) and older
        for t in node_live:
            if keep_older and t is older[-1]:
                continue
            p.shutdown(t, "replaced by service update" if t in older else "duplicate task on node")
        if why:
            p.shutdown(keeper, why)
        elif keeper.slot != 0:
            p.shutdown(keeper, "not a global task")
        else:
            live[node_id] = keeper

    # Fill first: a node about to get a fresh task counts as an update in flight.
    _fill_nodes(p, service, live, by_node)
    _rolling_update(p, service, live, by_node, tasks)
    for task_id in p.created[first_created:]:
        by_node[p.overlay[task_id].node_id].append(p.overlay[task_id])
    p.trim_history(by_node.values(), service.version)


def _fill_nodes(p: Pass, service: Service, live: dict[str, Task], by_node: Mapping[str, list[Task]]) -> None:
    """Start a task on every eligible node without one, unless its restart policy says no."""
    spec = service.spec
    eligible = p.constraints(spec.constraints)
    if eligible is None or p.waiting(service):  # dependencies unmet: no task yet (ADR 49)
        return
    for node_id, node in sorted(p.nodes.items()):
        if node_id in live or not node_is_schedulable(node) or not all(c.matches(node) for c in eligible):
            continue
        if not fits(node, p.reserved.get(node_id, Resources()), spec.reservations):
            continue
        if not p.address_left(node):
            continue  # its overlay subnet is full
        if not p.host_ports_free(node, spec):
            continue  # another task (of any service, or the one it replaces) holds a host port
        attempt = 0
        history = by_node.get(node_id)
        if history:
            newest = max((p.task(t.id) for t in history), key=newest_first)
            if died_on_its_own(newest, replicated=False):
                found = restart_attempt(newest, service, p.now)
                if found is None:
                    continue
                attempt = found
        if not p.can_start():
            return
        live[node_id] = p.create(service, 0, attempt, node_id=node_id)


def _rolling_update(
    p: Pass, service: Service, live: dict[str, Task], by_node: Mapping[str, list[Task]], tasks: list[Task]
) -> None:
    """Outdated tasks replaced on their node as the rollout's lanes free up (ADR 33):
    start-first when both fit on the node (the old one stops once the new one is ready),
    otherwise stop-first, and the fill step starts the new task once the old one has ended."""
    version = service.version
    new_tasks = [p.task(t.id) for t in tasks if t.spec_version == version]
    new_tasks += [t for t in live.values() if t.spec_version == version and t.id not in p.state.tasks]
    outdated = [t for _, t in sorted(live.items()) if t.spec_version != version]
    # A stop-first replacement still stopping holds a lane: its node has no live task yet.
    stopping = 0
    for node_id, node_tasks in by_node.items():
        node = p.nodes.get(node_id)
        if node is None or node.status != NodeStatus.READY or node_id in live:
            continue  # an agent that is not connected would never report the stop
        if any(p.task(t.id).state < TaskState.COMPLETE for t in node_tasks):
            stopping += 1
    step = rollout.step(service, new_tasks, len(outdated) + stopping, len(live) + stopping, p.now)
    if step.status is not None:
        p.rollouts.append(RolloutChange(service.id, version, step.status, step.revert))
    if step.revert or p.waiting(service):  # dependencies unmet: the old tasks serve on (ADR 49)
        return
    budget = step.start - stopping
    stop_first = rollout.settings(service).order == UpdateOrder.STOP_FIRST
    for t in outdated:
        if budget <= 0:
            return
        node = p.nodes[t.node_id]
        reserved = p.reserved.get(t.node_id, Resources())
        if not node_is_schedulable(node) or not p.can_stop(t):
            continue
        both_fit = (
            fits(node, reserved, service.spec.reservations)
            and p.address_left(node)
            and p.host_ports_free(node, service.spec)
        )
        if both_fit and not stop_first:
            if not p.can_start():
                return
            live[t.node_id] = p.create(service, 0, 0, node_id=t.node_id)  # `t` serves meanwhile
            budget -= 1
        elif fits(node, reserved - t.spec.reservations, service.spec.reservations):
            p.shutdown(t, "replaced by service update")
            del live[t.node_id]
            budget -= 1
