"""Which tasks a ListTasks answer holds (`service ps`, `node ps`, `stack ps`), read from the state
without a pass over every task of the cluster when one service or one node is asked for (#15)."""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections.abc import Collection, Iterator

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


def cluster_candidates(
    state: ClusterState, after_name: str | None, enough: int, include_history: bool, states: Collection[TaskState]
) -> list[Task] | None:
    """The listed tasks of the whole cluster (no service or node named) that a page after a task
    of service `after_name` (None: the first page) can hold: each service name's tasks as
    `listed` chooses them, names in order from `after_name` on, until more than `enough` sort
    after it. A page then costs the services it reaches, not a pass over every task of the
    cluster (#15). None if a task does not carry its service's name (no command renames a
    service): the caller then lists every task."""
    chosen: list[Task] = []
    beyond = 0
    for name, service_ids in _names_from(state, after_name or ""):
        group = listed([t for s in service_ids for t in state.service_tasks(s)], "", include_history, states)
        if any(t.service_name != name for t in group):
            return None
        chosen += group
        if after_name is None or name > after_name:
            beyond += len(group)
            if beyond > enough:
                break
    return chosen


def _names_from(state: ClusterState, first: str) -> Iterator[tuple[str, list[str]]]:
    """(service name, the ids of the services that hold tasks under it), in name order from
    `first` on: live services and removed services whose tasks are still held by nodes (a name
    may be both). Services without tasks are skipped, so that a page does not walk every service
    of a cluster where most are scaled to zero: when few services hold tasks, those are sorted;
    otherwise the state's sorted index is walked."""
    holding = state.tasks_by_service  # a defaultdict: a reader's lookup may leave an empty set
    order = state.service_order
    start = bisect.bisect_left(order, (first,))
    if len(holding) * _SPARSE < len(order) - start:
        named = (
            (_name_of(state, service_id, task_ids), service_id) for service_id, task_ids in holding.items() if task_ids
        )
        entries: Iterator[tuple[str, str]] = iter(sorted(entry for entry in named if entry[0] >= first))
    else:
        live = (order[i] for i in range(start, len(order)) if holding.get(order[i][1]))
        removed = []
        for service_id in holding.keys() - state.services.keys():
            task_ids = holding[service_id]
            if task_ids and (name := _name_of(state, service_id, task_ids)) >= first:
                removed.append((name, service_id))
        entries = heapq.merge(live, sorted(removed))
    for name, group in itertools.groupby(entries, key=lambda entry: entry[0]):
        yield name, [service_id for _, service_id in group]


# Sort the services holding tasks, not walk the index, when they are fewer than 1 in this many.
_SPARSE = 4


def _name_of(state: ClusterState, service_id: str, task_ids: Collection[str]) -> str:
    """A service's name; a removed one's from its tasks."""
    service = state.services.get(service_id)
    return service.spec.name if service is not None else state.tasks[next(iter(task_ids))].service_name
