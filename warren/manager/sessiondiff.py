"""What a session sends its node after commits (ADR 55, 76): the node's tasks that the commits
updated or removed, read from each commit's digest, and its volumes. Pure over the state it is
handed; `DispatcherService.Session` holds the session and sends the messages."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractContextManager

from warren.api.v1 import dispatcher_pb2 as dpb
from warren.api.v1 import types_pb2 as pb
from warren.manager.commitdigest import CommitDigest
from warren.manager.sessionspecs import SessionSpecs
from warren.model import Task, TaskState, same_but_status
from warren.state import ClusterState, Delete, Put


def visible(task: Task) -> bool:
    """Tasks an agent must know about: those it should run, and those it should stop."""
    return not task.state.terminal or task.desired_state == TaskState.RUNNING


def echo(sent: Task, task: Task) -> bool:
    """Whether `task` differs from the version its agent holds only by the status that agent
    reported (SwarmKit's dispatcher sends no such update either). At 1,000 nodes each task was
    sent back after each of its reports: preparing, starting, running (#15). States up to
    ASSIGNED are the managers' own, and always sent."""
    return task.state > TaskState.ASSIGNED and same_but_status(sent, task)


def coalesce(first: tuple[int, list | None], events: asyncio.Queue) -> list[tuple[int, list]] | None:
    """`first` and every commit already queued behind it, (index, changes) in order; None if
    the state was replaced. A session that fell behind (many nodes, commits coming fast) sends
    one message for all of them instead of one per commit, each with the whole endpoint list."""
    batches = [first]
    while not events.empty():
        batches.append(events.get_nowait())
    ready = [(index, changes) for index, changes in batches if changes is not None]
    return ready if len(ready) == len(batches) else None


def node_volumes(state: ClusterState, node_id: str) -> list[str]:
    """The names of the volumes that live on the node (ADR 40), sorted."""
    return sorted(v.name for v in state.volumes.values() if v.node_id == node_id)


def node_task_diff(
    node_id: str,
    known: dict[str, Task],
    digests: list[CommitDigest],
    specs: SessionSpecs,
    spec_list: list[dpb.TaskSpec],
    read: Callable[[], AbstractContextManager[ClusterState]],
) -> tuple[list[pb.Task], list[str]]:
    """The tasks of the node that the commits (in order) updated or removed; a task changed
    by several commits is sent once, as the last one left it. A change of only what the
    agent itself reported is not sent back to it (`echo`)."""
    updated: dict[str, pb.Task] = {}
    removed: dict[str, None] = {}  # ordered set
    # Read commit by commit: which changes concern the node depends on `known` so far.
    for change in (c for digest in digests for c in digest.task_changes_for(node_id, known.keys())):
        if isinstance(change, Put) and change.kind == "task" and isinstance(change.obj, Task):
            task = change.obj
            if task.node_id == node_id and visible(task):
                sent = known.get(task.id)
                removed.pop(task.id, None)
                if sent is not None and task.id not in updated and echo(sent, task):
                    continue  # `known` keeps the version sent: the managers' fields the agent holds
                with read() as state:  # the values of its secrets, if sent with its spec
                    updated[task.id] = specs.task(task, spec_list, state)
                    held = state.tasks.get(task.id)
                # The state's copy when it has the same managers' fields: it shares its spec
                # with the state (ADR 55), where the commit's own copy would hold another.
                known[task.id] = held if held is not None and same_but_status(held, task) else task
            elif task.id in known:
                del known[task.id]
                specs.remove(task.id)
                updated.pop(task.id, None)
                removed[task.id] = None
        elif isinstance(change, Delete) and change.kind == "task" and change.id in known:
            del known[change.id]
            specs.remove(change.id)
            updated.pop(change.id, None)
            removed[change.id] = None
    return list(updated.values()), list(removed)
