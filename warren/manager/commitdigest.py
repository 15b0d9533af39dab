"""One commit's changes indexed once for every dispatcher session that reads it.

Every session receives every commit (the hub delivers the same change list to each queue), and
each walked all of its changes several times per message to find its own node's tasks and
whether nodes or volumes changed: O(changes x sessions) per commit, most of a session's cost
in S1 (#15), whose commits carry dozens to hundreds of tasks for 100 nodes. A digest is built
once per commit; a session then reads only the changes that can concern it.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet

from warren.model import Task, TaskState
from warren.state import Change, Delete, Put

_RUNNING = TaskState.RUNNING
_ASSIGNED = TaskState.ASSIGNED

KEEP = 128  # digests kept by index: sessions more behind than that build their own


class CommitDigest:
    """The task changes of one commit by node and by task id, and which kinds it touched."""

    __slots__ = ("_at", "_ids", "_on_node", "changes", "nodes_changed", "volumes_changed", "work")

    def __init__(self, changes: list[Change]) -> None:
        self.changes = changes
        self._on_node: dict[str, list[Task]] = {}  # node id -> the tasks put there, in commit order
        self._at: dict[str, list[int]] = {}  # task id -> where the commit puts or deletes it
        self.nodes_changed = self.volumes_changed = False
        self.work: set[str] = set()  # nodes this commit gives work: their sessions wake for it (ADR 85)
        for position, change in enumerate(changes):
            kind = change.kind
            if kind == "task":
                if isinstance(change, Put):
                    task = change.obj
                    if isinstance(task, Task):
                        self._on_node.setdefault(task.node_id, []).append(task)
                        self._at.setdefault(task.id, []).append(position)
                        if is_work(task):
                            self.work.add(task.node_id)
                elif isinstance(change, Delete):
                    self._at.setdefault(change.id, []).append(position)
            elif kind == "node":
                self.nodes_changed = True
            elif kind == "volume":
                self.volumes_changed = True
        self._ids = set(self._at)

    def tasks_on(self, node_id: str) -> list[Task]:
        """The tasks this commit puts on `node_id`, in commit order."""
        return self._on_node.get(node_id, [])

    def task_changes_for(self, node_id: str, known: AbstractSet[str]) -> list[Change]:
        """In commit order, every change of a task that this commit puts on `node_id` or that
        the node's session holds (`known`): the only task changes that can concern it. A task
        leaves `known` only through one of these, and joins it only by being put on the node."""
        ids = set(known & self._ids)  # walks the commit's ids, not every task the node holds
        ids.update(task.id for task in self._on_node.get(node_id, ()))
        if not ids:
            return []
        at = self._at
        changes = self.changes
        return [changes[position] for position in sorted(p for task_id in ids for p in at[task_id])]


def is_work(task: Task) -> bool:
    """Whether the node has an order in `task` it has not acted on: a task to start that it has not
    taken up yet, or a task to stop that has not ended. A node's own reports are not work."""
    if not task.node_id:
        return False
    if task.desired_state > _RUNNING:
        return not task.state.terminal
    return task.desired_state == _RUNNING and task.state <= _ASSIGNED


class CommitDigests:
    """The digests of recent commits, by applied index, shared by the sessions."""

    def __init__(self) -> None:
        self._by_index: dict[int, CommitDigest] = {}

    def of(self, index: int, changes: list[Change]) -> CommitDigest:
        digest = self._by_index.get(index)
        if digest is None or digest.changes is not changes:  # another commit at that index (a new term)
            digest = self._by_index[index] = CommitDigest(changes)
            if len(self._by_index) > KEEP:
                del self._by_index[next(iter(self._by_index))]
        return digest
