"""Handler of `service rebalance` (ADR 36): judged on the state, it only records that a rebalance
runs; the reconciler decides the moves each pass (`warren.rebalance`)."""

from __future__ import annotations

import msgspec

from warren import rebalance
from warren.commands.services import _stale
from warren.commands.types import Changes, RebalanceService, Result, error
from warren.model import RolloutState, ServiceMode, Task
from warren.state import ClusterState, Put

NOTHING_TO_MOVE = "nothing to move"


def rebalance_service(state: ClusterState, cmd: RebalanceService) -> tuple[Result, Changes]:
    """Refused for a global service (bad input) and while a rollout is under way or paused;
    nothing is written when a rebalance already runs or when no move would even the spread."""
    service = state.services.get(cmd.service_id)
    if service is None:
        return error("not_found", f"service {cmd.service_id} not found"), []
    name = service.spec.name
    if cmd.expected_version and cmd.expected_version != service.version:
        return _stale(service, cmd.expected_version), []
    if service.spec.mode == ServiceMode.GLOBAL:
        return error(
            "invalid_argument", f"service {name} is global: it runs one task on each eligible node, none to move"
        ), []
    status = service.update_status
    if status is not None and status.state == RolloutState.REBALANCING:
        return Result(id=service.id, message=f"rebalancing already ({status.message})"), []
    if status is not None and status.state not in (*rebalance.SETTLED, RolloutState.REBALANCE_PAUSED):
        what = "rollback" if status.state.rolling_back else "update"
        return error(
            "failed_precondition",
            f"the {what} of service {name} to version {status.to_version} is {status.state.value.replace('_', ' ')}; "
            "rebalance it once the rollout completed",
        ), []
    moves = rebalance.service_plan(state, service)
    if not moves:
        holders = rebalance.slot_holders(state.service_tasks(service.id))
        return Result(id=service.id, message=f"{NOTHING_TO_MOVE}: {_spread(holders)}"), []
    started = rebalance.started(service, cmd.at, len(moves))
    return Result(id=service.id, message=started.message), [
        Put("service", msgspec.structs.replace(service, update_status=started))
    ]


def _spread(holders: list[Task]) -> str:
    """ "3 tasks on 2 nodes: 2, 1" (the busiest first)."""
    count: dict[str, int] = {}
    for task in holders:
        if task.node_id:
            count[task.node_id] = count.get(task.node_id, 0) + 1
    if not count:
        return "no task is placed"
    per_node = ", ".join(str(n) for n in sorted(count.values(), reverse=True))
    tasks = "1 task" if len(holders) == 1 else f"{len(holders)} tasks"
    nodes = "1 node" if len(count) == 1 else f"{len(count)} nodes"
    return f"{tasks} on {nodes} ({per_node}), as even as the eligible nodes allow"
