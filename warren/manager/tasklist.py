"""Which tasks a ListTasks answer holds (`service ps`, `node ps`, `stack ps`), read from the state
without a pass over every task of the cluster when one service or one node is asked for (#15)."""

from __future__ import annotations

from collections.abc import Collection

from warren.model import Task, TaskState, without_history
from warren.state import ClusterState


def candidates(state: ClusterState, service_id: str, node_id: str, include_history: bool) -> list[Task]:
    """The tasks `listed` chooses from; taken under the store's read lock, so only gathered here.

    One node's tasks come from its index. Without history, a task of that node that failed
    (ended, still desired running) is judged against its whole slot, whose newest task may run
    elsewhere: the tasks of its service are gathered with it (only those, not the cluster's)."""
    if service_id:
        return state.service_tasks(service_id)
    if not node_id:
        return list(state.tasks.values())
    tasks = state.node_tasks(node_id)
    if include_history:
        return tasks
    failed = {t.service_id for t in tasks if t.state >= TaskState.COMPLETE and t.desired_state == TaskState.RUNNING}
    return tasks + [t for s in failed for t in state.service_tasks(s) if t.node_id != node_id]


def listed(tasks: list[Task], node_id: str, include_history: bool, states: Collection[TaskState]) -> list[Task]:
    """The `candidates` a listing shows: without history unless asked (judged before the node's
    filter: a slot's replacement may run elsewhere), of that node, in those states."""
    if not include_history:
        tasks = without_history(tasks)
    if node_id:
        tasks = [t for t in tasks if t.node_id == node_id]
    if states:
        tasks = [t for t in tasks if t.state in states]
    return tasks
